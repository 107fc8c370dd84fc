"""Memory traffic of a forward pass and a roofline ESTIMATE of GPU time (no GPU is used).

Two ingredients, both computed here:

* :class:`TrafficMode`, a ``TorchDispatchMode`` that records every ATen op a forward pass
  runs (on whatever device it runs, the CPU here): bytes read (its tensor inputs), bytes
  written (its outputs), and FLOPs from ``torch.utils.flop_counter``'s formulas (with the
  registry of :mod:`convformer_fast.perf.flops` added). Views move no data and count nothing.
* :func:`fused_kernels`, the minimum traffic of the fused design
  (docs/ARCHITECTURE.md section 2): per block one kernel LN -> folded conv-QKV -> attention ->
  residual and one kernel LN -> FFN (bias, GELU) -> residual, each reading its input and weights once and
  writing its output once; Q, K, V and the FFN hidden state never leave the chip.

:func:`roofline` turns either into time on a GPU of :data:`GPU_SPECS` as
``sum over kernels of max(FLOPs / peak, bytes / bandwidth)``, optionally plus an assumed
launch latency per kernel. This is a lower bound on paper, not a measurement: it ignores
occupancy, tail effects, caches and the rest; it only compares eager with fused fairly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import flops as flops_module


@dataclass(frozen=True)
class GpuSpec:
    name: str
    peak_flops: dict[torch.dtype, float]  # FLOP/s, dense (no structured sparsity)
    bandwidth: float                       # bytes/s of HBM
    source: str


# Vendor datasheet numbers (SXM parts, dense). float32 uses the CUDA-core FP32 peak, not
# TF32, matching PyTorch's default for matmuls (torch.backends.cuda.matmul.allow_tf32 off).
GPU_SPECS: dict[str, GpuSpec] = {
    "A100": GpuSpec(
        "A100 SXM4 80GB",
        {torch.float64: 19.5e12, torch.float32: 19.5e12, torch.bfloat16: 312e12,
         torch.float16: 312e12},
        2.039e12,
        "NVIDIA A100 datasheet: FP64 tensor 19.5, FP32 19.5, BF16/FP16 tensor 312 TFLOP/s; "
        "HBM2e 2039 GB/s",
    ),
    "H100": GpuSpec(
        "H100 SXM5 80GB",
        {torch.float64: 67e12, torch.float32: 67e12, torch.bfloat16: 989.4e12,
         torch.float16: 989.4e12},
        3.35e12,
        "NVIDIA H100 datasheet: FP64 tensor 67, FP32 67, BF16/FP16 tensor 989 TFLOP/s "
        "(dense); HBM3 3.35 TB/s",
    ),
}

#: Assumed cost of launching one kernel (a typical figure for CUDA, not measured here).
LAUNCH_LATENCY_S = 5e-6


@dataclass
class KernelTraffic:
    """One kernel (an ATen op, or a fused kernel of the design)."""

    name: str
    flops: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view addresses (broadcast dims count once)."""
    elements = math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)
    return elements * t.element_size()


def _is_metadata_only(func) -> bool:
    name = func._schema.name.split("::")[-1]
    return func.is_view or name in ("_unsafe_view", "detach", "alias", "lift_fresh")


class TrafficMode(TorchDispatchMode):
    """Records every ATen op run inside it as a :class:`KernelTraffic` in ``self.kernels``
    (views and other metadata-only ops are skipped). Ops of ``convformer_fast`` are
    recorded as themselves, with the registry's FLOPs."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        flops_module.register_flop_formulas()
        self._flop_registry = flop_registry
        self.kernels: list[KernelTraffic] = []
        self.uncounted_ops: set[str] = set()  # namespace ops without a FLOP formula

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _is_metadata_only(func):
            return out
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        formula = self._flop_registry.get(func._overloadpacket)
        if formula is None and func.namespace == flops_module.NAMESPACE:  # defined meanwhile
            flops_module.register_flop_formulas()
            formula = self._flop_registry.get(func._overloadpacket)
        n_flops = int(formula(*args, **kwargs, out_val=out)) if formula else 0
        name = func._schema.name
        if formula is None and name.startswith(flops_module.NAMESPACE + "::"):
            self.uncounted_ops.add(name)
        written = 0 if name.startswith("aten::empty") else sum(map(tensor_bytes, outputs))
        self.kernels.append(KernelTraffic(name, n_flops, sum(map(tensor_bytes, inputs)), written))
        return out


def measure_traffic(fn: Callable[[], Any]) -> list[KernelTraffic]:
    """Run ``fn()`` under :class:`TrafficMode`; the op stream it recorded."""
    mode = TrafficMode()
    with mode:
        fn()
    return mode.kernels


def fused_kernels(model, batch: int, dtype: torch.dtype) -> list[KernelTraffic]:
    """Minimum traffic and FLOPs of the fused design for a ConvFormer config (analytic).

    Per DMHCSA block over x (N, S, F) with h heads and the folded kernel k:
      attention kernel: read x, LN (2F), folded weight 3C*C*k and bias 3C; write out (N,S,F);
        FLOPs of the folded conv-QKV plus Q K^T and P V;
      FFN kernel: read x, LN (2F), W1 (rF*F + rF), W2 (F*rF + F); write out;
        FLOPs 2 * N*S*(F*rF + rF*F).
    Embedding (x (B,T,J,2) -> (B*T, J, d) plus E_pos) and head (LN, Linear(J*d -> 3J) and
    the frame weighting) are one kernel each. The fold itself is a weight-sized op cached
    in eval mode and left out.
    """
    from .flops import FLOP_FORMULAS, OpCall
    from ..reference import SPATIAL

    e = torch.empty((), dtype=dtype).element_size()
    cfg = model.config
    t, j, d = cfg["num_frames"], cfg["num_joints"], cfg["embed_dim"]
    k = max(cfg["kernel_sizes"])
    h = cfg["num_heads"]
    hidden_ratio = cfg["mlp_ratio"]
    kernels = [KernelTraffic("embed (Linear 2->d + E_pos)", 2 * batch * t * j * 2 * d,
                             e * (batch * t * j * 2 + 2 * d + d + j * d), e * batch * t * j * d)]
    stages = [(SPATIAL, cfg["spatial_depth"], batch * t, j, d),
              ("temporal", cfg["temporal_depth"], batch, t, j * d)]
    for layout, depth, n, s, f in stages:
        c = f if layout == SPATIAL else s
        hidden = int(f * hidden_ratio)
        qkv = FLOP_FORMULAS[f"{flops_module.NAMESPACE}::qkv_projection"](
            OpCall(((n, s, f), (3 * c, c, k), (3 * c,), h, layout), ()))
        attn = FLOP_FORMULAS[f"{flops_module.NAMESPACE}::attention"](
            OpCall(((3, n, h, s, f // h),), ()))
        activations = n * s * f
        for i in range(depth):
            kernels.append(KernelTraffic(
                f"{layout} block {i}: LN+conv-QKV+attention+residual", 2 * (qkv + attn),
                e * (activations + 2 * f + 3 * c * c * k + 3 * c), e * activations))
            kernels.append(KernelTraffic(
                f"{layout} block {i}: LN+FFN+GELU+residual", 2 * 2 * activations * hidden,
                e * (activations + 2 * f + 2 * f * hidden + hidden + f), e * activations))
    frame = j * d
    kernels.append(KernelTraffic(
        "head (LN + Linear + frame weights)",
        2 * batch * t * frame * 3 * j + 2 * batch * t * 3 * j,
        e * (batch * t * frame + 2 * frame + frame * 3 * j + 3 * j + t + 1), e * batch * 3 * j))
    return kernels


@dataclass
class RooflineEstimate:
    gpu: str
    kernels: int
    flops: int
    bytes: int
    compute_bound_kernels: int
    time_s: float                 # sum of max(flops / peak, bytes / bandwidth)
    time_with_launch_s: float     # plus LAUNCH_LATENCY_S per kernel (an assumption)


def kernel_bound(flops: float, nbytes: float, gpu: str, dtype: torch.dtype) -> tuple[float, bool]:
    """(seconds, compute-bound?) of one kernel on paper: max(FLOPs / peak, bytes / bandwidth)."""
    spec = GPU_SPECS[gpu]
    compute, memory = flops / spec.peak_flops[dtype], nbytes / spec.bandwidth
    return max(compute, memory), compute > memory


def roofline(kernels: list[KernelTraffic], gpu: str, dtype: torch.dtype) -> RooflineEstimate:
    time_s, compute_bound = 0.0, 0
    for kernel in kernels:
        seconds, is_compute_bound = kernel_bound(kernel.flops, kernel.bytes, gpu, dtype)
        compute_bound += is_compute_bound
        time_s += seconds
    return RooflineEstimate(
        gpu=gpu, kernels=len(kernels), flops=sum(k.flops for k in kernels),
        bytes=sum(k.bytes for k in kernels), compute_bound_kernels=compute_bound,
        time_s=time_s, time_with_launch_s=time_s + LAUNCH_LATENCY_S * len(kernels),
    )


def model_traffic(preset: str, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict:
    """Op streams of one eval forward of the eager model and of the ``torch`` backend
    (measured on the CPU), and the fused design's minimum (analytic), for a preset."""
    from ..fast import ConvFormerFast
    from ..reference import ConvFormer

    eager = ConvFormer.from_preset(preset).eval().to(dtype)
    fast = ConvFormerFast.from_reference(eager, backend="torch")
    x = flops_module.model_inputs(eager, batch)
    # no_grad rather than inference_mode: under inference_mode composite ops (linear,
    # conv1d, matmul) reach the dispatch mode undecomposed and torch has no formula for them.
    with torch.no_grad():
        fast(x)  # fill the fold cache: in eval mode the fold is not part of a forward
        streams = {
            "eager (ATen ops, measured)": measure_traffic(lambda: eager(x)),
            "torch backend (ATen ops, measured)": measure_traffic(lambda: fast(x)),
        }
    streams["fused design (minimum, analytic)"] = fused_kernels(eager, batch, dtype)
    return streams
