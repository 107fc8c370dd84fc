"""Human3.6M in the VideoPose3D preprocessed format.

Files (load with ``allow_pickle=True``):

``data_3d_h36m.npz``
    key ``positions_3d``: a pickled dict ``subject -> action -> array
    (frames, 32, 3)`` of world coordinates in **metres** (z up). Subjects are
    ``'S1', 'S5', 'S6', 'S7', 'S8', 'S9', 'S11'``; actions are the raw names
    (``'Directions'``, ``'Directions 1'``, ``'Eating 2'``, ``'TakingPhoto'``,
    ``'WalkDog 1'``, ...). The 17 evaluated joints are
    :data:`~convformer_fast.pose.data.skeleton.H36M_KEEP_JOINTS`; arrays that
    already have 17 joints are accepted as they are.

``data_2d_h36m_<detector>.npz`` (``gt``, ``cpn_ft_h36m_dbb``, ...)
    key ``positions_2d``: a pickled dict ``subject -> action -> list`` of 4
    arrays, one per camera in :data:`~convformer_fast.pose.data.camera.H36M_INTRINSICS`
    order, each ``(frames, 17, 2)`` in **pixels** (a third confidence channel
    is tolerated and dropped);
    key ``metadata``: a pickled dict with ``'layout_name'`` (``'h36m'``),
    ``'num_joints'`` (17) and ``'keypoints_symmetry'`` = ``[left joint
    indices, right joint indices]``.

:func:`load_h36m` converts every (subject, action, camera) into a
:class:`~convformer_fast.pose.data.windows.PoseSequence`: 3D joints moved into the
camera frame (:func:`~convformer_fast.pose.data.camera.world_to_camera` with the
camera translation converted from mm to m), made root-relative (joint 0
subtracted, so the root is zero; the root path is kept as ``trajectory``), and
2D keypoints normalised with
:func:`~convformer_fast.pose.data.camera.normalize_screen_coordinates`. When a
camera's 2D sequence and the mocap differ in length, both are cut to the
shorter one (the raw dataset has a few videos a couple of frames longer than
the mocap).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .camera import H36M_EXTRINSICS, H36M_INTRINSICS, h36m_camera, normalize_screen_coordinates
from .formats import DatasetFormatError, keep_split_subjects, read_positions_2d, read_positions_3d
from .skeleton import H36M_17, H36M_KEEP_JOINTS
from .windows import PoseSequence, PoseWindowDataset

__all__ = [
    "TRAIN_SUBJECTS",
    "TEST_SUBJECTS",
    "h36m_paths",
    "load_h36m_3d",
    "load_h36m_2d",
    "load_h36m",
    "H36MDataset",
]

#: Protocol split: training subjects.
TRAIN_SUBJECTS: tuple[str, ...] = ("S1", "S5", "S6", "S7", "S8")
#: Protocol split: test subjects.
TEST_SUBJECTS: tuple[str, ...] = ("S9", "S11")

_3D_DESC = "a VideoPose3D Human3.6M 3D file"
_2D_DESC = "a VideoPose3D Human3.6M 2D keypoint file"
_TRAILING_INDEX = re.compile(r"(?:[\s_\-]*\d+)+$")


def h36m_paths(data_dir: Union[str, os.PathLike], detector: str = "gt") -> tuple[str, str]:
    """``(data_dir/data_3d_h36m.npz, data_dir/data_2d_h36m_<detector>.npz)``."""
    data_dir = os.fspath(data_dir)
    return (os.path.join(data_dir, "data_3d_h36m.npz"),
            os.path.join(data_dir, f"data_2d_h36m_{detector}.npz"))


def _select_subjects(subjects) -> tuple[Optional[tuple[str, ...]], bool]:
    """``(subjects, is_split)``: a split name gives its subjects and ``True``."""
    if subjects is None:
        return None, False
    if isinstance(subjects, str):
        if subjects == "train":
            return TRAIN_SUBJECTS, True
        if subjects == "test":
            return TEST_SUBJECTS, True
        return (subjects,), False
    return tuple(subjects), False


def _action_selected(action: str, actions: Optional[Sequence[str]]) -> bool:
    """True when ``action`` or its base name (sub-action number removed) is listed."""
    if actions is None:
        return True
    base = _TRAILING_INDEX.sub("", action).strip()
    return action in actions or base in actions


def load_h36m_3d(path, subjects: Optional[Iterable[str]] = None) -> dict[str, dict[str, np.ndarray]]:
    """Read ``data_3d_h36m.npz``.

    Args:
        path: the file.
        subjects: subjects to keep (default: all in the file).

    Returns:
        ``subject -> action -> (frames, 17, 3)`` float32 world coordinates in
        metres (the 17-joint subset).

    Raises:
        DatasetFormatError: missing file/key, or an entry that is not a
        ``(frames, 32 or 17, 3)`` array.
    """
    data = read_positions_3d(path, _3D_DESC, joints=(32, 17), subjects=subjects)
    for actions in data.values():
        for action, arr in actions.items():
            if arr.shape[1] == 32:
                actions[action] = np.ascontiguousarray(arr[:, H36M_KEEP_JOINTS])
    return data


def load_h36m_2d(path, subjects: Optional[Iterable[str]] = None,
                 num_cameras: Optional[int] = 4):
    """Read ``data_2d_h36m_<detector>.npz``.

    Args:
        path: the file.
        subjects: subjects to keep (default: all).
        num_cameras: required number of per-camera arrays per action
            (``None``: any number).

    Returns:
        ``(positions_2d, metadata)``: ``subject -> action -> list of
        (frames, J, 2)`` float32 pixel arrays, and the metadata dict (with
        ``keypoints_symmetry`` as two int lists).

    Raises:
        DatasetFormatError: missing file/key or malformed entries.
    """
    return read_positions_2d(path, _2D_DESC, num_cameras=num_cameras, subjects=subjects)


def _check_units(units: str) -> float:
    if units == "m":
        return 1.0
    if units == "mm":
        return 1000.0
    raise ValueError(f"units: got {units!r}, expected 'm' or 'mm'")


def load_h36m(path_3d, path_2d, subjects: Union[str, Iterable[str], None] = None,
              actions: Optional[Sequence[str]] = None, cameras: Optional[Sequence[int]] = None,
              units: str = "m") -> tuple[list[PoseSequence], dict]:
    """Load Human3.6M as camera-space sequences.

    Args:
        path_3d: ``data_3d_h36m.npz``.
        path_2d: ``data_2d_h36m_<detector>.npz``.
        subjects: ``'train'`` (S1, S5-S8), ``'test'`` (S9, S11), a list of
            subjects, or ``None`` for all subjects of the 3D file. Listed
            subjects must all be in the files; with a split name, the split's
            subjects present in the 3D file are used (at least one must be).
        actions: keep only these actions (raw name such as ``'Eating 2'`` or
            base name such as ``'Eating'``); ``None`` keeps all.
        cameras: camera indices (0..3) to use; ``None`` uses all four.
        units: ``'m'`` (as stored) or ``'mm'`` for the 3D targets.

    Returns:
        ``(sequences, metadata)``: one :class:`PoseSequence` per (subject,
        action, camera) with ``inputs_2d`` ``(F, 17, 2)`` normalised,
        ``target_3d`` ``(F, 17, 3)`` root-relative camera coordinates (joint 0
        is zero) and ``trajectory`` ``(F, 3)`` camera-space root position;
        and the 2D file's metadata.

    Raises:
        DatasetFormatError: missing/malformed files, or a subject/action of the
        3D file without 2D keypoints.
    """
    scale = _check_units(units)
    wanted, is_split = _select_subjects(subjects)
    for s in wanted or ():
        if s not in H36M_EXTRINSICS:
            raise ValueError(f"subjects: got {s!r}, expected Human3.6M subjects "
                             f"{sorted(H36M_EXTRINSICS, key=lambda x: int(x[1:]))}")
    cam_ids = list(range(len(H36M_INTRINSICS))) if cameras is None else [int(c) for c in cameras]
    for c in cam_ids:
        if not 0 <= c < len(H36M_INTRINSICS):
            raise ValueError(f"cameras: got {c}, expected indices 0..{len(H36M_INTRINSICS) - 1}")

    if is_split:
        poses_3d = load_h36m_3d(path_3d)
        poses_3d = keep_split_subjects(path_3d, poses_3d, wanted, subjects)
        wanted = tuple(poses_3d)
    else:
        poses_3d = load_h36m_3d(path_3d, wanted)
    poses_2d, metadata = load_h36m_2d(path_2d, wanted)
    if metadata["num_joints"] != H36M_17.num_joints:
        raise DatasetFormatError(path_2d, "metadata['num_joints']", f"got {metadata['num_joints']}",
                                 f"{H36M_17.num_joints} joints to match the 3D subset")

    sequences: list[PoseSequence] = []
    for subject in sorted(poses_3d, key=lambda s: (len(s), s)):
        if subject not in H36M_EXTRINSICS:
            raise DatasetFormatError(path_3d, f"positions_3d[{subject!r}]", "unknown subject",
                                     f"Human3.6M subjects {sorted(H36M_EXTRINSICS)}")
        if subject not in poses_2d:
            raise DatasetFormatError(path_2d, f"positions_2d[{subject!r}]", "subject missing",
                                     f"2D keypoints for every subject of {os.fspath(path_3d)}")
        for action in sorted(poses_3d[subject]):
            if not _action_selected(action, actions):
                continue
            if action not in poses_2d[subject]:
                raise DatasetFormatError(path_2d, f"positions_2d[{subject!r}][{action!r}]",
                                         "action missing",
                                         f"2D keypoints for every action of {os.fspath(path_3d)}")
            world = poses_3d[subject][action]
            for c in cam_ids:
                cam = h36m_camera(subject, c)
                kp = poses_2d[subject][action][c]
                n = min(len(kp), len(world))
                cam_pos = cam.world_to_camera(world[:n].astype(np.float64)) * scale
                trajectory = cam_pos[:, 0].copy()
                target = cam_pos - cam_pos[:, :1]
                inputs = normalize_screen_coordinates(kp[:n], w=cam.res_w, h=cam.res_h)
                sequences.append(PoseSequence(
                    subject=subject, action=action, camera=c, inputs_2d=inputs,
                    target_3d=target, trajectory=trajectory, res_w=cam.res_w, res_h=cam.res_h))
    if not sequences:  # every action filtered out
        found = sorted({a for subject in poses_3d.values() for a in subject})
        wanted = actions if actions is None else list(actions)
        raise DatasetFormatError(path_3d, "'positions_3d'", f"no action selected by actions={wanted}",
                                 f"at least one of them (file has actions {found[:20]})")
    return sequences, metadata


class H36MDataset(PoseWindowDataset):
    """Human3.6M windows: ``(inputs_2d (T, 17, 2), target_3d (1, 17, 3), action, subject)``.

    Args:
        path_3d: ``data_3d_h36m.npz``.
        path_2d: ``data_2d_h36m_<detector>.npz``.
        subjects: ``'train'``, ``'test'``, a list, or ``None`` (all).
        receptive_field: window length ``T``.
        stride: target-frame stride.
        flip_augment: add mirrored copies (training).
        actions, cameras, units: as in :func:`load_h36m`.

    Attributes:
        metadata: the 2D file's metadata.
        kps_left, kps_right: 2D symmetry from the metadata.
        joints_left, joints_right: 3D symmetry of :data:`H36M_17`.
    """

    def __init__(self, path_3d, path_2d, subjects: Union[str, Iterable[str], None] = "train",
                 receptive_field: int = 243, stride: int = 1, flip_augment: bool = False,
                 actions: Optional[Sequence[str]] = None, cameras: Optional[Sequence[int]] = None,
                 units: str = "m"):
        sequences, metadata = load_h36m(path_3d, path_2d, subjects=subjects, actions=actions,
                                        cameras=cameras, units=units)
        left, right = metadata["keypoints_symmetry"]
        super().__init__(sequences, receptive_field, stride=stride, flip_augment=flip_augment,
                         kps_left=left, kps_right=right,
                         joints_left=H36M_17.joints_left, joints_right=H36M_17.joints_right)
        self.metadata = metadata
