"""The ``bench`` and ``flops`` subcommands of ``convformer-fast`` (registered by cli.py).

    convformer-fast bench [--preset P ...] [--batch B] [--backends eager,compile,torch,cpu]
                          [--threads N] [--dtype float32] [--train] [--json PATH] [--plot PATH]
    convformer-fast flops [--preset P] [--batch B] [--backend auto] [--table5] [--roofline]
                          [--json PATH]

Bad input (unknown preset, backend or dtype, a backend unavailable here) ends with one
line on stderr that lists what is available, and exit code 2.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from .backends import AUTO, BACKENDS, available_backends

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp64": "float64", "double": "float64",
                 "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _split(values) -> list[str]:
    out = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def parse_presets(values, default: str) -> list[str]:
    from .presets import PRESETS

    presets = _split(values) or [default]
    for preset in presets:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    return list(dict.fromkeys(presets))


def parse_dtype(value: str) -> torch.dtype:
    name = DTYPE_ALIASES.get(value, value)
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {value!r}; available: {', '.join(DTYPES)}")
    return DTYPES[name]


def usable_backends(device: str) -> list[str]:
    return [name for name, info in available_backends().items()
            if info.available and device in info.devices]


def default_bench_backends(device: str) -> list[str]:
    """What ``bench`` times unless told: every usable backend but emulations (cuda_emulated
    runs the CUDA kernels on the CPU for tests; its time says nothing). ``--backends``
    still accepts them."""
    emulated = {name for name, info in available_backends().items() if info.emulated}
    return [name for name in usable_backends(device) if name not in emulated]


def parse_device(value: str) -> str:
    if value == "cpu":
        return value
    if value == "cuda" and torch.cuda.is_available():
        return value
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    raise UsageError(f"device {value!r} is not available here; available: {', '.join(available)}")


def check_backend(name: str, device: str, extra: tuple[str, ...] = ()) -> str:
    usable = usable_backends(device)
    listing = ", ".join(list(extra) + usable)
    if name in extra or name in usable:
        return name
    if name == AUTO:
        from .backends import select_backend

        return select_backend(AUTO, torch.empty(0, device=device)).name
    if name in BACKENDS:
        reason = available_backends()[name].reason or f"it does not run on {device!r}"
        raise UsageError(f"backend {name!r} is unavailable here ({reason}); available: {listing}")
    raise UsageError(f"unknown backend {name!r}; available: {listing}")


def set_threads(threads: int | None) -> None:
    from .bench import available_cores

    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    cores = available_cores()
    if threads > cores:
        print(f"warning: --threads {threads} exceeds the {cores} cores available here; "
              "continuing (expect oversubscription)", file=sys.stderr)
    torch.set_num_threads(threads)


def _write_json(path: str, data) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    from .bench import COMPILE, EAGER, BenchSettings, format_report, plot_report, run_bench

    try:
        device = parse_device(args.device)
        presets = parse_presets(args.preset, "h36m-243")
        dtype = parse_dtype(args.dtype)
        default = [EAGER, COMPILE] + [b for b in default_bench_backends(device) if b != EAGER]
        names = _split(args.backends) or default
        backends = list(dict.fromkeys(check_backend(n, device, (COMPILE,)) for n in names))
        compilers = torch.compiler.list_backends(exclude_tags=())
        if args.compile_backend not in compilers:
            raise UsageError(f"unknown torch.compile backend {args.compile_backend!r}; "
                             f"available: {', '.join(compilers)}")
        if args.batch < 1 or args.repeats < 1 or args.warmup < 1:
            raise UsageError("--batch, --repeats and --warmup must be >= 1")
        set_threads(args.threads)
    except UsageError as error:
        print(f"convformer-fast bench: error: {error}", file=sys.stderr)
        return 2
    settings = BenchSettings(
        presets=presets, batch=args.batch, backends=backends, dtype=dtype, device=device,
        train=args.train, warmup=args.warmup, repeats=args.repeats,
        min_sample_s=args.min_sample_ms / 1e3, matmul_size=args.matmul_size,
        progress=not args.no_progress, compile_backend=args.compile_backend,
    )
    report = run_bench(settings)
    print(format_report(report))
    if args.json:
        _write_json(args.json, report)
    if args.plot:
        plot_report(report, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(r["ok"] for r in report["results"]) else 1


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time the whole model per backend (eager, torch.compile, fast)",
                       description="Time the whole model per backend in one process.")
    p.add_argument("--preset", action="append", metavar="P",
                   help="preset(s), repeatable or comma-separated (default h36m-243)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", action="append", metavar="B,B",
                   help="eager, compile (torch.compile of eager) and fast backends; "
                        "default: eager, compile and every available one")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", action="store_true", help="time forward + backward + SGD step")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per implementation")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds")
    p.add_argument("--min-sample-ms", type=float, default=50.0,
                   help="back-to-back calls per sample until it lasts this long")
    p.add_argument("--matmul-size", type=int, default=1024, help="n of the n^3 reference matmul")
    p.add_argument("--compile-backend", default="inductor",
                   help="backend of the torch.compile baseline (default inductor)")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG chart of latency per backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)


# ------------------------------------------------------------------------------- flops


def _m(flops: int | float) -> str:
    return f"{flops / 1e6:,.1f}"


def _flops_report_dict(report) -> dict:
    return dict(total=report.total, params=report.params, by_op=report.by_op,
                by_stage=report.by_stage(), unsupported=report.unsupported, ignored=report.ignored)


def _print_uncounted(label: str, report) -> None:
    if report.unsupported:
        print(f"  {label}: UNCOUNTED ops (no FLOP formula): {report.unsupported}")
    else:
        print(f"  {label}: no uncounted ops")


def _print_breakdown(title: str, columns: list[str], rows: dict[str, list[int]]) -> None:
    print(f"\n{title}")
    print(f"  {'':<34}" + "".join(f"{c:>14}" for c in columns))
    for name, values in rows.items():
        print(f"  {name:<34}" + "".join(f"{_m(v):>14}" if v else f"{'-':>14}" for v in values))


def _breakdown_rows(reports: list, field: str) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, report in enumerate(reports):
        data = report.by_stage() if field == "stage" else report.by_op
        for key, value in data.items():
            rows.setdefault(key, [0] * len(reports))[i] = value
    return rows


def cmd_flops(args) -> int:
    from . import flops as F
    from . import roofline as R
    from .fast import ConvFormerFast
    from .reference import ConvFormer

    try:
        # --table5 alone covers every T; a single-preset section only when asked for.
        wanted = args.preset or not args.table5 or args.roofline
        presets = parse_presets(args.preset, "h36m-243") if wanted else []
        backend = check_backend(args.backend, "cpu")
        dtype = parse_dtype(args.dtype)
        gpus = _split(args.gpu) or list(R.GPU_SPECS)
        for gpu in gpus:
            if gpu not in R.GPU_SPECS:
                raise UsageError(f"unknown GPU {gpu!r}; available: {', '.join(R.GPU_SPECS)}")
        if args.batch < 1:
            raise UsageError("--batch must be >= 1")
    except UsageError as error:
        print(f"convformer-fast flops: error: {error}", file=sys.stderr)
        return 2
    out: dict = dict(convention="paper: one multiply-add = 2 FLOPs; elementwise ops and "
                                "normalisation not counted", backend=backend, presets={})
    incomplete = False
    for preset in presets:
        torch.manual_seed(0)
        eager = ConvFormer.from_preset(preset).eval()
        fast = ConvFormerFast.from_reference(eager, backend=backend)
        x = F.model_inputs(eager, args.batch)
        er, fr = F.count_flops(eager, x), F.count_flops(fast, x)
        with torch.no_grad():
            ec = F.flop_counter_flops(lambda: eager(x))
            fc = F.flop_counter_flops(lambda: fast(x))
        incomplete |= bool(er.unsupported or fr.unsupported or ec.uncounted or fc.uncounted)
        print(f"{preset}, batch {args.batch} (FLOPs as in the paper: one multiply-add = 2 FLOPs)")
        fast_label = f"fast model [{backend}] FLOPs"
        print(f"  {'parameters':<26}{er.params:>16,}")
        print(f"  {'eager model FLOPs':<26}{er.total:>16,}  ({er.total / 1e9:.3f} G)")
        print(f"  {fast_label:<26}{fr.total:>16,}  ({fr.total / 1e9:.3f} G, "
              f"{fr.total / er.total:.1%} of eager: the Q/K/V filters folded into one)")
        for label, fv, tc in (("eager", er, ec), (f"fast [{backend}]", fr, fc)):
            agree = "agrees" if fv.total == tc.total else f"DIFFERS by {tc.total - fv.total:+,}"
            print(f"  torch.utils.flop_counter, {label}: {tc.total:,} ({agree} with fvcore)"
                  + (f"; no formula for {tc.uncounted}" if tc.uncounted else ""))
        _print_uncounted("eager (fvcore)", er)
        _print_uncounted(f"fast [{backend}] (fvcore)", fr)
        print(f"  not counted by convention (calls): eager {er.ignored}; fast {fr.ignored}")
        _print_breakdown("  FLOPs (M) per op", ["eager", f"fast [{backend}]"], _breakdown_rows([er, fr], "op"))
        _print_breakdown("  FLOPs (M) per stage", ["eager", f"fast [{backend}]"],
                         _breakdown_rows([er, fr], "stage"))
        entry = dict(eager=_flops_report_dict(er), fast=_flops_report_dict(fr),
                     flop_counter=dict(eager=ec.total, fast=fc.total))
        if args.roofline:
            entry["roofline"] = _print_roofline(preset, args.batch, dtype, gpus)
        out["presets"][preset] = entry
        print()
    if args.table5:
        out["table5"] = _print_table5(backend)
    if args.json:
        _write_json(args.json, out)
    if incomplete:
        print("warning: some ops were left uncounted (see above)", file=sys.stderr)
    return 1 if incomplete else 0


def _print_table5(backend: str) -> list[dict]:
    from . import flops as F

    rows = F.table5(backend=backend)
    print("Paper Table 5 (ConvFormer rows, Human3.6M, one sample) next to this package's count")
    print("(paper columns are the paper's numbers; the others are counted now with fvcore)")
    header = (f"  {'T':>4} {'params paper M':>15} {'params ours M':>14} {'FLOPs paper M':>14} "
              f"{'eager M':>10} {'eager/paper':>12} {f'fast [{backend}] M':>16} {'fast/eager':>11}")
    print(header)
    for r in rows:
        print(f"  {r['frames']:>4} {r['paper_params_m']:>15.2f} {r['params_m']:>14.2f} "
              f"{r['paper_flops_m']:>14,.0f} {r['eager_flops_m']:>10,.1f} "
              f"{r['eager_vs_paper']:>+11.1%} {r['fast_flops_m']:>16,.1f} "
              f"{r['fast_flops_m'] / r['eager_flops_m']:>10.1%}")
    columns = [f"T={r['frames']}" for r in rows]
    _print_breakdown("  eager FLOPs (M) per op", columns, _breakdown_rows([r["eager"] for r in rows], "op"))
    _print_breakdown(f"  fast [{backend}] FLOPs (M) per op", columns,
                     _breakdown_rows([r["fast"] for r in rows], "op"))
    _print_breakdown("  eager FLOPs (M) per stage", columns,
                     _breakdown_rows([r["eager"] for r in rows], "stage"))
    _print_breakdown(f"  fast [{backend}] FLOPs (M) per stage", columns,
                     _breakdown_rows([r["fast"] for r in rows], "stage"))
    uncounted = {r["frames"]: (r["eager"].unsupported, r["fast"].unsupported) for r in rows
                 if r["eager"].unsupported or r["fast"].unsupported}
    print("  uncounted ops: " + (str(uncounted) if uncounted else "none"))
    return [dict(frames=r["frames"], paper_params_m=r["paper_params_m"], params_m=r["params_m"],
                 paper_flops_m=r["paper_flops_m"], eager_flops_m=r["eager_flops_m"],
                 fast_flops_m=r["fast_flops_m"], eager_vs_paper=r["eager_vs_paper"],
                 eager_by_op=r["eager"].by_op, fast_by_op=r["fast"].by_op) for r in rows]


def _print_roofline(preset: str, batch: int, dtype: torch.dtype, gpus: list[str]) -> dict:
    from . import roofline as R

    streams = R.model_traffic(preset, batch, dtype)
    name = str(dtype).replace("torch.", "")
    print(f"\n  ESTIMATE, not a measurement: roofline time on paper for {preset}, batch {batch}, {name}")
    print("  (op streams recorded on this CPU with a TorchDispatchMode; fused = minimum traffic of the")
    print("   design's kernels; time = sum over kernels of max(FLOPs/peak, bytes/bandwidth);")
    print(f"   '+launch' adds an assumed {R.LAUNCH_LATENCY_S * 1e6:.0f} us per kernel)")
    print(f"  {'':<36}{'kernels':>8}{'GFLOP':>9}{'MB moved':>10}" +
          "".join(f"{g + ' us':>11}{'+launch':>9}" for g in gpus))
    out = {}
    for label, kernels in streams.items():
        estimates = [R.roofline(kernels, g, dtype) for g in gpus]
        first = estimates[0]
        print(f"  {label:<36}{first.kernels:>8}{first.flops / 1e9:>9.3f}{first.bytes / 1e6:>10.1f}" +
              "".join(f"{e.time_s * 1e6:>11.1f}{e.time_with_launch_s * 1e6:>9.1f}" for e in estimates))
        out[label] = {e.gpu: vars(e) for e in estimates}
    for g in gpus:
        spec = R.GPU_SPECS[g]
        print(f"  {g}: {spec.source}")
    return out


def add_flops_parser(sub) -> None:
    p = sub.add_parser("flops", help="parameters and FLOPs of the eager and fast model (fvcore)",
                       description="Parameters and FLOPs (one multiply-add = 2 FLOPs) of the "
                                   "eager and fast model for a preset.")
    p.add_argument("--preset", action="append", metavar="P", help="default h36m-243")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backend", default=AUTO, help="backend of the fast model (default auto)")
    p.add_argument("--table5", action="store_true",
                   help="paper Table 5 next to our counts for T = 9, 27, 81, 143, 243")
    p.add_argument("--roofline", action="store_true",
                   help="memory traffic and a roofline estimate of GPU time, eager vs fused")
    p.add_argument("--gpu", action="append", metavar="G", help="GPUs of the estimate (A100, H100)")
    p.add_argument("--dtype", default="float32", help="dtype of the roofline estimate")
    p.add_argument("--json", metavar="PATH", help="write the counts as JSON")
    p.set_defaults(func=cmd_flops)


def add_subcommands(sub) -> None:
    """Register ``bench`` and ``flops`` on cli.py's subparsers."""
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
    add_bench_parser(sub)
    add_flops_parser(sub)
