"""Sequence containers, strided T-frame windows, flip augmentation.

A :class:`PoseSequence` holds one video (one subject, action and camera) as
normalised 2D keypoints and root-relative camera-space 3D joints.
:class:`PoseWindowDataset` turns a list of sequences into samples

    ``(inputs_2d (T, J, 2), target_3d (1, J, 3), action, subject)``

where the window of ``T`` frames is centred on the target frame (or, for a causal
model, ends with it: ``target_frame="last"``) and frames outside the sequence are
replaced by the nearest edge frame (edge replication; a causal window only ever reaches
past the start). Target frames are taken every ``stride`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ...reference import CENTRE, check_target_frame, target_position
from .skeleton import flip_horizontal

__all__ = [
    "PoseSequence",
    "window_indices",
    "extract_window",
    "PoseWindowDataset",
    "flip_test_time_augmentation",
    "TorchPoseWindowDataset",
]


@dataclass
class PoseSequence:
    """One video's worth of poses.

    Attributes:
        subject: subject name, e.g. ``'S1'`` or ``'Train/S1'`` or ``'TS3'``.
        action: action name as stored in the file, e.g. ``'Eating 2'``.
        camera: camera index in the file's per-camera list (0 if n/a).
        inputs_2d: ``(F, J, 2)`` float32 normalised screen coordinates.
        target_3d: ``(F, J, 3)`` float32 root-relative camera-space joints
            (root joint zero) in the dataset's unit (metres or mm), or
            ``None`` for 2D-only data.
        trajectory: ``(F, 3)`` float32 camera-space root position in the same
            unit, or ``None``.
        valid: ``(F,)`` bool mask of frames usable as targets, or ``None``
            (all valid).
        res_w: image width in pixels, res_h: image height in pixels.
    """

    subject: str
    action: str
    camera: int
    inputs_2d: np.ndarray
    target_3d: Optional[np.ndarray] = None
    trajectory: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None
    res_w: int = 0
    res_h: int = 0

    def __post_init__(self):
        self.inputs_2d = np.ascontiguousarray(self.inputs_2d, dtype=np.float32)
        if self.inputs_2d.ndim != 3 or self.inputs_2d.shape[-1] != 2:
            raise ValueError(f"inputs_2d: got shape {self.inputs_2d.shape}, expected (F, J, 2)")
        frames, joints = self.inputs_2d.shape[:2]
        if self.target_3d is not None:
            self.target_3d = np.ascontiguousarray(self.target_3d, dtype=np.float32)
            if self.target_3d.shape != (frames, joints, 3):
                raise ValueError(f"target_3d: got shape {self.target_3d.shape}, "
                                 f"expected {(frames, joints, 3)} to match inputs_2d")
        if self.trajectory is not None:
            self.trajectory = np.ascontiguousarray(self.trajectory, dtype=np.float32)
            if self.trajectory.shape != (frames, 3):
                raise ValueError(f"trajectory: got shape {self.trajectory.shape}, expected {(frames, 3)}")
        if self.valid is not None:
            self.valid = np.asarray(self.valid, dtype=bool).reshape(-1)
            if self.valid.shape != (frames,):
                raise ValueError(f"valid: got shape {self.valid.shape}, expected {(frames,)}")

    @property
    def num_frames(self) -> int:
        """Number of frames ``F``."""
        return int(self.inputs_2d.shape[0])


def window_indices(num_frames: int, center: int, length: int, target_frame: str = CENTRE) -> np.ndarray:
    """Frame indices of the ``length``-frame window whose target frame is ``center``.

    With ``target_frame="centre"`` the window covers ``center - length // 2 ... center -
    length // 2 + length - 1`` (for odd ``length``, ``length // 2`` frames on each side;
    the target sits at position ``length // 2``); with ``"last"`` it covers ``center -
    length + 1 ... center`` (the target is the last frame: no future frame is used).
    Indices outside ``[0, num_frames)`` are clamped, i.e. the first/last frame is
    replicated.

    Returns:
        ``(length,)`` int64 indices.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames: got {num_frames}, expected a positive frame count")
    if not 0 <= center < num_frames:
        raise ValueError(f"center: got {center}, expected 0 <= center < {num_frames}")
    if length <= 0:
        raise ValueError(f"length: got {length}, expected a positive window length")
    start = center - target_position(length, target_frame)
    return np.clip(np.arange(start, start + length, dtype=np.int64), 0, num_frames - 1)


def extract_window(array: np.ndarray, center: int, length: int, target_frame: str = CENTRE) -> np.ndarray:
    """``array[window_indices(len(array), center, length, target_frame)]`` with edge replication.

    Args:
        array: ``(F, ...)`` per-frame data.
        center: target frame.
        length: window length ``T``.
        target_frame: ``"centre"`` or ``"last"`` (where the target sits in the window).

    Returns:
        ``(T, ...)`` copy.
    """
    return array[window_indices(array.shape[0], center, length, target_frame)]


class PoseWindowDataset:
    """Strided, edge-padded T-frame windows over :class:`PoseSequence` objects.

    Sample ``i`` is ``(inputs_2d, target_3d, action, subject)`` with
    ``inputs_2d`` ``(T, J, 2)`` float32 and ``target_3d`` ``(1, J, 3)``
    float32 (the pose at the window's target frame: its centre, or its last frame with
    ``target_frame="last"``). With
    ``flip_augment=True`` the dataset is twice as long: the second half holds
    the horizontally mirrored copies of the first half (2D x negated and
    left/right keypoints swapped; 3D x negated and left/right joints swapped),
    which is how training-time flip augmentation doubles the data.

    Args:
        sequences: the sequences (all with 3D targets).
        receptive_field: window length ``T`` (typically odd, e.g. 27, 81, 243).
        stride: take every ``stride``-th frame as a target (>= 1).
        flip_augment: add mirrored samples.
        kps_left, kps_right: 2D keypoint symmetry (from the 2D metadata).
        joints_left, joints_right: 3D joint symmetry (from the skeleton).
        valid_only: with sequences carrying a ``valid`` mask, only valid frames
            become targets (their windows may still contain invalid frames).
        target_frame: ``"centre"`` (the paper's) or ``"last"`` (causal windows).
    """

    def __init__(self, sequences: Sequence[PoseSequence], receptive_field: int, stride: int = 1,
                 flip_augment: bool = False,
                 kps_left: Sequence[int] = (), kps_right: Sequence[int] = (),
                 joints_left: Sequence[int] = (), joints_right: Sequence[int] = (),
                 valid_only: bool = True, target_frame: str = CENTRE):
        if isinstance(receptive_field, bool) or int(receptive_field) != receptive_field or receptive_field < 1:
            raise ValueError(f"receptive_field: got {receptive_field!r}, expected a positive integer")
        if isinstance(stride, bool) or int(stride) != stride or stride < 1:
            raise ValueError(f"stride: got {stride!r}, expected a positive integer")
        self.sequences = list(sequences)
        for k, seq in enumerate(self.sequences):
            if seq.target_3d is None:
                raise ValueError(f"sequences[{k}] ({seq.subject}, {seq.action}): got no target_3d, "
                                 "expected 3D targets for every sequence")
        if flip_augment and (not kps_left or not joints_left):
            raise ValueError("flip_augment: got True without kps_left/kps_right and "
                             "joints_left/joints_right, expected both symmetries")
        self.receptive_field = int(receptive_field)
        self.target_frame = check_target_frame(target_frame)
        self.stride = int(stride)
        self.flip_augment = bool(flip_augment)
        self.kps_left, self.kps_right = list(kps_left), list(kps_right)
        self.joints_left, self.joints_right = list(joints_left), list(joints_right)

        seq_ids, centers = [], []
        for k, seq in enumerate(self.sequences):
            c = np.arange(0, seq.num_frames, self.stride, dtype=np.int64)
            if valid_only and seq.valid is not None:
                c = c[seq.valid[c]]
            seq_ids.append(np.full(c.shape, k, dtype=np.int64))
            centers.append(c)
        self._seq = np.concatenate(seq_ids) if seq_ids else np.zeros(0, np.int64)
        self._center = np.concatenate(centers) if centers else np.zeros(0, np.int64)

    @property
    def num_unflipped(self) -> int:
        """Number of target frames (samples before flip doubling)."""
        return int(self._center.shape[0])

    def __len__(self) -> int:
        return self.num_unflipped * (2 if self.flip_augment else 1)

    def locate(self, index: int) -> tuple[int, int, bool]:
        """``(sequence index, centre frame, flipped)`` of sample ``index``."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index: got {index}, expected 0 <= index < {n}")
        flipped = index >= self.num_unflipped
        base = index - self.num_unflipped if flipped else index
        return int(self._seq[base]), int(self._center[base]), flipped

    def __getitem__(self, index: int):
        k, center, flipped = self.locate(index)
        seq = self.sequences[k]
        inputs = extract_window(seq.inputs_2d, center, self.receptive_field, self.target_frame)
        target = seq.target_3d[center:center + 1].copy()
        if flipped:
            inputs = flip_horizontal(inputs, self.kps_left, self.kps_right)
            target = flip_horizontal(target, self.joints_left, self.joints_right)
        return inputs, target, seq.action, seq.subject

    def torch(self) -> "TorchPoseWindowDataset":
        """This dataset as a ``torch.utils.data.Dataset`` yielding tensors."""
        return TorchPoseWindowDataset(self)


def flip_test_time_augmentation(model: Callable, inputs_2d, kps_left: Sequence[int],
                                kps_right: Sequence[int], joints_left: Sequence[int],
                                joints_right: Sequence[int]):
    """Average a model's prediction with the un-flipped prediction of the flipped input.

    ``out = (model(x) + flip(model(flip(x)))) / 2`` where the input flip uses
    the 2D keypoint symmetry and the output flip the 3D joint symmetry.

    Args:
        model: callable mapping ``(B, T, J, 2)`` inputs to ``(B, T', J, 3)``
            predictions (numpy or torch, the flip works on both).
        inputs_2d: ``(B, T, J, 2)`` normalised 2D keypoints (any leading dims).
        kps_left, kps_right: 2D left/right keypoint indices.
        joints_left, joints_right: 3D left/right joint indices.

    Returns:
        The averaged prediction, same type and shape as ``model``'s output.
    """
    pred = model(inputs_2d)
    pred_flipped = model(flip_horizontal(inputs_2d, kps_left, kps_right))
    return (pred + flip_horizontal(pred_flipped, joints_left, joints_right)) / 2


try:  # torch is a hard dependency of the project, but keep this module usable without it
    import torch as _torch
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _torch = None
    _TorchDataset = object


class TorchPoseWindowDataset(_TorchDataset):
    """``torch.utils.data.Dataset`` view of a :class:`PoseWindowDataset`.

    Items are ``(inputs_2d, target_3d, action, subject)`` with float32 tensors
    ``(T, J, 2)`` and ``(1, J, 3)``; the default collate function batches them
    into ``(B, T, J, 2)``, ``(B, 1, J, 3)`` and lists of strings.
    """

    def __init__(self, windows: PoseWindowDataset):
        if _torch is None:  # pragma: no cover
            raise ImportError("TorchPoseWindowDataset needs torch")
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int):
        inputs, target, action, subject = self.windows[index]
        return _torch.from_numpy(inputs), _torch.from_numpy(target), action, subject
