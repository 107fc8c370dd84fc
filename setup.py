"""Builds convformer_fast and its C++/CUDA extension convformer_fast._C.

Install with ``pip install --no-build-isolation -e .`` once torch is installed: the
extension compiles against the torch in your environment (an isolated build environment
would download and build against a different torch, and the ops would fail to load).

pyproject.toml names setuptools as the build backend, so pip always takes the standard
(PEP 517 / PEP 660) build path, with or without ``wheel`` installed.

Environment:
  FORCE_CUDA=1 / 0        build the CUDA kernels or not; unset, they are built where torch is
                          a CUDA build and nvcc is found, GPU or not (the one rule:
                          convformer_fast/toolchain.py cuda_build, which the tests check
                          the build against)
  TORCH_CUDA_ARCH_LIST    GPU targets, default "8.0;9.0" (A100, H100)
  CUDA_HOME               toolkit root; if unset and `nvcc` on PATH is a wrapper script that
                          execs the real compiler, its toolkit is used
  MAX_JOBS                parallel compile jobs (ninja)
  DEBUG=1                 -O0 -g
  NVCC_FLAGS              extra nvcc flags
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_toolchain():
    spec = importlib.util.spec_from_file_location(
        "toolchain", os.path.join(ROOT, "convformer_fast", "toolchain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toolchain = _load_toolchain()
# torch.utils.cpp_extension reads CUDA_HOME when it is imported.
_cuda_home = toolchain.cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

try:
    import torch  # noqa: E402
except ModuleNotFoundError as error:
    raise SystemExit(
        f"convformer_fast: the extension compiles against the installed torch, and this build "
        f"environment has none ({error}). Install torch first (`pip install -r requirements.txt`), "
        f"then build without pip's isolated environment: `pip install --no-build-isolation -e .`"
    ) from None
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    with_cuda, why = toolchain.cuda_build(torch.version.cuda)
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math lets branch-free float code (fast_exp.h) vectorise; torch uses it too.
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` in ATen's headers, so
    # without it every parallel loop of ours silently runs on one thread. The OpenMP
    # runtime resolves to the libgomp.so.1 torch has already loaded.
    cxx = opt + ["-std=c++20", "-fvisibility=hidden", "-Wall", "-Wno-unused-function",
                 "-fno-trapping-math", "-fno-math-errno", "-fopenmp"]
    # csrc/emulated/ runs the CUDA kernels' source on the CPU emulator: plain C++, always built.
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
                     + glob.glob(os.path.join("csrc", "emulated", "*.cpp")))
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        # Warnings in our kernels are errors; torch's own headers are outside -Werror's reach
        # because they come in through -isystem.
        nvcc = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-Xcompiler=-Wall",
                      "-Werror=all-warnings"]
        nvcc += os.environ.get("NVCC_FLAGS", "").split()
        extra["nvcc"] = nvcc
        ext_cls = CUDAExtension
    print(
        f"convformer_fast build: torch {torch.__version__}, cuda={with_cuda}: {why} "
        f"(CUDA_HOME={_cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}), "
        f"debug={debug}, sources={len(sources)}",
        file=sys.stderr,
    )
    return ext_cls(
        "convformer_fast._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "kernels")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )


setup(
    name="convformer_fast",
    version="0.1.0",
    description="Fused kernels and drop-in modules for ConvFormer 3D human pose estimation",
    packages=find_packages(include=["convformer_fast", "convformer_fast.*"]),
    # Converted DeepMimic clips used by the pose demos and tests.
    package_data={"convformer_fast.pose.data": ["motions/*.npz", "motions/*.md"]},
    python_requires=">=3.10",
    # 2.14.1 runs the whole suite in CI; 2.11 (the GPU machines') and 2.15 build and were
    # tested with tools/compat.sh (docs/compat.md). Older releases are untested.
    install_requires=["torch>=2.11", "numpy"],
    # `convformer-fast export --format onnx` and `bench --peers` (docs/deploy.md); the lower
    # bounds are the versions tested, not known limits.
    extras_require={"deploy": ["onnx>=1.23", "onnxscript>=0.7", "onnxruntime>=1.32", "openvino>=2026.4"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["convformer-fast=convformer_fast.cli.app:main"]},
    zip_safe=False,
)
