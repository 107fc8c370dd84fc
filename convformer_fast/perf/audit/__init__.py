"""GPU-less kernel audit: compile every Triton and CUDA kernel for sm_80 (A100) and sm_90
(H100) and report what the compilers say about it (``convformer-fast kernels``;
docs/kernel-audit.md).

Nothing here runs on a GPU; the GPU compilers do not need one. Triton kernels are compiled
through their own launch path for every shape, dtype and autotune configuration the ops
can launch; CUDA kernels with the exact nvcc command of setup.py. From ptxas's report, the
machine code and Triton's metadata: theoretical occupancy and the limit that binds,
tensor-core use, and a roofline estimate beside the eager ops the kernels replace.

A kernel fails the audit if it spills registers or uses local memory, needs more shared
memory per block than the target allows, cannot be resident on an SM, does not compile, or
(Triton) turns an fp16/bf16 product into anything but tensor-core MMA or an exact-fp32
product into TF32. Every ``tl.dot`` in ``convformer_fast/triton`` must state its
``input_precision``, and every Triton kernel must be reached by a launch plan.

Modules, in the order the audit uses them:

* :mod:`.shapes`: the paper's layers and the dtype tags (what is audited);
* :mod:`.targets`: the GPUs (shared memory per block read from ``_C``) and the occupancy
  model;
* :mod:`.internals`: every private torch / Triton internal the audit relies on, checked;
* :mod:`.tools`: running ptxas, cuobjdump, nvcc, c++filt; the toolchain's versions;
* :mod:`.parsers`: their output (ptxas -v logs, SASS, ELF launch bounds) as data;
* :mod:`.triton_kernels`: launch plans -> compile jobs -> compiled for a target -> rows;
* :mod:`.cuda_kernels`: setup.py's nvcc command -> compiled objects -> rows;
* :mod:`.rules`: what fails a kernel;
* :mod:`.estimate`: roofline rows;
* :mod:`.run`: :class:`AuditSettings` -> :func:`run_audit` -> the report dict;
* :mod:`.report`: the report as text and Markdown.
"""

from __future__ import annotations

from .cuda_kernels import analyse_cuda_object
from .errors import AuditError
from .estimate import roofline_rows
from .internals import CHECKED_AGAINST, INTERPRET_ENV_VAR
from .parsers import mma_label, mma_summary, parse_max_threads, parse_ptxas_log, parse_sass
from .report import format_markdown, format_report
from .rules import judge_row, tensor_core_problem
from .run import AuditSettings, run_audit
from .shapes import DTYPE_TAGS, LAYOUTS, PAPER_PRESETS, LayerShape, dtype_tag, layer_shapes
from .targets import GpuTarget, Occupancy, gpu_targets, occupancy
from .tools import toolchain
from .triton_kernels import CompileJob, compile_job, dot_precision_issues, triton_ops


def __getattr__(name: str):
    # TARGETS is read from convformer_fast._C on first use, so that importing the audit
    # works (and its parsers can be used) where _C is missing.
    if name == "TARGETS":
        return gpu_targets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuditError", "AuditSettings", "CHECKED_AGAINST", "CompileJob", "DTYPE_TAGS", "GpuTarget",
    "INTERPRET_ENV_VAR", "LAYOUTS", "LayerShape", "Occupancy", "PAPER_PRESETS", "TARGETS",
    "analyse_cuda_object", "compile_job", "dot_precision_issues", "dtype_tag", "format_markdown",
    "format_report", "gpu_targets", "judge_row", "layer_shapes", "mma_label", "mma_summary",
    "occupancy", "parse_max_threads", "parse_ptxas_log", "parse_sass", "roofline_rows", "run_audit",
    "tensor_core_problem", "toolchain", "triton_ops",
]
