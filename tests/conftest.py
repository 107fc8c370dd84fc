"""Shared test helpers (configurations that hit edges, tolerances per dtype, comparisons,
threads) and the suite's checks on itself:

* **The build.** In CI (the ``CI`` environment variable set, as ``.ci/run`` is run) or with
  ``CONVFORMER_FAST_REQUIRE_BUILD=1``, the session stops before collecting anything when
  what this machine can build is missing (:func:`build_problems`): ``_C`` not loaded, the
  ``cpu``, ``cuda_emulated`` or ``triton`` backend unavailable, the CUDA kernels not in
  ``_C`` where the build rule (``convformer_fast/toolchain.py``: ``cuda_build``) says they
  are built, the ``cuda`` backend unavailable on a machine with a GPU. Outside CI such a
  checkout skips what it cannot run (a user without a compiler can still run the rest).
* **Skips.** Every skip is recorded with its reason (:data:`SKIPS`);
  ``tests/test_suite.py::test_skips_are_the_expected_ones`` runs last and fails on a skip
  that is not in its list (and on a listed one that ran), so a new silent skip fails CI.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

# Without a GPU the Triton kernels run through the interpreter, which triton reads when a
# kernel is defined: set it before anything imports convformer_fast.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import convformer_fast as cf  # noqa: E402
from convformer_fast import ops  # noqa: E402
from convformer_fast.toolchain import cuda_build  # noqa: E402
# The one oracle of every backend's projection: zero padding and every tap written out with
# unfold + einsum, no convolution routine (the kernels under test call ATen's convolution
# in places, so F.conv1d would compare ATen with itself).
from convformer_fast.ops.qkv_projection import reference as reference_qkv  # noqa: E402,F401

# Tolerances (rtol, atol) of a fast backend against eager, per dtype and kind, elementwise:
# |actual - expected| <= atol + rtol * |expected| (torch.testing.assert_close).
FORWARD_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}
GRAD_TOL = {torch.float32: (1e-3, 1e-4), torch.float64: (1e-8, 1e-10)}

# Small model configurations chosen to hit edges: odd T, J = 15 and 17, one kernel, mixed
# kernel sizes, one head, kernels longer than the axis they slide over.
MODEL_CONFIGS = {
    "t9_j17_k777": dict(num_frames=9, num_joints=17, embed_dim=16, kernel_sizes=(7, 7, 7), num_heads=8),
    "t7_j15_mixed": dict(num_frames=7, num_joints=15, embed_dim=8, kernel_sizes=(3, 5, 9), num_heads=4),
    "t5_j17_single": dict(num_frames=5, num_joints=17, embed_dim=8, kernel_sizes=(3,), num_heads=2),
    "t3_j5_onehead": dict(num_frames=3, num_joints=5, embed_dim=4, kernel_sizes=(11, 1), num_heads=1,
                          spatial_depth=1, temporal_depth=3),
    # >= ops.WINOGRAD_MIN_CHANNELS (64) frames: the cpu backend computes the temporal
    # projection with Winograd F(4, 7).
    "t129_j3_winograd": dict(num_frames=129, num_joints=3, embed_dim=4, kernel_sizes=(3, 7), num_heads=2,
                            spatial_depth=1, temporal_depth=1),
}

# Every backend that runs on CPU tensors here. In CI a missing one stops the session
# (build_problems) instead of shrinking this list.
FAST_BACKENDS = [name for name, info in cf.available_backends().items()
                 if info.available and name != "eager" and "cpu" in info.devices]


def assert_close(actual, expected, tol, what=""):
    rtol, atol = tol
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


@pytest.fixture
def exact_fp32():
    """fp32 without TF32 in cuDNN convolutions or cuBLAS matmuls (cuDNN allows it by
    default), so fp32 compares at fp32 tolerances; a test may switch TF32 on again, and the
    switches are restored afterwards.

    Saved and restored by hand, not with monkeypatch: torch serves
    ``torch.backends.cuda.matmul.allow_tf32`` through ``__getattr__``, which pytest 9.2's
    monkeypatch takes for an absent attribute and tries to delete on undo (AttributeError
    at every teardown)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = saved


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
    return request.param


def run_concurrently(worker, count: int) -> None:
    """Run ``worker`` on ``count`` threads at once and wait for all of them. An exception
    raised in a worker (a failed assertion included) is raised here, so a test fails when
    any of its threads does; the note says how many did."""
    errors: list[BaseException] = []

    def guarded():
        try:
            worker()
        except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
            errors.append(error)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        errors[0].add_note(f"raised in a worker thread; {len(errors)} of {count} workers failed")
        raise errors[0]


# --------------------------------------------------------------------------- the build

REQUIRE_BUILD_ENV_VAR = "CONVFORMER_FAST_REQUIRE_BUILD"


def build_required(environ=os.environ) -> bool:
    """CI (any ``CI`` value but empty, 0 or false) or CONVFORMER_FAST_REQUIRE_BUILD=1."""
    ci = environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or environ.get(REQUIRE_BUILD_ENV_VAR) == "1"


def build_problems() -> list[str]:
    """What this machine can build and run but this checkout lacks, one line each, naming
    what was expected and what was found."""
    problems = []
    if cf.EXTENSION_ERROR:
        problems.append(f"convformer_fast._C not usable in CI: {cf.EXTENSION_ERROR}")
    infos = cf.available_backends()
    required = ["cpu", "cuda_emulated"]
    # torch's Linux wheels depend on triton; elsewhere it is optional.
    if sys.platform == "linux":
        required.append("triton")
    cuda_wanted, why = cuda_build(torch.version.cuda)
    if cuda_wanted and torch.cuda.is_available():
        required.append("cuda")
    for name in required:
        if not infos[name].available:
            problems.append(f"backend {name!r} unavailable in CI: {infos[name].reason}")
    if cuda_wanted and not cf.EXTENSION_ERROR and not ops.cuda_kernels_built():
        problems.append(f"convformer_fast._C has no CUDA kernels, but the build rule says they are built "
                        f"here ({why}); rebuild with `pip install --no-build-isolation -e .`")
    return problems


def pytest_sessionstart(session):
    if not build_required():
        return
    problems = build_problems()
    if problems:
        pytest.exit("the build is incomplete (checked because CI or "
                    f"{REQUIRE_BUILD_ENV_VAR}=1 is set):\n  " + "\n  ".join(problems),
                    returncode=pytest.ExitCode.TESTS_FAILED)


# ------------------------------------------------------------------------------- skips

#: node id -> reason of every test skipped so far in this session.
SKIPS: dict[str, str] = {}
#: node ids of the tests that ran (passed, failed or skipped) so far in this session.
REPORTED: set[str] = set()
SKIP_CHECK = "tests/test_suite.py::test_skips_are_the_expected_ones"


def pytest_runtest_logreport(report):
    if report.when == "call" or report.skipped:
        REPORTED.add(report.nodeid)
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        SKIPS[report.nodeid] = reason.removeprefix("Skipped: ")


def pytest_collection_modifyitems(session, config, items):
    """The skip check runs last, when every other test has reported."""
    last = [item for item in items if item.nodeid == SKIP_CHECK]
    items[:] = [item for item in items if item.nodeid != SKIP_CHECK] + last
