"""Where training and evaluation get their sequences: the Human3.6M files (real or
synthetic, same format) and the bundled DeepMimic clips."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .data.deepmimic import load_deepmimic
from .data.h36m import h36m_paths, load_h36m
from .data.synthetic import write_synthetic_h36m
from .metrics import H36M_ACTION_FULL_NAMES

__all__ = ["SYNTHETIC_ALL_ACTIONS", "ensure_synthetic", "h36m_sequences", "deepmimic_sequences"]

#: One synthetic sequence per Human3.6M action (so the 15-column table is full).
SYNTHETIC_ALL_ACTIONS = tuple(H36M_ACTION_FULL_NAMES.values())


def ensure_synthetic(data_dir, num_frames: int = 400, seed: int = 0) -> tuple[str, str]:
    """Write the synthetic Human3.6M (all 7 subjects, 15 actions, 4 cameras) into
    ``data_dir`` unless both files are already there; returns their paths."""
    path_3d, path_2d = h36m_paths(data_dir, "gt")
    if not (os.path.isfile(path_3d) and os.path.isfile(path_2d)):
        write_synthetic_h36m(data_dir, actions=SYNTHETIC_ALL_ACTIONS, num_frames=num_frames, seed=seed)
    return path_3d, path_2d


def h36m_sequences(data_dir, keypoints: str = "gt", subjects="train",
                   actions: Optional[Sequence[str]] = None):
    """``(sequences, metadata)`` of Human3.6M-format files in ``data_dir``, targets in metres."""
    path_3d, path_2d = h36m_paths(data_dir, keypoints)
    return load_h36m(path_3d, path_2d, subjects=subjects, actions=actions, units="m")


def deepmimic_sequences(clips: Optional[Sequence[str]] = None):
    """The bundled real-motion clips (see :mod:`convformer_fast.pose.data.deepmimic`), metres."""
    return load_deepmimic(clips=clips)
