"""DistributedDataParallel on the CPU with the gloo backend, 2 ranks started by
torch.multiprocessing from a fork server.

The fork server is a fresh process that imports torch, torch._dynamo (which DDP imports when
it is built) and this module once; each rank is forked from it, so the ranks skip those
imports (seconds each on a busy 2-core machine) and never inherit autograd threads from the
pytest process (plain fork breaks backward in the child once the parent has run one).

Each rank sets the environment ``torchrun`` would set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and then runs the trainer's own code: process-group set-up, the
DistributedSampler loader, the DDP wrapper, the loss/backward step, and the whole
``convformer-fast train`` command.
"""

from __future__ import annotations

import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import convformer_fast as cf
from convformer_fast.cli.app import main
from convformer_fast.pose.data import PoseWindowDataset, write_synthetic_h36m
from convformer_fast.pose.datasets import h36m_sequences
from convformer_fast.pose.train import forward_backward, make_loader, setup_distributed, wrap_model

WORLD = 2
BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank, port, fn, args, errors):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        fn(*args)
    except BaseException as exc:  # report to the parent, which fails the test
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise


def _spawn(fn, *args, timeout=120):
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "convformer_fast.pose.train", __name__])
    errors = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_as_rank, args=(r, port, fn, args, errors)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert not hung and not messages and all(p.exitcode == 0 for p in procs), \
        (messages, [p.exitcode for p in procs], f"{len(hung)} rank(s) hung")


def _one_step(data_dir, out):
    """Loss and gradients of one training step on the first global batch."""
    info = setup_distributed("cpu")
    seqs, _ = h36m_sequences(data_dir, "gt", "train")
    loader = make_loader(PoseWindowDataset(seqs, 9, stride=5), BATCH, info, shuffle=False)
    inputs, targets, _, _ = next(iter(loader))
    torch.manual_seed(info.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = cf.ConvFormerFast(num_frames=9, num_joints=17, embed_dim=8, num_heads=4, spatial_depth=1,
                              temporal_depth=1, kernel_sizes=(3, 5), drop_path=0.0, agg_dropout=0.0)
    loss = forward_backward(wrap_model(model, info), inputs, targets)
    if info.distributed:
        torch.distributed.all_reduce(loss)
        loss /= info.world_size
    if info.rank == 0:
        torch.save({"loss": loss, "samples": len(inputs), "world": info.world_size,
                    "grads": {n: p.grad for n, p in model.named_parameters()}}, out)
    if info.distributed:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("h36m")
    write_synthetic_h36m(root, subjects=["S1", "S9"], actions=["Walking"], num_frames=30)
    return root


def test_two_gloo_ranks_match_one_process_with_the_full_batch(tmp_path, data_dir):
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    _one_step(data_dir, single)  # this process, WORLD_SIZE unset: one rank, whole batch
    _spawn(_one_step, data_dir, ddp)
    one, two = torch.load(single), torch.load(ddp)
    assert (one["world"], one["samples"]) == (1, BATCH) and (two["world"], two["samples"]) == (2, BATCH // 2)
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-7)
    assert one["grads"].keys() == two["grads"].keys()
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _train_cli(data_dir, out):
    main(["train", "--data-dir", str(data_dir), "--preset", "h36m-9", "--embed-dim", "8", "--heads", "4",
          "--spatial-depth", "1", "--temporal-depth", "1", "--epochs", "1", "--batch-size", "8",
          "--max-batches", "2", "--eval-stride", "10", "--no-test-flip", "--out", str(out), "--no-progress"])


def test_train_command_with_two_ranks(tmp_path, data_dir):
    out = tmp_path / "run"
    _spawn(_train_cli, data_dir, out)
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and int(rows[0]["train_samples"]) == 16  # both ranks' samples, logged once
    assert float(rows[0]["test_mpjpe_mm"]) > 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.csv"]
