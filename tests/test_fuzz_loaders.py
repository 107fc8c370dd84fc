"""Every file loader under fuzzing: a damaged, foreign or hostile file ends in the loader's own
error (a :class:`~convformer_fast.errors.UserError` naming the file) or in a correct load,
never another exception, a crash, a hang or unbounded memory.

Loaders (targets): the ``.npy`` keypoints of ``infer``; ``data_2d_custom`` (``infer``);
Human3.6M 3D and 2D and HumanEva 3D and 2D (each fuzzed while its partner file is
valid, through the whole ``load_h36m`` / ``load_humaneva``, camera transforms included);
MPI-INF-3DHP; checkpoints (``load_checkpoint`` then ``model_from_checkpoint`` and a
forward pass of the model).

Inputs, drawn by hypothesis from a small valid seed file per target:

* structural: the seed's content (the pickled dicts of the VideoPose3D formats, a
  checkpoint's dict) with 1-3 entries replaced, removed or added, written back with
  ``np.savez`` / ``torch.save``: arrays of other dtypes (object, int, bool, complex,
  float16, strings, datetimes, big-endian, structured), other shapes (0-d, empty,
  wrong joints), NaN/Inf/1e38/1e300 values, zero-stride and non-contiguous tensors,
  None, strings, bytes, ints, nested or empty containers, non-string keys, and objects
  whose pickle needs a global (``set``, ``complex``, ``range``);
* members: one member of the zip container (``.npy`` header, pickle or data record)
  mutated byte-wise and zipped again with a valid CRC, so the parsers behind the
  container see the garbage;
* bytes: the file itself flipped, overwritten, truncated, cut or extended;
* raw: random bytes, an empty file, and the other targets' seed files.

Hand-made hostile files (:func:`test_hostile_files`): pickles that would run code,
zip bombs (declared huge; declared small but inflating to 50 MB), headers declaring
10^12 elements, a pickle memo index of 2^31 (16 GB in the C unpickler), zero-stride tensors declaring 10^12 elements, a million-block model,
compressed checkpoint records; each checked for the clear error and a small peak memory.

Budgets: ``CONVFORMER_FAST_FUZZ_EXAMPLES`` examples per target (default 300: ~1 min of
the CI run on 2 cores); set it to 10000 for the long mode. The seed of the draws is
pinned in CI (the same files every run) and random in the long mode
(``CONVFORMER_FAST_FUZZ_SEED`` pins one). Each example runs under a 20 s watchdog and an
address-space limit of 2 GiB more than the process holds (a runaway allocation fails
the test instead of waking the OOM killer); numpy/Python allocations may peak at 64 MiB.

Regressions: every input that once failed is kept as a file under
``tests/fuzz_regressions/<target>/`` and replayed by :func:`test_kept_failures`.
``CONVFORMER_FAST_FUZZ_SAVE=<folder>`` makes a run write each failing input there
(hypothesis's shrunk minimal one last): copy the smallest into the regression folder
with the fix. docs/cli.md lists the failures found so far.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import os
import pickle
import resource
import signal
import tracemalloc
import zipfile
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from convformer_fast.errors import UserError
from convformer_fast.pose.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from convformer_fast.pose.data import HUMANEVA_15, write_synthetic_h36m
from convformer_fast.pose.data import formats
from convformer_fast.pose.data.custom import write_custom_2d
from convformer_fast.pose.data.h36m import load_h36m
from convformer_fast.pose.data.humaneva import load_humaneva
from convformer_fast.pose.data.mpi3dhp import load_mpi3dhp_test
from convformer_fast.pose.infer import load_videos
from convformer_fast.fast import ConvFormerFast

TESTS_DIR = Path(__file__).resolve().parent
REGRESSIONS = TESTS_DIR / "fuzz_regressions"
EXAMPLES = int(os.environ.get("CONVFORMER_FAST_FUZZ_EXAMPLES", "300"))
SAVE_FAILURES = os.environ.get("CONVFORMER_FAST_FUZZ_SAVE")
LONG = EXAMPLES > 1000 or "CONVFORMER_FAST_FUZZ_SEED" in os.environ
FUZZ_SEED = int(os.environ.get("CONVFORMER_FAST_FUZZ_SEED", "20261201"))
WATCHDOG_S = 20
#: A load may not hold more than this in numpy / Python allocations at its peak (the seed
#: files are a few kB; a hostile file must not make the loader allocate what it declares).
PEAK_BYTES = 64 << 20
#: ... and may not grow the address space by more than this (torch's allocations included).
ADDRESS_SPACE_BYTES = 2 << 30


# ---------------------------------------------------------------------------------------
# Seed files and targets
# ---------------------------------------------------------------------------------------

def _npz(path, content: dict) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **content)


def _npz_content(path) -> dict:
    return formats.load_npz(path, [], "seed")


RNG = np.random.default_rng(0)
KEYPOINTS = np.concatenate([RNG.uniform(0, 640, (12, 17, 2)), RNG.uniform(0, 1, (12, 17, 1))], -1)
KEYPOINTS = KEYPOINTS.astype(np.float32)
HE_SYMMETRY = [list(HUMANEVA_15.joints_left), list(HUMANEVA_15.joints_right)]


def _tiny_model() -> ConvFormerFast:
    torch.manual_seed(0)
    return ConvFormerFast(num_frames=3, num_joints=5, embed_dim=4, spatial_depth=1, temporal_depth=1,
                          kernel_sizes=(3, 1), num_heads=2, backend="torch")


@dataclass
class Target:
    name: str
    ext: str
    #: write the target's valid seed file into a folder; returns (path, content)
    make_seed: Callable[[Path], tuple[Path, Any]]
    #: write (possibly mutated) content to a path
    write: Callable[[Path, Any], None]
    #: load the file (partner files live in the folder); returns the loaded result
    load: Callable[[Path, Path], Any]
    #: check a successful load is correct
    check: Callable[[Any], None]
    #: measure the peak of numpy / Python allocations (tracemalloc does not see torch's)
    trace_memory: bool = True


def _check_sequences(result) -> None:
    sequences = result[0] if isinstance(result, tuple) else result
    assert sequences, "a load without a sequence"
    for seq in sequences:
        assert seq.num_frames >= 1
        assert np.isfinite(seq.inputs_2d).all(), "non-finite 2D input loaded"
        frames = seq.valid if seq.valid is not None else slice(None)
        assert np.isfinite(seq.target_3d[frames]).all(), "non-finite 3D target loaded"


def _check_videos(videos) -> None:
    assert videos
    for video in videos:
        assert video["inputs"].dtype == np.float32 and video["inputs"].shape[1:] == (17, 2)
        assert video["inputs"].shape[0] >= 1 and np.isfinite(video["inputs"]).all()


def _check_model(model) -> None:
    x = torch.zeros(1, model.num_frames, model.num_joints, 2)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all(), "the loaded model computes NaN"


def _video_args(path, **kw) -> Namespace:
    return Namespace(keypoints=str(path), layout="auto", width=640.0, height=480.0, normalized=False,
                     min_confidence=0.3, video=None, **kw)


def _seed_npy(folder):
    path = folder / "keypoints.npy"
    np.save(path, KEYPOINTS)
    return path, KEYPOINTS


def _seed_custom(folder):
    path = folder / "data_2d_custom_fuzz.npz"
    write_custom_2d(path, {"walk": (KEYPOINTS, 640, 480), "short": (KEYPOINTS[:2, :, :2], 640, 480)})
    return path, _npz_content(path)


def _seed_h36m(folder, which):
    p3, p2 = write_synthetic_h36m(folder, subjects=["S1"], actions=["Walking"], num_frames=6)
    path = Path(p3 if which == "3d" else p2)
    return path, _npz_content(path)


def _seed_humaneva(folder, which):
    frames = 6
    world = (RNG.normal(scale=0.3, size=(frames, 15, 3)) + [0, 0, 1]).astype(np.float32)
    p3, p2 = folder / "data_3d_humaneva15.npz", folder / "data_2d_humaneva15_gt.npz"
    _npz(p3, {"positions_3d": {"Train/S1": {"Walk 1 chunk0": world}}})
    kp = RNG.uniform(0, 640, (frames, 15, 2)).astype(np.float32)
    _npz(p2, {"positions_2d": {"Train/S1": {"Walk 1 chunk0": [kp, None, kp]}},
              "metadata": {"layout_name": "humaneva15", "num_joints": 15, "keypoints_symmetry": HE_SYMMETRY}})
    path = p3 if which == "3d" else p2
    return path, _npz_content(path)


def _seed_3dhp(folder):
    frames = 6
    data = {"TS1": {"data_2d": RNG.uniform(0, 2048, (frames, 17, 2)).astype(np.float32),
                    "data_3d": RNG.normal(scale=300, size=(frames, 1, 17, 3)).astype(np.float32),
                    "valid": np.array([1, 1, 0, 1, 1, 1], dtype=np.uint8)},
            "TS5": {"data_2d": RNG.uniform(0, 1080, (frames, 17, 2)).astype(np.float32),
                    "data_3d": RNG.normal(scale=300, size=(frames, 17, 3)).astype(np.float32),
                    "valid": np.ones(frames, bool), "width": np.array(1920), "height": 1080}}
    path = folder / "data_test_3dhp.npz"
    _npz(path, {"data": data})
    return path, _npz_content(path)


def _seed_checkpoint(folder):
    model = _tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 5, 2)).sum().backward()
    optimizer.step()
    path = folder / "last.pt"
    save_checkpoint(path, model, optimizer, epoch=1, metrics={"best_test_mpjpe_mm": 50.0}, args={"lr": 1e-3})
    return path, torch.load(path, weights_only=True)


#: name -> (bytes, content) of each target's seed file, filled by the workspace fixture.
SEEDS: dict[str, tuple[bytes, Any]] = {}


def _partner(folder: Path, name: str) -> str:
    return str(folder / "partners" / name)


TARGETS = {t.name: t for t in [
    Target("npy_keypoints", ".npy", _seed_npy, lambda p, c: np.save(p, c, allow_pickle=True),
           lambda p, folder: load_videos(_video_args(p)), _check_videos),
    Target("custom_2d", ".npz", _seed_custom, _npz,
           lambda p, folder: load_videos(_video_args(p)), _check_videos),
    Target("h36m_3d", ".npz", lambda f: _seed_h36m(f, "3d"), _npz,
           lambda p, folder: load_h36m(p, _partner(folder, "data_2d_h36m_gt.npz")), _check_sequences),
    Target("h36m_2d", ".npz", lambda f: _seed_h36m(f, "2d"), _npz,
           lambda p, folder: load_h36m(_partner(folder, "data_3d_h36m.npz"), p), _check_sequences),
    Target("humaneva_3d", ".npz", lambda f: _seed_humaneva(f, "3d"), _npz,
           lambda p, folder: load_humaneva(p, _partner(folder, "data_2d_humaneva15_gt.npz")), _check_sequences),
    Target("humaneva_2d", ".npz", lambda f: _seed_humaneva(f, "2d"), _npz,
           lambda p, folder: load_humaneva(_partner(folder, "data_3d_humaneva15.npz"), p), _check_sequences),
    Target("mpi3dhp", ".npz", _seed_3dhp, _npz,
           lambda p, folder: load_mpi3dhp_test(p), _check_sequences),
    Target("checkpoint", ".pt", _seed_checkpoint, lambda p, c: torch.save(c, p),
           lambda p, folder: model_from_checkpoint(load_checkpoint(p), backend="torch"), _check_model,
           trace_memory=False),
]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the examples are tiny, and OpenMP's fork-join on a busy machine
    costs more than they do (as in test_reliability.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, one_thread):
    """A folder with each target's seed file, bytes and content (``seeds``) and the valid
    partner files the two-file loaders read next to the fuzzed one (``partners/``)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "partners").mkdir()
    for target in TARGETS.values():
        folder = root / "seeds" / target.name
        folder.mkdir(parents=True)
        path, content = target.make_seed(folder)
        for sibling in folder.iterdir():  # the other file of a pair becomes a partner
            if sibling != path:
                sibling.replace(root / "partners" / sibling.name)
        SEEDS[target.name] = (path.read_bytes(), content)
        assert check_outcome(target, path, root) == "ok"  # the seed itself loads
    return root, SEEDS


# ---------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no loader's ``except`` catches it."""


def _alarm(signum, frame):
    raise Hang(f"the loader ran for more than {WATCHDOG_S} s")


@contextlib.contextmanager
def address_space_limit(extra: int):
    """Allow the process at most ``extra`` more bytes of address space (Linux): an
    allocation beyond it raises MemoryError here instead of calling the OOM killer on a
    shared machine. (The fuzzer once found a pickle that asked for 16 GB.)"""
    try:
        with open("/proc/self/statm") as handle:
            size = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError, AttributeError):
        yield
        return
    limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_outcome(target: Target, path: Path, folder: Path) -> str:
    """Load ``path``; ``'error'`` for the loader's own error naming the file, ``'ok'`` for a
    correct load; anything else fails (and is saved with CONVFORMER_FAST_FUZZ_SAVE)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    if target.trace_memory:
        tracemalloc.start()
    try:
        try:
            with address_space_limit(ADDRESS_SPACE_BYTES):
                result = target.load(path, folder)
        except UserError as error:
            assert path.name in str(error), f"the error does not name the file: {error}"
            assert not isinstance(error.__context__, MemoryError), f"ran out of memory: {error}"
            result = error
        peak = tracemalloc.get_traced_memory()[1] if target.trace_memory else 0
        assert peak < PEAK_BYTES, f"peak memory {peak / 2**20:.0f} MiB"
        if isinstance(result, UserError):
            return "error"
        target.check(result)
        return "ok"
    except BaseException:
        if SAVE_FAILURES:
            _save_failure(target, path)
        raise
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _save_failure(target: Target, path: Path) -> None:
    data = path.read_bytes()
    folder = Path(SAVE_FAILURES) / target.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{len(data):08d}-{hashlib.sha1(data).hexdigest()[:12]}{target.ext}").write_bytes(data)


# ---------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
FILLS = st.sampled_from([0.0, 1.0, -1.0, 0.3, 1e-30, 3e38, -3e38, 1e300, NAN, INF, -INF, 2.0**31, -2.0**63])
DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint8", "bool", "complex64",
                          "object", "<U2", "datetime64[s]", ">f4", "V4", "f4,i4"])


@st.composite
def odd_arrays(draw, like=None):
    """Arrays of any dtype; shapes near ``like``'s (one size changed) or anything small."""
    if like is not None and hasattr(like, "shape") and draw(st.booleans()):
        shape = list(like.shape)
        if shape and draw(st.booleans()):
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(0, 20))
    else:
        shape = draw(st.lists(st.integers(0, 8), max_size=4))
    if math.prod(shape) > 20000:
        shape = shape[:1]
    dtype = np.dtype(draw(DTYPES))
    fill = draw(FILLS)
    base = (np.asarray(like, dtype=np.float64) if like is not None and hasattr(like, "shape")
            and list(np.shape(like)) == shape and np.asarray(like).dtype.kind in "fiu"
            else np.zeros(shape))
    with np.errstate(all="ignore"):
        values = base.copy()
        if values.size:
            where = draw(st.sampled_from(["all", "one", "none"]))
            if where == "all":
                values[...] = fill
            elif where == "one":
                values.reshape(-1)[draw(st.integers(0, values.size - 1))] = fill
        try:
            return values.astype(dtype)
        except (TypeError, ValueError, OverflowError):
            return np.zeros(shape, dtype=dtype)


def odd_values(like=None):
    plain = st.sampled_from([None, True, 0, -5, 10**20, 1.5, NAN, INF, "text", "", b"bytes", [], {}, (),
                             [1, 2], [[1, 2], [3]], {"x": None}, {1: 2}, (1, "a"), np.float64(NAN),
                             np.int64(7), {3}, complex(1, 2), range(3)])
    return st.one_of(plain, odd_arrays(like))


def odd_tensors(like=None):
    @st.composite
    def tensors(draw):
        shape_of = np.zeros(tuple(like.shape)) if isinstance(like, torch.Tensor) else None  # any dtype
        array = draw(odd_arrays(shape_of))
        if array.dtype.kind not in "biufc" or array.dtype.byteorder == ">" or array.dtype.itemsize > 8:
            array = np.zeros(array.shape, np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        how = draw(st.sampled_from(["plain", "expanded", "transposed", "bfloat16"]))
        if how == "expanded" and tensor.dim() >= 1 and tensor.numel():
            tensor = tensor.reshape(-1)[:1].expand(*tensor.shape[:-1], 10**4)
        elif how == "transposed" and tensor.dim() >= 2:
            tensor = tensor.transpose(0, 1)
        elif how == "bfloat16" and tensor.is_floating_point():
            tensor = tensor.to(torch.bfloat16)
        return tensor
    return st.one_of(tensors(), odd_values(None))


def _paths(content, prefix=()) -> list[tuple]:
    """Every key path into nested dicts / lists / tuples (a leaf or a container)."""
    out = []
    items = (content.items() if isinstance(content, dict)
             else enumerate(content) if isinstance(content, (list, tuple)) else ())
    for key, value in items:
        out.append(prefix + (key,))
        out += _paths(value, prefix + (key,))
    return out


def _get(content, path):
    for key in path:
        content = content[key]
    return content


def _apply(content, path, op, value=None, new_key=None):
    """Replace, delete or add at ``path`` (tuples are rebuilt); silently skips a path that an
    earlier operation removed."""
    try:
        parent = _get(content, path[:-1])
        key = path[-1]
        if isinstance(parent, tuple):
            items = list(parent)
            if op == "delete":
                del items[key]
            else:
                items[key] = value
            _apply(content, path[:-1], "replace", tuple(items))
        elif op == "replace":
            parent[key] = value
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[new_key] = value
        elif op == "add" and isinstance(parent, list):
            parent.append(value)
    except (KeyError, IndexError, TypeError, ValueError):
        pass


@st.composite
def structural(draw, name: str):
    target, content = TARGETS[name], SEEDS[name][1]
    if target.name == "npy_keypoints":
        return draw(odd_arrays(content))
    content = copy.deepcopy(content)
    paths = _paths(content)
    values = odd_tensors if target.name == "checkpoint" else odd_values
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        try:
            like = _get(content, path)
        except (KeyError, IndexError, TypeError, ValueError):
            like = None
        new_key = draw(st.sampled_from(["extra", "custom", "S1", 5, ("a",)]))
        _apply(content, path, op, draw(values(like)), new_key)
    return content


def _mutate_bytes(data: bytes, ops) -> bytes:
    data = bytearray(data)
    for op, where, arg in ops:
        pos = where % (len(data) + 1)
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << (arg % 8)
        elif op == "set" and pos < len(data):
            data[pos] = arg % 256
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos:pos + 1 + arg % 64]
        elif op == "insert":
            data[pos:pos] = bytes([arg % 256]) * (1 + arg % 16)
        elif op == "duplicate":
            data[pos:pos] = data[pos:pos + 1 + arg % 64]
    return bytes(data)


BYTE_OPS = st.lists(st.tuples(st.sampled_from(["flip", "set", "truncate", "delete", "insert", "duplicate"]),
                              st.integers(0, 2**20), st.integers(0, 2**16)), min_size=1, max_size=4)


def _rezip_member(data: bytes, member: int, ops, deflate: bool) -> bytes:
    """The zip container ``data`` with one member's bytes mutated and every CRC valid."""
    source = zipfile.ZipFile(io.BytesIO(data))
    infos = source.infolist()
    chosen = infos[member % len(infos)]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as archive:
        for info in infos:
            body = source.read(info)
            if info is chosen:
                body = _mutate_bytes(body, ops)
            archive.writestr(info.filename, body)
    return out.getvalue()


def inputs(name: str):
    """(kind, file bytes or content) for one example of target ``name`` (its seed and the
    other seeds are looked up in SEEDS, which keeps hypothesis's reports short)."""
    ext = TARGETS[name].ext

    def seed_bytes():
        return SEEDS[name][0]

    def others():
        return [b for n, (b, _) in sorted(SEEDS.items()) if n != name] + [b"", b'{"config": 1}']

    members = st.builds(lambda m, ops, deflate: _rezip_member(seed_bytes(), m, ops, deflate and ext != ".pt"),
                        st.integers(0, 50), BYTE_OPS, st.booleans())
    return st.one_of(
        st.tuples(st.just("structural"), structural(name)),
        st.tuples(st.just("structural"), structural(name)),
        st.tuples(st.just("bytes"), members if ext != ".npy" else BYTE_OPS.map(
            lambda ops: _mutate_bytes(seed_bytes(), ops))),
        st.tuples(st.just("bytes"), BYTE_OPS.map(lambda ops: _mutate_bytes(seed_bytes(), ops))),
        st.tuples(st.just("bytes"), st.one_of(st.binary(max_size=2048),
                                              st.integers(0, len(TARGETS)).map(lambda i: others()[i]))),
    )


def _materialise(target: Target, path: Path, kind: str, value) -> None:
    if kind == "bytes":
        path.write_bytes(value)
        return
    try:
        target.write(path, value)
    except Exception:  # the mutated content cannot be saved at all: a raw file instead
        path.write_bytes(pickle.dumps(value, protocol=2) if _picklable(value) else b"")


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------

def _fuzz_settings(test):
    test = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), print_blob=True)(test)
    return test if LONG and "CONVFORMER_FAST_FUZZ_SEED" not in os.environ else seed(FUZZ_SEED)(test)


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_loader(name, workspace, tmp_path):
    root, _ = workspace
    target = TARGETS[name]
    path = tmp_path / f"fuzzed_{name}{target.ext}"
    outcomes = {"ok": 0, "error": 0}

    @_fuzz_settings
    @given(inputs(name))
    def fuzz(example):
        kind, value = example
        _materialise(target, path, kind, value)
        outcomes[check_outcome(target, path, root)] += 1

    fuzz()
    print(f"{name}: {sum(outcomes.values())} inputs, {outcomes['ok']} loaded, {outcomes['error']} refused")
    assert outcomes["error"] > 0  # the fuzzer reached the loader's checks


def _kept_failures():
    return sorted((p.parent.name, p) for p in REGRESSIONS.glob("*/*") if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("name, path", _kept_failures(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_kept_failures(name, path, workspace, tmp_path):
    """Every input that once broke a loader now loads or is refused with the loader's error."""
    root, _ = workspace
    target = TARGETS[name]
    copy_ = tmp_path / f"kept_{name}{target.ext}"
    copy_.write_bytes(path.read_bytes())
    check_outcome(target, copy_, root)


# ---------------------------------------------------------------------------------------
# Hand-made hostile files
# ---------------------------------------------------------------------------------------

MARKER_ENV = "CONVFORMER_FAST_FUZZ_MARKER"


class RunsCode:
    """Unpickling this writes a marker file: a loader that unpickled it ran foreign code."""

    def __reduce__(self):
        return (exec, (f"open({os.environ[MARKER_ENV]!r}, 'w').write('ran')",))


def _zip_bytes(members: dict[str, bytes], deflate=True) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return out.getvalue()


def _npy_header(shape, descr="<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _lying_zip(body: bytes, declared: int) -> bytes:
    """One deflated member whose zip directory declares ``declared`` uncompressed bytes."""
    data = bytearray(_zip_bytes({"positions_3d.npy": body}))
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = archive.infolist()[0]
    size = len(body).to_bytes(4, "little")
    for start in (info.header_offset, archive.start_dir):  # local header, then central directory
        at = data.index(size, start)
        data[at:at + 4] = declared.to_bytes(4, "little")
    return bytes(data)


def _object_npy(payload) -> bytes:
    out = io.BytesIO()
    np.save(out, np.array(payload, dtype=object), allow_pickle=True)
    return out.getvalue()


def _object_npz(payload) -> bytes:
    return _zip_bytes({"positions_3d.npy": _object_npy(payload)})


def _checkpoint_bytes(state) -> bytes:
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()


def _hostile_cases():
    model = _tiny_model()
    state = {"format": 1, "kind": "convformer_fast.pose", "config": dict(model.config),
             "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    state["config"]["kernel_sizes"] = list(state["config"]["kernel_sizes"])
    strided = copy.deepcopy(state)
    strided["model"]["temporal_pos_embed"] = torch.zeros(1).expand(1, 10**6, 10**6)
    far_block = copy.deepcopy(state)
    far_block["model"]["temporal_blocks.1000000.norm1.weight"] = torch.ones(20)
    nan_weight = copy.deepcopy(state)
    nan_weight["model"]["head.1.bias"][0] = NAN
    plain = _checkpoint_bytes(state)
    rezipped = zipfile.ZipFile(io.BytesIO(plain))
    compressed = _zip_bytes({i.filename: rezipped.read(i) for i in rezipped.infolist()}, deflate=True)
    zeros = np.zeros(50 * 2**20 // 8)
    npy_zeros = io.BytesIO()
    np.save(npy_zeros, zeros)
    return [  # target, bytes, expected message (regex)
        ("npy_keypoints", lambda: _npy_header((10**12, 17, 3)) + b"\0" * 64, r"declares \(1000000000000, 17, 3\)"),
        ("npy_keypoints", lambda: _npy_header((4,), "|O") + pickle.dumps(RunsCode(), protocol=2),
         "pickled Python objects"),
        ("npy_keypoints", lambda: b"x,y\n1,2\n", "not a NumPy array"),
        ("npy_keypoints", lambda: b"", "empty"),
        ("h36m_3d", lambda: _object_npz(RunsCode()), r"refused to load builtins\.exec"),
        ("h36m_3d", lambda: _zip_bytes({"positions_3d.npy": _npy_header((10**12, 32, 3)) + b"\0" * 64}),
         r"declares \(1000000000000, 32, 3\)"),
        ("h36m_3d", lambda: _zip_bytes({"positions_3d.npy": npy_zeros.getvalue()}), "zip bomb"),
        ("h36m_3d", lambda: _lying_zip(npy_zeros.getvalue(), 1000), "damaged zip member"),
        ("custom_2d", lambda: _zip_bytes({"positions_2d.npy": _object_npy(RunsCode()),
                                          "metadata.npy": _object_npy({})}), r"refused to load builtins\.exec"),
        ("h36m_3d", lambda: _zip_bytes({"positions_3d.npy": _npy_header((), "|O") + b"\x80\x02Nr\xfe\xff\xff\x7f."}),
         "memo index 2147483646"),  # LONG_BINPUT 2^31 - 2: the C unpickler's memo would take 16 GB
        ("checkpoint", lambda: pickle.dumps(RunsCode(), protocol=2), r"pickled Python objects \(exec\)"),
        ("checkpoint", lambda: _checkpoint_bytes({"model": RunsCode()}), "pickled Python objects"),
        ("checkpoint", lambda: _checkpoint_bytes(strided), r"declares shape \(1, 1000000, 1000000\)"),
        ("checkpoint", lambda: _checkpoint_bytes(far_block), "blocks numbered"),
        ("checkpoint", lambda: _checkpoint_bytes(nan_weight), "NaN"),
        ("checkpoint", lambda: compressed, "is compressed"),
    ]


@pytest.mark.parametrize("index", range(16))
def test_hostile_files(index, workspace, tmp_path, monkeypatch):
    root, _ = workspace
    cases = _hostile_cases()
    assert len(cases) == 16
    name, make, message = cases[index]
    marker = tmp_path / "foreign-code-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    # The zip bomb holds 50 MB: a limit of 16 MB makes it one here.
    monkeypatch.setattr(formats, "MAX_ARRAY_BYTES", 16 << 20)
    target = TARGETS[name]
    path = tmp_path / f"hostile{target.ext}"
    path.write_bytes(make())
    with pytest.raises(UserError, match=message):
        target.load(path, root)
    assert check_outcome(target, path, root) == "error"  # also within the memory and time bounds
    assert not marker.exists(), "a loader unpickled a foreign object and ran its code"
