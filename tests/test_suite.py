"""The test suite's checks on itself (tests/conftest.py): CI stops on an incomplete build,
threads' failures reach the test, and the skips on a machine without a GPU are exactly the
expected ones (that test runs last)."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import conftest
import convformer_fast as cf
from conftest import REPORTED, SKIP_CHECK, SKIPS, build_problems, build_required, run_concurrently
from convformer_fast.toolchain import cuda_build

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------- the build


def test_ci_stops_in_its_first_seconds_naming_what_is_missing(tmp_path):
    """``pytest`` in CI on a checkout whose _C cannot be loaded (here: switched off by the
    environment) exits non-zero before collecting a test, naming each missing backend and
    why. Without the check it used to pass, skipping whole modules."""
    env = dict(os.environ, CI="true", CONVFORMER_FAST_DISABLE_EXTENSION="1", PYTHONPATH=str(ROOT))
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_reference.py", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    reason = "convformer_fast._C disabled by CONVFORMER_FAST_DISABLE_EXTENSION=1"
    for line in (f"convformer_fast._C not usable in CI: {reason}",
                 f"backend 'cpu' unavailable in CI: {reason}",
                 f"backend 'cuda_emulated' unavailable in CI: {reason}"):
        assert line in out, out
    assert "passed" not in out and "collected" not in out, f"tests ran ({elapsed:.0f} s): {out}"


def test_outside_ci_the_build_check_is_off():
    assert not build_required({})
    assert not build_required({"CI": "false"}) and not build_required({"CI": "0"})
    assert build_required({"CI": "true"}) and build_required({"CI": "1"})
    assert build_required({"CONVFORMER_FAST_REQUIRE_BUILD": "1"})


def test_build_check_names_each_missing_part(monkeypatch):
    assert build_problems() == [], "this checkout is incomplete"  # the session check passed
    infos = dict(cf.available_backends())
    infos["triton"] = dataclasses.replace(infos["triton"], available=False,
                                          reason="triton cannot be imported (planted)")
    monkeypatch.setattr(conftest.cf, "available_backends", lambda: infos)
    monkeypatch.setattr(conftest.ops, "cuda_kernels_built", lambda: False)
    monkeypatch.setattr(conftest, "cuda_build", lambda version: (True, "FORCE_CUDA=1"))
    problems = build_problems()
    assert "backend 'triton' unavailable in CI: triton cannot be imported (planted)" in problems
    assert any(p.startswith("convformer_fast._C has no CUDA kernels, but the build rule says they are built "
                            "here (FORCE_CUDA=1)") for p in problems), problems


def test_cuda_build_rule():
    """One rule decides whether _C gets its CUDA kernels (setup.py builds by it, the build
    check above tests against it)."""
    assert cuda_build("13.0", {"FORCE_CUDA": "1"}) == (True, "FORCE_CUDA=1")
    assert cuda_build("13.0", {"FORCE_CUDA": "0"}) == (False, "FORCE_CUDA=0")
    assert cuda_build(None, {})[0] is False
    with pytest.raises(ValueError, match="FORCE_CUDA: got 'yes', expected 1, 0 or unset"):
        cuda_build("13.0", {"FORCE_CUDA": "yes"})


# ------------------------------------------------------------------------------- threads


def test_run_concurrently_raises_what_a_worker_raised():
    calls = []

    def worker():
        calls.append(1)
        assert len(calls) != 2, "the second worker fails"

    with pytest.raises(AssertionError, match="the second worker fails") as error:
        run_concurrently(worker, 3)
    assert len(calls) == 3  # every worker ran to the end
    assert "1 of 3 workers failed" in "".join(error.value.__notes__)


# ------------------------------------------------------------------------------- skips

# (node id pattern, reason substring): every skip on a machine without a GPU where the
# CUDA kernels are built (CI's machine). A new skip fails the check below until it is
# listed here with its reason.
EXPECTED_SKIPS = [
    ("tests/test_op_registry.py::*-cuda-*", "cuda: needs a CUDA device"),
    ("tests/test_cuda_emulated.py::test_cuda_*_matches_*", "needs a CUDA device and the CUDA build"),
    ("tests/test_cuda_emulated.py::test_cuda_*_within_twice_eager_error*", "needs a CUDA device and the CUDA build"),
    ("tests/test_cuda_emulated.py::test_cuda_and_emulated_kernels_agree", "needs a CUDA device and the CUDA build"),
    ("tests/triton/test_triton_backend.py::test_auto_uses_triton_on_cuda_unless_the_cuda_backend_exists",
     "needs a CUDA device"),
    ("tests/triton/test_triton_kernels.py::test_*_on_gpu*", "needs a CUDA device"),
    ("tests/triton/test_triton_kernels.py::test_tf32_is_opt_in", "needs a CUDA device"),
    ("tests/test_deepmimic.py::test_converter_matches_pybullet_forward_kinematics_and_the_bundled_file",
     "needs pybullet"),
    ("tests/test_cuda_graph.py::*cuda]", "needs a GPU and the cuda backend"),
    ("tests/test_cuda_graph.py::*triton]", "needs a GPU and the triton backend"),
]
# ... and where the build rule leaves the CUDA kernels out (no nvcc, or FORCE_CUDA=0).
EXPECTED_SKIPS_WITHOUT_CUDA_BUILD = [
    ("tests/test_ops.py::test_cuda_kernels_were_compiled_and_linked*", "the CUDA kernels are not built here"),
    ("tests/test_audit.py::*", "needs nvcc"),
]

# ... and where the environment lacks something CI installs (tools/compat.sh's venvs and the
# GPU machines have no fvcore; compat.sh tests a copy of the tree without .git): node id
# patterns with the reason, used only while the condition holds.
EXPECTED_SKIPS_BY_ENVIRONMENT = [
    ("tests/test_flops.py::*", "needs fvcore", lambda: importlib.util.find_spec("fvcore") is None),
    ("tests/test_reliability.py::test_regression_database_is_not_git_ignored", "not a git checkout",
     lambda: subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0),
]


def _expected(node: str, patterns) -> str | None:
    return next((reason for pattern, reason in patterns if fnmatch.fnmatchcase(node, pattern)), None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the list holds on a machine without a GPU")
def test_skips_are_the_expected_ones(request):
    """Runs last (conftest orders it): every test that reported in this session before it
    skipped exactly if EXPECTED_SKIPS says so, for the reason it gives."""
    assert request.node.nodeid == SKIP_CHECK
    patterns = EXPECTED_SKIPS + ([] if cuda_build(torch.version.cuda)[0] else EXPECTED_SKIPS_WITHOUT_CUDA_BUILD)
    # An environment skip matches by pattern and exact reason, so the tests of the same file
    # that need nothing missing still count as ran, not as skips that did not happen.
    environment = [(pattern, reason) for pattern, reason, holds in EXPECTED_SKIPS_BY_ENVIRONMENT if holds()]
    unexpected = {node: reason for node, reason in SKIPS.items()
                  if not (_expected(node, patterns) and _expected(node, patterns) in reason)
                  and not any(fnmatch.fnmatchcase(node, p) and r == reason for p, r in environment)}
    ran_anyway = sorted(node for node in REPORTED - set(SKIPS) if _expected(node, patterns))
    assert not unexpected, ("skips not in tests/test_suite.py EXPECTED_SKIPS (list them there with their reason, "
                            "or make them run):\n" + "\n".join(f"  {n}: {r}" for n, r in sorted(unexpected.items())))
    assert not ran_anyway, ("listed as skipped here but ran (remove them from EXPECTED_SKIPS):\n  "
                            + "\n  ".join(ran_anyway))
