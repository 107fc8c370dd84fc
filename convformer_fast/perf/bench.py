"""Whole-model timing per backend, in one process: what ``convformer-fast bench`` runs.

Method. Every implementation (the eager reference, ``torch.compile`` of it, and each fast
backend) gets its own copy of one set of weights and the same input. After warm-up (the
first call of ``torch.compile`` is its compilation, timed separately), each round times
every implementation once, in an order rotated from round to round, together with a large
matmul that gives the machine's practical peak in the same conditions. A sample is the
mean of enough back-to-back calls to last ``min_sample_s`` (on a GPU timed between two
CUDA events on the stream). Reported: median, quartiles
and minimum over the rounds; speed-ups are ratios of medians measured in this run.

``graph:<backend>`` replays that backend's forward from a CUDA graph
(:meth:`convformer_fast.ConvFormerFast.cuda_graph`, captured on its first call).

FLOPs come from PyTorch's ``FlopCounterMode`` (with :mod:`convformer_fast.perf.flops`'s
formulas) on one call of each implementation, so GFLOP/s counts the work that
implementation actually does (the fast backends do less: the fold). ``torch.compile``
is credited with the eager model's FLOPs, since no counter can see into compiled code.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..fast import ConvFormerFast
from ..reference import ConvFormer
from .flops import flop_counter_flops
from .machine import machine_info

EAGER = "eager"
COMPILE = "compile"  # torch.compile of the eager model
GRAPH_PREFIX = "graph:"  # "graph:cuda": a backend's forward replayed from a CUDA graph


@dataclass
class BenchSettings:
    presets: list[str]
    batch: int = 1
    backends: list[str] = field(default_factory=lambda: [EAGER, COMPILE])
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    train: bool = False
    warmup: int = 3
    repeats: int = 15
    min_sample_s: float = 0.05
    matmul_size: int = 1024
    progress: bool = True
    lr: float = 1e-4
    compile_backend: str = "inductor"
    #: "on" / "off": TF32 for fp32 matmuls and convolutions on a GPU (both torch switches);
    #: "default": as torch has them (cuDNN on, matmuls off).
    tf32: str = "default"


@dataclass
class Timing:
    preset: str
    backend: str
    median_s: float = math.nan
    p25_s: float = math.nan
    p75_s: float = math.nan
    min_s: float = math.nan
    samples: list[float] = field(default_factory=list)
    calls_per_sample: int = 0
    first_call_s: float = math.nan   # includes compilation for "compile"
    flops: int = 0                   # per call (one step with --train)
    flops_source: str = ""
    error: str = ""                  # why this implementation could not run

    @property
    def ok(self) -> bool:
        return not self.error


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _make_step(model: torch.nn.Module, x: torch.Tensor, train: bool, lr: float) -> Callable[[], None]:
    """One inference forward, or one training step (forward, backward, SGD update)."""
    if not train:
        def forward() -> None:
            with torch.inference_mode():
                model(x)

        return forward
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(x).float().square().mean()
        loss.backward()
        optimizer.step()

    return train_step


def build_steps(reference: ConvFormer, x: torch.Tensor, settings: BenchSettings):
    """name -> (step, model) for every implementation; a name maps to an error string
    instead when that implementation cannot be built."""
    steps = {}
    for name in settings.backends:
        if name == EAGER:
            model = copy.deepcopy(reference)
        elif name == COMPILE:
            torch._dynamo.reset()  # a fresh cache: never hit the recompile limit silently
            model = torch.compile(copy.deepcopy(reference), backend=settings.compile_backend)
        elif name.startswith(GRAPH_PREFIX):
            model = ConvFormerFast.from_reference(reference, backend=name.removeprefix(GRAPH_PREFIX))
            steps[name] = (_graph_step(model.eval(), x, settings.train), model)
            continue
        else:
            model = ConvFormerFast.from_reference(reference, backend=name)
        model.train(settings.train)
        steps[name] = (_make_step(model, x, settings.train, settings.lr), model)
    return steps


def _graph_step(model: ConvFormerFast, x: torch.Tensor, train: bool) -> Callable[[], None]:
    """Replays of ``model``'s forward from a CUDA graph, captured on the first call (its
    time, ``first_call_s``, includes the capture)."""
    graphed = None

    def replay() -> None:
        nonlocal graphed
        if train:
            raise ValueError("CUDA graph variants time inference only (no --train)")
        if graphed is None:
            graphed = model.cuda_graph(x)
        graphed(x)

    return replay


def count_step_flops(name: str, model, x, settings: BenchSettings, eager_flops: int) -> tuple[int, str]:
    if name == COMPILE:
        return eager_flops, "eager model's count (compiled code cannot be counted)"
    probe = copy.deepcopy(model)  # the count must not move the timed model's weights
    step = _make_step(probe, x, settings.train, settings.lr)
    if settings.train:
        count = flop_counter_flops(step)
    else:
        # no_grad, not inference_mode: under inference_mode composite ops reach the counter
        # undecomposed and are missed.
        # One call first: a fresh copy builds its per-layer caches (folded and Winograd
        # weights) on its first call, which the timed calls reuse, so count a later one.
        with torch.no_grad():
            probe(x)
            count = flop_counter_flops(lambda: probe(x))
    source = "FlopCounterMode"
    if count.uncounted:
        source += f" (no formula for {', '.join(count.uncounted)}: undercounted)"
    return count.total, source


def _time_calls(fn: Callable[[], None], calls: int, device: str) -> float:
    if device.startswith("cuda"):
        # GPU time between two events on the stream: what the calls cost on the device,
        # host launch overhead included where it leaves the GPU idle.
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def _summarise(timing: Timing) -> None:
    samples = sorted(timing.samples)
    timing.median_s = statistics.median(samples)
    if len(samples) >= 2:
        q1, _q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    timing.p25_s, timing.p75_s, timing.min_s = q1, q3, samples[0]


def run_bench(settings: BenchSettings) -> dict:
    """Time every preset and implementation; returns the report (see ``format_report``)."""
    from tqdm import tqdm

    threads = torch.get_num_threads()
    if settings.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = settings.tf32 == "on"
    report = dict(machine=machine_info(threads), settings=_settings_dict(settings),
                  results=[], matmul=[])
    per_preset = settings.warmup * (len(settings.backends) + 1) + settings.repeats * (len(settings.backends) + 1)
    bar = tqdm(total=per_preset * len(settings.presets), unit="sample", leave=False,
               disable=None if settings.progress else True,  # None: off when not a terminal
               dynamic_ncols=True)
    try:
        for preset in settings.presets:
            results, matmul = _bench_preset(preset, settings, bar)
            report["results"].extend(asdict(r) | dict(ok=r.ok) for r in results)
            report["matmul"].append(matmul)
    finally:
        bar.close()
    _add_ratios(report)
    return report


def _bench_preset(preset: str, settings: BenchSettings, bar):
    torch.manual_seed(0)
    reference = ConvFormer.from_preset(preset).to(device=settings.device, dtype=settings.dtype)
    x = torch.randn(settings.batch, reference.num_frames, reference.num_joints, 2,
                    device=settings.device, dtype=settings.dtype)
    timings = {name: Timing(preset, name) for name in settings.backends}
    steps = {}
    for name, (step, model) in build_steps(reference, x, settings).items():
        bar.set_description(f"{preset} {name} warm-up")
        try:
            start = time.perf_counter()
            step()
            _sync(settings.device)
            timings[name].first_call_s = time.perf_counter() - start
            for _ in range(settings.warmup - 1):
                step()
            steps[name] = (step, model)
        except Exception as error:  # noqa: BLE001 - reported in the table, others go on
            timings[name].error = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        bar.update(settings.warmup)

    eager_flops = 0
    for name in [n for n in (EAGER,) if n in steps] + [n for n in steps if n != EAGER]:
        flops, source = count_step_flops(name, steps[name][1], x, settings, eager_flops)
        if name == EAGER:
            eager_flops = flops
        timings[name].flops, timings[name].flops_source = flops, source
    if COMPILE in steps and EAGER not in steps:  # nothing to credit compile with
        eager = copy.deepcopy(reference).train(settings.train)
        timings[COMPILE].flops, timings[COMPILE].flops_source = count_step_flops(
            EAGER, eager, x, settings, 0)

    n = settings.matmul_size
    a = torch.randn(n, n, device=settings.device, dtype=settings.dtype)
    b = torch.randn(n, n, device=settings.device, dtype=settings.dtype)
    out = torch.empty(n, n, device=settings.device, dtype=settings.dtype)
    matmul = lambda: torch.mm(a, b, out=out)  # noqa: E731
    for _ in range(settings.warmup):
        matmul()
    bar.update(settings.warmup)

    # Calls per sample, so that one sample lasts at least min_sample_s.
    runners = {name: step for name, (step, _m) in steps.items()}
    runners["matmul"] = matmul
    calls = {name: max(1, math.ceil(settings.min_sample_s / max(_time_calls(fn, 1, settings.device), 1e-9)))
             for name, fn in runners.items()}
    matmul_samples: list[float] = []
    names = list(runners)
    for round_index in range(settings.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # alternate, rotating who goes first
            bar.set_description(f"{preset} round {round_index + 1}/{settings.repeats} {name}")
            seconds = _time_calls(runners[name], calls[name], settings.device)
            (matmul_samples if name == "matmul" else timings[name].samples).append(seconds)
            bar.update(1)
    for name in steps:
        timings[name].calls_per_sample = calls[name]
        _summarise(timings[name])
    bar.update(settings.repeats * (len(settings.backends) - len(steps)))
    matmul_median = statistics.median(matmul_samples)
    matmul_report = dict(preset=preset, size=n, dtype=str(settings.dtype).replace("torch.", ""),
                         median_s=matmul_median, flops=2 * n ** 3,
                         gflops_per_s=2 * n ** 3 / matmul_median / 1e9,
                         min_s=min(matmul_samples), samples=matmul_samples)
    return list(timings.values()), matmul_report


def _add_ratios(report: dict) -> None:
    batch = report["settings"]["batch"]
    peaks = {m["preset"]: m["gflops_per_s"] for m in report["matmul"]}
    for preset in {r["preset"] for r in report["results"]}:
        rows = [r for r in report["results"] if r["preset"] == preset]
        base = {r["backend"]: r["median_s"] for r in rows if r["ok"]}
        for r in rows:
            ok = r["ok"]
            r["speedup_vs_eager"] = base[EAGER] / r["median_s"] if ok and EAGER in base else None
            r["speedup_vs_compile"] = base[COMPILE] / r["median_s"] if ok and COMPILE in base else None
            r["samples_per_s"] = batch / r["median_s"] if ok else None
            r["gflops_per_s"] = r["flops"] / r["median_s"] / 1e9 if ok and r["flops"] else None
            r["percent_of_matmul"] = (100 * r["gflops_per_s"] / peaks[preset]
                                      if r["gflops_per_s"] else None)


def _settings_dict(settings: BenchSettings) -> dict:
    d = asdict(settings)
    d["dtype"] = str(settings.dtype).replace("torch.", "")
    d["mode"] = "train step (forward + backward + SGD)" if settings.train else "inference (eval, inference_mode)"
    return d


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_report(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        f"convformer-fast bench: batch {s['batch']}, {s['dtype']}, {s['mode']}, device {s['device']}"
        + (f", TF32 {s['tf32']}" if s.get("tf32", "default") != "default" else ""),
        f"machine: {m['cpu']}, {m['cores_available']} cores available, torch threads {m['threads']}, "
        f"torch {m['torch']}, {m['date']}" + (f", commit {m['commit']}" if m["commit"] else ""),
        f"method: {s['repeats']} rounds alternating the implementations, warm-up {s['warmup']} "
        f"call(s) each, a sample >= {s['min_sample_s'] * 1e3:.0f} ms of back-to-back calls; "
        "median, IQR = (p75 - p25) / median",
    ]
    header = (f"{'backend':<12} {'median ms':>10} {'IQR %':>6} {'min ms':>9} {'vs eager':>9} "
              f"{'vs compile':>10} {'samples/s':>10} {'GFLOP/call':>10} {'GFLOP/s':>8} {'% matmul':>8}")
    for matmul in report["matmul"]:
        preset = matmul["preset"]
        lines += ["", f"{preset}:", header, "-" * len(header)]
        for r in (r for r in report["results"] if r["preset"] == preset):
            if not r["ok"]:
                lines.append(f"{r['backend']:<12} not run: {r['error']}")
                continue
            iqr = 100 * (r["p75_s"] - r["p25_s"]) / r["median_s"]
            lines.append(
                f"{r['backend']:<12} {r['median_s'] * 1e3:>10.2f} {iqr:>6.1f} {r['min_s'] * 1e3:>9.2f} "
                f"{_ratio(r['speedup_vs_eager']):>9} {_ratio(r['speedup_vs_compile']):>10} "
                f"{_fmt(r['samples_per_s'], '.1f'):>10} {r['flops'] / 1e9:>10.3f} "
                f"{_fmt(r['gflops_per_s'], '.1f'):>8} {_fmt(r['percent_of_matmul'], '.0f'):>7}%")
            if r["error"] == "" and "undercounted" in r["flops_source"]:
                lines[-1] += " (FLOPs undercounted)"
        lines.append(
            f"matmul {matmul['size']}^3 {matmul['dtype']}: {matmul['median_s'] * 1e3:.2f} ms, "
            f"{matmul['gflops_per_s']:.1f} GFLOP/s (this run's practical peak; '% matmul' is relative to it)")
        compiled = [r for r in report["results"] if r["preset"] == preset and r["backend"] == COMPILE and r["ok"]]
        if compiled:
            lines.append(f"compile: torch.compile(eager, backend={s['compile_backend']!r}), first call "
                         f"(compilation) {compiled[0]['first_call_s']:.1f} s; its FLOPs are the eager model's")
    notes = sorted({r["flops_source"] for r in report["results"] if "undercounted" in r["flops_source"]})
    lines += [f"warning: {note}" for note in notes]
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Grouped bar chart: median latency per backend across presets (log scale, IQR bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = [m["preset"] for m in report["matmul"]]
    backends = list(dict.fromkeys(r["backend"] for r in report["results"]))
    width = 0.8 / max(len(backends), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(presets) + 3), 4.5))
    for i, backend in enumerate(backends):
        xs, ys, lo, hi = [], [], [], []
        for j, preset in enumerate(presets):
            row = next((r for r in report["results"] if r["preset"] == preset
                        and r["backend"] == backend and r["ok"]), None)
            if row:
                xs.append(j + (i - (len(backends) - 1) / 2) * width)
                ys.append(row["median_s"] * 1e3)
                lo.append((row["median_s"] - row["p25_s"]) * 1e3)
                hi.append((row["p75_s"] - row["median_s"]) * 1e3)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=backend)
    ax.set_xticks(range(len(presets)), presets)
    ax.set_yscale("log")
    ax.set_ylabel("median latency per call (ms, log scale)")
    s, m = report["settings"], report["machine"]
    ax.set_title(f"ConvFormer, batch {s['batch']}, {s['dtype']}, "
                 f"{'train step' if s['train'] else 'inference'}\n"
                 f"{m['cpu']}, {m['threads']} threads, {m['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
