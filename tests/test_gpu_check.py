"""benchmarks/gpu_check.sh: refusals, and its dry run (every step on the CPU, tiny sizes),
so that the script a GPU machine runs once is never untested.

Budget: the dry run takes about 2-3 minutes on 2 shared cores (one test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "build", "tests", "launches", "bench-b1-float32-tf32-off", "micro"]


def _run(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
    env["PYTHON"] = sys.executable  # the script's steps run this interpreter, not PATH's python3
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def test_refuses_without_out_dir():
    result = _run()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ") and "OUT_DIR" in result.stderr


def test_refuses_unknown_options(tmp_path):
    result = _run("--fast", str(tmp_path))
    assert result.returncode == 2 and "unknown option --fast" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_a_gpu_outside_dry_run(tmp_path):
    out = tmp_path / "out"
    result = _run(str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in result.stderr
    assert not out.exists()  # nothing started


def test_dry_run_passes_every_step_and_writes_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    result = _run("--dry-run", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + (out / "gpu_check.log").read_text()[-5000:]
    for step in STEPS:
        assert f"=== step {step}: ok" in result.stdout, (step, result.stdout)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"gpu_check.log", "summary.json", "tests.xml", "launches.json",
                                "bench.json", "microbench.json"} <= set(files), files
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "ok" for s in summary["steps"])
    assert summary["env"]["torch"] == torch.__version__
    suite = ET.parse(out / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    assert int(suite.get("tests")) > 0 and int(suite.get("failures")) == 0
    launch_rows = json.loads((out / "launches.json").read_text())["estimate"]
    assert {r["backend"] for r in launch_rows} == {"eager", "torch", "cuda", "triton"}
    bench = json.loads((out / "bench.json").read_text())
    assert {r["backend"] for r in bench[0]["report"]["results"]} == {"eager", "compile", "torch"}
    assert all(r["ok"] for r in bench[0]["report"]["results"])
    assert json.loads((out / "microbench.json").read_text())["benchmarks"]
