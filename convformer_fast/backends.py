"""Backends: how a fast DMHCSA layer computes. Each declares what it supports and why not.

A backend is a small object with ``unavailable_reason()`` (does it work in this
environment at all), ``not_supported_reasons(x)`` (can it serve this input) and
``attention(module, x)``. ``"auto"`` walks a per-device priority list; an explicitly named
backend that cannot serve raises with its reasons instead of silently falling back.
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

from . import _checks, ops
from . import triton as triton_backend
from ._extension import EXTENSION_ERROR, extension_loaded
from .reference import DMHCSA, SPATIAL, TEMPORAL, ConvFormerBlock

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
AUTO = "auto"
AUTO_ENV_VAR = "CONVFORMER_FAST_BACKEND"


def _needs_grad(x: torch.Tensor, *modules: torch.nn.Module) -> bool:
    """Would autograd record this call (so an inference-only kernel must not serve it)?"""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())


def _fusable_half(block: ConvFormerBlock, x: torch.Tensor, *modules: torch.nn.Module) -> bool:
    """May an inference-only fused kernel (no backward, no random draws) serve this block
    half? Not when autograd would record it, nor while a DropPath is active."""
    drop_path_active = block.drop_path.training and block.drop_path.p > 0
    return not drop_path_active and not _needs_grad(x, *modules)


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(N, h, S, dh) -> (N, S, h*dh)."""
    n, h, s, dh = out.shape
    return out.transpose(1, 2).reshape(n, s, h * dh)


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

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run in this environment, or None if it can."""
        return None

    def not_supported_reasons(self, x: torch.Tensor) -> list[str]:
        reasons = []
        if self.unavailable_reason():
            reasons.append(self.unavailable_reason())
        if x.device.type not in self.devices:
            reasons.append(f"device {x.device.type!r} not in {list(self.devices)}")
        if x.dtype not in self.dtypes:
            reasons.append(f"dtype {x.dtype} not in {[str(d) for d in self.dtypes]}")
        return reasons

    def nondeterminism(self, x: torch.Tensor) -> str | None:
        """Why running on ``x`` now would break deterministic-algorithms mode, or None."""
        if not torch.are_deterministic_algorithms_enabled() or x.device.type in self.deterministic_devices:
            return None
        return (f"backend {self.name!r} is not deterministic on {x.device.type!r} (only on "
                f"{list(self.deterministic_devices)}), but torch.use_deterministic_algorithms(True) "
                "is set; use backend='auto' (it picks a deterministic backend) or 'torch'")

    def attention(self, module: DMHCSA, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"backend {self.name!r} has no attention implementation")

    # The two halves of a ConvFormer block (paper eq. 8). Backends override them to fuse a
    # half's LayerNorm, main op and residual add; the defaults compose the modules, drawing
    # random numbers in the eager order (aggregation dropout, then each DropPath), which is
    # what a fused override must fall back to whenever a DropPath is active.
    def attention_residual(self, block: ConvFormerBlock, x: torch.Tensor) -> torch.Tensor:
        """``x + DropPath(DMHCSA(LN1(x)))``."""
        return x + block.drop_path(block.attn(block.norm1(x)))

    def feed_forward_residual(self, block: ConvFormerBlock, x: torch.Tensor) -> torch.Tensor:
        """``x + DropPath(FFN(LN2(x)))``."""
        return x + block.drop_path(block.mlp(block.norm2(x)))


class EagerBackend(Backend):
    name = "eager"
    description = "the reference math: one Conv1d per kernel size, explicit softmax"
    deterministic_devices = ("cpu", "cuda")  # ATen ops: they honour the mode themselves

    def attention(self, module, x):
        return DMHCSA.forward(module, x)


class TorchBackend(Backend):
    name = "torch"
    description = "exact fold in plain PyTorch: one Conv1d for Q, K and V, then SDPA"
    deterministic_devices = ("cpu", "cuda")  # ATen ops: they honour the mode themselves

    def attention(self, module, x):
        weight, bias = module.folded_qkv()
        conv_input = x.transpose(1, 2) if module.layout == SPATIAL else x
        y = F.conv1d(conv_input, weight, bias, padding=weight.shape[-1] // 2)
        q, k, v = ops.qkv_view_of_conv(y, module.layout, module.num_heads).unbind(0)
        return merge_heads(F.scaled_dot_product_attention(q, k, v))


class CpuBackend(Backend):
    name = "cpu"
    description = ("C++ kernels of convformer_fast._C: folded conv-QKV (im2col GEMMs; Winograd for "
                   "long windows), fused softmax attention; in inference each block half (LN + op + "
                   "residual) fused")
    devices = ("cpu",)
    dtypes = (torch.float32, torch.float64)
    # No atomics: each output element has one owning thread and sums run in a fixed order
    # for a given thread count; the projection's backward is ATen's convolution backward.
    deterministic_devices = ("cpu",)

    def unavailable_reason(self):
        return EXTENSION_ERROR

    def attention(self, module, x):
        weight, bias = module.folded_qkv()
        winograd = None
        tile = ops.winograd_tile(weight.shape[-1], module.channels) if module.layout == TEMPORAL else 0
        if tile:
            winograd = module.derived_from_fold("winograd", weight, lambda w: ops.winograd_weight(w, tile))
        qkv = ops.qkv_projection(x, weight, bias, module.num_heads, module.layout, winograd)
        return ops.attention(qkv)

    # The fused halves have no backward: they serve inference (eval, autograd off).
    def attention_residual(self, block, x):
        attn = block.attn
        if attn.layout != SPATIAL or not _fusable_half(block, x, block.norm1, attn):
            return super().attention_residual(block, x)
        _checks.check_tokens(x, attn.num_tokens, attn.num_features, type(attn).__name__)
        weight, bias = attn.folded_qkv()
        norm = block.norm1
        return ops.spatial_attention_residual(x, norm.weight, norm.bias, norm.eps, weight, bias, attn.num_heads)

    def feed_forward_residual(self, block, x):
        if not _fusable_half(block, x, block.norm2, block.mlp):
            return super().feed_forward_residual(block, x)
        return ops.feed_forward_residual(x, block.norm2, block.mlp[0], block.mlp[2])


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
        return triton_backend.unavailable_reason()

    def not_supported_reasons(self, x):
        reasons = super().not_supported_reasons(x)
        if x.dtype == torch.bfloat16 and triton_backend.interpreted():
            reasons.append("bfloat16 under TRITON_INTERPRET=1 (the interpreter has no bfloat16 "
                           "arithmetic)")
        return reasons

    def attention(self, module, x):
        weight, bias = module.folded_qkv()
        return triton_backend.load_ops().dmhcsa(x, weight, bias, module.num_heads, module.layout)


class CudaKernelsBackend(Backend):
    """The hand-written CUDA kernels of kernels/, inference only; shared by ``cuda`` (CUDA
    tensors, ``torch.ops.convformer_fast``) and ``cuda_emulated`` (CPU tensors: the same
    kernel source and host code run by the CPU emulator, ``torch.ops.convformer_fast_emulated``).

    * Spatial block halves in inference: LayerNorm -> folded conv-QKV -> attention ->
      residual add in ONE kernel (``spatial_attention_residual``).
    * Any DMHCSA layer (the temporal ones inside blocks): the folded conv-QKV through ATen's
      convolution (cuDNN), then the tiled online-softmax ``attention`` kernel.
    * Whenever autograd would record the call, or a DropPath is active, or a layer is beyond
      the kernels' limits (d_head above 64 spatial, 32 in fp64, / 128 otherwise), the layer runs the
      exact-fold ``torch`` path instead (the kernels have no backward).
    """

    dtypes = FLOAT_DTYPES
    #: Largest head dim of each kernel (csrc/kernel_ops.h; tests/test_cuda_emulated.py checks them).
    SPATIAL_MAX_HEAD_DIM = 64
    SPATIAL_MAX_HEAD_DIM_FP64 = 32  # registers: a thread's query and output rows of doubles
    ATTENTION_MAX_HEAD_DIM = 128

    def spatial_max_head_dim(self, dtype: torch.dtype) -> int:
        return self.SPATIAL_MAX_HEAD_DIM_FP64 if dtype == torch.float64 else self.SPATIAL_MAX_HEAD_DIM

    def _ops(self):
        return ops.kernel_ops(self.emulated)

    def attention(self, module, x):
        if _needs_grad(x, module) or module.head_dim > self.ATTENTION_MAX_HEAD_DIM:
            return BACKENDS["torch"].attention(module, x)
        weight, bias = module.folded_qkv()
        kernels = self._ops()
        qkv = kernels.qkv_projection(x, weight, bias, module.num_heads, module.layout)
        return kernels.attention(qkv)[0]

    def attention_residual(self, block, x):
        attn, norm = block.attn, block.norm1
        fused = (attn.layout == SPATIAL and attn.head_dim <= self.spatial_max_head_dim(x.dtype)
                 and norm.weight is not None and norm.bias is not None
                 and _fusable_half(block, x, norm, attn))
        if not fused:  # temporal layers reach self.attention through block.attn
            return super().attention_residual(block, x)
        weight, bias = attn.folded_qkv()
        return self._ops().spatial_attention_residual(x, norm.weight, norm.bias, norm.eps, weight, bias,
                                                      attn.num_heads)


class CudaBackend(CudaKernelsBackend):
    name = "cuda"
    description = ("hand-written CUDA kernels (kernels/): fused LayerNorm + folded conv-QKV + attention "
                   "+ residual for spatial layers, cuDNN conv-QKV + tiled online-softmax attention for "
                   "temporal ones; inference only (gradients take the torch path)")
    devices = ("cuda",)

    def unavailable_reason(self):
        if EXTENSION_ERROR:
            return EXTENSION_ERROR
        if not torch._C._dispatch_has_kernel_for_dispatch_key(
                "convformer_fast::spatial_attention_residual", "CUDA"):
            return ("convformer_fast._C was built without its CUDA kernels (build where nvcc is "
                    "found, or with FORCE_CUDA=1)")
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return None


class CudaEmulatedBackend(CudaKernelsBackend):
    name = "cuda_emulated"
    description = ("the cuda backend's kernel source and host code on CPU tensors, run by the CPU "
                   "emulator with shared-memory bounds, uninitialised-read and race checks (slow: "
                   "for tests and debugging); inference only (gradients take the torch path)")
    devices = ("cpu",)
    emulated = True

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


def available_backends() -> dict[str, BackendInfo]:
    """Every backend, whether it works in this environment, and why not if it does not."""
    infos = {}
    for name, backend in BACKENDS.items():
        reason = backend.unavailable_reason()
        deterministic = tuple(d for d in backend.devices if d in backend.deterministic_devices)
        infos[name] = BackendInfo(name, reason is None, reason or "", backend.devices, backend.description,
                                  deterministic, backend.emulated)
    return infos


def check_backend_name(name: str) -> str:
    """Validate a ``backend=`` argument; an explicitly named backend must be usable here."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {list(BACKEND_NAMES)}")
    if name != AUTO and BACKENDS[name].unavailable_reason():
        raise ValueError(f"backend: {name!r} is unavailable: {BACKENDS[name].unavailable_reason()}")
    return name


_warned_fallback = False


def select_backend(name: str, x: torch.Tensor) -> Backend:
    """The backend that computes for input ``x`` under the module setting ``name``."""
    if name == AUTO:
        override = os.environ.get(AUTO_ENV_VAR)
        if override:
            name = check_backend_name(override)
    if name != AUTO:
        backend = BACKENDS[name]
        reasons = backend.not_supported_reasons(x)
        if reasons:
            raise ValueError(f"backend {name!r} cannot run this input: " + "; ".join(reasons))
        nondeterminism = backend.nondeterminism(x)
        if nondeterminism:
            if not torch.is_deterministic_algorithms_warn_only_enabled():
                raise RuntimeError(nondeterminism)
            warnings.warn(nondeterminism, UserWarning, stacklevel=3)
        return backend
    for candidate in AUTO_PRIORITY.get(x.device.type, ("torch",)):
        backend = BACKENDS[candidate]
        if not backend.not_supported_reasons(x) and not backend.nondeterminism(x):
            _warn_if_extension_missing(candidate)
            return backend
    return BACKENDS["eager"]


def _warn_if_extension_missing(chosen: str) -> None:
    global _warned_fallback
    if chosen == "torch" and not extension_loaded() and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"convformer_fast: backend 'auto' falls back to 'torch': {EXTENSION_ERROR}",
            RuntimeWarning,
            stacklevel=3,
        )
