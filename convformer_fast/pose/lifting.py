"""Whole-sequence lifting: one T-frame window per output frame, spatial part shared.

``ConvFormer.forward`` on a window runs (1) :meth:`~convformer_fast.ConvFormer.spatial_stage`:
joint embedding + spatial blocks on every frame of the window, independently per frame
(tokens are joints), then (2) :meth:`~convformer_fast.ConvFormer.temporal_stage`: the
temporal blocks and head across the window. Part (1) does not depend on which window a
frame sits in, so for a sequence of F frames with one window per output frame it is
computed once per frame (F times instead of F*T) and the T-frame windows are gathered from
those per-frame features for part (2). Edge padding (the first/last frame repeated, as
:func:`convformer_fast.pose.data.window_indices`) becomes repeating the first/last frame's
features, which is the same thing because part (1) is per frame. Windows are cut around
the model's target frame (``model.target_frame``: centred, or ending with it for a causal
model).

:func:`lift_sequence` equals running the model on every edge-padded window (checked in
``tests/test_infer.py``); it is used by evaluation and video inference, and
:class:`~convformer_fast.pose.stream.StreamingLifter` equals it frame by frame.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..reference import CENTRE, target_position
from .checkpoint import unwrap_model

__all__ = ["window_index_matrix", "lift_sequence"]


def window_index_matrix(num_frames: int, centers: torch.Tensor, length: int,
                        target_frame: str = CENTRE) -> torch.Tensor:
    """``(len(centers), length)`` frame indices of the window of each target frame, edge-clamped.

    Same convention as :func:`convformer_fast.pose.data.window_indices` (the target sits at
    position ``length // 2``, or last with ``target_frame="last"``).
    """
    offsets = torch.arange(length, device=centers.device) - target_position(length, target_frame)
    return (centers[:, None] + offsets).clamp_(0, num_frames - 1)


@torch.inference_mode()
def _lift(model, keypoints, centers, batch_size, frame_chunk):
    frames = keypoints.shape[0]
    features = torch.cat([model.spatial_stage(keypoints[i:i + frame_chunk])
                          for i in range(0, frames, frame_chunk)])
    out = []
    for i in range(0, len(centers), batch_size):
        index = window_index_matrix(frames, centers[i:i + batch_size], model.num_frames, model.target_frame)
        out.append(model.temporal_stage(features[index])[:, 0])
    return torch.cat(out)


def lift_sequence(model, keypoints, centers: Optional[Sequence[int]] = None, batch_size: int = 1024,
                  frame_chunk: int = 4096, flip_symmetry: Optional[tuple] = None) -> np.ndarray:
    """3D poses of a whole sequence, one window per output frame (cut around the model's
    target frame: centred, or ending with it for a causal model).

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
