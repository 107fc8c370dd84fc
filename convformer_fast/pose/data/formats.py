"""File-format checking shared by the dataset loaders, and the one reader of ``.npy`` and
``.npz`` files.

Every loader reports a missing or malformed file with :class:`DatasetFormatError`, whose
message names the file, the key (a path into the pickled structure such as
``positions_2d['S1']['Walking'][0]``) and what was expected.

Reading without trusting the file (:func:`read_npy`, :func:`load_npz`): ``np.load`` with
``allow_pickle=True`` runs whatever a pickle asks for, allocates whatever shape a header
declares and inflates whatever a zip member holds. Here instead

* every array's declared size is checked against the bytes that hold it before anything
  is allocated, and a member may declare at most :data:`MAX_ARRAY_BYTES` uncompressed
  (a zip bomb or a header that declares 10^15 elements is refused, not attempted);
* each ``.npz`` member is read through :mod:`zipfile`, which checks its CRC32;
* the pickled dicts of the VideoPose3D formats are read by :class:`_ArrayUnpickler`,
  which builds dicts, lists, tuples, strings, numbers and numpy arrays/scalars and
  refuses every other global (no code runs; a crafted array header inside the pickle is
  checked by numpy against its data), after :mod:`pickletools` has parsed the whole
  stream (a length prefix longer than the data, or a memo index far beyond the opcodes,
  fails there instead of being allocated).
  A ``.npy`` of keypoints is never unpickled at all.

Any failure to read becomes a DatasetFormatError naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ...errors import UserError

__all__ = [
    "MAX_ARRAY_BYTES",
    "DatasetFormatError",
    "read_npy",
    "load_npz",
    "unpickle_entry",
    "check_array",
    "finite_float32",
    "check_mapping",
    "check_metadata",
    "read_positions_3d",
    "read_positions_2d",
]

#: The most bytes one ``.npy`` file or ``.npz`` member may hold uncompressed (the whole
#: Human3.6M 3D file holds about 0.4 GB); CONVFORMER_FAST_MAX_ARRAY_BYTES overrides it.
MAX_ARRAY_BYTES = int(os.environ.get("CONVFORMER_FAST_MAX_ARRAY_BYTES", 4 << 30))


class DatasetFormatError(UserError):
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


# ---------------------------------------------------------------------------------------
# Reading .npy / .npz without trusting them
# ---------------------------------------------------------------------------------------

class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: numpy's own pickles only pass it to
    ``_reconstruct``; calling it (``ndarray(shape)`` would allocate any shape) is refused."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray called directly (only numpy's "
                                     "_reconstruct may use it)")


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct``: always an empty array, sized later by ``__setstate__``
    (which checks the data against the shape)."""
    if subtype is not _NdarrayToken:
        raise pickle.UnpicklingError(f"_reconstruct of {subtype!r}, expected numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _scalar(dtype, data=None):
    """numpy's ``scalar``: a numpy scalar from its raw bytes (checked against the dtype)."""
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"scalar of {type(dtype).__name__}, expected a dtype")
    if dtype.hasobject:
        return data
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"scalar of dtype {dtype} from {type(data).__name__} data")
    return np.frombuffer(data, dtype=dtype)[0]


_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): np.dtype,
    **{(module, "_reconstruct"): _reconstruct
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only containers, strings, numbers and numpy arrays / scalars / dtypes."""

    def find_class(self, module, name):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays, "
                                         "dicts, lists and numbers are read)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _check_pickle(stream) -> None:
    """Parse a pickle without running it, refusing what would make the C unpickler allocate
    far more than the stream holds: it allocates the size a length prefix declares before
    reading (pickletools reads only what is there and fails on a prefix that is too long),
    and grows its memo table to the largest index stored into it (``LONG_BINPUT
    2147483647`` means a 16 GB table), so an index may not exceed the opcodes seen so far."""
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        if opcode.name in _MEMO_PUTS and not 0 <= int(arg) <= count:
            raise pickle.UnpicklingError(f"memo index {arg} at opcode {count} (a pickle stores at "
                                         "most one memo entry per opcode)")


def _array_from_npy_bytes(buffer, path, key: Optional[str], description: str,
                          allow_objects: bool) -> np.ndarray:
    """Parse one ``.npy`` image held in ``buffer`` (a bytearray: the array shares it)."""
    view = memoryview(buffer)
    head = io.BytesIO(bytes(view[:min(len(view), 65536 + 16)]))
    try:
        with warnings.catch_warnings():  # numpy's notes on Python 2 headers, odd escapes
            warnings.simplefilter("ignore")
            version = np.lib.format.read_magic(head)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(head)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(head)
            else:
                raise ValueError(f".npy format version {version} is not read here (1.0 and 2.0 are)")
    except Exception as exc:
        raise DatasetFormatError(path, key, f"not a NumPy array: {_reason(exc)}", description) from None
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise DatasetFormatError(path, key, f"its header declares shape {shape}", description)
    data = view[head.tell():]
    count = int(np.prod(shape, dtype=object))
    if dtype.hasobject:
        if not allow_objects:
            raise DatasetFormatError(path, key, "holds pickled Python objects (dtype object), which "
                                     "are not loaded", description)
        try:
            stream = io.BytesIO(data)
            with warnings.catch_warnings():  # deprecation notes on odd escapes and dtype arguments
                warnings.simplefilter("ignore")
                _check_pickle(stream)
                stream.seek(0)
                array = _ArrayUnpickler(stream).load()
        except MemoryError:
            raise DatasetFormatError(path, key, "its pickle does not fit in memory", description) from None
        except Exception as exc:  # a damaged or foreign pickle
            raise DatasetFormatError(path, key, f"unreadable pickle: {_reason(exc)}", description) from None
        if not isinstance(array, np.ndarray) or array.shape != shape:
            raise DatasetFormatError(path, key, f"its pickle holds a {type(array).__name__}, not the "
                                     f"declared array of shape {shape}", description)
        return array
    needed = count * dtype.itemsize
    if needed != len(data):
        raise DatasetFormatError(path, key, f"its header declares {shape} {dtype} ({needed} bytes) but "
                                 f"{len(data)} bytes follow (truncated or damaged)", description)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _check_file(path, description: str) -> int:
    """The size of ``path``, or a DatasetFormatError when it is not a readable file."""
    if os.path.isdir(path):
        raise DatasetFormatError(path, None, "is a directory", description)
    if not os.path.isfile(path):
        raise DatasetFormatError(path, None, "file not found", description)
    size = os.path.getsize(path)
    if size == 0:
        raise DatasetFormatError(path, None, "the file is empty (0 bytes)", description)
    return size


def read_npy(path, description: str = "a NumPy .npy array") -> np.ndarray:
    """Read a ``.npy`` file of numbers (never a pickle); the sizes are checked before reading.

    Raises:
        DatasetFormatError: a missing, empty, truncated, foreign or pickled file, naming it.
    """
    path = os.fspath(path)
    size = _check_file(path, description)
    if size > MAX_ARRAY_BYTES + 65536:
        raise DatasetFormatError(path, None, f"{size} bytes, more than the {MAX_ARRAY_BYTES} read "
                                 "(CONVFORMER_FAST_MAX_ARRAY_BYTES)", description)
    try:
        with open(path, "rb") as handle:
            buffer = bytearray(size)
            handle.readinto(buffer)
    except OSError as exc:
        raise DatasetFormatError(path, None, f"cannot be read ({exc.strerror or exc})", description) from None
    if buffer.startswith(b"PK"):
        raise DatasetFormatError(path, None, "a zip archive (an .npz?), not a single .npy array",
                                 description)
    return _array_from_npy_bytes(buffer, path, None, description, allow_objects=False)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path, key: str,
                 description: str) -> Any:
    if info.file_size > MAX_ARRAY_BYTES:
        raise DatasetFormatError(path, key, f"declares {info.file_size} bytes uncompressed, more than "
                                 f"the {MAX_ARRAY_BYTES} read (a zip bomb? CONVFORMER_FAST_MAX_ARRAY_BYTES "
                                 "raises the limit)", description)
    try:
        # Grown as the data arrives (not allocated at the declared size, which may lie); zipfile
        # never inflates past the declared size and checks the CRC32 when it reaches the end.
        buffer = bytearray()
        with archive.open(info) as member:
            while chunk := member.read(1 << 20):
                buffer += chunk
        if len(buffer) != info.file_size:
            raise ValueError(f"{len(buffer)} bytes, the zip directory says {info.file_size}")
    except MemoryError:
        raise DatasetFormatError(path, key, f"{info.file_size} bytes do not fit in memory", description) from None
    except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, encryption, ...
        raise DatasetFormatError(path, key, f"damaged zip member: {_reason(exc)}", description) from None
    return unpickle_entry(_array_from_npy_bytes(buffer, path, key, description, allow_objects=True))


def load_npz(path, required_keys: Iterable[str], description: str) -> dict[str, Any]:
    """Open a ``.npz`` file (pickled dicts read safely, see the module docstring) and check
    its top-level keys.

    Args:
        path: file to read.
        required_keys: keys that must be present.
        description: what the file should be, used in error messages
            (e.g. ``"a VideoPose3D Human3.6M 3D file"``).

    Returns:
        A plain dict of every stored key -> value (0-d object arrays, i.e.
        pickled dicts, are returned unwrapped with ``.item()``).

    Raises:
        DatasetFormatError: the file is missing, unreadable, damaged, too large, or
        lacks a key.
    """
    path = os.fspath(path)
    required = list(required_keys)
    keys_text = ", ".join(repr(k) for k in required)
    expected = f"{description} (.npz with keys {keys_text})"
    _check_file(path, expected)
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # BadZipFile, a damaged directory, ...
        with open(path, "rb") as handle:
            head = handle.read(6)
        what = ("a single .npy array, not an .npz archive" if head == b"\x93NUMPY"
                else f"not a zip archive ({_reason(exc)})")
        raise DatasetFormatError(path, None, what, expected) from None
    with archive:
        members = {}
        for info in archive.infolist():
            members[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = info
        missing = [k for k in required if k not in members]
        if missing:
            raise DatasetFormatError(path, repr(missing[0]), f"key missing (file has {sorted(members)})",
                                     f"{description} with keys {keys_text}")
        return {key: _read_member(archive, info, path, repr(key), expected)
                for key, info in members.items()}


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
        ndim: required number of dimensions (the first counts frames: at least one).
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
        if not isinstance(value, (list, tuple)):
            raise DatasetFormatError(path, key, f"got {type(value).__name__}", expected)
        try:
            value = np.asarray(value)
        except Exception:  # ragged nesting
            raise DatasetFormatError(path, key, "got a ragged nested list", expected) from None
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
    if value.shape[0] == 0:
        raise DatasetFormatError(path, key, f"got shape {value.shape} (no frame)", expected)
    return value


def finite_float32(path, key: str, value: np.ndarray, what: str) -> np.ndarray:
    """``value`` as a contiguous float32 array, refusing NaN and infinite entries (also those
    that only the cast to float32 makes infinite), naming the first."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(value, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetFormatError(path, key, f"got {int(bad.sum())} NaN or infinite values (the first "
                                 f"at index {first}; float32 holds up to 3.4e38)",
                                 f"an array {what} of finite numbers")
    return out


def check_mapping(path, key: str, value, expected: str) -> dict:
    """Check that ``value`` is a non-empty dict with string keys (every dict of these
    formats is keyed by names); return it."""
    if not isinstance(value, dict):
        raise DatasetFormatError(path, key, f"got {type(value).__name__}", expected)
    if not value:
        raise DatasetFormatError(path, key, "got an empty dict", expected)
    odd = next((k for k in value if not isinstance(k, str)), None)
    if odd is not None:
        raise DatasetFormatError(path, key, f"got a key {odd!r} of type {type(odd).__name__}",
                                 f"{expected}, keyed by names (str)")
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
    if not isinstance(metadata["layout_name"], str):
        raise DatasetFormatError(path, "metadata['layout_name']", f"got {_short(metadata['layout_name'])}",
                                 "the name of the joint layout (a str such as 'h36m' or 'coco')")
    num = metadata["num_joints"]
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num <= 0:
        raise DatasetFormatError(path, "metadata['num_joints']", f"got {num!r}",
                                 "a positive joint count")
    sym = metadata["keypoints_symmetry"]
    try:
        left, right = (list(_index(i) for i in side) for side in sym)
    except (TypeError, ValueError, OverflowError):
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


def _short(value) -> str:
    """A value for an error message: its type, and its repr when that is short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else f"a {type(value).__name__}"


def _index(value) -> int:
    """An integer joint index (an int or an integral float such as 3.0; not a bool)."""
    if isinstance(value, (bool, np.bool_, complex, np.complexfloating)) or float(value) != int(value):
        raise ValueError(f"{value!r} is not an integer index")
    return int(value)


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
            what = f"(frames, {jtext}, 3) in metres"
            arr = check_array(path, f"{key}[{action!r}]", positions, ndim=3, last=3,
                              joints=joints, what=what)
            out[subject][action] = finite_float32(path, f"{key}[{action!r}]", arr, what)
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
                arrays.append(finite_float32(path, ckey, arr[..., :2], f"(frames, {joints}, 2) in pixels"))
            out[subject][action] = arrays
    if wanted is not None:
        _missing_subjects(path, "positions_2d", wanted, out, data)
    return out, metadata
