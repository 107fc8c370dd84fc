"""``qkv_projection``: the folded conv-QKV projection of one DMHCSA layer, and its backward.

The n Q/K/V filters of a layer and their eta-weighted sum are one convolution
(docs/ARCHITECTURE.md section 2, :func:`convformer_fast.fold.fold_qkv`); this op runs it
and returns Q, K and V split into heads, as a strided view of the convolution's output (no
copy), the layout every attention kernel reads (kernels/qkv_layout.h).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..triton import MAX_HEAD_DIM as TRITON_MAX_HEAD_DIM
from .spec import CPU, CUDA, EMULATED, FLOAT_DTYPES, TRITON, Autograd, Limits, OpCall, OpSpec, Sample, library_op


def qkv_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                   layout: str, winograd_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Folded conv-QKV projection of one DMHCSA layer.

    x (N, S, F); weight (3C, C, k) and bias (3C,) from :func:`convformer_fast.fold.fold_qkv`,
    C = F for ``layout="spatial"`` and C = S for ``"temporal"``.
    Returns qkv (3, N, h, S, F/h): Q, K and V split into heads, as a strided view of the
    convolution's output (no copy; see :func:`qkv_view_of_conv`).

    ``winograd_weight``: :func:`convformer_fast.ops.winograd_weight` of this very ``weight``,
    for callers that cache it; the CPU then computes a temporal layer with Winograd F(tile, k).
    It carries no gradient (gradients reach ``weight``).
    """
    return library_op("qkv_projection")(x, weight, bias, num_heads, layout, winograd_weight)


def conv_geometry(x_shape, layout: str) -> tuple[int, int]:
    """(channels C, length L) of the folded convolution of an (N, S, F) input: spatial
    layers convolve F channels over S joints, temporal ones S channels over F features."""
    _n, s, f = x_shape
    return (f, s) if layout == "spatial" else (s, f)


def qkv_view_of_conv(y: torch.Tensor, layout: str, num_heads: int) -> torch.Tensor:
    """The folded Conv1d output y (N, 3C, length) seen as qkv (3, N, h, S, F/h), no copy.

    spatial: y (N, 3F, S), heads split the channels; temporal: y (N, 3S, F), heads split
    the length (the temporal joints profile). Every backend splits heads this way.
    """
    n, channels, length = y.shape
    if layout == "spatial":
        f = channels // 3
        return y.view(n, 3, num_heads, f // num_heads, length).permute(1, 0, 2, 4, 3)
    s = channels // 3
    return y.view(n, 3, s, num_heads, length // num_heads).permute(1, 0, 3, 2, 4)


def reference(x, weight, bias, num_heads, layout, winograd_weight=None):
    """The projection written out: zero padding, every tap as an explicit sum over a sliding
    window (``unfold``), no convolution routine. Returns (3, N, h, S, F/h)."""
    conv_in = x.transpose(1, 2) if layout == "spatial" else x  # (N, C, L)
    k = weight.shape[-1]
    windows = F.pad(conv_in, (k // 2, k // 2)).unfold(2, k, 1)  # (N, C, L, k)
    y = torch.einsum("nclk,ock->nol", windows, weight) + bias[:, None]
    return qkv_view_of_conv(y, layout, num_heads)


def _fake(x, weight, bias, num_heads, layout, winograd_weight=None):
    n, s, f = x.shape
    torch._check(f % num_heads == 0, lambda: "qkv_projection: num_heads must divide F")
    y = x.new_empty((n, 3 * f, s) if layout == "spatial" else (n, 3 * s, f))
    return qkv_view_of_conv(y, layout, num_heads)


def _setup_context(ctx, inputs, output):
    x, weight, _bias, num_heads, layout, _winograd_weight = inputs
    ctx.save_for_backward(x, weight)
    ctx.num_heads, ctx.layout = num_heads, layout


def _backward(ctx, grad_qkv):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = library_op("qkv_projection_backward")(
        grad_qkv, x, weight, ctx.num_heads, ctx.layout)
    return grad_x, grad_weight, grad_bias, None, None, None


def macs(x: tuple, weight: tuple, layout: str) -> int:
    """Multiply-adds of the folded projection: a Conv1d with 3C output channels, C input
    channels and kernel k over L positions per sample, N * 3C * C * k * L. Counted as the
    folded convolution also when the CPU runs it through Winograd, which executes fewer:
    "FLOPs of the folded model"."""
    if layout not in ("spatial", "temporal"):
        raise ValueError(f"qkv_projection formula: layout {layout!r} unknown (untraceable?)")
    out_channels, in_channels, k = weight
    _channels, length = conv_geometry(x, layout)
    return x[0] * out_channels * in_channels * k * length


def _flops(call: OpCall) -> int:
    x, weight, _bias, _heads, layout = call.args[:5]
    return macs(x, weight, layout)


def _backward_flops(call: OpCall) -> int:
    # grad_x (a transposed conv) and grad_weight (a correlation) each cost one forward
    # conv; grad_bias is a sum. The convention of torch's conv backward formula.
    _grad, x, weight, _heads, layout = call.args[:5]
    return 2 * macs(x, weight, layout)


# (layout, N, S, F, heads, k): J = 15 and 17 with d_head 4, odd T, d_head 68, a kernel longer
# than the axis it slides over, batch 1.
SHAPES = [
    ("spatial", 3, 17, 32, 8, 7),
    ("spatial", 1, 15, 8, 2, 3),
    ("temporal", 2, 9, 68, 1, 5),
    ("temporal", 1, 7, 34, 2, 9),
    ("spatial", 2, 5, 4, 1, 11),
    ("temporal", 3, 27, 60, 4, 7),  # 15 joints x 4, odd T, more samples than threads
    ("temporal", 2, 3, 4, 2, 7),  # the kernel longer than the features: taps off both ends
]


def make_args(layout, n, s, f, heads, k, dtype=torch.float32, requires_grad=False, seed=None):
    """Inputs of one call: x (N, S, F), weight (3C, C, k) scaled to unit-variance outputs,
    bias (3C,), heads, layout."""
    c = f if layout == "spatial" else s
    gen = torch.Generator().manual_seed(n * 1000 + s * 10 + k if seed is None else seed)
    x = torch.randn(n, s, f, generator=gen, dtype=dtype)
    weight = torch.randn(3 * c, c, k, generator=gen, dtype=dtype) / (c * k) ** 0.5
    bias = torch.randn(3 * c, generator=gen, dtype=dtype)
    for t in (x, weight, bias):
        t.requires_grad_(requires_grad)
    return x, weight, bias, heads, layout


def samples(dtype: torch.dtype):
    for shape in SHAPES:
        yield Sample(make_args(*shape, dtype=dtype, requires_grad=True), str(shape))


def backward_samples(dtype: torch.dtype):
    for shape in SHAPES[:3]:
        x, weight, bias, heads, layout = make_args(*shape, dtype=dtype)
        grad = torch.randn(reference(x, weight, bias, heads, layout).shape, dtype=dtype)
        yield Sample((grad, x, weight, heads, layout), str(shape))


SPEC = OpSpec(
    name="qkv_projection",
    tests=("tests/test_ops.py", "tests/test_cuda_emulated.py", "tests/triton/test_triton_kernels.py"),
    summary="x (N, S, F) -> Q, K, V (3, N, h, S, F/h): the folded conv-QKV of one DMHCSA layer "
            "(paper eqs. 3-6 after the fold)",
    kernels={
        CPU: "csrc/cpu/qkv_projection.cpp",
        CUDA: "csrc/cuda/qkv_projection.cu",
        EMULATED: "csrc/emulated/qkv_projection.cpp",
        TRITON: "convformer_fast/triton/kernels.py",
    },
    fake=_fake,
    autograd=Autograd(_backward, _setup_context),
    flops=_flops,
    limits={
        # Own kernels in fp32/fp64 (im2col GEMMs, Winograd); other dtypes through ATen.
        CPU: Limits(FLOAT_DTYPES, note="fp32/fp64 on our kernels, fp16/bf16 through ATen's convolution"),
        CUDA: Limits(FLOAT_DTYPES, note="ATen's convolution (cuDNN)"),
        EMULATED: Limits(FLOAT_DTYPES, note="ATen's convolution"),
        TRITON: Limits(FLOAT_DTYPES, max_head_dim=lambda dtype: TRITON_MAX_HEAD_DIM),
    },
    reference=reference,
    samples=samples,
)

BACKWARD_SPEC = OpSpec(
    name="qkv_projection_backward",
    tests=("tests/test_ops.py", "tests/triton/test_triton_kernels.py"),
    summary="gradients of qkv_projection w.r.t. (x, weight, bias): ATen's convolution backward",
    kernels={CPU: "csrc/cpu/qkv_projection.cpp", CUDA: "csrc/cuda/qkv_projection.cu",
             TRITON: "convformer_fast/triton/kernels.py"},
    fake=lambda grad_qkv, x, weight, num_heads, layout: (
        x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])),
    flops=_backward_flops,
    limits=SPEC.limits,
    samples=backward_samples,
    backward_of="qkv_projection",
    note="checked against autograd through the reference in the gradient tests of qkv_projection",
)

SPECS = (SPEC, BACKWARD_SPEC)
