"""The ``convformer-fast`` command.

    convformer-fast info                 versions, backends built and usable, CPU, threads
    convformer-fast check [--preset P]   forward pass of a preset through every available
                                         backend, max deviation from eager
    convformer-fast bench / flops        timing per backend; FLOPs and paper Table 5
    convformer-fast kernels              compile every Triton/CUDA kernel for sm_80/sm_90 (no
                                         GPU): registers, spills, occupancy, tensor cores
    convformer-fast train / eval / infer pose training, the paper's tables, video inference
    convformer-fast export               the folded model as ONNX or an AOTInductor package

Errors (docs/cli.md): a user error (bad argument, missing or damaged file, unwritable
output, unavailable backend or device) prints one line
``convformer-fast <command>: error: <what was given, what was expected>`` and exits 2;
``--debug`` (or CONVFORMER_FAST_DEBUG=1) adds the traceback. Any other exception is a bug:
its traceback is shown and the exit code is 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import traceback

import torch

from .. import __version__, ops
from ..backends import available_backends
from ..errors import UserError
from ..fast import ConvFormerFast
from ..perf import commands as perf_commands
from ..perf.machine import cpu_model
from ..pose.commands import add_pose_commands
from ..presets import PRESETS
from .export import add_export_parser
from ..reference import ConvFormer
from .args import POSITIVE_INT

#: Set to 1 for the traceback of user errors too (as ``--debug`` does).
DEBUG_ENV_VAR = "CONVFORMER_FAST_DEBUG"
#: Exit codes: success, a bug (Python's own code for an uncaught exception), a user error,
#: interrupted (128 + SIGINT), stdout closed early (128 + SIGPIPE, as `yes | head` reports it).
EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


def cmd_info(args) -> int:
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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are the one line of every other user error (no usage
    block; ``--help`` still prints it). Subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="convformer-fast", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("info", help="versions, backends, CPU").set_defaults(func=cmd_info)
    check = sub.add_parser("check", help="run a preset through every backend vs eager")
    check.add_argument("--preset", default="h36m-243", choices=sorted(PRESETS))
    check.add_argument("--batch", type=POSITIVE_INT, default=1)
    check.set_defaults(func=cmd_check)
    perf_commands.add_subcommands(sub)  # bench, flops, kernels
    add_pose_commands(sub)  # train, eval, infer
    add_export_parser(sub)
    # Every command, including those registered later, takes --debug after its name.
    for command in [parser, *sub.choices.values()]:
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=f"show the traceback of user errors too (or set {DEBUG_ENV_VAR}=1)")
    return parser


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quiet_known_noise() -> None:
    """torch logs "No CUDA runtime is found, using CUDA_HOME=..." whenever something imports
    torch.utils.cpp_extension on a machine without a GPU (torch.compile's inductor does, in
    `bench`): true, expected, and of no use to a user of these commands."""
    logging.getLogger("torch.utils.cpp_extension").addFilter(_DropMessage("No CUDA runtime is found"))


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (argparse exits with 2 itself on a bad
    command line). The one place where errors become exit codes: see the module docstring."""
    _quiet_known_noise()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse(argv)
    except SystemExit:  # --help, or a bad command line: flush here, where a closed pipe is caught
        _flush_stdout()
        raise
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")
    name = f"convformer-fast {args.command}"
    try:
        code = args.func(args)
        _flush_stdout()
        return code
    except UserError as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{name}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `convformer-fast info | head -3`
        return _stdout_closed()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's parser, so that the line names the command
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv  # for commands that rerun themselves in a clean process
    return args


def _flush_stdout() -> None:
    """Flush now: a closed pipe shows here (and exits quietly), not at interpreter exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        sys.exit(_stdout_closed())


def _stdout_closed() -> int:
    _discard_stdout()
    return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of what is left in
    the buffer does not fail again (and print 'Exception ignored ...')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
