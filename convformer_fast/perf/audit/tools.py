"""Running the GPU tools (ptxas, cuobjdump, nvcc, c++filt) and naming their versions."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterable, Sequence

import torch

from .internals import triton_tool


def run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)


def _tool_version(cmd: Sequence[str]) -> str:
    try:
        out = run(cmd, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return "not found"
    release = [line for line in out if "release" in line]
    return (release or out or ["?"])[-1].strip()


def toolchain() -> dict:
    """Versions of everything that shaped the numbers."""
    import triton

    from ...toolchain import cuda_home

    home = cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    return dict(
        date=datetime.date.today().isoformat(),
        torch=torch.__version__, triton=triton.__version__,
        triton_ptxas=_tool_version([triton_tool("ptxas"), "--version"]),
        nvcc=_tool_version([nvcc, "--version"]) if nvcc and os.path.exists(nvcc) else "not found",
        python=sys.version.split()[0],
    )


def demangle(names: Iterable[str]) -> dict[str, str]:
    """{mangled: demangled} by c++filt (names kept as they are without it)."""
    names = list(dict.fromkeys(names))
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = run([tool], input="\n".join(names) + "\n").stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def sass_of_cubin(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin held in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        return run([triton_tool("cuobjdump"), "-sass", path]).stdout
