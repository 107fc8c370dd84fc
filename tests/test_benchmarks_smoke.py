"""The microbenchmarks and `convformer-fast bench` keep working (CI runs them tiny)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import convformer_fast as cf
from convformer_fast.cli import app as cli
from convformer_fast.perf import commands as perf_cli, flops
from convformer_fast.perf.machine import available_cores

ROOT = Path(os.path.abspath(__file__)).parents[1]
FAST = [name for name, info in cf.available_backends().items()
        if info.available and name != "eager" and "cpu" in info.devices]


def _forward_flops(model) -> int:
    """FLOPs of one batch-1 forward, to check the bench's own count (FlopCounterMode) against:
    by fvcore, an independent counter, where it is installed; by FlopCounterMode where it is
    not (the GPU machines, a torch-only install), which still checks what the bench counted."""
    x = flops.model_inputs(model)
    if importlib.util.find_spec("fvcore") is not None:
        return flops.count_flops(model, x).total
    with torch.no_grad():
        return flops.flop_counter_flops(lambda: model(x)).total


def test_microbenchmarks_smoke_pass(tmp_path):
    """One tiny shape through every benchmark and implementation (about 30 s)."""
    report = tmp_path / "bench.json"
    # One thread: on a shared 2-core machine two OpenMP threads wait on each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "--smoke", "-q",
         "-p", "no:cacheprovider", "--bench-threads", "1", f"--benchmark-json={report}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    benchmarks = json.loads(report.read_text())["benchmarks"]
    groups: dict[str, dict[str, dict]] = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["impl"]] = bench
    ops = sorted({group.split()[0] for group in groups})
    assert ops == ["attention", "block", "conv-QKV", "model"], groups.keys()
    assert len(groups) == 7  # conv-QKV, attention, block per layout; the model
    everyone = {"eager", "compile", *FAST}
    for name, impls in groups.items():
        if name.startswith("conv-QKV"):  # backends without a standalone entry point skip
            assert {"eager", "compile"} <= set(impls) <= everyone, name
        else:
            assert set(impls) == everyone, name
        for impl, bench in impls.items():
            assert bench["stats"]["min"] > 0 and bench["stats"]["rounds"] == 1, (name, impl)
            assert bench["extra_info"]["flops"] > 0, (name, impl)
    model = groups["model tiny-b2"]
    for backend in FAST:  # the fold is visible in the counted work
        assert model[backend]["extra_info"]["flops"] < model["eager"]["extra_info"]["flops"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _bench(tmp_path, *extra):
    path = tmp_path / "bench.json"
    code = cli.main(["bench", "--preset", "h36m-9", "--threads", "1", "--repeats", "3",
                     "--warmup", "1", "--min-sample-ms", "1", "--matmul-size", "128",
                     "--no-progress", "--json", str(path), *extra])
    return code, json.loads(path.read_text())


# The command is the same for every backend; interpreted ones (triton under
# TRITON_INTERPRET=1) take seconds per call and are covered by the smoke pass above.
COMPILED = [name for name in FAST if name in ("torch", "cpu")]


def test_bench_command_inference(tmp_path, capsys, restore_threads):
    png = tmp_path / "latency.png"
    backends = ["eager", "compile", *COMPILED]
    code, report = _bench(tmp_path, "--backends", ",".join(backends), "--compile-backend",
                          "eager", "--plot", str(png))
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {r["backend"]: r for r in report["results"]}
    assert list(rows) == backends and report["machine"]["threads"] == 1
    for name, row in rows.items():
        assert row["ok"] and len(row["samples"]) == 3, name
        assert 0 < row["min_s"] <= row["p25_s"] <= row["median_s"] <= row["p75_s"], name
        assert row["samples_per_s"] == pytest.approx(1 / row["median_s"])
        assert row["gflops_per_s"] == pytest.approx(row["flops"] / row["median_s"] / 1e9)
        assert f"\n{name} " in out
    assert rows["eager"]["speedup_vs_eager"] == 1.0 and rows["compile"]["speedup_vs_compile"] == 1.0
    assert rows["compile"]["flops"] == rows["eager"]["flops"]
    eager_model = cf.ConvFormer.from_preset("h36m-9").eval()
    assert rows["eager"]["flops"] == _forward_flops(eager_model)
    assert rows["eager"]["flops_source"] == "FlopCounterMode"  # the bench needs no fvcore
    for name in COMPILED:
        assert rows[name]["flops"] < rows["eager"]["flops"]
    matmul = report["matmul"][0]
    assert matmul["flops"] == 2 * 128 ** 3 and matmul["gflops_per_s"] > 0
    assert "matmul 128^3 float32" in out and "compile:" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_command_train_step(tmp_path, capsys, restore_threads):
    code, report = _bench(tmp_path, "--backends", "eager,torch", "--train")
    assert code == 0, capsys.readouterr().out
    rows = {r["backend"]: r for r in report["results"]}
    assert report["settings"]["train"] and all(r["ok"] for r in rows.values())
    model = cf.ConvFormer.from_preset("h36m-9").eval()
    forward = _forward_flops(model)
    # backward costs about twice the forward: a training step about three forwards
    assert 2.5 * forward < rows["eager"]["flops"] < 3.5 * forward
    assert rows["torch"]["flops"] < rows["eager"]["flops"]


@pytest.mark.parametrize("tf32", ["on", "off"])
def test_bench_tf32_is_set_for_the_run_and_the_callers_switches_come_back(
        tmp_path, capsys, restore_threads, monkeypatch, tf32):
    from convformer_fast.perf import bench

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    caller = tf32 == "off"  # the opposite of what the run asks for
    seen = []
    real = bench._bench_preset

    def spy(*args, **kwargs):  # what the switches are while the run times
        seen.append((matmul.allow_tf32, cudnn.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_bench_preset", spy)
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = caller
    try:
        code, report = _bench(tmp_path, "--backends", "eager", "--tf32", tf32)
        after = matmul.allow_tf32, cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
    assert code == 0, capsys.readouterr().out
    assert seen == [(not caller, not caller)] and report["settings"]["tf32"] == tf32
    assert after == (caller, caller)


def _unavailable_backend():
    for name, info in cf.available_backends().items():
        if not info.available:
            return name
    return None


@pytest.mark.parametrize("argv, listed", [
    (["--preset", "h36m-10"], "h36m-243"),
    (["--backends", "eager,nope"], "compile"),
    (["--dtype", "int8"], "bfloat16"),
    (["--compile-backend", "nope"], "inductor"),
    (["--device", "tpu"], "cpu"),
    ("unavailable", "eager"),
])
def test_bench_bad_input_is_one_line_and_exit_code_2(capsys, argv, listed):
    if argv == "unavailable":
        name = _unavailable_backend()
        if name is None:
            pytest.skip("every backend is available here")
        argv = ["--backends", name]
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "available:" in err and listed in err, err


def test_threads_beyond_the_cores_warn_and_continue(capsys, restore_threads):
    too_many = available_cores() + 1
    perf_cli.set_threads(too_many)
    assert "warning" in capsys.readouterr().err
    assert torch.get_num_threads() == too_many


@pytest.mark.skipif(not cf.extension_loaded(), reason="the cpu backend needs convformer_fast._C")
def test_profile_cpu_charges_every_op_and_every_flop(tmp_path, capsys, restore_threads):
    spec = importlib.util.spec_from_file_location("profile_cpu", ROOT / "benchmarks" / "profile_cpu.py")
    profile_cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_cpu)
    assert profile_cpu.op_row("convformer_fast::attention") == profile_cpu.op_row("convformer_fast.attention")
    assert profile_cpu.op_row("aten::layer_norm") == profile_cpu.OTHER
    # the ATen calls inside a fused op are its time, not rows of their own
    ffn = SimpleNamespace(name="convformer_fast::feed_forward_residual", cpu_parent=None, cpu_time_total=300.0)
    events = [ffn, SimpleNamespace(name="aten::mm", cpu_parent=ffn, cpu_time_total=200.0),
              SimpleNamespace(name="aten::layer_norm", cpu_parent=None, cpu_time_total=100.0)]
    seconds, calls = profile_cpu.charge_to_outermost(events * 2, calls=2)
    assert seconds == {"feed_forward_residual": pytest.approx(3e-4), profile_cpu.OTHER: pytest.approx(1e-4)}
    assert calls == {"feed_forward_residual": 1, profile_cpu.OTHER: 1}
    path = tmp_path / "profile.json"
    assert profile_cpu.main(["--preset", "h36m-9", "--batch", "2", "--threads", "1", "--calls", "2",
                             "--matmul-size", "64", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    rows = {r["op"]: r for r in report["rows"]}
    blocks = sum(isinstance(m, cf.ConvFormerBlockFast)
                 for m in cf.ConvFormerFast.from_preset("h36m-9", backend="cpu").modules())
    # inference on the cpu backend: every block's feed-forward half is one fused op
    assert rows["feed_forward_residual"]["calls"] == blocks
    assert {"qkv_projection", "attention", "spatial_attention_residual"} <= set(rows)
    assert sum(r["gflop"] for r in rows.values()) * 1e9 == pytest.approx(report["flops"])
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    assert all(r["ms"] > 0 for r in rows.values())
    assert "| feed_forward_residual |" in capsys.readouterr().out
