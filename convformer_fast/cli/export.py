"""``convformer-fast export``: the model as a file other runtimes load (docs/deploy.md).

    convformer-fast export --checkpoint best.pt --format onnx --out model.onnx
    convformer-fast export --preset h36m-243 --format aoti --out model.pt2   (random weights)

Bad input (an unknown format, a missing or damaged checkpoint, a path that cannot be
written, a backend that cannot be frozen) ends with one line on stderr naming the argument,
exit code 2, and no output file (docs/cli.md). An export that fails its own check against
the model (a bug, not a user error) exits 1 and also leaves no file.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .args import POSITIVE_INT, SEED, UsageError, parse_presets


def _parse_batch(value: str) -> int | str:
    if value == "dynamic":
        return value
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise UsageError(f"--batch: got {value!r}, expected 'dynamic' or a positive integer")
    return batch


def _model(args):
    """The ConvFormer to export: the checkpoint's, or a preset's with seeded random weights."""
    from ..pose.checkpoint import CheckpointError, model_from_checkpoint
    from ..reference import ConvFormer

    if (args.checkpoint is None) == (args.preset is None):
        raise UsageError("--checkpoint / --preset: got "
                         + ("both" if args.checkpoint else "neither") + ", expected exactly one")
    if args.checkpoint is not None:
        try:
            return model_from_checkpoint(args.checkpoint, backend="torch"), args.checkpoint
        except CheckpointError as error:
            raise UsageError(f"--checkpoint: {error}") from None
    preset = parse_presets([args.preset], args.preset)[0]
    torch.manual_seed(args.seed)
    return ConvFormer.from_preset(preset).eval(), f"preset {preset} (random weights, seed {args.seed})"


def cmd_export(args) -> int:
    from .. import export as E

    if args.format not in E.FORMATS:
        raise UsageError(f"--format: got {args.format!r}, expected one of {', '.join(E.FORMATS)} ("
                         + "; ".join(f"{k}: {v}" for k, v in E.FORMATS.items()) + ")")
    batch = _parse_batch(args.batch)
    if args.opset < E.MIN_OPSET:
        raise UsageError(f"--opset: got {args.opset}, expected an integer >= {E.MIN_OPSET}")
    backend = args.backend or ("torch" if args.format == "onnx" else "cpu")
    if args.format == "onnx" and backend != "torch":
        raise UsageError(f"--backend: got {backend!r} with --format onnx, expected torch (ONNX carries "
                         "standard ops only; --format aoti carries the cpu backend's C++ ops)")
    if args.unfolded and args.format != "onnx":
        raise UsageError(f"--unfolded: only with --format onnx, got --format {args.format}")
    E.check_freezable_backend(backend, "--backend")
    E.check_output_path(args.out, "--out")
    if args.format == "aoti" and not args.out.endswith(".pt2"):
        raise UsageError(f"--out: got {args.out!r}, expected a file name ending in .pt2 (AOTInductor packages)")
    model, source = _model(args)
    try:
        if args.format == "onnx":
            exported = E.to_onnx(model, args.out, batch, opset=args.opset, fold=not args.unfolded)
            what = f"ONNX opset {args.opset}, {'unfolded eager graph' if args.unfolded else 'folded, standard ops'}"
        else:
            exported = E.to_aoti(model, args.out, batch, backend=backend)
            what = f"AOTInductor package, backend {backend}"
    except E.ExportError as error:  # the written file failed its check: nothing was left behind
        print(f"convformer-fast export: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {exported.path} ({what}, batch {batch}) from {source}")
    if exported.checked_with:
        print(f"checked with {exported.checked_with}: max |exported - model| = {exported.max_abs_error:.2e} "
              f"on random keypoints (rtol/atol {E.CHECK_TOLERANCE[0]:g}/{E.CHECK_TOLERANCE[1]:g})")
    else:
        print(f"not checked: {exported.note}")
    return 0


def add_export_parser(sub) -> None:
    from ..export import DEFAULT_OPSET, FORMATS

    p = sub.add_parser("export", help="export the folded model: ONNX, or an AOTInductor package for C++",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="PATH", help="a checkpoint written by `convformer-fast train`")
    p.add_argument("--preset", metavar="P", help="a preset with seeded random weights (for benchmarking)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of --preset's random weights")
    p.add_argument("--format", required=True, metavar="F", help=", ".join(FORMATS))
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (.onnx, or .pt2 for aoti)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    p.add_argument("--opset", type=POSITIVE_INT, default=DEFAULT_OPSET, help=f"ONNX opset (>= 17, default {DEFAULT_OPSET})")
    p.add_argument("--backend", default=None,
                   help="backend of the frozen model: torch (standard ops; the only one for onnx) or cpu "
                        "(this package's C++ ops; default for aoti)")
    p.add_argument("--unfolded", action="store_true",
                   help="onnx: export the unfolded eager graph instead (for comparisons; about twice the work)")
    p.set_defaults(func=cmd_export)
