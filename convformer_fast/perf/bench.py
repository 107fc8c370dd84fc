"""Whole-model timing per backend, in one process: what ``convformer-fast bench`` runs.

Method. Every implementation (the eager reference, ``torch.compile`` of it, and each fast
backend) gets its own copy of one set of weights and the same input. After warm-up (the
first call of ``torch.compile`` is its compilation, timed separately), each round times
every implementation once, in an order rotated from round to round, together with a large
matmul that gives the machine's practical peak in the same conditions. A sample is the
mean of enough back-to-back calls to last ``min_sample_s`` (on a GPU timed between two
CUDA events on the stream). Reported: median, quartiles
and minimum over the rounds; speed-ups are ratios of medians measured in this run.

Peers (``--peers``, :mod:`convformer_fast.perf.peers`): ONNX Runtime, OpenVINO and
``torch.compile`` of the folded model join the same rounds, each checked against the eager
model before it is timed; "vs best peer" divides the fastest peer's median by each median.

``graph:<backend>`` replays that backend's forward from a CUDA graph
(:meth:`convformer_fast.ConvFormerFast.cuda_graph`, captured on its first call).

FLOPs come from PyTorch's ``FlopCounterMode`` (with :mod:`convformer_fast.perf.flops`'s
formulas) on one call of each implementation, so GFLOP/s counts the work that
implementation actually does (the fast backends do less: the fold). ``torch.compile``
and the peers are credited with the FLOPs of the model they run (the eager model's, or the
folded model's for ``compile:folded`` and the folded exports), since no counter can see
into compiled code.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..atomic import atomic_write
from ..fast import ConvFormerFast
from ..reference import ConvFormer
from . import peers as peer_runtimes
from .flops import flop_counter_flops
from .machine import machine_info

EAGER = "eager"
COMPILE = "compile"  # torch.compile of the eager model
GRAPH_PREFIX = "graph:"  # "graph:cuda": a backend's forward replayed from a CUDA graph


@dataclass
class BenchSettings:
    presets: list[str]
    batch: int = 1
    batches: dict[str, int] = field(default_factory=dict)  # per-preset batch, overriding `batch`
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
    peers: list[str] = field(default_factory=list)  # peer_runtimes.PEERS to race as well
    #: "on" / "off": TF32 for fp32 matmuls and convolutions on a GPU (both torch switches);
    #: "default": as torch has them (cuDNN on, matmuls off).
    tf32: str = "default"


@dataclass
class Timing:
    preset: str
    backend: str
    batch: int = 1
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
    peer: bool = False               # a runtime people deploy with, not this package's
    not_installed: bool = False      # a peer whose package is missing here
    max_abs_error: float | None = None  # peers: max |output - eager output|, checked before timing

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
    # The TF32 switches are process-wide: set them for the run and give the caller's back.
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if settings.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = settings.tf32 == "on"
    report = dict(machine=machine_info(threads), settings=_settings_dict(settings),
                  results=[], matmul=[])
    if settings.peers:
        report["peer_packages"] = peer_runtimes.installed()
    implementations = len(settings.backends) + len(settings.peers) + 1  # + the matmul
    per_preset = (settings.warmup + settings.repeats) * implementations
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
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
    _add_ratios(report)
    return report


def _bench_preset(preset: str, settings: BenchSettings, bar):
    torch.manual_seed(0)
    reference = ConvFormer.from_preset(preset).to(device=settings.device, dtype=settings.dtype)
    batch = settings.batches.get(preset, settings.batch)
    x = torch.randn(batch, reference.num_frames, reference.num_joints, 2,
                    device=settings.device, dtype=settings.dtype)
    timings = {name: Timing(preset, name, batch, peer=name == COMPILE) for name in settings.backends}
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

    runners = {name: step for name, (step, _m) in steps.items()}
    runners.update(_build_peers(preset, reference, x, settings, timings, bar))

    n = settings.matmul_size
    a = torch.randn(n, n, device=settings.device, dtype=settings.dtype)
    b = torch.randn(n, n, device=settings.device, dtype=settings.dtype)
    out = torch.empty(n, n, device=settings.device, dtype=settings.dtype)
    matmul = lambda: torch.mm(a, b, out=out)  # noqa: E731
    for _ in range(settings.warmup):
        matmul()
    bar.update(settings.warmup)

    # Calls per sample, so that one sample lasts at least min_sample_s.
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
    for name in runners.keys() - {"matmul"}:
        timings[name].calls_per_sample = calls[name]
        _summarise(timings[name])
    bar.update(settings.repeats * (len(timings) - len(runners) + 1))
    matmul_median = statistics.median(matmul_samples)
    matmul_report = dict(preset=preset, size=n, dtype=str(settings.dtype).replace("torch.", ""),
                         median_s=matmul_median, flops=2 * n ** 3,
                         gflops_per_s=2 * n ** 3 / matmul_median / 1e9,
                         min_s=min(matmul_samples), samples=matmul_samples)
    return list(timings.values()), matmul_report


def _build_peers(preset: str, reference: ConvFormer, x: torch.Tensor, settings: BenchSettings,
                 timings: dict[str, Timing], bar) -> dict[str, Callable[[], object]]:
    """The peers' Timing rows (added to ``timings``) and the runners of those that can be timed."""
    if not settings.peers:
        return {}
    bar.set_description(f"{preset} peers: export, check, warm-up")
    reference = copy.deepcopy(reference).eval()
    built = peer_runtimes.build_peers(reference, x, settings.peers, settings.compile_backend,
                                      settings.warmup)
    folded_flops = peer_runtimes.folded_flops(reference, x)
    eager_flops = timings[EAGER].flops if EAGER in timings and timings[EAGER].flops else None
    runners = {}
    for name, peer in built.items():
        timing = timings[name] = Timing(preset, name, x.shape[0], peer=True)
        if isinstance(peer, peer_runtimes.PeerError):
            timing.error, timing.not_installed = str(peer), peer.not_installed
        else:
            timing.first_call_s, timing.max_abs_error = peer.first_call_s, peer.max_abs_error
            if peer.folded:
                timing.flops, timing.flops_source = folded_flops, "the frozen folded model's count"
            else:
                timing.flops = eager_flops if eager_flops is not None else count_step_flops(
                    EAGER, reference, x, settings, 0)[0]
                timing.flops_source = "the eager model's count"
            runners[name] = peer.step
        bar.update(settings.warmup)
    return runners


def _add_ratios(report: dict) -> None:
    peaks = {m["preset"]: m["gflops_per_s"] for m in report["matmul"]}
    for preset in {r["preset"] for r in report["results"]}:
        rows = [r for r in report["results"] if r["preset"] == preset]
        base = {r["backend"]: r["median_s"] for r in rows if r["ok"]}
        raced = bool(report["settings"]["peers"])
        peers = {r["backend"]: r["median_s"] for r in rows if raced and r["ok"] and r["peer"]}
        best_peer = min(peers, key=peers.get) if peers else None
        if raced:
            report.setdefault("best_peer", {})[preset] = best_peer
        for r in rows:
            ok = r["ok"]
            r["speedup_vs_eager"] = base[EAGER] / r["median_s"] if ok and EAGER in base else None
            r["speedup_vs_compile"] = base[COMPILE] / r["median_s"] if ok and COMPILE in base else None
            r["speedup_vs_best_peer"] = peers[best_peer] / r["median_s"] if ok and best_peer else None
            r["samples_per_s"] = r["batch"] / r["median_s"] if ok else None
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


def _batch_label(settings: dict) -> str:
    if not settings["batches"]:
        return f"batch {settings['batch']}"
    return "batch " + ", ".join(f"{b} ({p})" for p, b in settings["batches"].items())


def format_report(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        f"convformer-fast bench: {_batch_label(s)}, {s['dtype']}, {s['mode']}, device {s['device']}"
        + (f", TF32 {s['tf32']}" if s.get("tf32", "default") != "default" else ""),
        f"machine: {m['cpu']}, {m['cores_available']} cores available, torch threads {m['threads']}, "
        f"torch {m['torch']}, {m['date']}" + (f", commit {m['commit']}" if m["commit"] else ""),
        f"method: {s['repeats']} rounds alternating the implementations, warm-up {s['warmup']} "
        f"call(s) each, a sample >= {s['min_sample_s'] * 1e3:.0f} ms of back-to-back calls; "
        "median, IQR = (p75 - p25) / median",
    ]
    raced = bool(s["peers"])
    if raced:
        lines.append("peers (*): " + ", ".join(f"{k} {v}" for k, v in report["peer_packages"].items())
                     + f"; torch.compile backend {s['compile_backend']!r}; each checked against eager "
                     "before timing; 'vs best peer' = the fastest peer's median / this median")
    width = max([9] + [len(r["backend"]) + 2 for r in report["results"]])
    header = (f"{'backend':<{width}} {'median ms':>10} {'IQR %':>6} {'min ms':>9} {'vs eager':>9} "
              f"{'vs compile':>10}" + (f" {'vs best peer':>12}" if raced else "") +
              f" {'samples/s':>10} {'GFLOP/call':>10} {'GFLOP/s':>8} {'% matmul':>8}")
    for matmul in report["matmul"]:
        preset = matmul["preset"]
        rows = [r for r in report["results"] if r["preset"] == preset]
        batch = rows[0]["batch"] if rows else s["batch"]
        lines += ["", f"{preset}, batch {batch}:", header, "-" * len(header)]
        for r in rows:
            name = r["backend"] + (" *" if raced and r["peer"] else "")
            if not r["ok"]:
                lines.append(f"{name:<{width}} not run: {r['error']}")
                continue
            iqr = 100 * (r["p75_s"] - r["p25_s"]) / r["median_s"]
            lines.append(
                f"{name:<{width}} {r['median_s'] * 1e3:>10.2f} {iqr:>6.1f} {r['min_s'] * 1e3:>9.2f} "
                f"{_ratio(r['speedup_vs_eager']):>9} {_ratio(r['speedup_vs_compile']):>10}"
                + (f" {_ratio(r['speedup_vs_best_peer']):>12}" if raced else "") +
                f" {_fmt(r['samples_per_s'], '.1f'):>10} {r['flops'] / 1e9:>10.3f} "
                f"{_fmt(r['gflops_per_s'], '.1f'):>8} {_fmt(r['percent_of_matmul'], '.0f'):>7}%")
            if r["error"] == "" and "undercounted" in r["flops_source"]:
                lines[-1] += " (FLOPs undercounted)"
        lines.append(
            f"matmul {matmul['size']}^3 {matmul['dtype']}: {matmul['median_s'] * 1e3:.2f} ms, "
            f"{matmul['gflops_per_s']:.1f} GFLOP/s (this run's practical peak; '% matmul' is relative to it)")
        compiled = [r for r in rows if r["backend"] == COMPILE and r["ok"]]
        if compiled:
            lines.append(f"compile: torch.compile(eager, backend={s['compile_backend']!r}), first call "
                         f"(compilation) {compiled[0]['first_call_s']:.1f} s; its FLOPs are the eager model's")
        checked = [f"{r['backend']} {r['max_abs_error']:.1e}" for r in rows if r["max_abs_error"] is not None]
        if checked:
            lines.append("max |peer - eager| before timing: " + ", ".join(checked))
        if raced and report["best_peer"].get(preset):
            lines.append(f"best peer: {report['best_peer'][preset]}")
    notes = sorted({r["flops_source"] for r in report["results"] if "undercounted" in r["flops_source"]})
    lines += [f"warning: {note}" for note in notes]
    if len(report["matmul"]) > 1 or raced:
        lines += ["", "summary, median ms (Markdown):", *format_summary(report)]
    return "\n".join(lines)


def format_summary(report: dict) -> list[str]:
    """One row per regime (preset, batch), one column per implementation, fastest overall
    first (by the geometric mean of its median over the regime's fastest)."""
    presets = [m["preset"] for m in report["matmul"]]
    cells = {(r["preset"], r["backend"]): r for r in report["results"]}
    names = list(dict.fromkeys(r["backend"] for r in report["results"]))

    def score(name: str) -> float:
        logs = []
        for preset in presets:
            fastest = min((r["median_s"] for r in report["results"] if r["preset"] == preset and r["ok"]),
                          default=math.nan)
            r = cells.get((preset, name))
            logs.append(math.log(r["median_s"] / fastest) if r and r["ok"] else math.inf)
        logs = [v if not math.isnan(v) else math.inf for v in logs]
        return sum(logs) / len(logs)

    names.sort(key=score)
    lines = ["| ms | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for preset in presets:
        row = [cells.get((preset, name)) for name in names]
        batch = next(r["batch"] for r in row if r)
        lines.append(f"| {preset}, B={batch} | " + " | ".join(
            f"{r['median_s'] * 1e3:.1f}" if r and r["ok"]
            else "not installed" if r and r["not_installed"] else "not run" for r in row) + " |")
    return lines


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
    ax.set_title(f"ConvFormer, {_batch_label(s)}, {s['dtype']}, "
                 f"{'train step' if s['train'] else 'inference'}\n"
                 f"{m['cpu']}, {m['threads']} threads, {m['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
