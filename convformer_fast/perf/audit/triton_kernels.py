"""The Triton kernels: launch plans -> compile jobs -> compiled for a target -> rows.

The launch plans of :mod:`convformer_fast.triton.ops` (the arguments the ops really pass)
are built from "meta" tensors for each shape and dtype, and ``kernel.warmup`` compiles them
under a stand-in driver that names the target GPU (:func:`.internals.compiling_for`), so
Triton applies the same specialisations (integer arguments equal to 1 or divisible by 16,
pointer alignment) as on the GPU. Every autotune configuration the autotuner may pick
(after its own pruning) is compiled. Triton's ptxas log gives registers, spills, barriers
and static shared memory; its metadata the dynamic shared memory; ``cuobjdump -sass`` of
the cubin the instructions.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import importlib
import io
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from .errors import AuditError
from .internals import (INTERPRET_ENV_VAR, InternalChanged, autotune_candidates, compiling_for, jit_function,
                        rerun_ptxas, triton_imported_interpreted, under_autotuner, without_interpreter)
from .parsers import mma_summary, parse_ptxas_log, parse_sass
from .rules import judge_row
from .shapes import DTYPE_TAGS, LayerShape
from .targets import gpu_targets
from .tools import sass_of_cubin


def triton_ops():
    """convformer_fast.triton.ops with compiled (not interpreted) kernels. Triton defines
    its own library functions (tl.cdiv, ...) when it is imported, so it too must have been
    imported without TRITON_INTERPRET."""
    with without_interpreter():
        kernels = sys.modules.get("convformer_fast.triton.kernels")
        if triton_imported_interpreted() or (kernels is not None and kernels.INTERPRETED):
            raise AuditError(f"triton or the kernels were imported with {INTERPRET_ENV_VAR}=1 in "
                             "this process; run the audit in a fresh process without it "
                             "(convformer-fast kernels does)")
        from ...triton import ops
    return ops


def kernel_name(kernel) -> str:
    return jit_function(kernel).fn.__name__


def defined_triton_kernels() -> dict[str, Any]:
    """Every public kernel (jit, autotuned or heuristics) of convformer_fast.triton.kernels."""
    from triton.runtime.jit import KernelInterface

    triton_ops()
    from ...triton import kernels

    return {name: obj for name, obj in vars(kernels).items()
            if isinstance(obj, KernelInterface) and not name.startswith("_")}


def dot_precision_issues(paths: Iterable[str] | None = None) -> list[str]:
    """Every ``tl.dot`` must say ``input_precision``: on a GPU fp32 inputs default to TF32,
    while the interpreter (our CPU tests) computes exact fp32."""
    import convformer_fast

    package_dir = os.path.dirname(os.path.abspath(convformer_fast.__file__))
    if paths is None:
        paths = sorted(glob.glob(os.path.join(package_dir, "triton", "*.py")))
    issues = []
    for path in paths:
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "dot"):
                continue
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if owner_name not in ("tl", "language"):
                continue
            keywords = {k.arg for k in node.keywords}
            where = f"{os.path.relpath(path, os.path.dirname(package_dir))}:{node.lineno}"
            if "allow_tf32" in keywords:
                issues.append(f"{where}: tl.dot uses the deprecated allow_tf32; say input_precision")
            elif "input_precision" not in keywords:
                issues.append(f"{where}: tl.dot without input_precision (fp32 would be TF32 on a GPU)")
    return issues


# ------------------------------------------------------------------ launch plans -> jobs


def layer_launches(shape: LayerShape, dtype_tag: str, sm_count: int) -> list:
    """The kernel launches of one layer's forward and backward (projection, attention), as
    the ops plan them, from meta tensors."""
    ops = triton_ops()
    dtype, allow_tf32 = DTYPE_TAGS[dtype_tag], dtype_tag == "tf32"
    c = shape.features if shape.layout == "spatial" else shape.tokens
    meta = dict(device="meta", dtype=dtype)
    x = torch.empty((shape.n, shape.tokens, shape.features), **meta)
    weight = torch.empty((3 * c, c, max(shape.kernel_sizes)), **meta)
    bias = torch.empty((3 * c,), **meta)
    qkv, forward = ops.qkv_projection_plan(x, weight, bias, shape.heads, shape.layout, allow_tf32)
    _, backward = ops.qkv_projection_backward_plan(qkv, x, weight, shape.heads, shape.layout,
                                                   allow_tf32, sm_count)
    (out, lse), attention = ops.attention_plan(qkv, allow_tf32)
    _, attention_bwd = ops.attention_backward_plan(out, qkv, out, lse, allow_tf32)
    return forward + backward + attention + attention_bwd


def _plain_args(args: tuple) -> tuple:
    """Tensors -> their dtype (Triton's warmup mocks them: only dtype and 16-byte pointer
    alignment, which every torch allocation has, shape the compiled code)."""
    return tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args)


@dataclass
class CompileJob:
    """All variants of one kernel and configuration for one target; compiled together so
    that Triton's in-memory cache shares identical specialisations."""

    kernel_ref: tuple[str, str]        # (module, attribute) to import in a worker
    arch: int
    config: dict
    variants: list[tuple[int, tuple, dict]]  # (variant id, plain args, kwargs)
    fresh: bool = False                # ignore Triton's disk cache (compile everything)


@dataclass
class TritonVariant:
    """One launch of one kernel for one shape and dtype."""

    kernel: str
    shape: LayerShape
    dtype: str
    args: tuple
    kwargs: dict
    grid: Callable
    arg_names: list[str]


def plan_triton(shapes: Sequence[LayerShape], dtype_tags: Sequence[str], archs: Sequence[int],
                kernel_filter: Callable[[str], bool] = lambda name: True, fresh: bool = False
                ) -> tuple[list[TritonVariant], list[CompileJob], set[str]]:
    """Variants, the compile jobs that cover every candidate configuration of each on each
    target, and the kernels launched."""
    variants: list[TritonVariant] = []
    jobs: dict[tuple, CompileJob] = {}
    launched: set[str] = set()
    for shape in shapes:
        for tag in dtype_tags:
            for arch in archs:
                for launch in layer_launches(shape, tag, gpu_targets()[arch].sms):
                    name = kernel_name(launch.kernel)
                    launched.add(name)
                    if not kernel_filter(name):
                        continue
                    args = _plain_args(launch.args)
                    variant_id = len(variants)
                    variants.append(TritonVariant(name, shape, tag, args, launch.kwargs,
                                                  launch.grid, jit_function(launch.kernel).arg_names))
                    ref = (jit_function(launch.kernel).module, name)
                    for config in autotune_candidates(launch.kernel, launch.args, launch.kwargs):
                        key = (name, arch, json.dumps(config, sort_keys=True))
                        job = jobs.setdefault(key, CompileJob(ref, arch, config, [], fresh))
                        job.variants.append((variant_id, args, launch.kwargs))
    return variants, list(jobs.values()), launched


# ------------------------------------------------------------ compile under a target


_ANALYSED: dict[str, dict] = {}  # compiled hash -> analysis, per process


def _resolve(ref: tuple[str, str]):
    with without_interpreter():
        return getattr(importlib.import_module(ref[0]), ref[1])


def _error_text(exc: BaseException, log: str = "") -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = next((line.strip() for line in (str(exc) + "\n" + log).splitlines()
                   if "error" in line.lower() and line.strip() != first), "")
    return f"{type(exc).__name__}: {first[:300]}" + (f" | {detail[:300]}" if detail else "")


def _ptxas_again(compiled, arch: int, sass: str) -> str:
    """ptxas's log for a kernel Triton took from its disk cache (no ptxas ran). Its machine
    code must be the cached kernel's instruction for instruction (only debug sections may
    differ), so the log describes exactly that binary."""
    cubin, log = rerun_ptxas(compiled, arch)
    if cubin != compiled.asm["cubin"] and sass_of_cubin(cubin) != sass:
        raise AuditError(f"{compiled.metadata.name}: ptxas did not reproduce the cached kernel; "
                         "clear Triton's cache (~/.triton/cache) and rerun")
    return log


def _analyse_compiled(compiled, ptxas_log: str, arch: int) -> dict:
    name = compiled.metadata.name
    sass = sass_of_cubin(compiled.asm["cubin"])
    if f"Compiling entry function '{name}'" not in ptxas_log:
        ptxas_log = _ptxas_again(compiled, arch, sass)
    records = parse_ptxas_log(ptxas_log)
    resources = next((r for (a, f), r in records.items() if f == name and r.get("entry")), None)
    if resources is None or "registers" not in resources:
        raise AuditError(f"{name}: no report of it in ptxas's log")
    counts = next((c for (a, f), c in parse_sass(sass).items() if f == name), Counter())
    ttir = compiled.asm.get("ttir", "")
    return dict(
        registers=resources["registers"], spill_stores=resources.get("spill_stores", 0),
        spill_loads=resources.get("spill_loads", 0), stack_bytes=resources.get("stack_bytes", 0),
        barriers=resources.get("barriers", 0), static_smem=resources.get("static_smem", 0),
        dynamic_smem=compiled.metadata.shared, threads=compiled.metadata.num_warps * 32,
        num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
        has_dot="tt.dot" in ttir, mma=mma_summary(counts), hash=compiled.hash,
    )


def compile_job(job: CompileJob, kernel=None) -> list[dict]:
    """Compile every variant of a job; one result per variant (analysis, or error)."""
    kernel = kernel if kernel is not None else _resolve(job.kernel_ref)
    inner = under_autotuner(kernel)
    results = []
    with compiling_for(job.arch, job.fresh):
        for variant_id, args, kwargs in job.variants:
            log = io.StringIO()
            try:
                start = _cpu_seconds()
                with contextlib.redirect_stdout(log):
                    compiled = inner.warmup(*args, grid=(1,), **kwargs, **job.config)
                if compiled.hash not in _ANALYSED:
                    _ANALYSED[compiled.hash] = _analyse_compiled(compiled, log.getvalue(), job.arch)
                    _ANALYSED[compiled.hash]["cpu_seconds"] = round(_cpu_seconds() - start, 2)
                results.append(dict(variant=variant_id, **_ANALYSED[compiled.hash]))
            except InternalChanged:
                raise  # not a finding about the kernel: the audit cannot go on
            except Exception as exc:  # a failure to compile is a finding: report it
                results.append(dict(variant=variant_id, error=_error_text(exc, log.getvalue())))
    return results


def _cpu_seconds() -> float:
    """CPU time of this process and of the tools it ran (ptxas, cuobjdump)."""
    import resource

    own, tools = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + tools.ru_utime + tools.ru_stime


def _worker_init() -> None:
    os.environ.pop(INTERPRET_ENV_VAR, None)
    triton_ops()


def run_jobs(jobs: Sequence[CompileJob], workers: int, progress: bool) -> list[tuple[CompileJob, list[dict]]]:
    """Compile the jobs, in ``workers`` processes (1: in this process), with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="compile job", desc="compiling", leave=False, file=sys.stderr,
               disable=None if progress else True)
    done = []
    try:
        if workers <= 1:
            for job in jobs:
                done.append((job, compile_job(job)))
                bar.update()
        else:
            import concurrent.futures as futures
            import multiprocessing

            # Longest first: the attention kernels compile slowest.
            order = sorted(jobs, key=lambda j: ("attention" not in j.kernel_ref[1], -len(j.variants)))
            with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init) as pool:
                pending = {pool.submit(compile_job, job): job for job in order}
                for future in futures.as_completed(pending):
                    done.append((pending[future], future.result()))
                    bar.update()
    finally:
        bar.close()
    return done


def collect_triton_rows(variants: Sequence[TritonVariant], results) -> list[dict]:
    """One row per distinct compiled kernel (or compile error), with the shapes using it."""
    rows: dict[tuple, dict] = {}
    for job, job_results in results:
        config = dict(job.config)
        for result in job_results:
            variant = variants[result["variant"]]
            key = (variant.kernel, job.arch, result.get("hash") or result.get("error"),
                   json.dumps(config, sort_keys=True), variant.dtype)
            row = rows.get(key)
            if row is None:
                row = {k: v for k, v in result.items() if k != "variant"}
                row.update(source="triton", kernel=variant.kernel, arch=job.arch, dtype=variant.dtype,
                           config=config, layouts=[], shapes=[], programs={})
                rows[key] = row
            if variant.shape.layout not in row["layouts"]:
                row["layouts"].append(variant.shape.layout)
            row["shapes"].append(variant.shape.label)
            meta = {**dict(zip(variant.arg_names, variant.args)), **variant.kwargs, **config}
            row["programs"][variant.shape.label] = int(torch.Size(variant.grid(meta)).numel())
    order = {name: i for i, name in enumerate(dict.fromkeys(v.kernel for v in variants))}
    ordered = sorted(rows.values(), key=lambda r: (order[r["kernel"]], r["layouts"], r["dtype"], r["arch"],
                                                   -r.get("threads", 0), json.dumps(r["config"])))
    return [judge_row(row, gpu_targets()[row["arch"]], strict_mma=True) for row in ordered]
