"""Whole-sequence lifting: one T-frame window per output frame, spatial part shared.

``ConvFormer.forward`` on a window runs (1) joint embedding + spatial blocks on every
frame of the window, independently per frame (tokens are joints), then (2) the temporal
blocks and head across the window. Part (1) does not depend on which window a frame sits
in, so for a sequence of F frames with one window per output frame it is computed once per
frame (F times instead of F*T) and the T-frame windows are gathered from those per-frame
features for part (2). Edge padding (the first/last frame repeated, as
:func:`convformer_fast.pose.data.window_indices`) becomes repeating the first/last frame's
features, which is the same thing because part (1) is per frame.

:func:`lift_sequence` equals running the model on every edge-padded window (checked in
``tests/test_infer.py``); it is used by evaluation and video inference.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..reference import ConvFormer
from .checkpoint import unwrap_model

__all__ = ["spatial_features", "temporal_forward", "window_index_matrix", "lift_sequence"]


def spatial_features(model: ConvFormer, keypoints: torch.Tensor) -> torch.Tensor:
    """Joint embedding + spatial ConvFormer of single frames (paper eq. 1 and the B_sp blocks).

    Args:
        model: a ConvFormer (eval mode for deterministic output).
        keypoints: ``(N, J, 2)`` normalised 2D keypoints of N frames.

    Returns:
        ``(N, J * d)`` per-frame features, the input of the temporal stage.
    """
    n, j, _ = keypoints.shape
    x = model.joint_embed(keypoints) + model.spatial_pos_embed
    for block in model.spatial_blocks:
        x = block(x)
    return x.reshape(n, j * model.embed_dim)


def temporal_forward(model: ConvFormer, features: torch.Tensor) -> torch.Tensor:
    """Temporal embedding + temporal ConvFormer + head on gathered windows.

    Args:
        features: ``(B, T, J * d)`` windows of per-frame features.

    Returns:
        ``(B, 1, J, 3)`` centre-frame poses.
    """
    b = features.shape[0]
    x = features + model.temporal_pos_embed
    for block in model.temporal_blocks:
        x = block(x)
    x = model.head(x)
    return model.frame_weights(x).reshape(b, 1, model.num_joints, 3)


def window_index_matrix(num_frames: int, centers: torch.Tensor, length: int) -> torch.Tensor:
    """``(len(centers), length)`` frame indices, window centred on each centre, edge-clamped.

    Same convention as :func:`convformer_fast.pose.data.window_indices` (the target sits at
    position ``length // 2``).
    """
    offsets = torch.arange(length, device=centers.device) - length // 2
    return (centers[:, None] + offsets).clamp_(0, num_frames - 1)


@torch.inference_mode()
def _lift(model, keypoints, centers, batch_size, frame_chunk):
    frames = keypoints.shape[0]
    features = torch.cat([spatial_features(model, keypoints[i:i + frame_chunk])
                          for i in range(0, frames, frame_chunk)])
    out = []
    for i in range(0, len(centers), batch_size):
        index = window_index_matrix(frames, centers[i:i + batch_size], model.num_frames)
        out.append(temporal_forward(model, features[index])[:, 0])
    return torch.cat(out)


def lift_sequence(model, keypoints, centers: Optional[Sequence[int]] = None, batch_size: int = 1024,
                  frame_chunk: int = 4096, flip_symmetry: Optional[tuple] = None) -> np.ndarray:
    """3D poses of a whole sequence, one window per output frame.

    Args:
        model: a ConvFormer / ConvFormerFast (a DDP wrapper is unwrapped); it is run in
            eval mode and restored to its previous mode afterwards.
        keypoints: ``(F, J, 2)`` normalised screen coordinates (numpy or torch), any
            ``F >= 1`` (shorter than T is fine: windows are edge padded).
        centers: output frames (default: all ``F``).
        batch_size: windows per temporal batch.
        frame_chunk: frames per spatial batch.
        flip_symmetry: ``(kps_left, kps_right, joints_left, joints_right)`` to average
            with the mirrored input's prediction (flip test-time augmentation).

    Returns:
        ``(len(centers), J, 3)`` float32 numpy, root-relative, in the training unit.
    """
    net = unwrap_model(model)
    param = next(net.parameters())
    x = torch.as_tensor(np.asarray(keypoints) if not isinstance(keypoints, torch.Tensor) else keypoints)
    if x.dim() != 3 or x.shape[1:] != (net.num_joints, 2):
        raise ValueError(f"keypoints: got shape {tuple(x.shape)}, expected (frames, {net.num_joints}, 2)")
    if x.shape[0] < 1:
        raise ValueError("keypoints: got 0 frames, expected at least one")
    if not torch.isfinite(x).all():
        raise ValueError("keypoints: got NaN/inf values, expected finite coordinates "
                         "(fill missed detections first, see convformer_fast.pose.keypoints)")
    x = x.to(device=param.device, dtype=param.dtype)
    frames = x.shape[0]
    c = torch.arange(frames, device=x.device) if centers is None else torch.as_tensor(
        np.asarray(centers), dtype=torch.long, device=x.device)
    was_training = net.training
    net.eval()
    try:
        pred = _lift(net, x, c, batch_size, frame_chunk)
        if flip_symmetry is not None:
            from .data.skeleton import flip_horizontal
            kl, kr, jl, jr = flip_symmetry
            mirrored = _lift(net, flip_horizontal(x, kl, kr), c, batch_size, frame_chunk)
            pred = (pred + flip_horizontal(mirrored, jl, jr)) / 2
    finally:
        net.train(was_training)
    return pred.float().cpu().numpy()
