"""Functional API over the compiled ops ``torch.ops.convformer_fast.*``.

The schemas and device kernels live in csrc/; this module registers what torch needs to
trace them (fake tensor kernels for torch.compile / torch.export) and their autograd
formulas, whose backward calls the backward op (never a raw kernel).
"""

from __future__ import annotations

import torch

from ._extension import EXTENSION_ERROR, extension_loaded


def qkv_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                   layout: str, winograd_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Folded conv-QKV projection of one DMHCSA layer.

    x (N, S, F); weight (3C, C, k) and bias (3C,) from :func:`convformer_fast.fold.fold_qkv`,
    C = F for ``layout="spatial"`` and C = S for ``"temporal"``.
    Returns qkv (3, N, h, S, F/h): Q, K and V split into heads, as a strided view of the
    convolution's output (no copy; see :func:`qkv_view_of_conv`).

    ``winograd_weight``: ``winograd_weight(weight, tile)`` of this very ``weight``, for callers
    that cache it; the CPU then computes a temporal layer with Winograd F(tile, k). It
    carries no gradient (gradients reach ``weight``).
    """
    if not extension_loaded():
        raise RuntimeError(f"qkv_projection: {EXTENSION_ERROR}")
    return torch.ops.convformer_fast.qkv_projection(x, weight, bias, num_heads, layout, winograd_weight)


# Winograd F(m, k) pays off when its alpha = m + k - 1 point GEMMs contract over enough
# channels (C = T frames) to run at BLAS speed and to outweigh the transforms. Against
# oneDNN's convolution, F(4, 7) ran 1.5-1.8x faster at T = 243 (batch 1), 1.05-1.3x at T = 81
# (batch 16; 1.25x at batch 4) over several alternating runs, but 1.3x slower at T = 27 and
# 1.6x slower at T = 9 (batch 256): shorter windows stay on the direct convolution. alpha is
# capped at 10 (numerical error).
WINOGRAD_MAX_POINTS = 10
WINOGRAD_MIN_CHANNELS = 64


def winograd_tile(kernel_size: int, channels: int) -> int:
    """The Winograd tile m the CPU uses for a temporal layer, or 0 for the direct convolution."""
    tile = WINOGRAD_MAX_POINTS - kernel_size + 1
    if kernel_size < 3 or tile < 2 or channels < WINOGRAD_MIN_CHANNELS:
        return 0
    return tile


def winograd_weight(weight: torch.Tensor, tile: int) -> torch.Tensor:
    """The folded weight (3C, C, k) transformed for Winograd F(tile, k): (tile + k - 1, 3C, C).

    A derived, gradient-free view of ``weight`` (computed under no_grad)."""
    if not extension_loaded():
        raise RuntimeError(f"winograd_weight: {EXTENSION_ERROR}")
    with torch.no_grad():
        return torch.ops.convformer_fast.winograd_weight(weight, tile)


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


def attention(qkv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention ``softmax(Q K^T / sqrt(d)) V`` per head (paper eq. 7).

    qkv (3, N, h, S, d) as returned by :func:`qkv_projection` (any layout in which one head's
    (S, d) matrix has a unit stride is read in place); returns (N, S, h*d) with the heads
    merged. The max-subtracted softmax is fused; no S x S matrix is kept.
    """
    if not extension_loaded():
        raise RuntimeError(f"attention: {EXTENSION_ERROR}")
    return torch.ops.convformer_fast.attention(qkv)[0]


#: Namespace of the ops the CUDA kernels (kernels/) serve, run on CPU tensors by the
#: emulator (backend="cuda_emulated"): same op names and schemas as in convformer_fast.
EMULATED_NAMESPACE = "convformer_fast_emulated"


def kernel_ops(emulated: bool):
    """The ops of the CUDA kernels: ``torch.ops.convformer_fast`` (CUDA tensors) or, with
    ``emulated=True``, ``torch.ops.convformer_fast_emulated`` (the same kernel source and host
    code on CPU tensors, through the emulator: slow, for tests and debugging)."""
    if not extension_loaded():
        raise RuntimeError(f"kernel_ops: {EXTENSION_ERROR}")
    return getattr(torch.ops, EMULATED_NAMESPACE) if emulated else torch.ops.convformer_fast


def spatial_attention_residual(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                               eps: float, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                               *, emulated: bool = False) -> torch.Tensor:
    """The spatial half of a ConvFormer block in one kernel, inference only:
    ``x + DMHCSA(LayerNorm(x))`` (paper eq. 8 without DropPath).

    x (N, J, d) (frames of joints); norm_weight, norm_bias (d,) and eps of the LayerNorm;
    weight (3d, d, k) and bias (3d,) of the folded conv-QKV (:func:`convformer_fast.fold.fold_qkv`).
    On CPU tensors the cpu backend's kernel serves it (each chunk of frames normalised,
    projected, attended and added back without leaving the core's cache); on CUDA tensors
    the CUDA kernel; on CPU tensors with ``emulated=True`` the CUDA kernel run by the
    emulator. There is no backward.
    """
    return kernel_ops(emulated).spatial_attention_residual(x, norm_weight, norm_bias, eps, weight, bias,
                                                           num_heads)


def feed_forward_residual(x: torch.Tensor, norm: torch.nn.LayerNorm, fc1: torch.nn.Linear,
                          fc2: torch.nn.Linear) -> torch.Tensor:
    """``x + fc2(GELU(fc1(norm(x))))``, fused (inference only: no autograd).

    Rows go in cache-sized chunks, so the hidden activations (twice as wide as x) never
    make a round trip to memory."""
    if not extension_loaded():
        raise RuntimeError(f"feed_forward_residual: {EXTENSION_ERROR}")
    return torch.ops.convformer_fast.feed_forward_residual(x, norm.weight, norm.bias, norm.eps, fc1.weight,
                                                           fc1.bias, fc2.weight, fc2.bias)


def _register() -> None:
    lib = "convformer_fast::"

    @torch.library.register_fake(lib + "qkv_projection")
    def _qkv_projection_fake(x, weight, bias, num_heads, layout, winograd_weight=None):
        n, s, f = x.shape
        torch._check(f % num_heads == 0, lambda: "qkv_projection: num_heads must divide F")
        y = x.new_empty((n, 3 * f, s) if layout == "spatial" else (n, 3 * s, f))
        return qkv_view_of_conv(y, layout, num_heads)

    @torch.library.register_fake(lib + "qkv_projection_backward")
    def _qkv_projection_backward_fake(grad_qkv, x, weight, num_heads, layout):
        return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])

    @torch.library.register_fake(lib + "winograd_weight")
    def _winograd_weight_fake(weight, tile):
        out_channels, channels, kernel_size = weight.shape
        return weight.new_empty((tile + kernel_size - 1, out_channels, channels))

    def setup_context(ctx, inputs, output):
        x, weight, _bias, num_heads, layout, _winograd_weight = inputs
        ctx.save_for_backward(x, weight)
        ctx.num_heads, ctx.layout = num_heads, layout

    def backward(ctx, grad_qkv):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = torch.ops.convformer_fast.qkv_projection_backward(
            grad_qkv, x, weight, ctx.num_heads, ctx.layout
        )
        return grad_x, grad_weight, grad_bias, None, None, None

    torch.library.register_autograd(lib + "qkv_projection", backward, setup_context=setup_context)

    @torch.library.register_fake(lib + "attention")
    def _attention_fake(qkv):
        _, n, h, s, d = qkv.shape
        return qkv.new_empty((n, s, h * d)), qkv.new_empty((n, h, s))

    @torch.library.register_fake(lib + "attention_backward")
    def _attention_backward_fake(grad_out, qkv, out, lse):
        return qkv.new_empty(qkv.shape)

    def attention_setup_context(ctx, inputs, output):
        (qkv,) = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(qkv, out, lse)

    def attention_backward(ctx, grad_out, _grad_lse):
        qkv, out, lse = ctx.saved_tensors
        return torch.ops.convformer_fast.attention_backward(grad_out, qkv, out, lse)

    torch.library.register_autograd(lib + "attention", attention_backward,
                                    setup_context=attention_setup_context)

    # The fused block halves (inference only) and the CUDA kernels' ops in the emulated
    # namespace, whose qkv_projection and attention share the fake kernels above.
    emulated = EMULATED_NAMESPACE + "::"

    def _spatial_attention_residual_fake(x, norm_weight, norm_bias, eps, weight, bias, num_heads):
        torch._check(x.dim() == 3, lambda: "spatial_attention_residual: x must be (N, J, d)")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _inference_only(name):
        def backward(ctx, *grads):
            raise RuntimeError(
                f"{name} is an inference kernel and has no backward: the backends compute "
                "gradients on an unfused path (they switch to it whenever gradients are needed)")
        return backward

    @torch.library.register_fake(lib + "feed_forward_residual")
    def _feed_forward_residual_fake(x, norm_weight, norm_bias, eps, w1, b1, w2, b2):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    torch.library.register_autograd(lib + "feed_forward_residual", _inference_only(lib + "feed_forward_residual"))

    for op in (lib + "spatial_attention_residual", emulated + "spatial_attention_residual"):
        torch.library.register_fake(op)(_spatial_attention_residual_fake)
        torch.library.register_autograd(op, _inference_only(op))
    torch.library.register_fake(emulated + "qkv_projection")(_qkv_projection_fake)
    torch.library.register_autograd(emulated + "qkv_projection", backward, setup_context=setup_context)
    torch.library.register_fake(emulated + "attention")(_attention_fake)
    torch.library.register_autograd(emulated + "attention", _inference_only(emulated + "attention"))

    @torch.library.register_fake(emulated + "emulator_selftest")
    def _emulator_selftest_fake(x, fault):
        return torch.empty_like(x), x.new_empty(((x.shape[0] + 31) // 32,))


if extension_loaded():
    _register()
