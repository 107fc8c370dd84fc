"""The audit: settings in, the whole report (a JSON-able dict) out."""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from typing import Sequence

from .cuda_kernels import audit_cuda, source_root
from .errors import AuditError
from .estimate import roofline_rows
from .internals import check_triton
from .report import row_label
from .shapes import DTYPE_TAGS, LAYOUTS, PAPER_PRESETS, layer_shapes
from .targets import gpu_targets
from .tools import toolchain
from .triton_kernels import collect_triton_rows, defined_triton_kernels, dot_precision_issues, plan_triton, run_jobs


@dataclass
class AuditSettings:
    presets: Sequence[str] = PAPER_PRESETS
    batches: Sequence[int] = (1, 64)
    layouts: Sequence[str] = LAYOUTS
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16")
    archs: Sequence[int] = (80, 90)
    triton: bool = True
    cuda: bool = True
    kernels: Sequence[str] = ()          # substrings of kernel names; empty: all
    workers: int = 1
    progress: bool = True
    fresh: bool = False                  # compile everything, ignoring Triton's disk cache
    source_root: str | None = None       # checkout with setup.py and csrc/; default: ours


def run_audit(settings: AuditSettings) -> dict:
    """Compile, analyse and judge; the whole report as a JSON-able dict (``ok`` is False
    when anything fails)."""
    targets = gpu_targets()
    for arch in settings.archs:
        if arch not in targets:
            raise AuditError(f"unknown target sm_{arch}; available: {', '.join(t.name for t in targets.values())}")
    for tag in settings.dtypes:
        if tag not in DTYPE_TAGS:
            raise AuditError(f"unknown dtype {tag!r}; available: {', '.join(DTYPE_TAGS)}")

    def wanted(name: str) -> bool:
        return not settings.kernels or any(k in name for k in settings.kernels)

    if settings.triton:
        check_triton()  # before any work: a changed internal fails in one line, not deep inside

    report: dict = dict(
        title="Kernel audit: compiled and analysed here, not run on a GPU",
        toolchain=toolchain(),
        settings=dict(presets=list(settings.presets), batches=list(settings.batches),
                      layouts=list(settings.layouts), dtypes=list(settings.dtypes),
                      archs=list(settings.archs), kernels=list(settings.kernels)),
        targets={t.name: asdict(t) for a, t in targets.items() if a in settings.archs},
        triton=[], cuda=[], notes=[], source_issues=[], roofline=[],
    )
    failures: list[str] = []
    shapes = layer_shapes(settings.presets, settings.batches, settings.layouts)
    if settings.triton:
        report["source_issues"] = dot_precision_issues()
        failures += [f"source: {issue}" for issue in report["source_issues"]]
        variants, jobs, launched = plan_triton(shapes, settings.dtypes, settings.archs, wanted,
                                               settings.fresh)
        for name in sorted(set(defined_triton_kernels()) - launched):
            failures.append(f"triton {name}: no launch plan reaches it, so it is not audited "
                            "(add it to a plan in convformer_fast/triton/ops.py)")
        report["triton_compiles"] = sum(len(j.variants) for j in jobs)
        report["triton"] = collect_triton_rows(variants, run_jobs(jobs, settings.workers, settings.progress))
        report["triton_compile_cpu_seconds"] = round(sum(r.get("cpu_seconds", 0) for r in report["triton"]), 1)
        report["roofline"] = roofline_rows(shapes, settings.dtypes, settings.archs)
    if settings.cuda:
        root = settings.source_root or source_root()
        if root is None:
            report["notes"].append("CUDA kernels not audited: no source checkout next to the "
                                   "installed package (pass --source-root)")
        elif not glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")):
            report["notes"].append(f"no CUDA sources in {root}/csrc/cuda")
        else:
            rows, notes = audit_cuda(root, settings.archs, settings.workers)
            report["cuda"] = [r for r in rows if wanted(r["kernel"])]
            report["notes"] += notes
    for row in report["triton"] + report["cuda"]:
        for problem in row["failures"]:
            failures.append(f"{row['source']} {row_label(row)}: {problem}")
    report["failures"] = failures
    report["ok"] = not failures
    return report
