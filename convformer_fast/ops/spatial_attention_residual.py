"""``spatial_attention_residual``: the spatial half of a ConvFormer block in one kernel,
inference only: ``x + DMHCSA(LayerNorm(x))`` (paper eq. 8, first line, without DropPath).

On CPU tensors the cpu backend's kernel serves it (each chunk of frames normalised,
projected, attended and added back without leaving the core's cache); on CUDA tensors the
CUDA kernel (kernels/spatial_attention_residual.cuh: one block holds whole frames in shared
memory); on CPU tensors in the emulated namespace the same CUDA kernel, run by the emulator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import limits
from .attention import macs as attention_macs
from .attention import reference as attention_reference
from .qkv_projection import macs as projection_macs
from .qkv_projection import make_args as projection_args
from .qkv_projection import reference as projection_reference
from .spec import (
    CPU,
    CUDA,
    EMULATED,
    EMULATED_NAMESPACE,
    FLOAT_DTYPES,
    NAMESPACE,
    Limits,
    OpCall,
    OpSpec,
    Sample,
    inference_only,
    library_op,
)


def spatial_attention_residual(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                               eps: float, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                               *, emulated: bool = False) -> torch.Tensor:
    """x (N, J, d) frames of joints; norm_weight, norm_bias (d,) and eps of the LayerNorm;
    weight (3d, d, k) and bias (3d,) of the folded conv-QKV (:func:`convformer_fast.fold.fold_qkv`).
    ``emulated=True`` runs the CUDA kernel on CPU tensors through the emulator. No backward."""
    op = library_op("spatial_attention_residual", EMULATED_NAMESPACE if emulated else NAMESPACE)
    return op(x, norm_weight, norm_bias, eps, weight, bias, num_heads)


def reference(x, norm_weight, norm_bias, eps, weight, bias, num_heads):
    """LayerNorm, then the projection's and attention's references, then the residual add."""
    normed = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
    out, _lse = attention_reference(projection_reference(normed, weight, bias, num_heads, "spatial"))
    return x + out


def _fake(x, norm_weight, norm_bias, eps, weight, bias, num_heads):
    torch._check(x.dim() == 3, lambda: "spatial_attention_residual: x must be (N, J, d)")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _flops(call: OpCall) -> int:
    """The folded projection and the attention of a spatial layer (LayerNorm and the
    residual add are not multiply-adds)."""
    x, _norm_weight, _norm_bias, _eps, weight, _bias, heads = call.args[:7]
    n, s, f = x
    return projection_macs(x, weight, "spatial") + attention_macs(n * heads, s, s, f // heads, f // heads)


# (N, J, F, heads, k): N = 50 spans several chunks of frames with a remainder. Heads a
# multiple of 8 take the CPU's heads-in-lanes attention (csrc/cpu/attention_impl.h): one and
# two head groups, d_head 4, 5 and 8, J = 17, 15 and 1; other head counts the per-head
# query-major kernel.
SHAPES = [(50, 17, 32, 8, 7), (3, 15, 8, 2, 3), (1, 17, 16, 1, 1), (2, 5, 4, 4, 11),
          (4, 15, 128, 16, 5), (3, 17, 40, 8, 3), (2, 1, 8, 8, 1)]


def make_args(n, j, f, heads, k, dtype=torch.float32, seed=None):
    x, weight, bias, heads, _ = projection_args("spatial", n, j, f, heads, k, dtype, seed=seed)
    gen = torch.Generator().manual_seed(f * 31 + k)
    norm_weight = 1.0 + 0.2 * torch.randn(f, generator=gen, dtype=dtype)
    norm_bias = 0.2 * torch.randn(f, generator=gen, dtype=dtype)
    return x, norm_weight, norm_bias, 1e-5, weight, bias, heads


def samples(dtype: torch.dtype):
    for shape in SHAPES:
        yield Sample(make_args(*shape, dtype=dtype), str(shape))


SPEC = OpSpec(
    name="spatial_attention_residual",
    tests=("tests/test_ops.py", "tests/test_cuda_emulated.py"),
    summary="x (N, J, d) -> x + DMHCSA(LayerNorm(x)) for a spatial layer, fused (inference only)",
    kernels={
        CPU: "csrc/cpu/spatial_attention_residual.cpp",
        CUDA: "csrc/cuda/spatial_attention_residual.cu",
        EMULATED: "csrc/emulated/spatial_attention_residual.cpp",
    },
    fake=_fake,
    autograd=inference_only(f"{NAMESPACE}::spatial_attention_residual"),
    emulated_autograd=inference_only(f"{EMULATED_NAMESPACE}::spatial_attention_residual"),
    flops=_flops,
    limits={
        CPU: Limits((torch.float32, torch.float64)),
        CUDA: Limits(FLOAT_DTYPES, max_head_dim=limits.spatial_max_head_dim,
                     note="the LayerNorm must have a weight and a bias"),
        EMULATED: Limits(FLOAT_DTYPES, max_head_dim=limits.spatial_max_head_dim,
                         note="the LayerNorm must have a weight and a bias"),
    },
    reference=reference,
    samples=samples,
)

SPECS = (SPEC,)
