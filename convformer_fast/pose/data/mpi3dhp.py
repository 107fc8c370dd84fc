"""MPI-INF-3DHP test set (TS1..TS6, 17 joints) in the common preprocessed form.

File ``data_test_3dhp.npz`` (load with ``allow_pickle=True``):

key ``data``: a pickled dict ``sequence -> dict`` with sequences ``'TS1'`` ...
``'TS6'``, each holding

* ``'data_2d'``: ``(frames, 17, 2)`` 2D keypoints in **pixels**;
* ``'data_3d'``: ``(frames, 17, 3)`` camera-space 3D joints in **mm**
  (a singleton axis, ``(frames, 1, 17, 3)``, is tolerated);
* ``'valid'``: ``(frames,)`` bool (or 0/1) mask of frames with valid
  annotation -- only these are evaluated;
* optionally ``'width'`` and ``'height'`` (``'res_w'``/``'res_h'`` are also
  accepted): the image size in pixels. Without them the published sizes are
  used: 2048x2048 for TS1-TS4 (studio), 1920x1080 for TS5-TS6 (outdoor).

Joints follow :data:`~convformer_fast.pose.data.skeleton.MPI3DHP_17` (root = pelvis,
index 14). 3D targets are made root-relative to joint 14.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from .camera import normalize_screen_coordinates
from .formats import DatasetFormatError, check_array, check_mapping, finite_float32, load_npz
from .skeleton import MPI3DHP_17
from .windows import PoseSequence, PoseWindowDataset

__all__ = ["MPI3DHP_TEST_SEQUENCES", "MPI3DHP_IMAGE_SIZES", "load_mpi3dhp_test", "MPI3DHPTestDataset"]

MPI3DHP_TEST_SEQUENCES: tuple[str, ...] = ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")

#: Default (width, height) in pixels per test sequence.
MPI3DHP_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048), "TS4": (2048, 2048),
    "TS5": (1920, 1080), "TS6": (1920, 1080),
}

_DESC = "an MPI-INF-3DHP test file (data_test_3dhp.npz)"


def _first_integer(value) -> int:
    """The first element of a number or array of real numbers, as an int."""
    array = np.asarray(value).reshape(-1)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"dtype {array.dtype}")
    return int(array[0])


def _image_size(path, key: str, entry: dict, seq: str) -> tuple[int, int]:
    for wk, hk in (("width", "height"), ("res_w", "res_h")):
        if wk in entry or hk in entry:
            try:
                w, h = (_first_integer(entry[k]) for k in (wk, hk))
            except (KeyError, TypeError, ValueError, IndexError, OverflowError):
                raise DatasetFormatError(path, f"{key}[{wk!r}]/[{hk!r}]", "incomplete or non-numeric",
                                         "both image width and height in pixels") from None
            if not (0 < w < 2**31 and 0 < h < 2**31):
                raise DatasetFormatError(path, f"{key}[{wk!r}]", f"got {w}x{h}",
                                         "a positive image size in pixels")
            return w, h
    if seq in MPI3DHP_IMAGE_SIZES:
        return MPI3DHP_IMAGE_SIZES[seq]
    raise DatasetFormatError(path, f"{key}['width']", "key missing",
                             "'width' and 'height' for sequences other than TS1..TS6")


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}, dtype {value.dtype}"
    return f"a {type(value).__name__}"


def load_mpi3dhp_test(path, sequences: Optional[Iterable[str]] = None,
                      units: str = "m") -> list[PoseSequence]:
    """Load the MPI-INF-3DHP test sequences.

    Args:
        path: ``data_test_3dhp.npz`` (format in the module docstring).
        sequences: names to keep (default: all in the file).
        units: ``'m'`` or ``'mm'`` (as stored) for the 3D targets.

    Returns:
        One :class:`PoseSequence` per test sequence (``subject`` = sequence
        name, ``action`` = sequence name, ``camera`` = 0) with ``inputs_2d``
        ``(F, 17, 2)`` normalised by the sequence's image size, ``target_3d``
        ``(F, 17, 3)`` root-relative (joint 14 is zero), ``trajectory`` the
        camera-space pelvis and the ``valid`` mask.

    Raises:
        DatasetFormatError: missing/malformed file or entries.
    """
    if units not in ("m", "mm"):
        raise ValueError(f"units: got {units!r}, expected 'm' or 'mm'")
    scale = 1.0 if units == "mm" else 1e-3
    content = load_npz(path, ["data"], _DESC)
    data = check_mapping(path, "'data'", content["data"],
                         "a pickled dict sequence -> {'data_2d', 'data_3d', 'valid'}")
    names = sorted(data) if sequences is None else list(sequences)
    root = MPI3DHP_17.root
    out = []
    for seq in names:
        key = f"data[{seq!r}]"
        if seq not in data:
            raise DatasetFormatError(path, key, "sequence missing", f"one of {sorted(data)}")
        entry = check_mapping(path, key, data[seq], "a dict with 'data_2d', 'data_3d' and 'valid'")
        for k in ("data_2d", "data_3d", "valid"):
            if k not in entry:
                raise DatasetFormatError(path, f"{key}[{k!r}]", "key missing",
                                         "a dict with 'data_2d', 'data_3d' and 'valid'")
        kp = check_array(path, f"{key}['data_2d']", entry["data_2d"], ndim=3, last=2,
                         joints=(17,), what="(frames, 17, 2) in pixels")
        kp = finite_float32(path, f"{key}['data_2d']", kp, "(frames, 17, 2) in pixels")
        pose = entry["data_3d"]
        if isinstance(pose, np.ndarray) and pose.ndim == 4 and pose.shape[1] == 1:
            pose = pose[:, 0]
        pose = check_array(path, f"{key}['data_3d']", pose, ndim=3, last=3, joints=(17,),
                           what="(frames, 17, 3) in mm")
        valid = entry["valid"]
        if not isinstance(valid, np.ndarray) or valid.dtype.kind not in "biuf":
            raise DatasetFormatError(path, f"{key}['valid']", f"got {_describe(valid)}",
                                     "a boolean (or 0/1) array with one entry per frame")
        valid = valid.reshape(-1)
        if valid.shape[0] != kp.shape[0] or pose.shape[0] != kp.shape[0]:
            raise DatasetFormatError(
                path, f"{key}['valid']",
                f"got data_2d {kp.shape[0]}, data_3d {pose.shape[0]}, valid {valid.shape[0]} frames",
                "the same frame count in data_2d, data_3d and a boolean valid mask")
        valid = valid.astype(bool)
        if not valid.any():
            raise DatasetFormatError(path, f"{key}['valid']", "no frame is valid",
                                     "at least one annotated frame to evaluate")
        # Only annotated frames are evaluated: the others' 3D may be anything.
        finite_float32(path, f"{key}['data_3d']", pose[valid], "(frames, 17, 3) in mm on valid frames")
        w, h = _image_size(path, key, entry, seq)
        with np.errstate(over="ignore", invalid="ignore"):
            cam_pos = pose.astype(np.float64) * scale
        out.append(PoseSequence(
            subject=seq, action=seq, camera=0,
            inputs_2d=normalize_screen_coordinates(kp, w=w, h=h),
            target_3d=cam_pos - cam_pos[:, root:root + 1], trajectory=cam_pos[:, root],
            valid=valid, res_w=w, res_h=h))
    return out


class MPI3DHPTestDataset(PoseWindowDataset):
    """MPI-INF-3DHP test windows centred on valid frames.

    Items are ``(inputs_2d (T, 17, 2), target_3d (1, 17, 3), sequence, sequence)``.

    Args:
        path: ``data_test_3dhp.npz``.
        receptive_field: window length ``T``.
        stride: target-frame stride.
        sequences: test sequences to use (default all).
        units: ``'m'`` or ``'mm'``.
    """

    def __init__(self, path, receptive_field: int = 243, stride: int = 1,
                 sequences: Optional[Iterable[str]] = None, units: str = "m"):
        seqs = load_mpi3dhp_test(path, sequences=sequences, units=units)
        super().__init__(seqs, receptive_field, stride=stride,
                         kps_left=MPI3DHP_17.joints_left, kps_right=MPI3DHP_17.joints_right,
                         joints_left=MPI3DHP_17.joints_left, joints_right=MPI3DHP_17.joints_right,
                         valid_only=True)
