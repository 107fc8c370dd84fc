"""The audit's report as text (``convformer-fast kernels``) and as Markdown tables
(``--markdown``). The JSON (``--json``) is the report dict itself."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from .cuda_kernels import DEFAULT_CUDA_THREADS
from .parsers import mma_label


def row_label(row: dict) -> str:
    config = row.get("config") or {}
    tiles = "x".join(str(config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in config)
    extra = f" {tiles} w{config['num_warps']} s{config['num_stages']}" if "num_warps" in config else ""
    layout = f" {'+'.join(row['layouts'])}" if row.get("layouts") else ""
    return f"{row['kernel']} [sm_{row['arch']} {row['dtype']}{layout}{extra}]"


def row_mma_label(row: dict) -> str:
    return "no matmul" if row.get("has_dot") is False else mma_label(row["mma"])


def _span(values: Sequence, fmt: Callable = str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"


def _kib(n: int) -> str:
    return f"{n / 1024:.0f}" if n >= 1024 or n == 0 else f"{n / 1024:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _limits(rows: Sequence[dict]) -> str:
    counts = Counter(b for r in rows if "occupancy" in r for b in r["occupancy"]["binding"])
    return ", ".join(name for name, _ in counts.most_common(2)) or "-"


def triton_summary(rows: Sequence[dict]) -> list[list[str]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kernel"], "+".join(row["layouts"]), row["dtype"], row["arch"]), []).append(row)
    table = []
    for (kernel, layout, dtype, arch), group in groups.items():
        ok = [r for r in group if "error" not in r]
        spilling = [r for r in ok if r["spill_stores"] or r["spill_loads"] or r["stack_bytes"]]
        mma = sorted({row_mma_label(r) for r in ok})
        table.append([
            kernel, layout, dtype, f"sm_{arch}", str(len(group)),
            _span([r["registers"] for r in ok]),
            f"{len(spilling)} of {len(group)}" if spilling else "0",
            _span([r["static_smem"] + r["dynamic_smem"] for r in ok], _kib),
            _span([r["threads"] for r in ok]),
            _span([r["occupancy"]["occupancy"] for r in ok], lambda v: f"{v:.0%}"),
            _limits(ok), ", ".join(mma) or "-",
            "FAIL" if any(r["failures"] for r in group) else "ok",
        ])
    return table


SUMMARY_HEADER = ["kernel", "layout", "dtype", "arch", "cfgs", "regs", "spilling", "smem KiB",
                  "threads", "occupancy", "limited by", "MMA", ""]


def detail_rows(rows: Sequence[dict]) -> list[list[str]]:
    table = []
    for r in rows:
        if "error" in r:
            table.append([row_label(r), "-", "-", "-", "-", "-", "-", "-", "-", "does not compile"])
            continue
        occ = r["occupancy"]
        table.append([
            row_label(r), str(r["registers"]), f"{r['spill_stores']}/{r['spill_loads']}",
            str(r["stack_bytes"]), f"{r['static_smem']}+{'?' if r['dynamic_smem'] is None else r['dynamic_smem']}",
            str(r["threads"]) + ("" if r.get("threads_declared", True) else "*"),
            f"{occ['occupancy']:.0%}", ", ".join(occ["binding"]), row_mma_label(r),
            "; ".join(r["failures"]) or "ok",
        ])
    return table


DETAIL_HEADER = ["kernel [target dtype layout config]", "regs", "spill st/ld B", "stack B",
                 "smem B static+dyn", "threads", "occupancy", "limited by", "MMA", ""]


def roofline_table(rows: Sequence[dict], gpus: Sequence[str]) -> list[list[str]]:
    table = []
    for r in rows:
        table.append([r["shape"], r["dtype"], r["name"],
                      f"{r['gflop']:.3f}", f"{r['gflop_executed']:.3f}", f"{r['mbytes']:.1f}"]
                     + [f"{r['us'][g]:.1f}{'c' if r['compute_bound'][g] else 'm'}" for g in gpus])
    return table


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    cells = lambda r: "| " + " | ".join(str(c).replace("|", "/") for c in r) + " |"  # noqa: E731
    return [cells(header), "|" + "---|" * len(header)] + [cells(r) for r in rows]


def format_markdown(report: dict) -> str:
    """The summary tables as Markdown (for READMEs), with the provenance line."""
    tc = report["toolchain"]
    st = report["settings"]
    out = [f"Compiled and analysed here, not run on a GPU: `convformer-fast kernels` on {tc['date']}, "
           f"torch {tc['torch']}, triton {tc['triton']} (its ptxas: {tc['triton_ptxas']}), "
           f"nvcc {tc['nvcc']}. Shapes: {', '.join(st['presets'])} at batch "
           f"{', '.join(map(str, st['batches']))}, {' and '.join(st['layouts'])} layers, "
           f"{', '.join(st['dtypes'])}; targets "
           + ", ".join(f"{n} ({t['gpu']})" for n, t in report["targets"].items()) + "."]
    if report["triton"]:
        out += ["", f"Triton kernels ({len(report['triton'])} distinct compiles; ranges over the "
                    "autotune configurations each kernel may pick):", ""]
        out += _markdown(SUMMARY_HEADER[:-1] + ["status"], triton_summary(report["triton"]))
    if report["cuda"]:
        out += ["", f"CUDA kernels (`csrc/cuda/*.cu` as setup.py builds them; * = no `__launch_bounds__`, "
                    f"{DEFAULT_CUDA_THREADS} threads assumed):", ""]
        out += _markdown([h or "status" for h in DETAIL_HEADER], detail_rows(report["cuda"]))
    out += ["", "Result: " + ("no failures." if report["ok"] else f"{len(report['failures'])} failure(s).")]
    return "\n".join(out) + "\n"


def format_report(report: dict, detail: bool = False, roofline: bool = True) -> str:
    tc = report["toolchain"]
    out = [report["title"],
           f"date {tc['date']}; torch {tc['torch']}, triton {tc['triton']} (ptxas {tc['triton_ptxas']}), "
           f"nvcc {tc['nvcc']}",
           (("shapes: presets {presets}, batch {batches}, layouts {layouts}; dtypes {dtypes}; "
             if report["triton"] else "") + "targets {targets}").format(
               presets=",".join(report["settings"]["presets"]),
               batches=",".join(map(str, report["settings"]["batches"])),
               layouts=",".join(report["settings"]["layouts"]),
               dtypes=",".join(report["settings"]["dtypes"]),
               targets=", ".join(f"{n} ({t['gpu']}, {t['sms']} SMs)" for n, t in report["targets"].items()))]
    if report["triton"]:
        out += ["", f"Triton kernels: every candidate autotune config, {len(report['triton'])} distinct "
                    f"compiles for {report.get('triton_compiles', 0)} (shape, dtype, config, target) launches, "
                    f"{report.get('triton_compile_cpu_seconds', 0):.0f} CPU-s"]
        out += _table(SUMMARY_HEADER, triton_summary(report["triton"]))
        if detail:
            out += ["", "Triton kernels, per compiled configuration"]
            out += _table(DETAIL_HEADER, detail_rows(report["triton"]))
    if report["cuda"]:
        out += ["", "CUDA kernels (csrc/cuda/*.cu as setup.py compiles them; * = no __launch_bounds__, "
                    f"{DEFAULT_CUDA_THREADS} threads assumed; dynamic shared memory is set at launch, '?')"]
        out += _table(DETAIL_HEADER, detail_rows(report["cuda"]))
    if roofline and report["roofline"]:
        gpus = [t["gpu"] for t in report["targets"].values()]
        out += ["", "Roofline ESTIMATE per kernel (not a measurement): max(executed FLOPs / peak, "
                    "minimum bytes / bandwidth); c = compute-bound, m = memory-bound; eager rows: "
                    "the reference ops the kernels replace"]
        out += _table(["shape", "dtype", "kernel", "GFLOP", "GFLOP exec", "min MB"] + [f"{g} us" for g in gpus],
                      roofline_table(report["roofline"], gpus))
    for note in report["notes"]:
        out.append(f"note: {note}")
    if report["failures"]:
        out += ["", f"FAILED: {len(report['failures'])} problem(s)"] + [f"  {f}" for f in report["failures"]]
    else:
        n = len(report["triton"]) + len(report["cuda"])
        out += ["", f"OK: {n} compiled kernels; no spills or local memory, shared memory within every "
                    "target, every kernel resident, tensor-core use as the dtype requires"]
    return "\n".join(out)
