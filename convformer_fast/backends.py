"""Backends: how a fast layer computes, on tensors. Each declares what it supports and why not.

A backend is a small object that answers, for an input and a layer:

* ``unavailable_reason()``: does it work in this environment at all;
* ``not_supported_reasons(x, layer)``: can it serve this input (device, dtype) and this
  layer (head dim, gradients): every limit is declared here, read from the op registry
  (:data:`convformer_fast.ops.OPS`), never hidden in a kernel call;
* ``dmhcsa(x, weight, bias, num_heads, layout, **prepared)``: one DMHCSA layer after the
  fold (paper eqs. 3-7), and, where it fuses them in inference, one half of a ConvFormer
  block (``fused_attention_residual``, ``fused_feed_forward_residual``).

:func:`resolve` picks the backend for a layer: ``"auto"`` walks a per-device priority list;
an explicitly named backend that cannot serve raises with its reasons. A backend may
declare a **handoff**: the layers it declines for layer-level reasons (gradients, a head
dim beyond its kernels) go to the named backend, as documented in its ``handoff_when`` and
shown by :func:`available_backends` and ``convformer-fast info``. Nothing else falls back.
The environment variable ``CONVFORMER_FAST_BACKEND`` overrides what ``"auto"`` picks.

Each backend also declares ``deterministic_devices``: where repeated calls give
bitwise-identical outputs and gradients. Under ``torch.use_deterministic_algorithms(True)``
``"auto"`` passes over a backend that is not deterministic on the input's device, and an
explicitly named one raises (warns under ``warn_only=True``), as torch's own ops do.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from . import triton as triton_backend
from .ops import EXTENSION_ERROR, OPS
from .ops.spec import CPU, CUDA, EMULATED, FLOAT_DTYPES, TRITON

AUTO = "auto"
AUTO_ENV_VAR = "CONVFORMER_FAST_BACKEND"
SPATIAL, TEMPORAL = "spatial", "temporal"


@dataclass(frozen=True)
class Layer:
    """What a backend needs to know about a layer to say whether it can serve it."""

    layout: str
    head_dim: int
    needs_grad: bool = False


class Backend:
    name: str = ""
    description: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    # Devices on which the same input and weights always give bitwise-identical outputs
    # and gradients (what torch.use_deterministic_algorithms(True) asks for). Nothing is
    # assumed: a backend lists the devices it has checked.
    deterministic_devices: tuple[str, ...] = ()
    #: Runs another device's kernels in a CPU emulation: for tests, not worth timing.
    emulated: bool = False
    #: Computes from the folded Q/K/V weight (every backend but the eager reference).
    folds: bool = True
    #: The backend that serves the layers this one declines for layer-level reasons, and
    #: when that happens (for users: shown by available_backends() and `info`).
    handoff: str | None = None
    handoff_when: tuple[str, ...] = ()
    #: Block halves fused into one kernel in inference: "spatial_attention",
    #: "temporal_attention", "feed_forward".
    fuses: frozenset[str] = frozenset()

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run in this environment, or None if it can."""
        return None

    def input_reasons(self, x: torch.Tensor) -> list[str]:
        reasons = []
        unavailable = self.unavailable_reason()
        if unavailable:
            reasons.append(unavailable)
        if x.device.type not in self.devices:
            reasons.append(f"device {x.device.type!r} not in {list(self.devices)}")
        if x.dtype not in self.dtypes:
            reasons.append(f"dtype {x.dtype} not in {[str(d) for d in self.dtypes]}")
        return reasons

    def layer_reasons(self, x: torch.Tensor, layer: Layer) -> list[str]:
        """Why this layer (head dim, gradients) is beyond this backend; empty if it is not."""
        return []

    def not_supported_reasons(self, x: torch.Tensor, layer: Layer | None = None) -> list[str]:
        reasons = self.input_reasons(x)
        if layer is not None and not reasons:
            reasons += self.layer_reasons(x, layer)
        return reasons

    def nondeterminism(self, x: torch.Tensor) -> str | None:
        """Why running on ``x`` now would break deterministic-algorithms mode, or None."""
        if not torch.are_deterministic_algorithms_enabled() or x.device.type in self.deterministic_devices:
            return None
        return (f"backend {self.name!r} is not deterministic on {x.device.type!r} (only on "
                f"{list(self.deterministic_devices)}), but torch.use_deterministic_algorithms(True) "
                "is set; use backend='auto' (it picks a deterministic backend) or 'torch'")

    # ---- computing, on tensors (the folded weight (3C, C, k) and bias (3C,) of the layer)

    def prepare(self, weight: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
        """Weight layouts of this backend's kernels derived from the folded weight, which a
        module caches beside its fold (recomputed only when a parameter changes)."""
        return {}

    def dmhcsa(self, x, weight, bias, num_heads, layout, **prepared) -> torch.Tensor:
        """One DMHCSA layer after the fold: (N, S, F) -> (N, S, F)."""
        raise RuntimeError(f"backend {self.name!r} computes from the unfolded filters, not from a folded "
                           "weight: use the module (convformer_fast.DMHCSA), or backend='torch' for the "
                           "same maths after the fold")

    def can_fuse_attention(self, x: torch.Tensor, layout: str, head_dim: int) -> bool:
        return f"{layout}_attention" in self.fuses

    def fused_attention_residual(self, x, norm_weight, norm_bias, eps, weight, bias, num_heads, layout,
                                 **prepared) -> torch.Tensor:
        raise RuntimeError(f"backend {self.name!r} does not fuse the {layout} attention half")

    def fused_feed_forward_residual(self, x, norm_weight, norm_bias, eps, w1, b1, w2, b2) -> torch.Tensor:
        raise RuntimeError(f"backend {self.name!r} does not fuse the feed-forward half")


class EagerBackend(Backend):
    name = "eager"
    description = "the reference math: one Conv1d per kernel size, explicit softmax"
    deterministic_devices = ("cpu", "cuda")  # ATen ops: they honour the mode themselves
    folds = False  # the modules compute it (convformer_fast.reference)


class TorchBackend(Backend):
    name = "torch"
    description = "exact fold in plain PyTorch: one Conv1d for Q, K and V, then SDPA"
    deterministic_devices = ("cpu", "cuda")  # ATen ops: they honour the mode themselves

    def dmhcsa(self, x, weight, bias, num_heads, layout, **prepared):
        conv_input = x.transpose(1, 2) if layout == SPATIAL else x
        y = F.conv1d(conv_input, weight, bias, padding=weight.shape[-1] // 2)
        q, k, v = ops.qkv_view_of_conv(y, layout, num_heads).unbind(0)
        return ops.merge_heads(F.scaled_dot_product_attention(q, k, v))


class CpuBackend(Backend):
    name = "cpu"
    description = ("C++ kernels of convformer_fast._C: folded conv-QKV (im2col GEMMs; Winograd for "
                   "long windows), fused softmax attention; in inference each block half (LN + op + "
                   "residual) fused")
    devices = ("cpu",)
    dtypes = OPS["attention"].limits[CPU].dtypes
    # No atomics: each output element has one owning thread and sums run in a fixed order
    # for a given thread count; the projection's backward is ATen's convolution backward.
    deterministic_devices = ("cpu",)
    fuses = frozenset({"spatial_attention", "feed_forward"})

    def unavailable_reason(self):
        return EXTENSION_ERROR

    def prepare(self, weight, layout):
        tile = ops.winograd_tile(weight.shape[-1], weight.shape[1]) if layout == TEMPORAL else 0
        return {"winograd_weight": ops.winograd_weight(weight, tile)} if tile else {}

    def dmhcsa(self, x, weight, bias, num_heads, layout, winograd_weight=None):
        return ops.attention(ops.qkv_projection(x, weight, bias, num_heads, layout, winograd_weight))

    def fused_attention_residual(self, x, norm_weight, norm_bias, eps, weight, bias, num_heads, layout,
                                 **prepared):
        return ops.spatial_attention_residual(x, norm_weight, norm_bias, eps, weight, bias, num_heads)

    def fused_feed_forward_residual(self, x, norm_weight, norm_bias, eps, w1, b1, w2, b2):
        return ops.feed_forward_residual(x, norm_weight, norm_bias, eps, w1, b1, w2, b2)


class TritonBackend(Backend):
    """Fused Triton kernels (convformer_fast/triton/): the folded conv-QKV projection written
    head-split, then flash-style attention, forward and backward. CUDA tensors; CPU tensors
    only through the Triton interpreter (TRITON_INTERPRET=1 set before the kernels are
    defined). The kernels are imported on first use."""

    name = "triton"
    description = ("fused Triton kernels: folded conv-QKV projection + flash attention, forward "
                   "and backward (GPU; CPU through TRITON_INTERPRET=1)")
    # No kernel uses atomics (each output tile has one owner; the weight gradient's partial
    # sums are added by one torch.sum), so a fixed tile shape is bitwise repeatable. On a
    # GPU, though, the autotuner picks the tile shapes by timing when a shape is first seen,
    # and tile shapes set the summation order: two processes can differ in the last bits.
    # The interpreter runs one fixed configuration.
    deterministic_devices = ("cpu",)

    @property
    def devices(self) -> tuple[str, ...]:
        return triton_backend.supported_devices()

    def unavailable_reason(self):
        return triton_backend.unavailable_reason() or (
            f"the Triton ops take their schemas from convformer_fast._C: {EXTENSION_ERROR}"
            if EXTENSION_ERROR else None)

    def input_reasons(self, x):
        reasons = super().input_reasons(x)
        if x.dtype == torch.bfloat16 and triton_backend.interpreted():
            reasons.append("bfloat16 under TRITON_INTERPRET=1 (the interpreter has no bfloat16 "
                           "arithmetic)")
        return reasons

    def layer_reasons(self, x, layer):
        return OPS["attention"].limits[TRITON].reasons(x.dtype, layer.head_dim)

    def dmhcsa(self, x, weight, bias, num_heads, layout, **prepared):
        return triton_backend.load_ops().dmhcsa(x, weight, bias, num_heads, layout)


class CudaKernelsBackend(Backend):
    """The hand-written CUDA kernels of kernels/, inference only; shared by ``cuda`` (CUDA
    tensors, ``torch.ops.convformer_fast``) and ``cuda_emulated`` (CPU tensors: the same
    kernel source and host code run by the CPU emulator, ``torch.ops.convformer_fast_emulated``).

    * Spatial block halves in inference: LayerNorm -> folded conv-QKV -> attention ->
      residual add in ONE kernel (``spatial_attention_residual``) when the head dim is within
      that kernel's limit; otherwise, and for temporal layers, the folded conv-QKV through
      ATen's convolution (cuDNN), then the tiled online-softmax ``attention`` kernel.
    * Declared handoff to ``torch``: a layer that autograd records (the kernels have no
      backward) or whose head dim is beyond the attention kernel.
    """

    dtypes = FLOAT_DTYPES
    handoff = "torch"
    fuses = frozenset({"spatial_attention"})
    _implementation = CUDA

    @property
    def handoff_when(self) -> tuple[str, ...]:
        limit = ("the attention kernel's limit" if EXTENSION_ERROR
                 else f"{ops.limits.attention_max_head_dim()}, the attention kernel's limit")
        return ("autograd records the layer: the kernels are inference-only",
                f"its head_dim is above {limit}")

    def _ops(self):
        return ops.kernel_ops(self.emulated)

    def layer_reasons(self, x, layer):
        reasons = []
        if layer.needs_grad:
            reasons.append("needs gradients: the cuda kernels are inference-only")
        reasons += OPS["attention"].limits[self._implementation].reasons(x.dtype, layer.head_dim)
        return reasons

    def dmhcsa(self, x, weight, bias, num_heads, layout, **prepared):
        kernels = self._ops()
        return kernels.attention(kernels.qkv_projection(x, weight, bias, num_heads, layout))[0]

    def can_fuse_attention(self, x, layout, head_dim):
        limits = OPS["spatial_attention_residual"].limits[self._implementation]
        return layout == SPATIAL and not limits.reasons(x.dtype, head_dim)

    def fused_attention_residual(self, x, norm_weight, norm_bias, eps, weight, bias, num_heads, layout,
                                 **prepared):
        return self._ops().spatial_attention_residual(x, norm_weight, norm_bias, eps, weight, bias, num_heads)


class CudaBackend(CudaKernelsBackend):
    name = "cuda"
    description = ("hand-written CUDA kernels (kernels/): fused LayerNorm + folded conv-QKV + attention "
                   "+ residual for spatial layers, cuDNN conv-QKV + tiled online-softmax attention for "
                   "temporal ones; inference only")
    devices = ("cuda",)

    def unavailable_reason(self):
        if EXTENSION_ERROR:
            return EXTENSION_ERROR
        if not ops.cuda_kernels_built():
            return ("convformer_fast._C was built without its CUDA kernels (build where nvcc is "
                    "found, or with FORCE_CUDA=1)")
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return None


class CudaEmulatedBackend(CudaKernelsBackend):
    name = "cuda_emulated"
    description = ("the cuda backend's kernel source and host code on CPU tensors, run by the CPU "
                   "emulator with shared-memory bounds, uninitialised-read and race checks (slow: "
                   "for tests and debugging); inference only")
    devices = ("cpu",)
    emulated = True
    _implementation = EMULATED

    def unavailable_reason(self):
        return EXTENSION_ERROR


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        EagerBackend(),
        TorchBackend(),
        CpuBackend(),
        TritonBackend(),
        CudaBackend(),
        CudaEmulatedBackend(),
    )
}
BACKEND_NAMES = (AUTO,) + tuple(BACKENDS)
# What "auto" tries, fastest first, per device type.
AUTO_PRIORITY = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str  # why it is unavailable; empty when available
    devices: tuple[str, ...]
    description: str
    deterministic_devices: tuple[str, ...]  # those of `devices` where it is deterministic
    emulated: bool = False  # an emulation for tests: left out of default benchmarks
    handoff: str = ""  # the backend that serves the layers this one declines ("" if none)
    handoff_when: tuple[str, ...] = ()


def available_backends() -> dict[str, BackendInfo]:
    """Every backend, whether it works in this environment, and why not if it does not."""
    infos = {}
    for name, backend in BACKENDS.items():
        reason = backend.unavailable_reason()
        deterministic = tuple(d for d in backend.devices if d in backend.deterministic_devices)
        infos[name] = BackendInfo(name, reason is None, reason or "", backend.devices, backend.description,
                                  deterministic, backend.emulated, backend.handoff or "",
                                  tuple(backend.handoff_when))
    return infos


def check_backend_name(name: str) -> str:
    """Validate a ``backend=`` argument; an explicitly named backend must be usable here."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {list(BACKEND_NAMES)}")
    if name != AUTO and BACKENDS[name].unavailable_reason():
        raise ValueError(f"backend: {name!r} is unavailable: {BACKENDS[name].unavailable_reason()}")
    return name


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Would autograd record a call on these tensors (so an inference-only kernel must not
    serve it)?"""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def resolve(name: str | Backend, x: torch.Tensor, layer: Layer | None = None) -> Backend:
    """The backend that computes ``layer`` for input ``x`` under the setting ``name``
    (a backend name, ``"auto"``, or a Backend), its declared handoff applied."""
    backend = name if isinstance(name, Backend) else _named_or_auto(name, x, layer)
    if layer is not None and backend.handoff and backend.layer_reasons(x, layer):
        return resolve(backend.handoff, x, layer)
    return backend


def _named_or_auto(name: str, x: torch.Tensor, layer: Layer | None) -> Backend:
    if name == AUTO:
        override = os.environ.get(AUTO_ENV_VAR)
        if override:
            name = check_backend_name(override)
    if name != AUTO:
        backend = BACKENDS[name]
        reasons = backend.input_reasons(x)
        if not reasons and layer is not None and not backend.handoff:
            reasons = backend.layer_reasons(x, layer)
        if reasons:
            raise ValueError(f"backend {name!r} cannot run this input: " + "; ".join(reasons))
        nondeterminism = backend.nondeterminism(x)
        if nondeterminism:
            if not torch.is_deterministic_algorithms_warn_only_enabled():
                raise RuntimeError(nondeterminism)
            warnings.warn(nondeterminism, UserWarning, stacklevel=4)
        return backend
    for candidate in AUTO_PRIORITY.get(x.device.type, ("torch",)):
        backend = BACKENDS[candidate]
        if not backend.input_reasons(x) and not backend.nondeterminism(x):
            if backend.handoff or layer is None or not backend.layer_reasons(x, layer):
                _warn_if_extension_missing(candidate)
                return backend
    return BACKENDS["eager"]


def select_backend(name: str, x: torch.Tensor) -> Backend:
    """The backend ``name`` stands for on input ``x`` (no layer: input-level checks only)."""
    return resolve(name, x)


_warned_fallback = False


def _warn_if_extension_missing(chosen: str) -> None:
    global _warned_fallback
    if chosen == "torch" and EXTENSION_ERROR and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"convformer_fast: backend 'auto' falls back to 'torch': {EXTENSION_ERROR}",
            RuntimeWarning,
            stacklevel=4,
        )
