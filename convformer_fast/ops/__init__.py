"""The compiled ops ``torch.ops.convformer_fast.*``, one module per op, and their registry.

Where each part of an op lives (docs/ARCHITECTURE.md has the table):

* schema: ``csrc/ops.cpp``, the only place a schema is written (Python reads it back);
* kernels: ``csrc/cpu/<op>.cpp``, ``csrc/cuda/<op>.cu``, ``csrc/emulated/<op>.cpp`` (the CUDA
  kernels' source on the CPU emulator) and ``convformer_fast/triton/``;
* everything else: ``convformer_fast/ops/<op>.py``: the functional wrapper, the reference
  maths (the tests' oracle), the fake kernel, autograd, the FLOP formula, the limits and the
  test shapes, as one :class:`~convformer_fast.ops.spec.OpSpec`; :mod:`.registry` gathers
  them and derives the rest.

The wrappers below take tensors only; they raise RuntimeError naming the reason when
``_C`` is not usable (see :data:`EXTENSION_ERROR`).
"""

from __future__ import annotations

from . import limits
from .attention import attention, merge_heads
from .feed_forward_residual import feed_forward_residual
from .qkv_projection import conv_geometry, qkv_projection, qkv_view_of_conv
from .registry import EXTENSION_ERROR, OPS, cuda_kernels_built, extension_loaded, kernel_ops
from .spatial_attention_residual import spatial_attention_residual
from .spec import EMULATED_NAMESPACE, NAMESPACE, OpSpec
from .winograd_weight import WINOGRAD_MIN_CHANNELS, winograd_tile, winograd_weight

__all__ = [
    "EMULATED_NAMESPACE", "EXTENSION_ERROR", "NAMESPACE", "OPS", "OpSpec", "WINOGRAD_MIN_CHANNELS",
    "attention", "conv_geometry", "cuda_kernels_built", "extension_loaded", "feed_forward_residual",
    "kernel_ops", "limits", "merge_heads", "qkv_projection", "qkv_view_of_conv",
    "spatial_attention_residual", "winograd_tile", "winograd_weight",
]
