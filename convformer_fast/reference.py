"""Eager reference ConvFormer (the test oracle), written to follow the paper's equations.

Shapes use B = batch, T = frames, J = joints, d = embed_dim, h = heads.

    x (B, T, J, 2) --joint embedding + E_pos (eq. 1)--> (B*T, J, d)
      --spatial ConvFormer blocks (tokens = joints)--> (B, T, J*d)     [ConvFormer.spatial_stage]
      + E_temp --temporal ConvFormer blocks (tokens = frames)--> LN --> Linear(J*d -> 3J)
      --Conv1d(T -> 1) over frames--> (B, 1, J, 3)                     [ConvFormer.temporal_stage]

The output is the pose of the window's target frame: its centre (the paper's choice) or,
for a causal model (``target_frame="last"``), its last frame. The network is the same
either way; the target frame says how windows are cut for training and inference
(:func:`target_position`).

Details the paper leaves open are pinned down in docs/ARCHITECTURE.md section 1 (there is no
output projection after attention; the temporal convolution has T channels and slides
along the J*d feature axis). Nothing here is optimised: every kernel size gets its own
Conv1d, exactly as eq. 3-5 describe, and attention is an explicit softmax.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .presets import preset_config

SPATIAL = "spatial"
TEMPORAL = "temporal"
LAYOUTS = (SPATIAL, TEMPORAL)
QKV_NAMES = ("query", "key", "value")
CENTRE, LAST = "centre", "last"
#: Which frame of its window a model predicts (``ConvFormer(target_frame=...)``).
TARGET_FRAMES = (CENTRE, LAST)


def check_target_frame(target_frame: str) -> str:
    """``target_frame`` if it is one of :data:`TARGET_FRAMES`, else a ValueError naming it."""
    return _checks.check_choice("target_frame", target_frame, TARGET_FRAMES)


def target_position(length: int, target_frame: str = CENTRE) -> int:
    """Index of the predicted frame inside a ``length``-frame window: ``length // 2`` for
    ``"centre"`` (``length // 2`` frames of look-ahead), ``length - 1`` for ``"last"``
    (causal: the window holds only the target and its past)."""
    check_target_frame(target_frame)
    return length // 2 if target_frame == CENTRE else length - 1


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample (scaled by 1/keep)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DMHCSA(nn.Module):
    """Dynamic multi-headed convolutional self-attention (paper eqs. 3-7).

    Input and output: ``(N, S, F)`` where S is the token axis and F the feature axis.

    * ``layout="spatial"``: tokens are the J joints, F = d. Each Q/K/V filter is a
      ``Conv1d(d, d, k)`` sliding along the joint axis; heads split the d channels.
    * ``layout="temporal"``: tokens are the T frames, F = J*d. Each filter is a
      ``Conv1d(T, T, k)`` with the frames as channels, sliding along the J*d features
      (the paper's "temporal joints profile"); heads split the J*d features.

    For each of Q, K, V there are ``len(kernel_sizes)`` filters; their outputs are mixed
    with ``eta = softmax(theta)`` (one row of theta per Q/K/V). Aggregation dropout drops
    entries of eta itself during training. There is no output projection.
    """

    def __init__(
        self,
        layout: str,
        num_tokens: int,
        num_features: int,
        kernel_sizes: Sequence[int] = (7, 7, 7),
        num_heads: int = 8,
        agg_dropout: float = 0.0,
    ):
        super().__init__()
        self.layout = _checks.check_choice("layout", layout, LAYOUTS)
        self.kernel_sizes = _checks.check_kernel_sizes(kernel_sizes)
        self.num_tokens = _checks.check_positive_int("num_tokens", num_tokens)
        self.num_features = _checks.check_positive_int("num_features", num_features)
        self.num_heads = _checks.check_heads(num_heads, self.num_features, "num_features")
        self.agg_dropout = _checks.check_probability("agg_dropout", agg_dropout)
        channels = self.num_features if layout == SPATIAL else self.num_tokens
        self.channels = channels
        for name in QKV_NAMES:
            convs = nn.ModuleList(
                nn.Conv1d(channels, channels, k, padding=k // 2) for k in self.kernel_sizes
            )
            setattr(self, f"{name}_convs", convs)
        # theta = 0 starts as a plain average of the kernels (eq. 6).
        self.theta = nn.Parameter(torch.zeros(3, len(self.kernel_sizes)))

    @property
    def head_dim(self) -> int:
        return self.num_features // self.num_heads

    def conv_groups(self) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
        return (self.query_convs, self.key_convs, self.value_convs)

    def aggregation_weights(self) -> torch.Tensor:
        """eta = dropout(softmax(theta)), shape (3, n). Shared by every backend so that
        a training step draws the same dropout mask in the same RNG order."""
        eta = torch.softmax(self.theta, dim=-1)
        return F.dropout(eta, p=self.agg_dropout, training=self.training)

    def extra_repr(self) -> str:
        return (
            f"layout={self.layout!r}, tokens={self.num_tokens}, features={self.num_features}, "
            f"kernel_sizes={self.kernel_sizes}, heads={self.num_heads}"
        )

    def split_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(N, S, F) -> (N, h, S, F/h)."""
        n, s, _ = y.shape
        return y.reshape(n, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_tokens(x, self.num_tokens, self.num_features, type(self).__name__)
        eta = self.aggregation_weights()
        # Conv1d wants (N, channels, length): joints slide under a spatial filter,
        # features under a temporal one.
        conv_in = x.transpose(1, 2) if self.layout == SPATIAL else x
        projections = []
        for row, convs in enumerate(self.conv_groups()):
            # eqs. 3-6: Q = sum_i eta_i * Conv_{k_i}(X)
            y = sum(eta[row, i] * conv(conv_in) for i, conv in enumerate(convs))
            y = y.transpose(1, 2) if self.layout == SPATIAL else y
            projections.append(self.split_heads(y))
        q, k, v = projections
        # eq. 7: per head softmax(Q K^T / sqrt(d_head)) V, heads concatenated.
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        out = torch.softmax(scores, dim=-1) @ v
        return out.transpose(1, 2).reshape(x.shape)


class FeedForward(nn.Sequential):
    """FFN = Linear(D -> rD) -> GELU -> Linear(rD -> D)."""

    def __init__(self, dim: int, mlp_ratio: float):
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class ConvFormerBlock(nn.Module):
    """Pre-norm ConvFormer block (paper eq. 8):

        X = X + DropPath(DMHCSA(LN(X)))
        X = X + DropPath(FFN(LN(X)))
    """

    attention_cls = DMHCSA

    def __init__(
        self,
        layout: str,
        num_tokens: int,
        num_features: int,
        kernel_sizes: Sequence[int] = (7, 7, 7),
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        agg_dropout: float = 0.0,
        **attention_kwargs,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(num_features)
        self.attn = self.attention_cls(
            layout, num_tokens, num_features, kernel_sizes, num_heads, agg_dropout,
            **attention_kwargs,
        )
        self.drop_path = DropPath(_checks.check_probability("drop_path", drop_path))
        self.norm2 = nn.LayerNorm(num_features)
        self.mlp = FeedForward(num_features, _checks.check_positive_float("mlp_ratio", mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvFormer(nn.Module):
    """The full lifting model: 2D keypoints ``(B, T, J, 2)`` -> 3D pose ``(B, 1, J, 3)``
    (root-relative, camera frame) of the window's target frame: the centre frame, or the
    last one with ``target_frame="last"`` (a causal model: no look-ahead). The target frame
    changes no weight; it is part of ``config`` so that checkpoints, evaluation and
    inference cut windows the way the model was trained."""

    block_cls = ConvFormerBlock

    def __init__(
        self,
        num_frames: int = 243,
        num_joints: int = 17,
        embed_dim: int = 32,
        spatial_depth: int = 2,
        temporal_depth: int = 2,
        kernel_sizes: Sequence[int] = (7, 7, 7),
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.2,
        agg_dropout: float = 0.2,
        target_frame: str = CENTRE,
        **block_kwargs,
    ):
        super().__init__()
        self.target_frame = check_target_frame(target_frame)
        self.num_frames = _checks.check_positive_int("num_frames", num_frames)
        self.num_joints = _checks.check_positive_int("num_joints", num_joints)
        self.embed_dim = _checks.check_positive_int("embed_dim", embed_dim)
        _checks.check_nonnegative_int("spatial_depth", spatial_depth)
        _checks.check_nonnegative_int("temporal_depth", temporal_depth)
        kernel_sizes = _checks.check_kernel_sizes(kernel_sizes)
        _checks.check_heads(num_heads, embed_dim, "embed_dim")
        _checks.check_heads(num_heads, embed_dim * num_joints, "embed_dim * num_joints")
        self.config = dict(
            num_frames=num_frames, num_joints=num_joints, embed_dim=embed_dim,
            spatial_depth=spatial_depth, temporal_depth=temporal_depth,
            kernel_sizes=kernel_sizes, num_heads=num_heads, mlp_ratio=mlp_ratio,
            drop_path=drop_path, agg_dropout=agg_dropout, target_frame=target_frame,
        )
        frame_dim = num_joints * embed_dim

        def blocks(layout, tokens, features, depth):
            # Stochastic depth grows linearly from 0 to drop_path within each stage.
            rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
            return nn.ModuleList(
                self.block_cls(
                    layout, tokens, features, kernel_sizes, num_heads, mlp_ratio,
                    rate, agg_dropout, **block_kwargs,
                )
                for rate in rates
            )

        self.joint_embed = nn.Linear(2, embed_dim)
        self.spatial_pos_embed = nn.Parameter(torch.zeros(1, num_joints, embed_dim))
        self.spatial_blocks = blocks(SPATIAL, num_joints, embed_dim, spatial_depth)
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, num_frames, frame_dim))
        self.temporal_blocks = blocks(TEMPORAL, num_frames, frame_dim, temporal_depth)
        self.head = nn.Sequential(nn.LayerNorm(frame_dim), nn.Linear(frame_dim, 3 * num_joints))
        self.frame_weights = nn.Conv1d(num_frames, 1, kernel_size=1)
        nn.init.trunc_normal_(self.spatial_pos_embed, std=0.02)
        nn.init.trunc_normal_(self.temporal_pos_embed, std=0.02)

    @classmethod
    def from_preset(cls, name: str, **overrides):
        """Build a paper configuration by name (see ``convformer_fast.PRESETS``)."""
        return cls(**{**preset_config(name), **overrides})

    @property
    def target_position(self) -> int:
        """Index of the predicted frame in a window (see :func:`target_position`)."""
        return target_position(self.num_frames, self.target_frame)

    def spatial_stage(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Joint embedding (eq. 1) and the spatial blocks, frame by frame: ``(N, J, 2)``
        keypoints of N frames -> ``(N, J*d)`` features. A frame's features do not depend
        on the window it sits in, so whole-sequence and streaming inference compute them
        once per frame."""
        n, j, _ = keypoints.shape
        x = self.joint_embed(keypoints) + self.spatial_pos_embed
        for block in self.spatial_blocks:
            x = block(x)
        return x.reshape(n, j * self.embed_dim)

    def temporal_stage(self, features: torch.Tensor) -> torch.Tensor:
        """E_temp, the temporal blocks and the head on windows of per-frame features:
        ``(B, T, J*d)`` -> ``(B, 1, J, 3)``, the target frame's pose."""
        b = features.shape[0]
        x = features + self.temporal_pos_embed
        for block in self.temporal_blocks:
            x = block(x)
        x = self.head(x)  # (B, T, 3J)
        return self.frame_weights(x).reshape(b, 1, self.num_joints, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_keypoints(x, self.num_frames, self.num_joints)
        b, t, j, _ = x.shape
        features = self.spatial_stage(x.reshape(b * t, j, 2))
        return self.temporal_stage(features.reshape(b, t, j * self.embed_dim))
