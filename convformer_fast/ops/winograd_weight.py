"""``winograd_weight``: the folded weight transformed for the cpu backend's Winograd F(m, k)
temporal projection (csrc/cpu/winograd.h), and the rule that picks the tile m.

The transformed weight is derived from the fold, so the cpu backend caches it beside the
folded weight (recomputed only when a parameter changes) and passes it to
:func:`~convformer_fast.ops.qkv_projection`.
"""

from __future__ import annotations

import torch

from . import limits
from .spec import CPU, OpCall, OpSpec, Sample, library_op, non_differentiable

# Winograd F(m, k) pays off when its alpha = m + k - 1 point GEMMs contract over enough
# channels (C = T frames) to run at BLAS speed and to outweigh the transforms. Against
# oneDNN's convolution, F(4, 7) ran 1.5-1.8x faster at T = 243 (batch 1), 1.05-1.3x at T = 81
# (batch 16; 1.25x at batch 4) over several alternating runs on a 2-core AVX2 EPYC, but 1.3x
# slower at T = 27 and 1.6x slower at T = 9 (batch 256): shorter windows stay on the direct
# convolution, now one im2col GEMM per sample, which on a 2-core AVX-512 Xeon (2026-12-06,
# alternating calls) beat Winograd up to T = 43 (9.2 ms against 11.2 at batch 64) and lost
# from T = 81 (8.1 against 7.5 ms at batch 16; 4.5 against 2.5 ms at T = 243).
# alpha is capped by the library (numerical error).
WINOGRAD_MIN_CHANNELS = 64


def winograd_tile(kernel_size: int, channels: int) -> int:
    """The Winograd tile m the CPU uses for a temporal layer, or 0 for the direct convolution."""
    tile = limits.winograd_max_points() - kernel_size + 1
    if kernel_size < 3 or tile < 2 or channels < WINOGRAD_MIN_CHANNELS:
        return 0
    return tile


def winograd_weight(weight: torch.Tensor, tile: int) -> torch.Tensor:
    """The folded weight (3C, C, k) transformed for Winograd F(tile, k): (tile + k - 1, 3C, C).

    A derived, gradient-free view of ``weight`` (computed under no_grad)."""
    op = library_op("winograd_weight")
    with torch.no_grad():
        return op(weight, tile)


def _fake(weight, tile):
    out_channels, channels, kernel_size = weight.shape
    return weight.new_empty((tile + kernel_size - 1, out_channels, channels))


def _flops(call: OpCall) -> int:
    """W~ = G (alpha x k) applied to every (out, in) pair of taps: alpha * 3C * C * k."""
    (out_channels, in_channels, k), tile = call.args[:2]
    return (tile + k - 1) * out_channels * in_channels * k


# (N, S = C channels, F = L length, heads, k, tile) of a temporal projection computed through
# the transformed weight: odd L leaves a partial last tile; L shorter than the tile or the
# kernel; every tile the backend picks (k = 3, 5, 7, 9); F(1, 3), any tile the op accepts.
PROJECTION_SHAPES = [
    (1, 64, 68, 1, 7, 4),
    (3, 65, 101, 1, 3, 8),
    (2, 70, 17, 1, 9, 2),
    (1, 81, 34, 2, 5, 6),
    (2, 64, 3, 1, 7, 4),
    (1, 3, 10, 1, 3, 1),
]


def samples(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(7)
    for _n, s, _f, _heads, k, tile in PROJECTION_SHAPES[:3]:
        yield Sample((torch.randn(3 * s, s, k, generator=gen, dtype=dtype), tile), f"C={s}, k={k}, tile={tile}")


SPEC = OpSpec(
    name="winograd_weight",
    summary="folded weight (3C, C, k) -> (tile + k - 1, 3C, C): the GEMM operands of Winograd "
            "F(tile, k) at every point",
    kernels={CPU: "csrc/cpu/winograd_weight.cpp"},
    fake=_fake,
    autograd=non_differentiable(),
    flops=_flops,
    samples=samples,
    note="no reference of its own: qkv_projection(..., winograd_weight) is compared with the "
         "projection's reference on PROJECTION_SHAPES (tests/test_ops.py)",
)

SPECS = (SPEC,)
