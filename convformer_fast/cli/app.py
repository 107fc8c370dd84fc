"""The ``convformer-fast`` command.

    convformer-fast info                 versions, backends built and usable, CPU, threads
    convformer-fast check [--preset P]   forward pass of a preset through every available
                                         backend, max deviation from eager
    convformer-fast bench / flops        timing per backend; FLOPs and paper Table 5
    convformer-fast kernels              compile every Triton/CUDA kernel for sm_80/sm_90 (no
                                         GPU): registers, spills, occupancy, tensor cores
    convformer-fast train / eval / infer pose training, the paper's tables, video inference
    convformer-fast export               the folded model as ONNX or an AOTInductor package
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from .. import __version__, ops
from ..backends import available_backends
from ..fast import ConvFormerFast
from ..perf import commands as perf_commands
from ..perf.machine import cpu_model
from ..pose.commands import add_pose_commands
from ..presets import PRESETS
from .export import add_export_parser
from ..reference import ConvFormer


def cmd_info(args) -> int:
    import os

    print(f"convformer_fast {__version__}")
    print(f"python          {platform.python_version()}")
    print(f"torch           {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}, "
          f"CUDA available: {torch.cuda.is_available()})")
    try:
        import triton

        print(f"triton          {triton.__version__}")
    except ImportError:
        print("triton          not installed")
    print(f"cpu             {cpu_model()}, {os.cpu_count()} logical cores, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"threads         torch.get_num_threads() = {torch.get_num_threads()}")
    state = "loaded" if ops.extension_loaded() else f"not usable: {ops.EXTENSION_ERROR}"
    print(f"_C              {state}; CUDA kernels built: {ops.cuda_kernels_built()}")
    print("backends:")
    for name, info in available_backends().items():
        state = "available" if info.available else f"unavailable: {info.reason}"
        print(f"  {name:<14} {state}")
        print(f"  {'':<14} {info.description}; devices {list(info.devices)}; "
              f"deterministic on {list(info.deterministic_devices)}")
        if info.handoff:
            print(f"  {'':<14} hands a layer to {info.handoff!r} when " + "; or when ".join(info.handoff_when))
    return 0


def cmd_check(args) -> int:
    torch.manual_seed(0)
    reference = ConvFormer.from_preset(args.preset).eval()
    x = torch.randn(args.batch, reference.num_frames, reference.num_joints, 2)
    with torch.inference_mode():
        expected = reference(x)
    print(f"{args.preset}: batch {args.batch}, output {tuple(expected.shape)}, fp32, eval")
    print(f"{'backend':<14} {'max |fast - eager|':>20}")
    worst = 0.0
    for name, info in available_backends().items():
        if not info.available or "cpu" not in info.devices:
            continue
        fast = ConvFormerFast.from_reference(reference, backend=name)
        with torch.inference_mode():
            deviation = (fast(x) - expected).abs().max().item()
        worst = max(worst, deviation)
        print(f"{name:<14} {deviation:>20.3e}")
    skipped = [n for n, i in available_backends().items() if not i.available]
    if skipped:
        print(f"not run (unavailable here): {', '.join(skipped)}")
    return 0 if worst < 1e-3 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convformer-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends, CPU").set_defaults(func=cmd_info)
    check = sub.add_parser("check", help="run a preset through every backend vs eager")
    check.add_argument("--preset", default="h36m-243", choices=sorted(PRESETS))
    check.add_argument("--batch", type=int, default=1)
    check.set_defaults(func=cmd_check)
    perf_commands.add_subcommands(sub)  # bench, flops, kernels
    add_pose_commands(sub)  # train, eval, infer
    add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for commands that rerun themselves in a clean process
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
