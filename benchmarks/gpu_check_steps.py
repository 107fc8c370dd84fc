"""The Python steps of benchmarks/gpu_check.sh (run there, one subcommand per step):

    env                     versions and the GPU (JSON on stdout)
    arch                    TORCH_CUDA_ARCH_LIST of the visible GPU ("9.0" on an H100)
    has-gpu                 exit 0 when a CUDA device is visible, 1 otherwise
    launches [--dry-run]    kernel launches of one forward per backend: estimated from the
                            launch plans (convformer_fast.perf.launches) and, on a GPU,
                            counted by torch.profiler; CUDA-graph replay vs eager per backend
    merge OUT IN...         the JSON files IN as one list in OUT (bench runs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cmd_env(args) -> int:
    import torch

    info = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count(),
                commit=_run(["git", "rev-parse", "--short", "HEAD"]),
                nvcc=(_run(["nvcc", "--version"]).splitlines() or [""])[-1])
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"not importable: {error}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                    driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    print(json.dumps(info))
    return 0


def cmd_arch(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("8.0;9.0")  # setup.py's default targets (dry run)
        return 0
    major, minor = torch.cuda.get_device_capability(0)
    print(f"{major}.{minor}")
    return 0


def cmd_has_gpu(args) -> int:
    import torch

    return 0 if torch.cuda.is_available() else 1


def _profiled_kernels(fn) -> dict[str, int]:
    """Kernel launches of one ``fn()`` on the GPU, by kernel name (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels: dict[str, int] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0) + 1
    return kernels


def _gpu_time(fn, calls: int = 50) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def cmd_launches(args) -> int:
    import torch

    from convformer_fast import ConvFormer, ConvFormerFast, available_backends
    from convformer_fast.perf import launches

    out = dict(estimate=[], profiled=[], graph=[])
    ok = True
    presets = args.preset or (["h36m-9"] if args.dry_run else ["h36m-9", "h36m-81", "h36m-243"])
    for count in launches.launch_table(presets):
        out["estimate"].append(dict(preset=count.preset, backend=count.backend, total=count.total,
                                    ours=count.ours, by_op=count.by_op(), error=count.error))
        print(f"estimate {count.preset} {count.backend}: {count.total} launches ({count.ours} ours)"
              + (f" ERROR {count.error}" if count.error else ""), flush=True)
        ok &= not count.error
    if args.dry_run or not torch.cuda.is_available():
        print("launches: dry run: no GPU, estimates only", flush=True)
    else:
        usable = {n for n, i in available_backends().items() if i.available and "cuda" in i.devices}
        for preset in presets:
            torch.manual_seed(0)
            eager = ConvFormer.from_preset(preset).eval().cuda()
            x = torch.randn(1, eager.num_frames, eager.num_joints, 2, device="cuda")
            with torch.inference_mode():
                expected = eager(x)
            for backend in launches.BACKENDS:
                if backend != "eager" and backend not in usable:
                    continue
                row = dict(preset=preset, backend=backend)
                try:
                    model = eager if backend == "eager" else ConvFormerFast.from_reference(eager, backend)
                    with torch.inference_mode():
                        for _ in range(3):
                            model(x)  # autotuning, folds, cuDNN choices
                        kernels = _profiled_kernels(lambda: model(x))
                        row.update(kernels=sum(kernels.values()), by_kernel=kernels,
                                   eager_forward_s=_gpu_time(lambda: model(x)))
                    if backend in ("cuda", "triton"):
                        graphed = model.cuda_graph(x)
                        replay = graphed(x).clone()
                        row.update(graph_max_abs_diff=(replay - expected).abs().max().item(),
                                   graph_replay_s=_gpu_time(lambda: graphed(x)))
                except Exception as error:  # noqa: BLE001 - recorded, the others go on
                    row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                    ok = False
                out["profiled"].append(row)
                print(f"profiled {preset} {backend}: " + json.dumps(
                    {k: v for k, v in row.items() if k != "by_kernel"}), flush=True)
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=1)
    return 0 if ok else 1


def cmd_merge(args) -> int:
    merged = []
    for path in args.inputs:
        try:
            with open(path) as handle:
                merged.append(dict(source=os.path.basename(path), report=json.load(handle)))
        except (OSError, ValueError) as error:
            merged.append(dict(source=os.path.basename(path), error=str(error)))
    with open(args.out, "w") as handle:
        json.dump(merged, handle, indent=1)
    return 0


def cmd_step_record(args) -> int:
    """Add one step's outcome to the summary JSON (created if missing)."""
    summary = {}
    if os.path.exists(args.summary):
        with open(args.summary) as handle:
            summary = json.load(handle)
    summary.setdefault("steps", []).append(dict(
        step=args.step, status=args.status, seconds=float(args.seconds), limit_s=float(args.limit),
        error=args.error or None, at=time.strftime("%Y-%m-%dT%H:%M:%S")))
    if args.env_json:
        summary["env"] = json.loads(args.env_json)
    with open(args.summary + ".tmp", "w") as handle:
        json.dump(summary, handle, indent=1)
    os.replace(args.summary + ".tmp", args.summary)  # never a half-written summary
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env").set_defaults(func=cmd_env)
    sub.add_parser("arch").set_defaults(func=cmd_arch)
    sub.add_parser("has-gpu").set_defaults(func=cmd_has_gpu)
    p = sub.add_parser("launches")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--preset", action="append")
    p.add_argument("--json", required=True)
    p.set_defaults(func=cmd_launches)
    p = sub.add_parser("merge")
    p.add_argument("out")
    p.add_argument("inputs", nargs="*")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("record")
    for name in ("summary", "step", "status", "seconds", "limit"):
        p.add_argument(name)
    p.add_argument("--error", default="")
    p.add_argument("--env-json", default="")
    p.set_defaults(func=cmd_step_record)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
