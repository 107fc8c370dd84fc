"""What every ``convformer-fast`` command parses the same way: presets, dtypes, devices,
backends, threads. Bad input raises :class:`UsageError`, which the command prints as one
line (``convformer-fast <command>: error: ...``) with exit code 2.
"""

from __future__ import annotations

import sys

import torch

from ..backends import AUTO, BACKENDS, available_backends, select_backend
from ..perf.machine import available_cores
from ..presets import PRESETS


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit code 2."""


DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: Every other spelling a command accepts for a dtype.
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp64": "float64", "double": "float64",
                 "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def split_list(values) -> list[str]:
    """Repeatable, comma-separated option values as one flat list."""
    out = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def parse_presets(values, default: str) -> list[str]:
    presets = split_list(values) or [default]
    for preset in presets:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    return list(dict.fromkeys(presets))


def parse_dtype(value: str) -> torch.dtype:
    name = DTYPE_ALIASES.get(value, value)
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {value!r}; available: {', '.join(DTYPES)} "
                         f"(or {', '.join(DTYPE_ALIASES)})")
    return DTYPES[name]


def parse_device(value: str) -> str:
    """A device type that exists here: ``cpu``, or ``cuda`` where a GPU is visible."""
    if value == "cpu":
        return value
    if value == "cuda" and torch.cuda.is_available():
        return value
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    raise UsageError(f"device {value!r} is not available here; available: {', '.join(available)}")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if available, else the CPU) or a torch device string (``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def usable_backends(device: str) -> list[str]:
    return [name for name, info in available_backends().items()
            if info.available and device in info.devices]


def check_backend(name: str, device: str, extra: tuple[str, ...] = ()) -> str:
    """A backend name usable on ``device`` (``auto`` resolved), or a UsageError listing the
    usable ones; ``extra`` names more choices a command accepts (e.g. ``compile``)."""
    usable = usable_backends(device)
    listing = ", ".join(list(extra) + usable)
    if name in extra or name in usable:
        return name
    if name == AUTO:
        return select_backend(AUTO, torch.empty(0, device=device)).name
    if name in BACKENDS:
        reason = available_backends()[name].reason or f"it does not run on {device!r}"
        raise UsageError(f"backend {name!r} is unavailable here ({reason}); available: {listing}")
    raise UsageError(f"unknown backend {name!r}; available: {listing}")


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` for a ``--threads`` option (None: torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    cores = available_cores()
    if threads > cores:
        print(f"warning: --threads {threads} exceeds the {cores} cores available here; "
              "continuing (expect oversubscription)", file=sys.stderr)
    torch.set_num_threads(threads)


def add_runtime_arguments(parser) -> None:
    """``--device`` and ``--threads`` of the pose commands."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice). On a machine shared with "
                             "other jobs, 1 avoids OpenMP oversubscription, which can cost 5-10x")
