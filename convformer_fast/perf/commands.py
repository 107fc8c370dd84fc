"""The ``bench``, ``flops`` and ``kernels`` subcommands of ``convformer-fast`` (registered by cli.py).

    convformer-fast bench [--preset P ...] [--batch B[,B...]] [--backends eager,compile,torch,cpu]
                          [--peers [P,P]] [--threads N] [--dtype float32] [--train] [--json PATH]
                          [--plot PATH]
    convformer-fast flops [--preset P] [--batch B] [--backend auto] [--table5] [--roofline]
                          [--json PATH]
    convformer-fast kernels [--quick] [--preset P] [--batch B] [--dtype D] [--arch A]
                            [--kernel NAME] [--only triton|cuda] [--detail] [--json PATH]

Bad input (unknown preset, backend or dtype, a backend unavailable here, a number out of
range) raises UsageError: one line on stderr that lists what is available, and exit code 2
(cli/app.py's main).
"""

from __future__ import annotations

import sys
import warnings

import torch

from ..backends import AUTO, available_backends
from ..atomic import check_writable, write_json, write_text
from ..cli.args import (
    DTYPES,
    POSITIVE,
    POSITIVE_INT,
    UsageError,
    check_backend,
    parse_device,
    parse_dtype,
    parse_presets,
    set_threads,
    split_list,
    usable_backends,
)


def default_bench_backends(device: str) -> list[str]:
    """What ``bench`` times unless told: every usable backend but emulations (cuda_emulated
    runs the CUDA kernels on the CPU for tests; its time says nothing). ``--backends``
    still accepts them."""
    emulated = {name for name, info in available_backends().items() if info.emulated}
    return [name for name in usable_backends(device) if name not in emulated]


def _write_json(path: str, data) -> None:
    write_json(path, data)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------- bench


def _bench_batches(values: str, presets: list[str]) -> tuple[int, dict[str, int]]:
    """``--batch``: one size for every preset, or one per preset, in order."""
    try:
        batches = [int(v) for v in split_list([values])]
    except ValueError:
        raise UsageError(f"--batch: got {values!r}, expected a positive integer or one per preset "
                         "(comma-separated)") from None
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch: got {values!r}, expected positive integers")
    if len(batches) == 1:
        return batches[0], {}
    if len(batches) != len(presets):
        raise UsageError(f"--batch: got {len(batches)} sizes for {len(presets)} presets ({', '.join(presets)}); "
                         "expected one size, or one per preset")
    return batches[0], dict(zip(presets, batches))


def _bench_peers(values: str | None, args, device: str, dtype) -> list[str]:
    from .peers import PEERS

    if values is None:
        return []
    names = list(PEERS) if values == "all" else split_list([values])
    for name in names:
        if name not in PEERS:
            raise UsageError(f"--peers: unknown peer {name!r}; available: {', '.join(PEERS)} (or all)")
    if args.train:
        raise UsageError("--peers: the peers are inference runtimes; got --train, expected inference")
    if device != "cpu" or dtype != torch.float32:
        raise UsageError(f"--peers: the peers run float32 on the CPU; got --device {device} "
                         f"--dtype {str(dtype).replace('torch.', '')}")
    return list(dict.fromkeys(names))


#: Backends whose forward bench also replays from a CUDA graph by default (on a GPU).
GRAPH_BACKENDS = ("cuda", "triton")


def _check_implementation(name: str, device: str) -> str:
    """A bench implementation: compile, a backend, or graph:<backend> (CUDA graph replay)."""
    from .bench import COMPILE, GRAPH_PREFIX

    if name.startswith(GRAPH_PREFIX):
        if device != "cuda":
            raise UsageError(f"{name!r}: CUDA graph replay needs --device cuda, got {device!r}")
        return GRAPH_PREFIX + check_backend(name.removeprefix(GRAPH_PREFIX), device)
    return check_backend(name, device, (COMPILE,))


def cmd_bench(args) -> int:
    from .bench import COMPILE, EAGER, GRAPH_PREFIX, BenchSettings, format_report, plot_report, run_bench

    device = parse_device(args.device)
    presets = parse_presets(args.preset, "h36m-243")
    dtype = parse_dtype(args.dtype)
    fast = [b for b in default_bench_backends(device) if b != EAGER]
    default = [EAGER, COMPILE] + fast
    if device == "cuda" and not args.train:
        default += [GRAPH_PREFIX + b for b in GRAPH_BACKENDS if b in fast]
    names = split_list(args.backends) or default
    backends = list(dict.fromkeys(_check_implementation(n, device) for n in names))
    compilers = torch.compiler.list_backends(exclude_tags=())
    if args.compile_backend not in compilers:
        raise UsageError(f"unknown torch.compile backend {args.compile_backend!r}; "
                         f"available: {', '.join(compilers)}")
    if args.plot:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if args.plot.rsplit(".", 1)[-1].lower() not in formats:
            raise UsageError(f"--plot: got {args.plot!r}, expected a file name ending in one of "
                             f"{', '.join('.' + f for f in formats)}")
    check_writable(args.json, "--json")
    check_writable(args.plot, "--plot")
    batch, batches = _bench_batches(args.batch, presets)
    peers = _bench_peers(args.peers, args, device, dtype)
    set_threads(args.threads)
    settings = BenchSettings(
        presets=presets, batch=batch, batches=batches, peers=peers, backends=backends, dtype=dtype, device=device,
        train=args.train, warmup=args.warmup, repeats=args.repeats,
        min_sample_s=args.min_sample_ms / 1e3, matmul_size=args.matmul_size,
        progress=not args.no_progress, compile_backend=args.compile_backend, tf32=args.tf32,
    )
    report = run_bench(settings)
    print(format_report(report))
    if args.json:
        _write_json(args.json, report)
    if args.plot:
        plot_report(report, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(r["ok"] or r["not_installed"] for r in report["results"]) else 1


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time the whole model per backend (eager, torch.compile, fast)",
                       description="Time the whole model per backend in one process.")
    p.add_argument("--preset", action="append", metavar="P",
                   help="preset(s), repeatable or comma-separated (default h36m-243)")
    p.add_argument("--batch", default="1", metavar="B[,B...]",
                   help="batch size: one for every preset, or one per preset in order (default 1)")
    p.add_argument("--backends", action="append", metavar="B,B",
                   help="eager, compile (torch.compile of eager) and fast backends; "
                        "default: eager, compile and every available one")
    p.add_argument("--peers", nargs="?", const="all", default=None, metavar="P,P",
                   help="race the runtimes people deploy with as well (default all): ONNX Runtime and "
                        "OpenVINO on the eager and the folded ONNX export, torch.compile of the folded "
                        "model (pip install 'convformer_fast[deploy]'); float32 inference on the CPU")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch.set_num_threads (the peers' runtimes get the same count)")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", action="store_true", help="time forward + backward + SGD step")
    p.add_argument("--warmup", type=POSITIVE_INT, default=3, help="warm-up calls per implementation")
    p.add_argument("--repeats", type=POSITIVE_INT, default=15, help="timed rounds")
    p.add_argument("--min-sample-ms", type=POSITIVE, default=50.0,
                   help="back-to-back calls per sample until it lasts this long")
    p.add_argument("--matmul-size", type=POSITIVE_INT, default=1024, help="n of the n^3 reference matmul")
    p.add_argument("--compile-backend", default="inductor",
                   help="backend of the torch.compile baseline (default inductor)")
    p.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                   help="TF32 for fp32 matmuls and convolutions on a GPU (default: torch's "
                        "settings, cuDNN on and matmuls off)")
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
    from ..fast import ConvFormerFast
    from ..reference import ConvFormer
    from . import flops as F
    from . import roofline as R

    # --table5 alone covers every T; a single-preset section only when asked for.
    wanted = args.preset or not args.table5 or args.roofline
    presets = parse_presets(args.preset, "h36m-243") if wanted else []
    backend = check_backend(args.backend, "cpu")
    dtype = parse_dtype(args.dtype)
    gpus = split_list(args.gpu) or list(R.GPU_SPECS)
    for gpu in gpus:
        if gpu not in R.GPU_SPECS:
            raise UsageError(f"unknown GPU {gpu!r}; available: {', '.join(R.GPU_SPECS)}")
    check_writable(args.json, "--json")
    if not F.fvcore_installed():
        raise UsageError("flops counts with fvcore, which is not installed here; expected "
                         "`pip install fvcore` (bench counts FLOPs without it)")
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
    p.add_argument("--batch", type=POSITIVE_INT, default=1)
    p.add_argument("--backend", default=AUTO, help="backend of the fast model (default auto)")
    p.add_argument("--table5", action="store_true",
                   help="paper Table 5 next to our counts for T = 9, 27, 81, 143, 243")
    p.add_argument("--roofline", action="store_true",
                   help="memory traffic and a roofline estimate of GPU time, eager vs fused")
    p.add_argument("--gpu", action="append", metavar="G", help="GPUs of the estimate (A100, H100)")
    p.add_argument("--dtype", default="float32", help="dtype of the roofline estimate")
    p.add_argument("--json", metavar="PATH", help="write the counts as JSON")
    p.set_defaults(func=cmd_flops)


# ------------------------------------------------------------------------------- kernels

#: What CI audits (tests/test_audit.py): the largest model's spatial and temporal layers at
#: batch 1, the tensor-core and the exact-fp32 path, both targets.
QUICK = dict(presets=["h36m-243"], batches=[1], dtypes=["bf16", "fp32"])


def _ints(values, what: str) -> list[int]:
    out = []
    for value in split_list(values):
        try:
            out.append(int(value.removeprefix("sm_")))
        except ValueError:
            raise UsageError(f"{what}: {value!r} is not an integer") from None
    return out


def _audit_dtype(name: str) -> str:
    from . import audit

    if name == "tf32":
        return name
    try:
        return audit.dtype_tag(parse_dtype(name))
    except UsageError as error:
        raise UsageError(f"{error}; or tf32 (fp32 with TF32 allowed)") from None


def cmd_kernels(args) -> int:
    import os

    from . import audit

    presets = (parse_presets(args.preset, "h36m-243") if args.preset
               else QUICK["presets"] if args.quick else list(audit.PAPER_PRESETS))
    batches = _ints(args.batch, "--batch") or (QUICK["batches"] if args.quick else [1, 64])
    if any(b < 1 for b in batches):
        raise UsageError(f"--batch must be >= 1, got {batches}")
    layouts = split_list(args.layout) or list(audit.LAYOUTS)
    for layout in layouts:
        if layout not in audit.LAYOUTS:
            raise UsageError(f"unknown layout {layout!r}; available: {', '.join(audit.LAYOUTS)}")
    dtypes = [_audit_dtype(d) for d in split_list(args.dtype)] or (
        QUICK["dtypes"] if args.quick else ["fp32", "bf16", "fp16"])
    archs = _ints(args.arch, "--arch") or list(audit.TARGETS)
    for arch in archs:
        if arch not in audit.TARGETS:
            raise UsageError(f"unknown target sm_{arch}; available: "
                             f"{', '.join(t.name for t in audit.TARGETS.values())}")
    if args.source_root and not os.path.exists(os.path.join(args.source_root, "setup.py")):
        raise UsageError(f"--source-root {args.source_root!r} has no setup.py")
    if args.only not in (None, "triton", "cuda"):
        raise UsageError(f"--only: got {args.only!r}, expected triton or cuda")
    check_writable(args.json, "--json")
    check_writable(args.markdown, "--markdown")
    # (arguments checked first: a bad one fails here, not after a restart)
    if os.environ.get(audit.INTERPRET_ENV_VAR, "0") not in ("", "0"):
        # Triton builds its own library as interpreted functions when it is imported under
        # TRITON_INTERPRET=1; the audit needs compiled ones, so run in a clean process.
        env = {k: v for k, v in os.environ.items() if k != audit.INTERPRET_ENV_VAR}
        print(f"convformer-fast kernels: {audit.INTERPRET_ENV_VAR} is set; rerunning without it",
              file=sys.stderr)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "convformer_fast.cli", *args.argv], env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    settings = audit.AuditSettings(
        presets=presets, batches=batches, layouts=layouts, dtypes=dtypes, archs=archs,
        triton=args.only in (None, "triton"), cuda=args.only in (None, "cuda"),
        kernels=split_list(args.kernel), workers=args.jobs or cores, progress=not args.no_progress,
        source_root=args.source_root, fresh=args.fresh)
    report = audit.run_audit(settings)
    print(audit.format_report(report, detail=args.detail, roofline=not args.no_roofline))
    if args.json:
        _write_json(args.json, report)
    if args.markdown:
        write_text(args.markdown, audit.format_markdown(report))
        print(f"wrote {args.markdown}")
    return 0 if report["ok"] else 1


def add_kernels_parser(sub) -> None:
    p = sub.add_parser(
        "kernels", help="compile every Triton and CUDA kernel for sm_80/sm_90 and audit it (no GPU)",
        description="Compile every Triton kernel (every autotune config it can pick for the "
                    "shapes) and every CUDA kernel (as setup.py builds them) for A100 (sm_80) "
                    "and H100 (sm_90) without a GPU; report registers, spills, shared memory, "
                    "occupancy, tensor-core use and a roofline estimate. Exit code 1 if a "
                    "kernel spills, exceeds shared memory, cannot be resident or compiled, or "
                    "breaks the fp32/tensor-core precision contract; 2 on bad arguments.")
    p.add_argument("--quick", action="store_true",
                   help="the CI subset: h36m-243, batch 1, bf16 and fp32 (explicit options override)")
    p.add_argument("--preset", action="append", metavar="P",
                   help="preset(s), repeatable or comma-separated (default h36m-9,27,81,243)")
    p.add_argument("--batch", action="append", metavar="B", help="batch size(s) (default 1,64)")
    p.add_argument("--layout", action="append", metavar="L", help="spatial, temporal (default both)")
    p.add_argument("--dtype", action="append", metavar="D",
                   help="fp32, bf16, fp16, fp64, tf32 (fp32 with TF32 allowed); default fp32,bf16,fp16")
    p.add_argument("--arch", action="append", metavar="A", help="80, 90 (default both)")
    p.add_argument("--kernel", action="append", metavar="NAME",
                   help="only kernels whose name contains NAME (repeatable)")
    p.add_argument("--only", metavar="triton|cuda", help="audit only the Triton or the CUDA kernels")
    p.add_argument("--jobs", type=POSITIVE_INT, default=None,
                   help="compiler processes (default: the cores available)")
    p.add_argument("--source-root", metavar="DIR",
                   help="checkout with setup.py and csrc/cuda (default: the one this package runs from)")
    p.add_argument("--fresh", action="store_true",
                   help="compile everything, ignoring Triton's disk cache (kernels it has cached "
                        "are otherwise reused and only their ptxas step is rerun)")
    p.add_argument("--detail", action="store_true", help="one row per compiled configuration")
    p.add_argument("--no-roofline", action="store_true", help="leave out the roofline table")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the summary tables as Markdown")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_kernels)


def add_subcommands(sub) -> None:
    """Register ``bench``, ``flops`` and ``kernels`` on cli.py's subparsers."""
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
    add_bench_parser(sub)
    add_flops_parser(sub)
    add_kernels_parser(sub)
