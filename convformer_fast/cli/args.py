"""What every ``convformer-fast`` command parses the same way: presets, dtypes, devices,
backends, threads, and the ranges of numeric options (:class:`Range`, an argparse ``type``
that rejects an out-of-range value while the command line is parsed). Bad input raises
:class:`UsageError`, which :func:`convformer_fast.cli.app.main` prints as one line
(``convformer-fast <command>: error: ...``) with exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from ..backends import AUTO, BACKENDS, available_backends, select_backend
from ..errors import UsageError
from ..perf.machine import available_cores
from ..presets import PRESETS

__all__ = ["UsageError", "Range", "POSITIVE_INT", "COUNT", "POSITIVE", "NON_NEGATIVE", "PROBABILITY",
           "ODD_POSITIVE_INT", "SEED", "split_list", "parse_presets", "parse_dtype", "parse_device",
           "resolve_device", "usable_backends", "check_backend", "set_threads", "add_runtime_arguments"]


class Range:
    """An argparse ``type``: parse an ``int`` or a finite ``float`` and check its range.

    ``Range(int, low=1)`` accepts 1, 2, ...; ``Range(float, 0, 1, high_open=True)``
    accepts [0, 1). A value out of range, not a number, NaN or infinite ends the parse
    with ``argument --x: got '...', expected <the range>`` (exit code 2)."""

    def __init__(self, kind=int, low=None, high=None, *, low_open=False, high_open=False, odd=False):
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open, self.odd = low_open, high_open, odd
        what = ("an odd integer" if odd else "an integer") if kind is int else "a finite number"
        if low is not None and high is not None:
            what += f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            what += f" {'>' if low_open else '>='} {low}"
        elif high is not None:
            what += f" {'<' if high_open else '<='} {high}"
        self.expected = what
        self.__name__ = what  # argparse names the type in some of its own messages

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {self.expected}") from None
        bad = (self.kind is float and not math.isfinite(value)) or (self.odd and value % 2 == 0)
        if self.low is not None:
            bad |= value <= self.low if self.low_open else value < self.low
        if self.high is not None:
            bad |= value >= self.high if self.high_open else value > self.high
        if bad:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {self.expected}")
        return value

    def __repr__(self) -> str:
        return f"Range({self.expected})"


POSITIVE_INT = Range(int, low=1)
COUNT = Range(int, low=0)  # epochs, depths, workers
ODD_POSITIVE_INT = Range(int, low=1, odd=True)  # kernel sizes (padding k // 2 keeps the length)
SEED = Range(int, 0, 2**32 - 1)
POSITIVE = Range(float, low=0, low_open=True)
NON_NEGATIVE = Range(float, low=0)
PROBABILITY = Range(float, 0, 1, high_open=True)  # dropout rates


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
    """``auto`` (CUDA if available, else the CPU) or a torch device string (``cpu``,
    ``cuda``, ``cuda:1``) that exists here; anything else is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = "auto, cpu" + (", cuda" + "".join(f", cuda:{i}" for i in range(gpus)) if gpus else "")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: got {name!r}, expected one of {available}") from None
    if device.type == "cpu" and device.index in (None, 0):
        return torch.device("cpu")
    if device.type == "cuda" and gpus and (device.index is None or device.index < gpus):
        return device
    raise UsageError(f"--device: {name!r} is not available here; available: {available}")


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
    if threads < 1:  # the parser's Range rejects it first; this guards library callers
        raise UsageError(f"--threads must be >= 1, got {threads}")
    cores = available_cores()
    if threads > cores:
        print(f"warning: --threads {threads} exceeds the {cores} cores available here; "
              "continuing (expect oversubscription)", file=sys.stderr)
    torch.set_num_threads(threads)


def add_runtime_arguments(parser) -> None:
    """``--device`` and ``--threads`` of the pose commands."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda:1, ...")
    parser.add_argument("--threads", type=POSITIVE_INT, default=None,
                        help="CPU threads for torch (default: torch's choice). On a machine shared with "
                             "other jobs, 1 avoids OpenMP oversubscription, which can cost 5-10x")
