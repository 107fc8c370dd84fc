"""`convformer-fast bench --peers`: ONNX Runtime, OpenVINO and torch.compile of the folded
model in the same alternating rounds, each checked against eager before it is timed.

CI cost (2 cores): about 40 s (two ONNX exports per table; torch.compile with its `eager`
backend, so no compiler runs).
"""

from __future__ import annotations

import json

import pytest
import torch

from convformer_fast.cli import app as cli
from convformer_fast.perf import peers

TINY = ["--threads", "1", "--repeats", "3", "--warmup", "1", "--min-sample-ms", "1",
        "--matmul-size", "128", "--no-progress", "--compile-backend", "eager"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def bench(tmp_path, *argv):
    path = tmp_path / "bench.json"
    code = cli.main(["bench", "--preset", "h36m-9", *TINY, "--json", str(path), *argv])
    return code, json.loads(path.read_text())


def test_every_peer_is_checked_timed_and_compared(tmp_path, capsys):
    code, report = bench(tmp_path, "--backends", "eager,compile,torch", "--batch", "2", "--peers")
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {r["backend"]: r for r in report["results"]}
    assert list(rows) == ["eager", "compile", "torch", *peers.PEERS]
    for name in ("compile", *peers.PEERS):
        row = rows[name]
        assert row["peer"] and row["ok"] and len(row["samples"]) == 3 and row["batch"] == 2, row
    for name in peers.PEERS:
        assert 0 <= rows[name]["max_abs_error"] < 1e-4, name
        assert f"\n{name} *" in out
    assert not rows["torch"]["peer"] and rows["torch"]["max_abs_error"] is None
    # The peers are credited with the FLOPs of the model they run.
    for name in peers.PEERS:
        folded = name == peers.COMPILE_FOLDED or name.endswith("folded-export")
        assert rows[name]["flops"] == rows["torch" if folded else "eager"]["flops"], name
    best = report["best_peer"]["h36m-9"]
    medians = {n: rows[n]["median_s"] for n in ("compile", *peers.PEERS)}
    assert best == min(medians, key=medians.get) and rows[best]["speedup_vs_best_peer"] == 1.0
    assert rows["torch"]["speedup_vs_best_peer"] == pytest.approx(medians[best] / rows["torch"]["median_s"])
    assert "vs best peer" in out and f"best peer: {best}" in out and "| h36m-9, B=2 |" in out
    assert set(report["peer_packages"]) == {"onnx", "onnxscript", "onnxruntime", "openvino"}


def test_a_peer_not_installed_is_listed_not_dropped(tmp_path, capsys, monkeypatch):
    real = peers.importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    code, report = bench(tmp_path, "--backends", "eager", "--peers", "openvino:folded-export")
    out = capsys.readouterr().out
    assert code == 0, out  # a missing optional package is not a failure
    row = report["results"][-1]
    assert row["backend"] == "openvino:folded-export" and row["not_installed"] and not row["samples"]
    assert row["error"].startswith("not installed: openvino")
    assert "openvino:folded-export * not run: not installed: openvino" in out
    assert "| not installed |" in out


def test_a_peer_that_disagrees_with_eager_is_not_timed(tmp_path, capsys, monkeypatch):
    real = peers._ort_session

    def off_by_a_little(path, threads):
        run = real(path, threads)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(peers, "_ort_session", off_by_a_little)
    code, report = bench(tmp_path, "--backends", "eager", "--peers", "ort:folded-export")
    assert code == 1
    row = report["results"][-1]
    assert row["error"].startswith("wrong output: max |ort:folded-export - eager| = 0.001")
    assert not row["samples"] and not row["not_installed"]


@pytest.mark.parametrize("argv, message", [
    (["--peers", "tensorrt"], "--peers: unknown peer 'tensorrt'; available: compile:folded"),
    (["--peers", "--train"], "--peers: the peers are inference runtimes"),
    (["--peers", "--dtype", "bf16"], "--peers: the peers run float32 on the CPU"),
    (["--preset", "h36m-9,h36m-27", "--batch", "1,2,3"], "--batch: got 3 sizes for 2 presets"),
    (["--batch", "0"], "--batch: got '0', expected positive integers"),
])
def test_bench_peers_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
