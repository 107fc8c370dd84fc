"""Finds the CUDA toolkit for builds and decides whether ``_C`` gets its CUDA kernels
(stdlib only: setup.py loads this file by path before torch's build helpers are imported,
the Makefile runs it to configure CMake, and the test suite checks the build against
:func:`cuda_build`, so the rule is written once).

    python convformer_fast/toolchain.py cuda-home     the toolkit root, or nothing
    python convformer_fast/toolchain.py cmake-args    -D flags that let find_package(Torch)
                                                       find CUDA for a CUDA build of torch
    python convformer_fast/toolchain.py cuda-build    1 or 0, then why
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import sysconfig


def cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit of `nvcc` on PATH (following a wrapper script that execs
    the real compiler, as on the development machines)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if head.startswith(b"#!"):
        match = re.search(rb"(/\S+)/bin/nvcc\b", head)
        return match.group(1).decode() if match else None
    return os.path.dirname(os.path.dirname(nvcc))


FORCE_CUDA_ENV_VAR = "FORCE_CUDA"


def cuda_build(torch_cuda_version: str | None, environ=None) -> tuple[bool, str]:
    """Whether ``convformer_fast._C`` is built with its CUDA kernels, and why.

    ``FORCE_CUDA=1``: yes (e.g. a machine whose nvcc is not on PATH but CUDA_HOME is);
    ``FORCE_CUDA=0``: no; unset: wherever torch is a CUDA build
    (``torch_cuda_version = torch.version.cuda``) and nvcc is found, GPU or not, so CI
    compiles and links the CUDA sources on a machine without a GPU."""
    environ = os.environ if environ is None else environ
    forced = environ.get(FORCE_CUDA_ENV_VAR, "")
    if forced not in ("", "0", "1"):
        raise ValueError(f"{FORCE_CUDA_ENV_VAR}: got {forced!r}, expected 1, 0 or unset")
    if forced:
        return forced == "1", f"{FORCE_CUDA_ENV_VAR}={forced}"
    home = cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    if torch_cuda_version is None:
        return False, f"torch is not a CUDA build ({FORCE_CUDA_ENV_VAR} unset)"
    if nvcc is None or not os.path.exists(nvcc):
        return False, f"nvcc not found (no CUDA_HOME, no nvcc on PATH; {FORCE_CUDA_ENV_VAR} unset)"
    return True, f"torch is a CUDA {torch_cuda_version} build and nvcc is at {nvcc} ({FORCE_CUDA_ENV_VAR} unset)"


def cmake_args() -> list[str]:
    args = []
    home = cuda_home()
    if home:
        args.append(f"-DCUDA_TOOLKIT_ROOT_DIR={home}")
    # A pip-installed CUDA torch ships NVRTC in the nvidia wheels, not in the toolkit.
    site = sysconfig.get_paths()["purelib"]
    nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
    if nvrtc:
        args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "cuda-home"
    if what == "cuda-home":
        print(cuda_home() or "")
    elif what == "cmake-args":
        print(" ".join(cmake_args()))
    elif what == "cuda-build":
        import torch

        wanted, why = cuda_build(torch.version.cuda)
        print(int(wanted), why)
    else:
        sys.exit(f"usage: {sys.argv[0]} cuda-home|cmake-args|cuda-build")
