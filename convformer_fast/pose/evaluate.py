"""Evaluation on Human3.6M (or any list of sequences): Protocols I-III per action.

``convformer-fast eval --checkpoint run/best.pt --data-dir data/h36m`` prints the paper's
table layout: one row per protocol (MPJPE, P-MPJPE, MPJVE, in mm), the 15 Human3.6M
actions in the paper's column order and their average (the mean of the per-action means,
as the literature reports it).

Every frame of every test sequence is a target (its own edge-padded window, cut around the
model's target frame: centred, or ending with it for a causal model); predictions
come from :func:`~convformer_fast.pose.lifting.lift_sequence` (the spatial part computed
once per frame) with flip test-time augmentation by default. The predicted root joint is
set to zero, as the targets are root-relative. MPJVE is the error of the first temporal
differences of consecutive predictions within each sequence, so it needs every frame
(``stride=1``); with a larger stride it is not reported.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

from . import metrics
from .data.skeleton import H36M_17
from .data.windows import PoseSequence
from .lifting import lift_sequence
from ..atomic import check_writable, write_json
from ..cli.args import POSITIVE_INT, UsageError, add_runtime_arguments, check_backend, resolve_device, set_threads

__all__ = ["PROTOCOLS", "evaluate_sequences", "format_table", "add_arguments", "run"]

#: (key, table label) of the three protocols.
PROTOCOLS = (("mpjpe", "Protocol #1 MPJPE (mm)"), ("p_mpjpe", "Protocol #2 P-MPJPE (mm)"),
             ("mpjve", "Protocol #3 MPJVE (mm)"))


def h36m_flip_symmetry(metadata: Optional[dict] = None) -> tuple:
    """``(kps_left, kps_right, joints_left, joints_right)`` for flip TTA on H36M-17."""
    left, right = (metadata["keypoints_symmetry"] if metadata else
                   (H36M_17.joints_left, H36M_17.joints_right))
    return list(left), list(right), list(H36M_17.joints_left), list(H36M_17.joints_right)


def evaluate_sequences(model, sequences: Sequence[PoseSequence], to_mm: float = 1000.0,
                       stride: int = 1, flip_symmetry: Optional[tuple] = None,
                       batch_size: int = 1024, root: int = 0, progress: bool = False) -> dict:
    """Protocols I-III per action over every (``stride``-th) frame of ``sequences``.

    Args:
        model: a ConvFormer (any mode; evaluated in eval mode).
        sequences: sequences with ``target_3d``.
        to_mm: factor from the sequences' unit to mm (1000 for metres).
        stride: evaluate every ``stride``-th frame (MPJVE only at 1).
        flip_symmetry: see :func:`~convformer_fast.pose.lifting.lift_sequence`.
        batch_size: windows per batch.
        root: root joint, zeroed in the prediction.

    Returns:
        ``{"mpjpe": per-action dict with "Average", "p_mpjpe": ..., "mpjve": ... or None,
        "frames": number of evaluated frames}``.
    """
    errors = {"mpjpe": [], "p_mpjpe": [], "mpjve": []}
    actions = {"mpjpe": [], "mpjve": []}
    iterator = sequences
    if progress:
        from tqdm import tqdm
        iterator = tqdm(sequences, desc="eval", unit="seq", leave=False)
    for seq in iterator:
        centers = np.arange(0, seq.num_frames, stride)
        if seq.valid is not None:
            centers = centers[seq.valid[centers]]
        if len(centers) == 0:
            continue
        pred = lift_sequence(model, seq.inputs_2d, centers, batch_size=batch_size,
                             flip_symmetry=flip_symmetry).astype(np.float64)
        pred[:, root] = 0.0
        pred *= to_mm
        target = seq.target_3d[centers].astype(np.float64) * to_mm
        errors["mpjpe"].append(metrics.mpjpe_per_sample(pred, target))
        errors["p_mpjpe"].append(metrics.p_mpjpe_per_sample(pred, target))
        actions["mpjpe"] += [seq.action] * len(centers)
        if stride == 1 and seq.valid is None and len(centers) >= 2:
            errors["mpjve"].append(metrics.mpjve_per_sample(pred, target))
            actions["mpjve"] += [seq.action] * (len(centers) - 1)
    if not actions["mpjpe"]:
        raise ValueError("sequences: got no frame to evaluate, expected at least one")
    result = {
        "mpjpe": metrics.per_action(np.concatenate(errors["mpjpe"]), actions["mpjpe"]),
        "p_mpjpe": metrics.per_action(np.concatenate(errors["p_mpjpe"]), actions["mpjpe"]),
        "mpjve": (metrics.per_action(np.concatenate(errors["mpjve"]), actions["mpjve"])
                  if actions["mpjve"] else None),
        "frames": len(actions["mpjpe"]),
    }
    return result


def mean_pose_baseline(train_sequences: Sequence[PoseSequence], test_sequences: Sequence[PoseSequence],
                       to_mm: float = 1000.0) -> dict:
    """The error of always predicting the training set's mean pose (a floor any model must beat)."""
    mean = np.concatenate([s.target_3d for s in train_sequences]).astype(np.float64).mean(0)
    errors, acts = [], []
    for seq in test_sequences:
        target = seq.target_3d.astype(np.float64)
        errors.append(metrics.mpjpe_per_sample(np.broadcast_to(mean, target.shape) * to_mm, target * to_mm))
        acts += [seq.action] * len(target)
    return {"mpjpe": metrics.per_action(np.concatenate(errors), acts)}


def format_table(result: dict, title: str = "") -> str:
    """The paper's layout: a row per protocol, the 15 H36M actions (those present) then
    any other actions, and ``Avg``."""
    columns = [k for k in result["mpjpe"] if k != "Average"]
    if all(c in metrics.H36M_ACTIONS for c in columns):
        columns = list(metrics.H36M_ACTIONS)  # fixed layout; missing actions print "-"
    width = max(6, max(len(c) for c in columns) + 1)
    label_width = max(len(label) for _, label in PROTOCOLS) + 1
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'':<{label_width}}" + "".join(f"{c:>{width}}" for c in columns) + f"{'Avg':>{width}}")
    for key, label in PROTOCOLS:
        row = result.get(key)
        if row is None:
            cells = [f"{'-':>{width}}"] * (len(columns) + 1)
        else:
            values = [row.get(c) for c in columns] + [row["Average"]]
            cells = [f"{'-':>{width}}" if v is None else f"{v:>{width}.1f}" for v in values]
        lines.append(f"{label:<{label_width}}" + "".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `convformer-fast train`")
    parser.add_argument("--data-dir", default="data/h36m",
                        help="folder with data_3d_h36m.npz and data_2d_h36m_<keypoints>.npz")
    parser.add_argument("--keypoints", default="gt", help="2D detector file suffix (gt, cpn_ft_h36m_dbb, ...)")
    parser.add_argument("--subjects", nargs="+", default=None, help="default: the test split S9 S11")
    parser.add_argument("--actions", nargs="+", default=None, help="only these actions")
    parser.add_argument("--deepmimic", action="store_true",
                        help="evaluate on the bundled DeepMimic real-motion clips instead of --data-dir")
    parser.add_argument("--stride", type=POSITIVE_INT, default=1, help="evaluate every n-th frame (MPJVE needs 1)")
    parser.add_argument("--no-flip-tta", action="store_true", help="disable flip test-time augmentation")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=1024)
    parser.add_argument("--backend", default="auto")
    add_runtime_arguments(parser)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def run(args) -> int:
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .datasets import deepmimic_sequences, h36m_sequences

    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.backend != "auto":
        check_backend(args.backend, device.type)
    check_writable(args.json, "--json")
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, backend=args.backend, device=device)
    if args.deepmimic:
        sequences, metadata = deepmimic_sequences(), None
        title = "DeepMimic real-motion clips (converted from pybullet_data)"
    else:
        subjects = args.subjects or "test"
        sequences, metadata = h36m_sequences(args.data_dir, args.keypoints, subjects, actions=args.actions)
        title = f"Human3.6M {args.data_dir} ({args.keypoints} 2D), subjects {subjects}"
    if model.num_joints != sequences[0].inputs_2d.shape[1]:
        raise UsageError(f"--checkpoint: model has num_joints={model.num_joints}, the data has "
                         f"{sequences[0].inputs_2d.shape[1]} joints")
    flip = None if args.no_flip_tta else h36m_flip_symmetry(metadata)
    result = evaluate_sequences(model, sequences, stride=args.stride, flip_symmetry=flip,
                                batch_size=args.batch_size, progress=sys.stderr.isatty())
    epoch = checkpoint.get("epoch", 0)
    print(format_table(result, f"{title}\ncheckpoint {args.checkpoint} (epoch {epoch}, T={model.num_frames}, "
                               f"target frame {model.target_frame}), "
                               f"{result['frames']} frames, flip TTA {'off' if flip is None else 'on'}"))
    if args.json:
        write_json(args.json, {k: (dict(v) if isinstance(v, OrderedDict) else v) for k, v in result.items()})
    return 0
