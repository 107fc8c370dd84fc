"""HumanEva-I (15 joints) in the VideoPose3D preprocessed format.

Files (load with ``allow_pickle=True``):

``data_3d_humaneva15.npz``
    key ``positions_3d``: pickled dict ``subject -> action -> (frames, 15, 3)``
    world coordinates in **metres**. Subjects carry the partition prefix:
    ``'Train/S1'``, ``'Train/S2'``, ``'Train/S3'``, ``'Validate/S1'``, ...
    (``'Unlabeled/...'`` subjects may appear and are ignored unless asked
    for). Actions are chunked: ``'Walk 1 chunk0'``, ``'Jog 1 chunk1'``,
    ``'Box 1 chunk0'``, ...

``data_2d_humaneva15_<detector>.npz`` (``gt``, ``detectron_pt_coco``, ...)
    key ``positions_2d``: pickled dict ``subject -> action -> list`` of 3
    arrays (cameras C1, C2, C3; an entry may be ``None`` when that camera has
    no data) each ``(frames, 15, 2)`` in **pixels** of 640x480 images;
    key ``metadata``: ``{'layout_name': 'humaneva15', 'num_joints': 15,
    'keypoints_symmetry': [left, right]}``.

Cameras are per subject (:data:`~convformer_fast.pose.data.camera.HUMANEVA_EXTRINSICS`,
indexed by the subject without its prefix). The usual protocol trains on the
``Train/`` subjects and tests on the ``Validate/`` subjects, on the actions
Walk, Jog and Box.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .camera import HUMANEVA_EXTRINSICS, HUMANEVA_INTRINSICS, humaneva_camera, normalize_screen_coordinates
from .formats import DatasetFormatError, keep_split_subjects, read_positions_2d, read_positions_3d
from .skeleton import HUMANEVA_15
from .windows import PoseSequence, PoseWindowDataset

__all__ = [
    "HUMANEVA_TRAIN_SUBJECTS",
    "HUMANEVA_TEST_SUBJECTS",
    "HUMANEVA_ACTIONS",
    "humaneva_paths",
    "load_humaneva",
    "HumanEvaDataset",
]

HUMANEVA_TRAIN_SUBJECTS: tuple[str, ...] = ("Train/S1", "Train/S2", "Train/S3")
HUMANEVA_TEST_SUBJECTS: tuple[str, ...] = ("Validate/S1", "Validate/S2", "Validate/S3")
HUMANEVA_ACTIONS: tuple[str, ...] = ("Walk", "Jog", "Box")

_3D_DESC = "a VideoPose3D HumanEva-I 3D file"
_2D_DESC = "a VideoPose3D HumanEva-I 2D keypoint file"


def humaneva_paths(data_dir, detector: str = "gt") -> tuple[str, str]:
    """``(data_dir/data_3d_humaneva15.npz, data_dir/data_2d_humaneva15_<detector>.npz)``."""
    data_dir = os.fspath(data_dir)
    return (os.path.join(data_dir, "data_3d_humaneva15.npz"),
            os.path.join(data_dir, f"data_2d_humaneva15_{detector}.npz"))


def _base_action(action: str) -> str:
    """'Walk 1 chunk0' -> 'Walk'."""
    return action.split(" ")[0]


def load_humaneva(path_3d, path_2d, subjects: Union[str, Iterable[str], None] = "train",
                  actions: Optional[Sequence[str]] = HUMANEVA_ACTIONS,
                  units: str = "m") -> tuple[list[PoseSequence], dict]:
    """Load HumanEva-I as camera-space sequences.

    Args:
        path_3d: ``data_3d_humaneva15.npz``.
        path_2d: ``data_2d_humaneva15_<detector>.npz``.
        subjects: ``'train'`` (``Train/S1..S3``), ``'test'``
            (``Validate/S1..S3``), a list of prefixed subjects (all must be
            present), or ``None`` for every subject of the 3D file. With a
            split name, the split's subjects present in the file are used.
        actions: base action names to keep (``'Walk'`` matches
            ``'Walk 1 chunk0'``); ``None`` keeps all.
        units: ``'m'`` (as stored) or ``'mm'``.

    Returns:
        ``(sequences, metadata)``; each :class:`PoseSequence` has
        ``inputs_2d`` ``(F, 15, 2)`` normalised with the 640x480 resolution,
        ``target_3d`` ``(F, 15, 3)`` root-relative (joint 0 = pelvis is zero)
        camera coordinates and ``trajectory`` ``(F, 3)``. Cameras whose 2D
        entry is ``None`` are skipped.

    Raises:
        DatasetFormatError: missing/malformed files or missing 2D entries.
    """
    if units not in ("m", "mm"):
        raise ValueError(f"units: got {units!r}, expected 'm' or 'mm'")
    scale = 1000.0 if units == "mm" else 1.0
    is_split = subjects in ("train", "test")
    if subjects == "train":
        wanted = HUMANEVA_TRAIN_SUBJECTS
    elif subjects == "test":
        wanted = HUMANEVA_TEST_SUBJECTS
    elif isinstance(subjects, str):
        wanted = (subjects,)
    else:
        wanted = None if subjects is None else tuple(subjects)

    joints = (HUMANEVA_15.num_joints,)
    if is_split:
        poses_3d = read_positions_3d(path_3d, _3D_DESC, joints=joints)
        poses_3d = keep_split_subjects(path_3d, poses_3d, wanted, subjects)
        wanted = tuple(poses_3d)
    else:
        poses_3d = read_positions_3d(path_3d, _3D_DESC, joints=joints, subjects=wanted)
    poses_2d, metadata = read_positions_2d(path_2d, _2D_DESC, num_cameras=len(HUMANEVA_INTRINSICS),
                                           subjects=wanted, allow_missing_cameras=True)
    if metadata["num_joints"] != HUMANEVA_15.num_joints:
        raise DatasetFormatError(path_2d, "metadata['num_joints']", f"got {metadata['num_joints']}",
                                 f"{HUMANEVA_15.num_joints} joints (humaneva15 layout)")

    sequences: list[PoseSequence] = []
    for subject in sorted(poses_3d):
        base_subject = subject.rsplit("/", 1)[-1]
        if base_subject not in HUMANEVA_EXTRINSICS:
            raise DatasetFormatError(path_3d, f"positions_3d[{subject!r}]", "unknown subject",
                                     "HumanEva-I subjects S1, S2, S3 with a 'Train/' or 'Validate/' prefix")
        if subject not in poses_2d:
            raise DatasetFormatError(path_2d, f"positions_2d[{subject!r}]", "subject missing",
                                     f"2D keypoints for every subject of {os.fspath(path_3d)}")
        for action in sorted(poses_3d[subject]):
            if actions is not None and _base_action(action) not in actions and action not in actions:
                continue
            if action not in poses_2d[subject]:
                raise DatasetFormatError(path_2d, f"positions_2d[{subject!r}][{action!r}]",
                                         "action missing",
                                         f"2D keypoints for every action of {os.fspath(path_3d)}")
            world = poses_3d[subject][action]
            for c, kp in enumerate(poses_2d[subject][action]):
                if kp is None:
                    continue
                cam = humaneva_camera(subject, c)
                n = min(len(kp), len(world))
                cam_pos = cam.world_to_camera(world[:n].astype(np.float64)) * scale
                sequences.append(PoseSequence(
                    subject=subject, action=action, camera=c,
                    inputs_2d=normalize_screen_coordinates(kp[:n], w=cam.res_w, h=cam.res_h),
                    target_3d=cam_pos - cam_pos[:, :1], trajectory=cam_pos[:, 0],
                    res_w=cam.res_w, res_h=cam.res_h))
    if not sequences:  # every action filtered out
        found = sorted({a for subject in poses_3d.values() for a in subject})
        wanted = actions if actions is None else list(actions)
        raise DatasetFormatError(path_3d, "'positions_3d'", f"no action selected by actions={wanted}",
                                 f"at least one of them (file has actions {found[:20]})")
    return sequences, metadata


class HumanEvaDataset(PoseWindowDataset):
    """HumanEva-I windows: ``(inputs_2d (T, 15, 2), target_3d (1, 15, 3), action, subject)``.

    Args:
        path_3d, path_2d, subjects, actions, units: as in :func:`load_humaneva`.
        receptive_field: window length ``T``.
        stride: target-frame stride.
        flip_augment: add mirrored copies (training).
    """

    def __init__(self, path_3d, path_2d, subjects: Union[str, Iterable[str], None] = "train",
                 receptive_field: int = 27, stride: int = 1, flip_augment: bool = False,
                 actions: Optional[Sequence[str]] = HUMANEVA_ACTIONS, units: str = "m"):
        sequences, metadata = load_humaneva(path_3d, path_2d, subjects=subjects,
                                            actions=actions, units=units)
        left, right = metadata["keypoints_symmetry"]
        super().__init__(sequences, receptive_field, stride=stride, flip_augment=flip_augment,
                         kps_left=left, kps_right=right,
                         joints_left=HUMANEVA_15.joints_left, joints_right=HUMANEVA_15.joints_right)
        self.metadata = metadata
