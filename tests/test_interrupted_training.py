"""A training run killed mid-epoch (SIGINT, as Ctrl-C sends, and SIGKILL) and resumed from
its ``last.pt`` ends exactly where an uninterrupted run with the same seed ends: the same
weights, optimiser state and log; and the kill leaves no truncated file.

Each run is a real ``convformer-fast train`` process (3 epochs of a tiny model on synthetic
data, one thread); the signal is sent as soon as the first epoch's ``last.pt`` appears,
that is during the second epoch, which lasts about a second. Cost: about 40 s on 2 busy
cores (three processes, two in-process resumptions).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convformer_fast.cli.app import main
from convformer_fast.pose.checkpoint import load_checkpoint
from convformer_fast.pose.data import write_synthetic_h36m

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
TRAIN = ["--preset", "h36m-9", "--embed-dim", "8", "--heads", "4", "--spatial-depth", "1",
         "--temporal-depth", "1", "--kernel-sizes", "3", "--backend", "torch", "--no-progress",
         "--no-tensorboard", "--threads", "1", "--seed", "5", "--batch-size", "4",
         "--epochs", str(EPOCHS), "--max-batches", "40"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("h36m")
    write_synthetic_h36m(root, subjects=["S1", "S9"], actions=["Walking"], num_frames=60)
    return root


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--data-dir", str(data_dir), *TRAIN, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _log(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if not k.endswith("_s")}  # timings differ
                for row in csv.DictReader(handle)]


def _kill_during_second_epoch(data_dir: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "convformer_fast.cli", "train", "--data-dir",
                                str(data_dir), *TRAIN, "--out", str(out)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists():  # rename is atomic: once it exists, it is whole
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_resume_after_a_kill_matches_the_uninterrupted_run(sig, data_dir, uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = _kill_during_second_epoch(data_dir, out, sig)
    if sig == signal.SIGINT:
        assert killed.returncode == 130, killed
        assert killed.stderr.strip().splitlines()[-1] == "convformer-fast train: interrupted", killed.stderr
        assert "Traceback" not in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL
    # killed during epoch 2: the checkpoint and the log hold epoch 1, whole
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert [row["epoch"] for row in _log(out)] == ["1"]
    if sig == signal.SIGINT:  # an orderly exit removes its temporary files
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]

    threads = torch.get_num_threads()
    try:
        assert main(["train", "--data-dir", str(data_dir), *TRAIN, "--resume", str(out / "last.pt")]) == 0
    finally:
        torch.set_num_threads(threads)
    expected, resumed = load_checkpoint(uninterrupted / "last.pt"), load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == EPOCHS
    for key, weight in expected["model"].items():
        assert torch.equal(resumed["model"][key], weight), key
    for index, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(resumed["optimizer"]["state"][index][name]),
                               torch.as_tensor(value)), (index, name)
    assert resumed["scheduler"] == expected["scheduler"]
    assert _log(out) == _log(uninterrupted)
    assert load_checkpoint(out / "best.pt")["epoch"] == load_checkpoint(uninterrupted / "best.pt")["epoch"]


def test_ctrl_c_during_a_write_finishes_the_write_first(tmp_path):
    """SIGINT arriving inside a write (here: between its two halves) is held until the file
    is complete and in place, then raised as KeyboardInterrupt."""
    from convformer_fast.atomic import atomic_open

    path = tmp_path / "log.csv"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "w") as handle:
            handle.write("first half\n")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is delivered here, and held
            handle.write("second half\n")
    assert path.read_text() == "first half\nsecond half\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
