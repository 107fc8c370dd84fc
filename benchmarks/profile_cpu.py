"""Where a backend's time goes in one forward: time, FLOPs and GFLOP/s per op.

    PYTHONPATH=. python benchmarks/profile_cpu.py --preset h36m-81 --batch 16 --threads 2
        [--backend cpu] [--calls 10] [--json out.json]

The model (random weights of the preset, fp32, eval, ``inference_mode``) runs ``--calls``
forwards under ``torch.profiler``; each op is charged to the outermost op it ran inside (the
ATen calls a fused ``convformer_fast::`` op makes are part of that op's time, not rows of
their own). FLOPs per op come from PyTorch's ``FlopCounterMode`` with this package's formulas
(one multiply-add = 2 FLOPs), the same count ``bench`` uses, so a row's GFLOP/s sets its time
against the work it does; the last column compares that with an n^3 matmul timed in the same
process just before and after the profile. The profiler costs a few microseconds per op: the
sum of the rows is printed beside the forward's unprofiled median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import convformer_fast as cf
from convformer_fast.perf.flops import flop_counter_flops, model_inputs
from convformer_fast.perf.machine import cpu_model, git_commit

# Rows of the table: the package's ops by name, every other outermost op (LayerNorm and the
# residual adds of unfused halves, the embedding and the head) together.
OTHER = "other (ATen)"


def op_row(name: str) -> str:
    """The row an op is charged to; ``name`` as the profiler (``ns::op``) or the FLOP
    counter (``ns.op``) spells it."""
    namespace, _, op = name.replace("::", ".").partition(".")
    return op if namespace == "convformer_fast" else OTHER


def charge_to_outermost(events, calls: int) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and calls per row and per forward, from profiler events: only outermost
    events count, each with its children's time inside its own."""
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in events:
        if event.cpu_parent is None:
            seconds[op_row(event.name)] += event.cpu_time_total / 1e6 / calls
            count[op_row(event.name)] += 1
    return seconds, {name: n // calls for name, n in count.items()}


def matmul_gflops(n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def profile_forward(model: torch.nn.Module, x: torch.Tensor, calls: int, matmul_size: int) -> dict:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        wall = []
        for _ in range(calls):
            start = time.perf_counter()
            model(x)
            wall.append(time.perf_counter() - start)
        peak_before = matmul_gflops(matmul_size)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
        peak_after = matmul_gflops(matmul_size)
        flops = flop_counter_flops(lambda: model(x))
    seconds, count = charge_to_outermost(prof.events(), calls)
    work: dict[str, int] = defaultdict(int)
    for name, n in flops.by_op.items():
        work[op_row(name)] += n
    peak = (peak_before + peak_after) / 2
    total_s = sum(seconds.values())
    rows = []
    for name in sorted(seconds, key=seconds.get, reverse=True):
        gflops = work[name] / seconds[name] / 1e9 if seconds[name] else 0.0
        rows.append(dict(op=name, calls=count[name], ms=seconds[name] * 1e3,
                         share=seconds[name] / total_s, gflop=work[name] / 1e9, gflops_per_s=gflops,
                         of_matmul=gflops / peak))
    return dict(rows=rows, profiled_ms=total_s * 1e3, forward_ms=statistics.median(wall) * 1e3,
                flops=flops.total, matmul_gflops_per_s=[peak_before, peak_after])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="h36m-81")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10, help="forwards profiled")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.preset not in cf.PRESETS:
        parser.error(f"--preset: got {args.preset!r}, expected one of {', '.join(cf.PRESETS)}")
    if args.batch < 1 or args.calls < 1 or args.threads < 1:
        parser.error("--batch, --calls and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = cf.ConvFormerFast.from_preset(args.preset, backend=args.backend).eval()
    result = profile_forward(model, model_inputs(model, args.batch), args.calls, args.matmul_size)
    meta = dict(date=datetime.date.today().isoformat(), cpu=cpu_model(), threads=args.threads,
                preset=args.preset, batch=args.batch, backend=args.backend, commit=git_commit())
    peak = result["matmul_gflops_per_s"]
    print(f"{args.preset}, batch {args.batch}, backend {args.backend}, {args.threads} threads, "
          f"{meta['cpu']}, {meta['date']}, commit {meta['commit']}")
    print(f"forward {result['forward_ms']:.1f} ms unprofiled (median of {args.calls}), rows sum to "
          f"{result['profiled_ms']:.1f} ms profiled; {result['flops'] / 1e9:.2f} GFLOP; "
          f"{args.matmul_size}^3 matmul {peak[0]:.0f} / {peak[1]:.0f} GFLOP/s before / after")
    print("| op | calls per forward | ms | share | GFLOP | GFLOP/s | % of matmul |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['op']} | {r['calls']} | {r['ms']:.1f} | {r['share']:.0%} | {r['gflop']:.2f} "
              f"| {r['gflops_per_s']:.0f} | {r['of_matmul']:.0%} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, **result}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
