"""``feed_forward_residual``: the feed-forward half of a ConvFormer block, fused, inference
only: ``x + W2 GELU(W1 LayerNorm(x) + b1) + b2`` (paper eq. 8, second line, without
DropPath; GELU is the exact erf form of ``nn.GELU()``).

Rows go in cache-sized chunks, so the hidden activations (twice as wide as x) never make a
round trip to memory (csrc/cpu/feed_forward_residual.cpp).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .spec import CPU, NAMESPACE, Limits, OpCall, OpSpec, Sample, inference_only, library_op


def feed_forward_residual(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
                          w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """x (..., D); the LayerNorm's weight and bias (D,) and eps; ``nn.Linear`` weights
    w1 (H, D), b1 (H,), w2 (D, H), b2 (D,). No backward."""
    return library_op("feed_forward_residual")(x, norm_weight, norm_bias, eps, w1, b1, w2, b2)


def reference(x, norm_weight, norm_bias, eps, w1, b1, w2, b2):
    """LayerNorm, then GELU written with erf, and the two affine maps as explicit matmuls."""
    normed = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
    hidden = normed @ w1.T + b1
    hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))
    return x + hidden @ w2.T + b2


def _fake(x, norm_weight, norm_bias, eps, w1, b1, w2, b2):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _flops(call: OpCall) -> int:
    """The two linear layers: rows * (D * H + H * D)."""
    x, w1 = call.args[0], call.args[4]
    hidden, dim = w1
    return 2 * math.prod(x[:-1]) * dim * hidden


# (shape of x, hidden). On 2 threads the CPU kernel runs 20 x 17 x 8 and 300 x 17 x 32 rows
# as one chunk per thread, 8199 x 8 (4096-row chunks at hidden 64) as four chunks of 2050
# rows, two per thread and the last one partial, and the others as one whole tensor.
SHAPES = [((20, 17, 8), 16), ((1, 9, 34), 68), ((3, 5), 7), ((300, 17, 32), 64), ((8199, 8), 64)]


def make_args(shape, hidden, dtype=torch.float32):
    gen = torch.Generator().manual_seed(hidden)
    dim = shape[-1]

    def uniform(*size, bound):
        return (torch.rand(*size, generator=gen, dtype=dtype) * 2 - 1) * bound

    x = torch.randn(shape, generator=gen, dtype=dtype)
    norm_weight = 1.0 + 0.2 * torch.randn(dim, generator=gen, dtype=dtype)
    norm_bias = 0.2 * torch.randn(dim, generator=gen, dtype=dtype)
    # nn.Linear's default initialisation bounds.
    w1, b1 = uniform(hidden, dim, bound=dim ** -0.5), uniform(hidden, bound=dim ** -0.5)
    w2, b2 = uniform(dim, hidden, bound=hidden ** -0.5), uniform(dim, bound=hidden ** -0.5)
    return x, norm_weight, norm_bias, 1e-5, w1, b1, w2, b2


def samples(dtype: torch.dtype):
    for shape, hidden in SHAPES:
        yield Sample(make_args(shape, hidden, dtype), f"{shape}, hidden={hidden}")


SPEC = OpSpec(
    name="feed_forward_residual",
    summary="x (..., D) -> x + FFN(LayerNorm(x)), fused (inference only)",
    kernels={CPU: "csrc/cpu/feed_forward_residual.cpp"},
    fake=_fake,
    autograd=inference_only(f"{NAMESPACE}::feed_forward_residual"),
    flops=_flops,
    limits={CPU: Limits((torch.float32, torch.float64))},
    reference=reference,
    samples=samples,
)

SPECS = (SPEC,)
