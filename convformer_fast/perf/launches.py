"""GPU kernel launches of one inference forward per backend, counted without a GPU, and the
batch-1 latency floor they imply (ESTIMATES; ``benchmarks/gpu_check.sh`` measures both).

How a forward is counted: it runs here on CPU tensors under a ``TorchDispatchMode`` that
records every op it dispatches (the ATen ops a GPU would run too: the op stream above the
device kernels is the same on both), and each op is given the launches it makes on a GPU:

* the Triton ops: the launches of their launch plans (:mod:`convformer_fast.triton.ops`), the
  very lists the ops run and the audit compiles (the interpreter runs them here);
* the CUDA kernels' ops, recorded through ``cuda_emulated`` (the same host code on the CPU
  emulator): one kernel each (``csrc/cuda/cuda_launcher.h``), except ``qkv_projection``,
  which is ATen's convolution;
* ATen ops: one kernel each, views and allocations none, a convolution two (cuDNN's kernel,
  then ATen adds the bias with a separate kernel). Library kernels may launch more than one
  kernel (cuDNN layout transforms, split-K GEMMs), so ATen counts are lower bounds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Host cost of one kernel launch, back to back (the issue's "~3 us"; measured by
#: benchmarks/gpu_check.sh as a batch-1 forward's time over its kernel count).
LAUNCH_S = 3e-6
#: Launches of each CUDA kernel op (the cuda backend's ops, recorded through cuda_emulated).
CUDA_OP_LAUNCHES = {"spatial_attention_residual": 1, "attention": 1, "qkv_projection": 2}
#: ATen ops that launch no kernel (allocation, metadata; dropout in eval returns its input).
_NO_KERNEL = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "_unsafe_view", "detach", "alias", "lift_fresh", "set_", "dropout")
#: ATen ops launching more than one kernel on a GPU (lower bounds).
_ATEN_LAUNCHES = {"convolution": 2, "conv1d": 2}
#: The backend whose op stream stands for each backend's GPU forward.
RECORDED_AS = {"cuda": "cuda_emulated"}
BACKENDS = ("eager", "torch", "cuda", "triton")


@dataclass
class OpLaunches:
    name: str
    launches: int
    ours: bool  # a kernel of this package (Triton plan or CUDA kernel), not a library's


@dataclass
class LaunchCount:
    preset: str
    backend: str
    batch: int
    ops: list[OpLaunches] = field(default_factory=list)
    error: str = ""

    @property
    def total(self) -> int:
        return sum(op.launches for op in self.ops)

    @property
    def ours(self) -> int:
        return sum(op.launches for op in self.ops if op.ours)

    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.name] = out.get(op.name, 0) + op.launches
        return out


def _triton_plan_launches(name: str, args: tuple) -> int:
    from ..triton import load_ops

    tops = load_ops()
    if name == "triton_qkv_projection":
        return len(tops.qkv_projection_plan(*args[:5])[1])
    if name == "triton_attention":
        return len(tops.attention_plan(args[0])[1])
    if name == "triton_qkv_projection_backward":
        return len(tops.qkv_projection_backward_plan(*args[:5])[1])
    if name == "triton_attention_backward":
        return len(tops.attention_backward_plan(*args[:4])[1])
    raise ValueError(f"no launch plan known for convformer_fast::{name}")


def op_launches(func, args: tuple) -> OpLaunches | None:
    """The GPU launches of one dispatched op (None: it launches nothing)."""
    from ..ops.spec import EMULATED_NAMESPACE, NAMESPACE, TRITON_PREFIX

    namespace, name = func._schema.name.split("::")
    if namespace == NAMESPACE and name.startswith(TRITON_PREFIX):
        return OpLaunches(name, _triton_plan_launches(name, args), True)
    if namespace in (NAMESPACE, EMULATED_NAMESPACE):
        if name not in CUDA_OP_LAUNCHES:
            raise ValueError(f"no launch count known for {namespace}::{name}; add it to "
                             "CUDA_OP_LAUNCHES")
        # qkv_projection is ATen's convolution inside the op: a library's kernels
        return OpLaunches(name, CUDA_OP_LAUNCHES[name], name != "qkv_projection")
    if func.is_view or name in _NO_KERNEL:
        return None
    return OpLaunches(f"aten::{name}", _ATEN_LAUNCHES.get(name, 1), False)


class _LaunchRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[OpLaunches] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        launches = op_launches(func, args)
        if launches is not None:
            self.ops.append(launches)
        return out


def count_launches(preset: str, backend: str, batch: int = 1) -> LaunchCount:
    """Launches of one eval forward of ``preset`` on ``backend`` (fp32), from its op stream
    (the fold cached, as in every eval call after the first)."""
    from ..fast import ConvFormerFast
    from ..reference import ConvFormer

    from ..backends import available_backends

    count = LaunchCount(preset, backend, batch)
    info = available_backends().get(backend)
    # On a GPU the cuda and triton backends are recorded as they run; without one, the
    # cuda kernels through their emulation and the Triton kernels through the interpreter.
    on_gpu = torch.cuda.is_available() and info is not None and info.available and "cpu" not in info.devices
    device = "cuda" if on_gpu else "cpu"
    recorded = backend if on_gpu else RECORDED_AS.get(backend, backend)
    torch.manual_seed(0)
    eager = ConvFormer.from_preset(preset).eval().to(device)
    x = torch.randn(batch, eager.num_frames, eager.num_joints, 2, device=device)
    model = eager if backend == "eager" else ConvFormerFast.from_reference(eager, backend=recorded)
    recorder = _LaunchRecorder()
    try:
        with torch.inference_mode():
            model(x)  # the first call folds the weights; later ones reuse the fold
            with recorder:
                model(x)
    except Exception as error:  # noqa: BLE001 - reported in the table
        count.error = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    count.ops = recorder.ops
    return count


@dataclass
class Floor:
    """Batch-1 latency floor of one forward on one GPU (ESTIMATE): the roofline time of the
    fused design's kernels plus LAUNCH_S per kernel launched."""

    preset: str
    gpu: str
    dtype: str
    compute_s: float       # sum over the design's kernels of max(FLOPs / peak, bytes / bw)
    launches: dict[str, int]

    def floor_s(self, backend: str) -> float:
        return self.compute_s + self.launches[backend] * LAUNCH_S


def batch1_floor(preset: str, counts: dict[str, LaunchCount], gpu: str = "H100",
                 dtype: torch.dtype = torch.float32, tf32: bool = False) -> Floor:
    """The floor of a preset at batch 1: compute and memory time of the fused design
    (:func:`convformer_fast.perf.roofline.fused_kernels`; TF32 peak = the bf16 tensor-core
    peak / 2) plus the launches each backend makes."""
    from ..reference import ConvFormer
    from . import roofline

    model = ConvFormer.from_preset(preset)
    kernels = roofline.fused_kernels(model, 1, dtype)
    spec = roofline.GPU_SPECS[gpu]
    peak = spec.peak_flops[torch.bfloat16] / 2 if tf32 else spec.peak_flops[dtype]
    compute = sum(max(k.flops / peak, k.bytes / spec.bandwidth) for k in kernels)
    name = "tf32" if tf32 else str(dtype).replace("torch.", "")
    return Floor(preset, gpu, name, compute, {b: c.total for b, c in counts.items() if not c.error})


def launch_table(presets, backends=BACKENDS, batch: int = 1) -> list[LaunchCount]:
    return [count_launches(preset, backend, batch) for preset in presets for backend in backends]


def format_markdown(counts: list[LaunchCount]) -> str:
    presets = list(dict.fromkeys(c.preset for c in counts))
    backends = list(dict.fromkeys(c.backend for c in counts))
    lines = ["| preset | " + " | ".join(f"{b}: kernels (ours)" for b in backends) + " |",
             "|---|" + "---|" * len(backends)]
    for preset in presets:
        cells = []
        for backend in backends:
            c = next(c for c in counts if c.preset == preset and c.backend == backend)
            cells.append(f"not run: {c.error}" if c.error else f"{c.total} ({c.ours})")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_floors(counts: list[LaunchCount], gpu: str = "H100") -> str:
    presets = list(dict.fromkeys(c.preset for c in counts))
    backends = list(dict.fromkeys(c.backend for c in counts))
    lines = ["| preset | fp32 compute us | TF32 compute us | " + " | ".join(
        f"{b} floor us (fp32 / TF32)" for b in backends) + " |",
        "|---|---|---|" + "---|" * len(backends)]
    for preset in presets:
        by_backend = {c.backend: c for c in counts if c.preset == preset}
        fp32 = batch1_floor(preset, by_backend, gpu)
        tf32 = batch1_floor(preset, by_backend, gpu, tf32=True)
        cells = [f"{fp32.floor_s(b) * 1e6:.0f} / {tf32.floor_s(b) * 1e6:.0f}" if b in fp32.launches
                 else "-" for b in backends]
        lines.append(f"| {preset} | {fp32.compute_s * 1e6:.1f} | {tf32.compute_s * 1e6:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m convformer_fast.perf.launches [PRESET ...]``: the tables of docs/gpu.md."""
    presets = (argv if argv is not None else sys.argv[1:]) or ["h36m-9", "h36m-27", "h36m-81", "h36m-243"]
    counts = launch_table(presets)
    print("Kernel launches of one inference forward, batch 1 (ESTIMATE from the op stream and "
          "the launch plans; ATen counts are lower bounds):\n")
    print(format_markdown(counts))
    print(f"\nBatch-1 floor on an H100 (ESTIMATE: fused-design roofline + {LAUNCH_S * 1e6:.0f} us "
          "per launch):\n")
    print(format_floors(counts))
    return 1 if any(c.error for c in counts) else 0


if __name__ == "__main__":
    sys.exit(main())

