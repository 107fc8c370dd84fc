"""``attention``: multi-head attention of one DMHCSA layer (paper eq. 7), and its backward.

Reads Q, K, V in the head-split layout :func:`~convformer_fast.ops.qkv_projection` writes
(any layout in which one head's (S, d) matrix has a unit stride is read in place), fuses
the max-subtracted softmax (no S x S matrix is kept) and returns the heads merged, with the
log-sum-exp of every score row for the backward (flash-style: it recomputes P).
"""

from __future__ import annotations

import math

import torch

from ..triton import MAX_HEAD_DIM as TRITON_MAX_HEAD_DIM
from . import limits
from .spec import (
    CPU,
    CUDA,
    EMULATED,
    EMULATED_NAMESPACE,
    FLOAT_DTYPES,
    TRITON,
    Autograd,
    Limits,
    OpCall,
    OpSpec,
    Sample,
    inference_only,
    library_op,
)


def attention(qkv: torch.Tensor) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(d)) V`` per head: qkv (3, N, h, S, d) -> (N, S, h*d)."""
    return library_op("attention")(qkv)[0]


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(N, h, S, d) -> (N, S, h*d): heads concatenated, as every backend returns them."""
    n, h, s, d = out.shape
    return out.transpose(1, 2).reshape(n, s, h * d)


def reference(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention: (out (N, S, h*d), lse (N, h, S))."""
    q, k, v = qkv.unbind(0)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    row_max = scores.amax(dim=-1, keepdim=True)
    weights = torch.exp(scores - row_max)
    total = weights.sum(dim=-1, keepdim=True)
    out = (weights / total) @ v
    return merge_heads(out), (row_max + torch.log(total)).squeeze(-1)


def _fake(qkv):
    _, n, h, s, d = qkv.shape
    return qkv.new_empty((n, s, h * d)), qkv.new_empty((n, h, s))


def _setup_context(ctx, inputs, output):
    (qkv,) = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, out, lse)


def _backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    return library_op("attention_backward")(grad_out, qkv, out, lse)


def macs(batch_heads: int, s_q: int, s_k: int, d_qk: int, d_v: int) -> int:
    """Q K^T and P V: batch_heads * s_q * s_k * (d_qk + d_v)."""
    return batch_heads * s_q * s_k * (d_qk + d_v)


def backward_macs(batch_heads: int, s_q: int, s_k: int, d_qk: int, d_v: int) -> int:
    """Recompute Q K^T, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: five
    matmuls, the count torch.utils.flop_counter uses for SDPA's backward."""
    return batch_heads * s_q * s_k * (3 * d_qk + 2 * d_v)


def _flops(call: OpCall) -> int:
    _three, n, h, s, d = call.args[0]
    return macs(n * h, s, s, d, d)


def _backward_flops(call: OpCall) -> int:
    _three, n, h, s, d = call.args[1]  # (grad_out, qkv, out, lse)
    return backward_macs(n * h, s, s, d, d)


# (N, h, S, d_head): spatial heads (J = 15/17, d = 4), temporal heads (odd T, d = 68), T = 351,
# one token; S = 81, 33 and 128 take several query blocks of the CPU kernel, the last one
# partial; odd d_head exercises its pairs-of-features remainder.
SHAPES = [(5, 8, 17, 4), (3, 2, 15, 4), (1, 8, 27, 68), (2, 1, 9, 68), (1, 2, 351, 16), (2, 3, 1, 8),
          (2, 3, 81, 68), (1, 1, 33, 3), (1, 2, 128, 5)]


def make_qkv(n, h, s, d, dtype=torch.float32, scale=1.0, requires_grad=True):
    gen = torch.Generator().manual_seed(n * 100 + s)
    return (torch.randn(3, n, h, s, d, generator=gen, dtype=dtype) * scale).requires_grad_(requires_grad)


def samples(dtype: torch.dtype):
    for shape in SHAPES:
        yield Sample((make_qkv(*shape, dtype=dtype),), str(shape))


def backward_samples(dtype: torch.dtype):
    for shape in SHAPES[:4]:
        qkv = make_qkv(*shape, dtype=dtype, requires_grad=False)
        out, lse = reference(qkv)
        yield Sample((torch.randn_like(out), qkv, out, lse), str(shape))


SPEC = OpSpec(
    name="attention",
    tests=("tests/test_ops.py", "tests/test_cuda_emulated.py", "tests/triton/test_triton_kernels.py"),
    summary="qkv (3, N, h, S, d) -> (out (N, S, h*d), lse (N, h, S)): softmax(Q K^T / sqrt(d)) V "
            "per head (paper eq. 7)",
    kernels={
        CPU: "csrc/cpu/attention.cpp",
        CUDA: "csrc/cuda/attention.cu",
        EMULATED: "csrc/emulated/attention.cpp",
        TRITON: "convformer_fast/triton/kernels.py",
    },
    fake=_fake,
    autograd=Autograd(_backward, _setup_context),
    emulated_autograd=inference_only(f"{EMULATED_NAMESPACE}::attention"),
    flops=_flops,
    limits={
        CPU: Limits((torch.float32, torch.float64)),
        CUDA: Limits(FLOAT_DTYPES, max_head_dim=limits.attention_max_head_dim),
        EMULATED: Limits(FLOAT_DTYPES, max_head_dim=limits.attention_max_head_dim),
        TRITON: Limits(FLOAT_DTYPES, max_head_dim=lambda dtype: TRITON_MAX_HEAD_DIM),
    },
    reference=reference,
    samples=samples,
    note="the CUDA kernel has no backward: its emulated op refuses one",
)

BACKWARD_SPEC = OpSpec(
    name="attention_backward",
    tests=("tests/test_ops.py", "tests/triton/test_triton_kernels.py"),
    summary="gradient of attention w.r.t. qkv, recomputing the probabilities from lse",
    kernels={CPU: "csrc/cpu/attention.cpp", TRITON: "convformer_fast/triton/kernels.py"},
    fake=lambda grad_out, qkv, out, lse: qkv.new_empty(qkv.shape),
    flops=_backward_flops,
    limits={CPU: SPEC.limits[CPU], TRITON: SPEC.limits[TRITON]},
    samples=backward_samples,
    backward_of="attention",
    note="checked against autograd through the reference in the gradient tests of attention",
)

SPECS = (SPEC, BACKWARD_SPEC)
