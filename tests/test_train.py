"""Training CLI (checkpoints, resume, CSV log, per-epoch test metrics), the loss actually
learning, evaluation wiring and the eval table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import convformer_fast as cf
from convformer_fast.cli.app import main
from convformer_fast.pose.data import PoseSequence, PoseWindowDataset, write_synthetic_h36m
from convformer_fast.pose.metrics import H36M_ACTIONS
from convformer_fast.pose import evaluate as evaluate_module
from convformer_fast.pose.checkpoint import load_checkpoint
from convformer_fast.pose.datasets import h36m_sequences
from convformer_fast.pose.evaluate import evaluate_sequences, format_table
from convformer_fast.pose.train import DistInfo, amp_settings, forward_backward, make_loader

TINY = ["--preset", "h36m-9", "--embed-dim", "8", "--heads", "4", "--spatial-depth", "1",
        "--temporal-depth", "1", "--kernel-sizes", "3", "--backend", "torch", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("h36m")
    write_synthetic_h36m(root, subjects=["S1", "S9"], actions=["Walking", "Eating 2"], num_frames=40)
    return root


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--data-dir", str(data_dir), *TINY, "--epochs", "2", "--batch-size", "16",
            "--max-batches", "2", "--eval-stride", "1", "--out", str(out)]
    assert main(args) == 0
    return out, args


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_train_writes_log_and_checkpoints_with_test_metrics(trained):
    out, _ = trained
    rows = _rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        for key in ("train_mpjpe_mm", "test_mpjpe_mm", "test_p_mpjpe_mm", "test_mpjve_mm"):
            assert float(row[key]) > 0, key
        assert int(row["train_samples"]) == 32  # 2 batches of 16
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.95)  # decayed after every epoch
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["embed_dim"] == 8 and ckpt["config"]["num_frames"] == 9
    assert ckpt["config"]["drop_path"] == 0.2 and ckpt["config"]["agg_dropout"] == 0.2  # paper defaults
    assert ckpt["optimizer"]["state"][0]["step"] == 4
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 0.1
    assert ckpt["metrics"]["test_mpjpe_mm"] == pytest.approx(float(rows[1]["test_mpjpe_mm"]), abs=1e-3)
    assert (out / "best.pt").is_file()


def test_resume_continues_and_rejects_another_model(trained, capsys):
    out, args = trained
    assert main(["train", "--data-dir", args[2], "--resume", str(out / "last.pt"), "--epochs", "3",
                 "--batch-size", "16", "--max-batches", "2", "--no-progress", "--backend", "torch",
                 "--no-eval"]) == 0
    rows = _rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[2]["lr"]) == pytest.approx(1e-3 * 0.95 ** 2)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["optimizer"]["state"][0]["step"] == 6
    capsys.readouterr()
    assert main(["train", "--data-dir", args[2], "--resume", str(out / "last.pt"), "--epochs", "4",
                 "--embed-dim", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "embed_dim: checkpoint has 8, model has 16" in err, err


def test_eval_prints_the_paper_table(trained, data_dir, capsys, tmp_path):
    out, _ = trained
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data-dir", str(data_dir),
                 "--backend", "torch", "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if "Dir" in line).split()
    assert header == list(H36M_ACTIONS) + ["Avg"]
    rows = {line.split(" (")[0]: line for line in text.splitlines() if line.startswith("Protocol")}
    assert set(rows) == {"Protocol #1 MPJPE", "Protocol #2 P-MPJPE", "Protocol #3 MPJVE"}
    cells = rows["Protocol #1 MPJPE"].split(")")[1].split()
    assert len(cells) == 16 and cells[0] == "-"  # Directions is absent from this data
    result = json.loads((tmp_path / "r.json").read_text())
    assert float(cells[H36M_ACTIONS.index("Walk")]) == pytest.approx(result["mpjpe"]["Walk"], abs=0.06)
    assert result["mpjpe"]["Average"] == pytest.approx((result["mpjpe"]["Eat"] + result["mpjpe"]["Walk"]) / 2)


def test_evaluation_wiring_units_root_and_protocols(monkeypatch):
    """With predictions = target + a known per-joint offset, the numbers are hand-computed."""
    rng = np.random.default_rng(0)
    target = rng.normal(0, 0.3, (6, 17, 3)).astype(np.float32)
    target[:, 0] = 0
    seqs = [PoseSequence("S9", "Walking 1", 0, np.zeros((6, 17, 2)), target),
            PoseSequence("S9", "Eating", 0, np.zeros((6, 17, 2)), target)]
    offset = np.zeros((17, 3), np.float32)
    offset[1:, 2] = 0.017  # 17 mm along z on every joint but the root
    offset[0] = 5.0         # the root is zeroed by evaluation whatever the model says
    monkeypatch.setattr(evaluate_module, "lift_sequence",
                        lambda model, kp, centers, **kw: target[centers] + offset)
    result = evaluate_sequences(None, seqs)
    assert result["mpjpe"]["Walk"] == pytest.approx(16.0, abs=1e-3)  # 16 joints x 17 mm / 17
    assert result["p_mpjpe"]["Average"] < result["mpjpe"]["Average"]  # a translation aligns away
    assert result["mpjve"]["Average"] == pytest.approx(0.0, abs=1e-3)  # constant offset: no velocity error
    assert result["frames"] == 12
    strided = evaluate_sequences(None, seqs, stride=4)
    assert strided["frames"] == 4 and strided["mpjve"] is None
    assert "Protocol #3 MPJVE (mm)" in format_table(strided)


def test_training_step_learns(data_dir):
    """A few dozen AdamW steps on the MPJPE loss cut the error well below the start."""
    seqs, meta = h36m_sequences(data_dir, "gt", "train")
    data = PoseWindowDataset(seqs, 9, stride=4)
    loader = make_loader(data, 32, DistInfo(), shuffle=True, seed=0)
    torch.manual_seed(0)
    model = cf.ConvFormerFast(num_frames=9, num_joints=17, embed_dim=8, num_heads=4, spatial_depth=1,
                              temporal_depth=1, kernel_sizes=(3,), drop_path=0.0, agg_dropout=0.0,
                              backend="torch")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        for inputs, targets, _, _ in loader:
            opt.zero_grad()
            losses.append(forward_backward(model, inputs, targets).item())
            opt.step()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_mixed_precision_settings():
    assert amp_settings("auto", torch.device("cpu")) == (None, None)
    dtype, scaler = amp_settings("bf16", torch.device("cpu"))
    assert dtype == torch.bfloat16 and scaler is None
    model = cf.ConvFormerFast(num_frames=3, num_joints=17, embed_dim=8, num_heads=2, backend="torch")
    loss = forward_backward(model, torch.randn(2, 3, 17, 2), torch.randn(2, 1, 17, 3), dtype)
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    if torch.cuda.is_available():
        dtype, scaler = amp_settings("fp16", torch.device("cuda"))
        assert dtype == torch.float16 and scaler is not None

