"""File-format checking shared by the dataset loaders.

Every loader reports a missing or malformed file with
:class:`DatasetFormatError`, whose message names the file, the key (a path
into the pickled structure such as ``positions_2d['S1']['Walking'][0]``) and
what was expected.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "DatasetFormatError",
    "load_npz",
    "unpickle_entry",
    "check_array",
    "check_mapping",
    "check_metadata",
    "read_positions_3d",
    "read_positions_2d",
]


class DatasetFormatError(ValueError):
    """A dataset file is missing or does not have the expected layout.

    Attributes:
        path: the file concerned.
        key: the key (or key path) that is missing or malformed; ``None`` when
            the whole file is at fault.
        expected: a description of what was expected.
    """

    def __init__(self, path, key: Optional[str], problem: str, expected: str):
        self.path = os.fspath(path)
        self.key = key
        self.expected = expected
        where = f"{self.path}" if key is None else f"{self.path}, key {key}"
        super().__init__(f"{where}: {problem}; expected {expected}")


def load_npz(path, required_keys: Iterable[str], description: str) -> dict[str, Any]:
    """Open a ``.npz`` file (pickles allowed) and check its top-level keys.

    Args:
        path: file to read.
        required_keys: keys that must be present.
        description: what the file should be, used in error messages
            (e.g. ``"a VideoPose3D Human3.6M 3D file"``).

    Returns:
        A plain dict of every stored key -> value (0-d object arrays, i.e.
        pickled dicts, are returned unwrapped with ``.item()``).

    Raises:
        DatasetFormatError: the file is missing, unreadable, or lacks a key.
    """
    path = os.fspath(path)
    required = list(required_keys)
    keys_text = ", ".join(repr(k) for k in required)
    if not os.path.isfile(path):
        raise DatasetFormatError(path, None, "file not found",
                                 f"{description} (.npz with keys {keys_text})")
    try:
        loaded = np.load(path, allow_pickle=True)
    except Exception as exc:  # a bad zip, a non-numpy file, a truncated pickle, ...
        raise DatasetFormatError(path, None, f"cannot be read as .npz ({type(exc).__name__}: {exc})",
                                 f"{description} (.npz with keys {keys_text})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DatasetFormatError(path, None, f"holds a single {type(loaded).__name__}, not an .npz archive",
                                 f"{description} (.npz with keys {keys_text})")
    try:
        with loaded as npz:
            present = list(npz.files)
            missing = [k for k in required if k not in present]
            if missing:
                raise DatasetFormatError(
                    path, repr(missing[0]), f"key missing (file has {present})",
                    f"{description} with keys {keys_text}")
            out = {}
            for k in present:
                value = npz[k]
                out[k] = unpickle_entry(value)
            return out
    except DatasetFormatError:
        raise
    except Exception as exc:  # corrupt member or pickle inside the archive
        raise DatasetFormatError(path, None, f"cannot be read as .npz ({type(exc).__name__}: {exc})",
                                 f"{description} (.npz with keys {keys_text})") from exc


def unpickle_entry(value):
    """Unwrap a 0-d object array (how ``np.savez`` stores a dict) to its object."""
    if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
        return value.item()
    return value


def check_array(path, key: str, value, *, ndim: int, last: Optional[int] = None,
                joints: Optional[Iterable[int]] = None, what: str = "") -> np.ndarray:
    """Check a numeric array read from a dataset file.

    Args:
        path: the file (for the error message).
        key: the key path (for the error message).
        value: the object to check.
        ndim: required number of dimensions.
        last: required size of the last dimension, if any.
        joints: allowed sizes of the second-to-last (joint) dimension, if any.
        what: description of the expected array, e.g. ``"(frames, 17, 2) pixels"``.

    Returns:
        ``value`` as a numpy array (no copy when already one).

    Raises:
        DatasetFormatError: when the value is not such an array.
    """
    expected = f"an array {what}".strip()
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception:  # pragma: no cover - exotic objects
            value = None
        if value is None or value.dtype == object:
            raise DatasetFormatError(path, key, f"got {type(value).__name__}", expected)
    if value.dtype.kind not in "fiu":
        raise DatasetFormatError(path, key, f"got dtype {value.dtype}", expected)
    if value.ndim != ndim:
        raise DatasetFormatError(path, key, f"got shape {value.shape}", expected)
    if last is not None and value.shape[-1] != last:
        raise DatasetFormatError(path, key, f"got shape {value.shape}", expected)
    if joints is not None:
        allowed = tuple(joints)
        if value.shape[-2] not in allowed:
            raise DatasetFormatError(path, key, f"got shape {value.shape} "
                                     f"({value.shape[-2]} joints)", expected)
    return value


def check_mapping(path, key: str, value, expected: str) -> dict:
    """Check that ``value`` is a non-empty dict; return it."""
    if not isinstance(value, dict):
        raise DatasetFormatError(path, key, f"got {type(value).__name__}", expected)
    if not value:
        raise DatasetFormatError(path, key, "got an empty dict", expected)
    return value


def check_metadata(path, metadata) -> dict:
    """Validate a VideoPose3D 2D ``metadata`` dict.

    Expected: ``{'layout_name': str, 'num_joints': int, 'keypoints_symmetry':
    [left indices, right indices]}`` (other keys are kept).

    Returns:
        A copy with ``num_joints`` as ``int`` and ``keypoints_symmetry`` as two
        lists of ints.
    """
    expected = ("a pickled dict with 'layout_name', 'num_joints' and "
                "'keypoints_symmetry' = [left joint indices, right joint indices]")
    check_mapping(path, "'metadata'", metadata, expected)
    for k in ("layout_name", "num_joints", "keypoints_symmetry"):
        if k not in metadata:
            raise DatasetFormatError(path, f"metadata[{k!r}]", "key missing", expected)
    num = metadata["num_joints"]
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num <= 0:
        raise DatasetFormatError(path, "metadata['num_joints']", f"got {num!r}",
                                 "a positive joint count")
    sym = metadata["keypoints_symmetry"]
    try:
        left, right = (list(int(i) for i in side) for side in sym)
    except (TypeError, ValueError):
        raise DatasetFormatError(path, "metadata['keypoints_symmetry']", f"got {sym!r}",
                                 "[left joint indices, right joint indices]") from None
    if len(left) != len(right):
        raise DatasetFormatError(path, "metadata['keypoints_symmetry']",
                                 f"got {len(left)} left and {len(right)} right joints",
                                 "two index lists of equal length")
    if any(not 0 <= i < num for i in left + right):
        raise DatasetFormatError(path, "metadata['keypoints_symmetry']",
                                 f"got indices outside 0..{int(num) - 1}", "valid joint indices")
    return dict(metadata, keypoints_symmetry=[left, right], num_joints=int(num))


def _missing_subjects(path, key: str, wanted, found, available):
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DatasetFormatError(path, f"{key}[{missing[0]!r}]", "subject missing",
                                 f"subjects {sorted(set(wanted))} (file has {sorted(available)})")


def keep_split_subjects(path, poses_3d: dict, wanted, split) -> dict:
    """The subjects of a named split (e.g. 'train') that the 3D file holds; an error naming
    the file when it holds none of them."""
    kept = {s: v for s, v in poses_3d.items() if s in wanted}
    if not kept:
        raise DatasetFormatError(path, "'positions_3d'", f"no subject of split {split!r}",
                                 f"at least one of {list(wanted)} (file has {sorted(poses_3d)})")
    return kept


def read_positions_3d(path, description: str, joints: Sequence[int],
                      subjects: Optional[Iterable[str]] = None) -> dict[str, dict[str, np.ndarray]]:
    """Read a VideoPose3D ``positions_3d`` file.

    Expected content: key ``positions_3d`` holding a pickled dict
    ``subject -> action -> (frames, J, 3)`` array (world coordinates, metres).

    Args:
        path: the ``.npz`` file.
        description: what the file is, for error messages.
        joints: allowed joint counts ``J``.
        subjects: subjects to return (all when ``None``); each must exist.

    Returns:
        ``subject -> action -> (frames, J, 3)`` float32 arrays.
    """
    joints = tuple(joints)
    jtext = " or ".join(str(j) for j in joints)
    content = load_npz(path, ["positions_3d"], description)
    data = check_mapping(path, "'positions_3d'", content["positions_3d"],
                         f"a pickled dict subject -> action -> (frames, {jtext}, 3) array in metres")
    wanted = None if subjects is None else list(subjects)
    out: dict[str, dict[str, np.ndarray]] = {}
    for subject, actions in data.items():
        if wanted is not None and subject not in wanted:
            continue
        key = f"positions_3d[{subject!r}]"
        check_mapping(path, key, actions, f"a dict action -> (frames, {jtext}, 3) array")
        out[subject] = {}
        for action, positions in actions.items():
            arr = check_array(path, f"{key}[{action!r}]", positions, ndim=3, last=3,
                              joints=joints, what=f"(frames, {jtext}, 3) in metres")
            out[subject][action] = np.ascontiguousarray(arr, dtype=np.float32)
    if wanted is not None:
        _missing_subjects(path, "positions_3d", wanted, out, data)
    return out


def read_positions_2d(path, description: str, num_cameras: Optional[int] = None,
                      subjects: Optional[Iterable[str]] = None, allow_missing_cameras: bool = False):
    """Read a VideoPose3D ``positions_2d`` + ``metadata`` file.

    Expected content: key ``positions_2d`` holding a pickled dict
    ``subject -> action -> list`` with one ``(frames, J, 2)`` pixel array per
    camera (a third confidence channel is tolerated and dropped), and key
    ``metadata`` (see :func:`check_metadata`, ``J = num_joints``).

    Args:
        path: the ``.npz`` file.
        description: what the file is, for error messages.
        num_cameras: required list length (``None``: any).
        subjects: subjects to return (all when ``None``); each must exist.
        allow_missing_cameras: accept ``None`` list entries (kept as ``None``).

    Returns:
        ``(positions_2d, metadata)`` with float32 ``(frames, J, 2)`` arrays.
    """
    content = load_npz(path, ["positions_2d", "metadata"], description)
    metadata = check_metadata(path, content["metadata"])
    joints = metadata["num_joints"]
    data = check_mapping(path, "'positions_2d'", content["positions_2d"],
                         f"a pickled dict subject -> action -> list of (frames, {joints}, 2) arrays")
    wanted = None if subjects is None else list(subjects)
    out: dict[str, dict[str, list]] = {}
    for subject, actions in data.items():
        if wanted is not None and subject not in wanted:
            continue
        key = f"positions_2d[{subject!r}]"
        check_mapping(path, key, actions, f"a dict action -> list of (frames, {joints}, 2) arrays")
        out[subject] = {}
        for action, per_camera in actions.items():
            akey = f"{key}[{action!r}]"
            expected = (f"a list of {num_cameras if num_cameras else 'per-camera'} arrays "
                        f"(frames, {joints}, 2) in pixels, one per camera")
            if not isinstance(per_camera, (list, tuple)):
                raise DatasetFormatError(path, akey, f"got {type(per_camera).__name__}", expected)
            if num_cameras is not None and len(per_camera) != num_cameras:
                raise DatasetFormatError(path, akey, f"got {len(per_camera)} entries", expected)
            arrays = []
            for c, kp in enumerate(per_camera):
                ckey = f"{akey}[{c}]"
                if kp is None and allow_missing_cameras:
                    arrays.append(None)
                    continue
                arr = check_array(path, ckey, kp, ndim=3, joints=(joints,),
                                  what=f"(frames, {joints}, 2) in pixels")
                if arr.shape[-1] not in (2, 3):
                    raise DatasetFormatError(path, ckey, f"got shape {arr.shape}",
                                             f"an array (frames, {joints}, 2) in pixels")
                arrays.append(np.ascontiguousarray(arr[..., :2], dtype=np.float32))
            out[subject][action] = arrays
    if wanted is not None:
        _missing_subjects(path, "positions_2d", wanted, out, data)
    return out, metadata
