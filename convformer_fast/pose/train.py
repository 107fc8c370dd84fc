"""Training: ``convformer-fast train`` (one process, or many through ``torchrun``).

Defaults are the paper's recipe (section 4.2): MPJPE loss, AdamW, learning rate 1e-3
decayed by 0.95 after every epoch, batch 1024, 60 epochs, stochastic depth 0.2,
aggregation dropout 0.2, horizontal flip augmentation; evaluation with flip test-time
augmentation. Targets are root-relative camera-frame joints in metres (reported in mm).

Each epoch: a tqdm bar over the training batches, then Protocols I-III on the test split,
a row in ``<out>/log.csv`` (and TensorBoard scalars when ``tensorboard`` is installed),
``<out>/last.pt`` and, when the test MPJPE improved, ``<out>/best.pt``. A checkpoint
holds the model config, weights, optimiser, LR scheduler, AMP scaler and epoch;
``--resume <out>/last.pt`` continues where it stopped (model options given on the command
line must match the checkpoint: a mismatch names the field), and with the same seed it
ends with the same weights as a run that was never interrupted: the sampler and dropout
are seeded per epoch, the optimiser, schedule and scaler come from the checkpoint, and
every file is replaced atomically (a run killed at any moment leaves the previous
``last.pt``; log rows of epochs after the checkpoint's are dropped when they are logged
again). ``--epochs 0`` (or a checkpoint that has finished ``--epochs``) trains nothing and
writes nothing: it prints the test metrics of the model as it stands.

Many GPUs / nodes: ``torchrun --nproc_per_node N -m convformer_fast.cli train ...``. Each
rank builds ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs) and reads its share
of every batch through a ``DistributedSampler``; ``--batch-size`` stays the global batch
(each rank gets ``batch / world_size``), so N ranks compute the same loss and gradients
as one process with the whole batch. Rank 0 evaluates, logs and writes checkpoints.
Mixed precision (``--amp auto``): bf16 autocast on GPUs that support it, else fp16 with a
gradient scaler; off on CPUs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from . import metrics
from .data.skeleton import H36M_17
from .data.windows import PoseWindowDataset
from ..fast import ConvFormerFast
from ..presets import PRESETS, preset_config
from ..reference import CENTRE, TARGET_FRAMES
from .checkpoint import (CheckpointError, config_differences, config_problem, load_checkpoint,
                         load_model_weights, model_config, save_checkpoint)
from ..atomic import check_writable, make_folder, write_text
from ..cli.args import (COUNT, NON_NEGATIVE, ODD_POSITIVE_INT, POSITIVE, POSITIVE_INT, PROBABILITY, SEED,
                        Range, UsageError, add_runtime_arguments, check_backend, resolve_device,
                        set_threads)

__all__ = ["DistInfo", "add_arguments", "build_config", "setup_distributed", "make_loader",
           "wrap_model", "forward_backward", "run"]

DEFAULT_PRESET = "h36m-243"
_MODEL_ARGS = {  # command-line option -> config field
    "frames": "num_frames", "embed_dim": "embed_dim", "spatial_depth": "spatial_depth",
    "temporal_depth": "temporal_depth", "heads": "num_heads", "kernel_sizes": "kernel_sizes",
    "mlp_ratio": "mlp_ratio", "drop_path": "drop_path", "agg_dropout": "agg_dropout",
    "target_frame": "target_frame",
}
CSV_FIELDS = ("epoch", "lr", "train_mpjpe_mm", "test_mpjpe_mm", "test_p_mpjpe_mm", "test_mpjve_mm",
              "train_samples", "epoch_s", "eval_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default="data/h36m",
                      help="folder with data_3d_h36m.npz and data_2d_h36m_<keypoints>.npz")
    data.add_argument("--keypoints", default="gt", help="2D detector file suffix (gt, cpn_ft_h36m_dbb, ...)")
    data.add_argument("--synthetic", action="store_true",
                      help="write synthetic Human3.6M files into --data-dir first (if absent)")
    data.add_argument("--synthetic-frames", type=POSITIVE_INT, default=400, help="frames per synthetic sequence")
    data.add_argument("--train-subjects", nargs="+", default=None, help="default S1 S5 S6 S7 S8")
    data.add_argument("--test-subjects", nargs="+", default=None, help="default S9 S11")
    data.add_argument("--actions", nargs="+", default=None, help="only these actions")
    data.add_argument("--stride", type=POSITIVE_INT, default=1, help="take every n-th training frame as a target")
    data.add_argument("--no-flip", action="store_true", help="no horizontal flip augmentation")

    model = parser.add_argument_group("model (default: the preset; on --resume: the checkpoint's)")
    model.add_argument("--preset", default=None, choices=sorted(PRESETS), help=f"default {DEFAULT_PRESET}")
    model.add_argument("--frames", type=POSITIVE_INT, default=None, help="receptive field T")
    model.add_argument("--embed-dim", type=POSITIVE_INT, default=None)
    model.add_argument("--spatial-depth", type=COUNT, default=None)
    model.add_argument("--temporal-depth", type=COUNT, default=None)
    model.add_argument("--heads", type=POSITIVE_INT, default=None)
    model.add_argument("--kernel-sizes", type=ODD_POSITIVE_INT, nargs="+", default=None)
    model.add_argument("--mlp-ratio", type=POSITIVE, default=None)
    model.add_argument("--drop-path", type=PROBABILITY, default=None, help="stochastic depth (paper 0.2)")
    model.add_argument("--agg-dropout", type=PROBABILITY, default=None, help="aggregation dropout (paper 0.2)")
    model.add_argument("--target-frame", default=None, choices=TARGET_FRAMES,
                       help="the frame a window predicts: centre (the paper's; T/2 frames of look-ahead) "
                            "or last (causal, for streaming without delay); default centre")
    model.add_argument("--backend", default="auto", help="fast backend of every layer")

    optim = parser.add_argument_group("optimisation (paper defaults)")
    optim.add_argument("--epochs", type=COUNT, default=60,
                       help="0: evaluate the initial (or --resume) model, train nothing, write nothing")
    optim.add_argument("--batch-size", type=POSITIVE_INT, default=1024, help="global batch (split over ranks)")
    optim.add_argument("--lr", type=POSITIVE, default=1e-3)
    optim.add_argument("--lr-decay", type=Range(float, 0, 1, low_open=True), default=0.95,
                       help="LR factor after every epoch")
    optim.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw")
    optim.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.1, help="AdamW weight decay")
    optim.add_argument("--max-batches", type=POSITIVE_INT, default=None, help="stop each epoch after n batches")
    optim.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                       help="mixed precision: auto = bf16/fp16 on GPUs, off on CPUs")
    optim.add_argument("--seed", type=SEED, default=0)
    optim.add_argument("--workers", type=COUNT, default=0, help="DataLoader worker processes")
    add_runtime_arguments(optim)

    out = parser.add_argument_group("evaluation and output")
    out.add_argument("--out", default=None, help="run folder (default runs/<preset>, or the --resume folder)")
    out.add_argument("--resume", default=None, help="continue from this checkpoint")
    out.add_argument("--eval-stride", type=POSITIVE_INT, default=1,
                     help="evaluate every n-th test frame after each epoch (MPJVE needs 1)")
    out.add_argument("--no-eval", action="store_true", help="no per-epoch test evaluation")
    out.add_argument("--no-test-flip", action="store_true", help="no flip test-time augmentation")
    out.add_argument("--eval-batch-size", type=POSITIVE_INT, default=1024)
    out.add_argument("--no-tensorboard", action="store_true", help="do not log to TensorBoard even if installed")
    out.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def build_config(args, base: Optional[dict] = None) -> dict:
    """Model config: ``base`` (a checkpoint's) or the preset, then explicit options."""
    if base is not None:
        config = dict(base)
        if args.preset is not None:
            config.update(PRESETS[args.preset])
    else:
        config = preset_config(args.preset or DEFAULT_PRESET)
    for option, field in _MODEL_ARGS.items():
        value = getattr(args, option, None)
        if value is not None:
            config[field] = tuple(value) if field == "kernel_sizes" else value
    config["kernel_sizes"] = tuple(config["kernel_sizes"])
    config.setdefault("target_frame", CENTRE)  # checkpoints older than the option
    return config


# ---------------------------------------------------------------------------
# distributed set-up
# ---------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Read the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); with
    more than one process, join the process group (NCCL on CUDA, gloo on CPU)."""
    world, rank, local = (_env_int(name, default) for name, default in
                          (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if device == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}: got {value!r}, expected an integer "
                         "(torchrun sets it)") from None


def make_loader(dataset, batch_size: int, info: DistInfo, shuffle: bool = True, seed: int = 0,
                workers: int = 0) -> DataLoader:
    """A loader whose batches, over all ranks together, are ``batch_size`` samples."""
    if batch_size % info.world_size:
        raise ValueError(f"batch_size: got {batch_size}, expected a multiple of the "
                         f"{info.world_size} processes")
    torch_dataset = dataset.torch() if isinstance(dataset, PoseWindowDataset) else dataset
    if info.distributed:
        sampler = DistributedSampler(torch_dataset, num_replicas=info.world_size, rank=info.rank,
                                     shuffle=shuffle, seed=seed)
    elif shuffle:
        sampler = RandomSampler(torch_dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(torch_dataset)
    return DataLoader(torch_dataset, batch_size=batch_size // info.world_size, sampler=sampler,
                      num_workers=workers, pin_memory=info.device.type == "cuda",
                      persistent_workers=workers > 0)


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``DistributedDataParallel`` over the process group (identity for one process)."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def amp_settings(mode: str, device: torch.device):
    """``(autocast dtype or None, GradScaler or None)``."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return dtype, scaler


def forward_backward(model, inputs: torch.Tensor, targets: torch.Tensor,
                     amp_dtype: Optional[torch.dtype] = None, scaler=None) -> torch.Tensor:
    """One forward pass, the MPJPE loss (paper eq. 2, mean over joints and samples) and its
    backward pass. Under DDP the backward all-reduces (averages) the gradients."""
    with torch.autocast(device_type=inputs.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        pred = model(inputs)
    loss = metrics.mpjpe(pred.float(), targets)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss.detach()


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------

def _make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _tensorboard(out_dir: str, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV log is the record
        return None
    return SummaryWriter(os.path.join(out_dir, "tensorboard"))


def _append_csv(path: str, row: dict) -> None:
    """Add the row of an epoch to the log, rewritten atomically. Rows of that epoch or later
    are dropped first: a run killed after logging an epoch but before its checkpoint logs
    that epoch again when it resumes from the previous checkpoint."""
    rows = []
    if os.path.isfile(path):
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle)
                    if str(r.get("epoch", "")).isdigit() and int(r["epoch"]) < int(row["epoch"])]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows + [row])
    write_text(path, text.getvalue())


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def train_epoch(model, loader, optimizer, info: DistInfo, amp_dtype, scaler, max_batches=None,
                progress: bool = True, desc: str = "") -> tuple[float, int]:
    """One pass; returns ``(mean training MPJPE in mm over all ranks, samples seen)``."""
    from tqdm import tqdm

    model.train()
    total = torch.zeros(2, dtype=torch.float64)  # sum of loss * n, n
    batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(total=batches, desc=desc, unit="batch", disable=not (progress and info.is_main),
               dynamic_ncols=True, leave=False)
    for i, (inputs, targets, _, _) in enumerate(loader):
        if i >= batches:
            break
        inputs = inputs.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(model, inputs, targets, amp_dtype, scaler)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total += torch.tensor([loss.item() * len(inputs), len(inputs)], dtype=torch.float64)
        bar.update(1)
        bar.set_postfix(mpjpe_mm=f"{loss.item() * 1000:.1f}")
    bar.close()
    if info.distributed:
        total = total.to(info.device)  # NCCL reduces GPU tensors only
        dist.all_reduce(total)
        total = total.cpu()
    return float(total[0] / max(total[1], 1)) * 1000.0, int(total[1])


def run(args) -> int:
    from .datasets import ensure_synthetic, h36m_sequences
    from .evaluate import evaluate_sequences, h36m_flip_symmetry, mean_pose_baseline

    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.backend != "auto":
        check_backend(args.backend, device.type)
    info = setup_distributed(args.device)
    if args.batch_size % info.world_size:
        raise UsageError(f"--batch-size: got {args.batch_size}, expected a multiple of the "
                         f"{info.world_size} processes")
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    config = build_config(args, model_config(checkpoint) if checkpoint else None)
    if checkpoint is not None:
        problems = config_differences(checkpoint["config"], config)
        if problems:
            raise CheckpointError(f"--resume {args.resume}: the command line asks for a different "
                                  "model than the checkpoint holds: " + "; ".join(problems))
    problem = config_problem(config)
    if problem:
        raise UsageError(f"model options: {problem}")
    out_dir = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                           else os.path.join("runs", args.preset or DEFAULT_PRESET))
    check_writable(os.path.join(out_dir, "last.pt"), "--out")

    # -- data (rank 0 writes synthetic files; everyone waits)
    if args.synthetic:
        if args.keypoints != "gt":
            raise UsageError(f"--keypoints: got {args.keypoints!r} with --synthetic, expected 'gt'")
        if info.is_main:
            ensure_synthetic(args.data_dir, args.synthetic_frames, args.seed)
        if info.distributed:
            dist.barrier()
    train_seqs, metadata = h36m_sequences(args.data_dir, args.keypoints, args.train_subjects or "train",
                                          args.actions)
    kps_left, kps_right = metadata["keypoints_symmetry"]
    train_set = PoseWindowDataset(train_seqs, config["num_frames"], stride=args.stride,
                                  flip_augment=not args.no_flip, kps_left=kps_left, kps_right=kps_right,
                                  joints_left=H36M_17.joints_left, joints_right=H36M_17.joints_right,
                                  target_frame=config["target_frame"])
    test_seqs = []
    if info.is_main and not args.no_eval:
        test_seqs, _ = h36m_sequences(args.data_dir, args.keypoints, args.test_subjects or "test", args.actions)
    if train_seqs[0].inputs_2d.shape[1] != config["num_joints"]:
        raise UsageError(f"--data-dir: the data has {train_seqs[0].inputs_2d.shape[1]} joints, "
                         f"the model num_joints={config['num_joints']}")

    # -- model, optimiser, schedule (same seed on every rank: identical initial weights)
    torch.manual_seed(args.seed)
    model = ConvFormerFast(**config, backend=args.backend).to(info.device)
    optimizer = _make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    amp_dtype, scaler = amp_settings(args.amp, info.device)
    start_epoch, best = 0, math.inf
    if checkpoint is not None:
        load_model_weights(model, checkpoint)
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None and name in checkpoint:
                try:
                    obj.load_state_dict(checkpoint[name])
                except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
                    raise CheckpointError(f"{args.resume}: key {name!r} does not fit this run's "
                                          f"{type(obj).__name__} ({type(exc).__name__}: {exc})") from exc
        start_epoch = int(checkpoint.get("epoch", 0))
        best = checkpoint.get("metrics", {}).get("best_test_mpjpe_mm", math.inf)
        best = float(best) if isinstance(best, (int, float)) else math.inf
    ddp_model = wrap_model(model, info)
    loader = make_loader(train_set, args.batch_size, info, shuffle=True, seed=args.seed, workers=args.workers)

    writer = None
    flip = None if args.no_test_flip else h36m_flip_symmetry(metadata)
    nothing_to_train = start_epoch >= args.epochs
    if info.is_main:
        if not nothing_to_train:
            make_folder(out_dir, "--out: cannot create the run folder")
            writer = _tensorboard(out_dir, not args.no_tensorboard)
        params = sum(p.numel() for p in model.parameters())
        print(f"train: {len(train_seqs)} sequences, {len(train_set)} windows (T={config['num_frames']}, "
              f"target frame {config['target_frame']}, flip {'off' if args.no_flip else 'on'}); test: {len(test_seqs)} sequences; "
              f"model {params / 1e6:.3f} M parameters, backend {args.backend}, device {info.device}, "
              f"{info.world_size} process(es), amp {amp_dtype or 'off'}; out {out_dir}", flush=True)
        if test_seqs:
            baseline = mean_pose_baseline(train_seqs, test_seqs)["mpjpe"]["Average"]
            print(f"mean-pose baseline (predict the training mean pose): test MPJPE {baseline:.1f} mm",
                  flush=True)
    if nothing_to_train:  # --epochs 0, or a finished checkpoint: evaluate, write nothing
        if info.is_main:
            why = (f"{args.resume} finished {start_epoch} of --epochs {args.epochs}" if checkpoint is not None
                   else f"--epochs {args.epochs}")
            print(f"nothing to train ({why}): evaluating the model as it stands; no file is written",
                  flush=True)
            if test_seqs:
                result = evaluate_sequences(model, test_seqs, stride=args.eval_stride, flip_symmetry=flip,
                                            batch_size=args.eval_batch_size)
                mpjve = result["mpjve"]["Average"] if result["mpjve"] else None
                print(f"epoch {start_epoch}  test MPJPE {_fmt(result['mpjpe']['Average'])}  "
                      f"P-MPJPE {_fmt(result['p_mpjpe']['Average'])}  MPJVE {_fmt(mpjve)} mm", flush=True)
        if info.distributed:
            dist.destroy_process_group()
        return 0

    progress = not args.no_progress
    for epoch in range(start_epoch, args.epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        elif isinstance(loader.sampler, RandomSampler):
            loader.sampler.generator.manual_seed(args.seed + epoch)
        torch.manual_seed(args.seed + 7919 * epoch + info.rank)  # dropout masks differ per rank
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_mm, samples = train_epoch(ddp_model, loader, optimizer, info, amp_dtype, scaler,
                                        args.max_batches, progress, f"epoch {epoch + 1}/{args.epochs}")
        scheduler.step()
        epoch_s = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": f"{lr:.6g}", "train_mpjpe_mm": f"{train_mm:.3f}",
               "train_samples": samples, "epoch_s": f"{epoch_s:.1f}"}
        if info.is_main:
            result = None
            t1 = time.perf_counter()
            if test_seqs:
                result = evaluate_sequences(model, test_seqs, stride=args.eval_stride, flip_symmetry=flip,
                                            batch_size=args.eval_batch_size)
                row.update(test_mpjpe_mm=f"{result['mpjpe']['Average']:.3f}",
                           test_p_mpjpe_mm=f"{result['p_mpjpe']['Average']:.3f}",
                           test_mpjve_mm=f"{result['mpjve']['Average']:.3f}" if result["mpjve"] else "")
            row["eval_s"] = f"{time.perf_counter() - t1:.1f}"
            test_mm = result["mpjpe"]["Average"] if result else math.nan
            improved = result is not None and test_mm < best
            best = min(best, test_mm) if result is not None else best
            epoch_metrics = {"train_mpjpe_mm": train_mm, "test_mpjpe_mm": test_mm,
                             "best_test_mpjpe_mm": best}
            _append_csv(os.path.join(out_dir, "log.csv"), row)
            if writer is not None:
                for key in ("train_mpjpe_mm", "test_mpjpe_mm", "test_p_mpjpe_mm", "test_mpjve_mm"):
                    if row.get(key):
                        writer.add_scalar(key, float(row[key]), epoch + 1)
                writer.add_scalar("lr", lr, epoch + 1)
            state = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                         epoch=epoch + 1, metrics=epoch_metrics, args=_plain(vars(args)))
            if improved:
                save_checkpoint(os.path.join(out_dir, "best.pt"), **state)
            # last: once last.pt holds an epoch, so do the log and best.pt
            save_checkpoint(os.path.join(out_dir, "last.pt"), **state)
            mpjve = result["mpjve"]["Average"] if result and result["mpjve"] else None
            print(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.3g}  train MPJPE {train_mm:.1f} mm  "
                  f"test MPJPE {_fmt(test_mm)}  P-MPJPE {_fmt(result['p_mpjpe']['Average'] if result else None)}  "
                  f"MPJVE {_fmt(mpjve)} mm  ({epoch_s:.0f} s train, {row['eval_s']} s eval)"
                  f"{'  *best' if improved else ''}", flush=True)
        if info.distributed:
            dist.barrier()
    if writer is not None:
        writer.close()
    if info.distributed:
        dist.destroy_process_group()
    return 0


def _plain(values: dict) -> dict:
    """Arguments as plain values (a checkpoint loads with ``weights_only=True``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
            if v is None or isinstance(v, (bool, int, float, str, list, tuple))}
