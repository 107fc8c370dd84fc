"""Finds the CUDA toolkit for builds (stdlib only: setup.py loads this file by path before
torch's build helpers are imported, and the Makefile runs it to configure CMake).

    python convformer_fast/toolchain.py cuda-home     the toolkit root, or nothing
    python convformer_fast/toolchain.py cmake-args    -D flags that let find_package(Torch)
                                                       find CUDA for a CUDA build of torch
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
    else:
        sys.exit(f"usage: {sys.argv[0]} cuda-home|cmake-args")
