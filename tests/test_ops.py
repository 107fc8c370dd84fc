"""The compiled ops: numerics vs the eager fold, opcheck, gradcheck, torch.compile, export,
bad input, and that the CUDA build registered its kernels."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import convformer_fast as cf
from convformer_fast import ops

from conftest import reference_qkv

pytestmark = pytest.mark.skipif(not cf.extension_loaded(), reason=str(cf.EXTENSION_ERROR))

# (layout, N, S, F, heads, k): joints 15/17 with d_head 4, frames with odd T, d_head 68.
SHAPES = [
    ("spatial", 3, 17, 32, 8, 7),
    ("spatial", 1, 15, 8, 2, 3),
    ("temporal", 2, 9, 68, 1, 5),
    ("temporal", 1, 7, 34, 2, 9),
    ("spatial", 2, 5, 4, 1, 11),  # kernel longer than the axis it slides over
]


def make_args(layout, n, s, f, heads, k, dtype=torch.float32, requires_grad=False):
    c = f if layout == "spatial" else s
    gen = torch.Generator().manual_seed(n * 1000 + s * 10 + k)
    x = torch.randn(n, s, f, generator=gen, dtype=dtype)
    weight = torch.randn(3 * c, c, k, generator=gen, dtype=dtype) / (c * k) ** 0.5
    bias = torch.randn(3 * c, generator=gen, dtype=dtype)
    for t in (x, weight, bias):
        t.requires_grad_(requires_grad)
    return x, weight, bias, heads, layout


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_qkv_projection_matches_conv1d(shape):
    args = make_args(*shape)
    out = ops.qkv_projection(*args)
    torch.testing.assert_close(out, reference_qkv(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_qkv_projection_gradients_match_conv1d(shape):
    args = make_args(*shape, requires_grad=True)
    grad = torch.randn(ops.qkv_projection(*args).shape)
    mine = torch.autograd.grad(ops.qkv_projection(*args), args[:3], grad)
    theirs = torch.autograd.grad(reference_qkv(*args), args[:3], grad)
    for name, a, b in zip(("x", "weight", "bias"), mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]], ids=str)
def test_qkv_projection_gradcheck_float64(shape):
    layout, n, s, f, heads, k = shape
    args = make_args(layout, n, s, f, heads, k, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: ops.qkv_projection(*t, heads, layout), args[:3])


def test_non_contiguous_input_is_handled():
    x, weight, bias, heads, layout = make_args("temporal", 2, 9, 68, 4, 5)
    wide = torch.randn(2, 68, 9).transpose(1, 2)  # same shape as x, transposed strides
    torch.testing.assert_close(ops.qkv_projection(wide, weight, bias, heads, layout),
                               reference_qkv(wide, weight, bias, heads, layout), rtol=1e-5, atol=1e-5)


def test_batch_of_zero_returns_empty():
    x, weight, bias, heads, layout = make_args("spatial", 1, 17, 8, 2, 3)
    out = ops.qkv_projection(x[:0], weight, bias, heads, layout)
    assert out.shape == (3, 0, 2, 17, 4)


def test_nan_propagates():
    x, weight, bias, heads, layout = make_args("spatial", 1, 17, 8, 2, 3)
    x[0, 4, 0] = float("nan")
    out = ops.qkv_projection(x, weight, bias, heads, layout)
    assert out.isnan().any() and not out[:, :, :, 0].isnan().any()  # joint 0 is out of reach


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3]], ids=str)
def test_opcheck(shape):
    args = make_args(*shape, requires_grad=True)
    torch.library.opcheck(torch.ops.convformer_fast.qkv_projection.default, args)
    grad = torch.randn(ops.qkv_projection(*args).shape)
    torch.library.opcheck(torch.ops.convformer_fast.qkv_projection_backward.default,
                          (grad, args[0].detach(), args[1].detach(), args[3], args[4]))


@pytest.mark.parametrize("bad,match", [
    (dict(layout="diagonal"), "layout must be 'spatial' or 'temporal'"),
    (dict(heads=3), "num_heads=3 must divide"),
    (dict(weight=torch.randn(24, 8, 4)), "odd k"),
    (dict(weight=torch.randn(12, 8, 3)), r"weight must be \(3C, C, k\) with C=8"),
    (dict(weight=torch.randn(24, 8, 3, dtype=torch.float64)), "weight dtype"),
    (dict(bias=torch.randn(23)), r"bias must be \(24,\)"),
    (dict(x=torch.randn(17, 8)), r"x must be \(N, S, F\)"),
])
def test_bad_arguments_raise_value_error(bad, match):
    x, weight, bias, heads, layout = make_args("spatial", 2, 17, 8, 2, 3)
    args = dict(x=x, weight=weight, bias=bias, heads=heads, layout=layout) | bad
    with pytest.raises(ValueError, match="qkv_projection: .*" + match):
        ops.qkv_projection(args["x"], args["weight"], args["bias"], args["heads"], args["layout"])


# Given the transformed weight, the CPU runs a temporal projection through Winograd F(m, k)
# (csrc/cpu/winograd.h; the cpu backend does so from WINOGRAD_MIN_CHANNELS frames):
# (N, S = C channels, F = L length, heads, k, tile). Odd L leaves a partial last tile; L
# shorter than the tile or the kernel; every tile the backend picks (k = 3, 5, 7, 9).
WINOGRAD_SHAPES = [
    (1, 64, 68, 1, 7, 4),
    (3, 65, 101, 1, 3, 8),
    (2, 70, 17, 1, 9, 2),
    (1, 81, 34, 2, 5, 6),
    (2, 64, 3, 1, 7, 4),
    (1, 3, 10, 1, 3, 1),  # F(1, 3): any tile the op accepts
]


def winograd_args(n, s, f, heads, k, tile, dtype=torch.float32):
    x, weight, bias, heads, layout = make_args("temporal", n, s, f, heads, k, dtype)
    return x, weight, bias, heads, layout, ops.winograd_weight(weight, tile)


# Winograd's transforms cost about 10x the rounding error of a direct fp32 convolution
# (norm-relative ~3e-6 for k = 7): within the ops' fp32 tolerance, rtol = atol = 1e-4.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, (1e-4, 1e-4)), (torch.float64, (1e-10, 1e-12))], ids=str)
@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=str)
def test_winograd_projection_matches_conv1d(shape, dtype, tol):
    args = winograd_args(*shape, dtype=dtype)
    expected = reference_qkv(*args[:5])
    torch.testing.assert_close(ops.qkv_projection(*args), expected, rtol=tol[0], atol=tol[1])


def test_winograd_projection_gradients_flow_through_weight():
    args = list(winograd_args(*WINOGRAD_SHAPES[1]))
    for t in args[:3]:
        t.requires_grad_(True)
    grad = torch.randn(ops.qkv_projection(*args).shape)
    mine = torch.autograd.grad(ops.qkv_projection(*args), args[:3], grad)
    theirs = torch.autograd.grad(reference_qkv(*args[:5]), args[:3], grad)
    for name, a, b in zip(("x", "weight", "bias"), mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"grad {name}: {m}")


def test_winograd_tile_rule():
    assert [ops.winograd_tile(k, 243) for k in (1, 3, 5, 7, 9, 11)] == [0, 8, 6, 4, 2, 0]
    assert ops.winograd_tile(7, ops.WINOGRAD_MIN_CHANNELS - 1) == 0


def test_winograd_opcheck():
    x, weight, bias, heads, layout, transformed = winograd_args(*WINOGRAD_SHAPES[1])
    torch.library.opcheck(torch.ops.convformer_fast.winograd_weight.default, (weight, 8))
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), heads, layout, transformed)
    torch.library.opcheck(torch.ops.convformer_fast.qkv_projection.default, args)


@pytest.mark.parametrize("call,match", [
    (lambda w, t: ops.winograd_weight(w, 0), "winograd_weight: Winograd tile=0"),
    (lambda w, t: ops.winograd_weight(w, 5), "needs 11 points"),
    (lambda w, t: ops.winograd_weight(w[:, :, :2], 4), r"winograd_weight: weight must be .* odd k"),
    (lambda w, t: ops.winograd_weight(w.half(), 4), "float32 and float64"),
    (lambda w, t: ops.qkv_projection(torch.randn(1, 64, 20), w, torch.zeros(192), 1, "temporal", t[:, :10]),
     r"qkv_projection: winograd_weight must be \(alpha, 192, 64\)"),
    (lambda w, t: ops.qkv_projection(torch.randn(1, 64, 20), w, torch.zeros(192), 1, "temporal", t.double()),
     "qkv_projection: winograd_weight dtype"),
])
def test_winograd_bad_arguments(call, match):
    weight = torch.randn(192, 64, 7)
    with pytest.raises(ValueError, match=match):
        call(weight, ops.winograd_weight(weight, 4))


def reference_spatial_attention_residual(x, norm_weight, norm_bias, eps, weight, bias, heads):
    """x + softmax(Q K^T / sqrt(d)) V of the folded projection of LayerNorm(x), composed."""
    normed = torch.nn.functional.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
    q, k, v = reference_qkv(normed, weight, bias, heads, "spatial").unbind(0)
    out = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v
    return x + out.transpose(1, 2).reshape(x.shape)


# (N, J, F, heads, k): N = 50 spans several chunks of frames with a remainder. Heads a
# multiple of 8 take the heads-in-lanes attention (csrc/cpu/attention_impl.h): one and two
# head groups, d_head 4, 5 and 8 (whole and partial groups of 4 FMA chains), J = 17, 15
# and 1; other head counts the per-head query-major kernel.
SPATIAL_BLOCK_SHAPES = [(50, 17, 32, 8, 7), (3, 15, 8, 2, 3), (1, 17, 16, 1, 1), (2, 5, 4, 4, 11),
                        (4, 15, 128, 16, 5), (3, 17, 40, 8, 3), (2, 1, 8, 8, 1)]


def spatial_block_args(n, j, f, heads, k, dtype=torch.float32):
    x, weight, bias, heads, _ = make_args("spatial", n, j, f, heads, k, dtype)
    norm = torch.nn.LayerNorm(f).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2), norm.bias.normal_(0.0, 0.2)
    return x, norm.weight.detach(), norm.bias.detach(), norm.eps, weight, bias, heads


@pytest.mark.parametrize("dtype,tol", [(torch.float32, (1e-4, 1e-5)), (torch.float64, (1e-10, 1e-12))], ids=str)
@pytest.mark.parametrize("shape", SPATIAL_BLOCK_SHAPES, ids=str)
def test_spatial_attention_residual_matches_composition(shape, dtype, tol):
    args = spatial_block_args(*shape, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(ops.spatial_attention_residual(*args),
                                   reference_spatial_attention_residual(*args), rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("shape", [SPATIAL_BLOCK_SHAPES[1], SPATIAL_BLOCK_SHAPES[5]], ids=str)
def test_spatial_attention_residual_opcheck_and_edges(shape):
    x, *rest = spatial_block_args(*shape)
    op = torch.ops.convformer_fast.spatial_attention_residual.default
    torch.library.opcheck(op, (x, *rest))
    with torch.no_grad():
        assert ops.spatial_attention_residual(x[:0], *rest).shape == (0, *shape[1:3])
        x = x.clone()
        x[1, 3, 0] = float("nan")
        out = ops.spatial_attention_residual(x, *rest)
    assert out[1].isnan().any() and not out[0].isnan().any() and not out[2].isnan().any()


@pytest.mark.parametrize("bad,match", [
    (dict(norm_weight=torch.ones(7)), r"norm_weight must be \(8,\)"),
    (dict(norm_bias=torch.zeros(8, dtype=torch.float64)), "norm_bias dtype"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(weight=torch.randn(24, 8, 4)), "odd k"),
    (dict(x=torch.randn(2, 15, 8).half()), "float32 and float64|weight dtype"),
])
def test_spatial_attention_residual_bad_arguments(bad, match):
    names = ("x", "norm_weight", "norm_bias", "eps", "weight", "bias", "heads")
    args = dict(zip(names, spatial_block_args(*SPATIAL_BLOCK_SHAPES[1]))) | bad
    with pytest.raises(ValueError, match="spatial_attention_residual: .*" + match):
        torch.ops.convformer_fast.spatial_attention_residual(*args.values())


# (shape of x, hidden): 20 x 17 x 8 rows run in chunks, the others as one whole tensor.
FEED_FORWARD_SHAPES = [((20, 17, 8), 16), ((1, 9, 34), 68), ((3, 5), 7), ((300, 17, 32), 64)]


def feed_forward_args(shape, hidden, dtype=torch.float32):
    gen = torch.Generator().manual_seed(hidden)
    dim = shape[-1]
    x = torch.randn(shape, generator=gen, dtype=dtype)
    norm = torch.nn.LayerNorm(dim).to(dtype)
    fc1, fc2 = torch.nn.Linear(dim, hidden).to(dtype), torch.nn.Linear(hidden, dim).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2, generator=gen), norm.bias.normal_(0.0, 0.2, generator=gen)
    return x, norm, fc1, fc2


def module_tensors(norm, fc1, fc2):
    """The functional op's arguments after x, from the modules."""
    return (norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, fc2.weight, fc2.bias)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, (1e-4, 1e-5)), (torch.float64, (1e-10, 1e-12))], ids=str)
@pytest.mark.parametrize("shape,hidden", FEED_FORWARD_SHAPES, ids=str)
def test_feed_forward_residual_matches_modules(shape, hidden, dtype, tol):
    x, norm, fc1, fc2 = feed_forward_args(shape, hidden, dtype)
    with torch.no_grad():
        expected = x + fc2(F.gelu(fc1(norm(x))))
        torch.testing.assert_close(ops.feed_forward_residual(x, *module_tensors(norm, fc1, fc2)), expected,
                                   rtol=tol[0], atol=tol[1])


def test_feed_forward_residual_opcheck_and_edges():
    x, norm, fc1, fc2 = feed_forward_args(*FEED_FORWARD_SHAPES[0])
    params = [t.detach() for t in (norm.weight, norm.bias)] + [norm.eps] + [
        t.detach() for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias)]
    op = torch.ops.convformer_fast.feed_forward_residual.default
    torch.library.opcheck(op, (x, *params))
    torch.library.opcheck(op, (x.transpose(0, 1), *params))  # strided input
    with torch.no_grad():
        assert ops.feed_forward_residual(x[:0], *module_tensors(norm, fc1, fc2)).shape == (0, 17, 8)
        x = x.clone()
        x[7, 2, 3] = float("inf")
        out = ops.feed_forward_residual(x, *module_tensors(norm, fc1, fc2))
    assert out[7, 2].isnan().all() and not out[7, 3].isnan().any() and out[:7].isfinite().all()


@pytest.mark.parametrize("bad,match", [
    (dict(norm_weight=torch.ones(7)), r"norm_weight must be \[8\]"),
    (dict(w1=torch.randn(16, 9)), r"w1 must be \[16, 8\]"),
    (dict(b2=torch.zeros(8, dtype=torch.float64)), "b2 dtype"),
    (dict(eps=-1.0), "eps must be > 0"),
    (dict(x=torch.randn(2, 8).half()), "float32 and float64"),
])
def test_feed_forward_residual_bad_arguments(bad, match):
    x, norm, fc1, fc2 = feed_forward_args(*FEED_FORWARD_SHAPES[0])
    args = dict(x=x, norm_weight=norm.weight, norm_bias=norm.bias, eps=norm.eps, w1=fc1.weight,
                b1=fc1.bias, w2=fc2.weight, b2=fc2.bias) | bad
    with torch.no_grad(), pytest.raises(ValueError, match="feed_forward_residual: .*" + match):
        torch.ops.convformer_fast.feed_forward_residual(*args.values())


def small_fast_model():
    torch.manual_seed(0)
    return cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=4,
                             kernel_sizes=(3, 5), backend="cpu")


def test_torch_compile_fullgraph_forward_and_backward():
    model = small_fast_model()
    x = torch.randn(2, 5, 17, 2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    expected = model(x)
    torch.manual_seed(3)
    actual = compiled(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    actual.sum().backward()
    assert model.joint_embed.weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_torch_export_captures_the_op():
    model = small_fast_model().eval()
    x = torch.randn(2, 5, 17, 2)
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "convformer_fast.qkv_projection.default" in targets
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


def test_inference_graphs_capture_the_fused_block_halves():
    """Without autograd, block halves run as fused ops; compile and export see them."""
    model = small_fast_model().eval()
    x = torch.randn(2, 5, 17, 2)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        targets = [str(node.target) for node in program.graph.nodes]
        assert targets.count("convformer_fast.spatial_attention_residual.default") == 2
        assert targets.count("convformer_fast.feed_forward_residual.default") == 4
        expected = model(x)
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: CUDA build not expected")
def test_cuda_kernels_were_compiled_and_linked():
    """Where nvcc exists the build must have compiled and linked the CUDA sources (nothing
    CUDA runs here; this only proves they are in _C)."""
    for op in ("qkv_projection", "qkv_projection_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"convformer_fast::{op}", "CUDA")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_qkv_projection_cuda(shape, monkeypatch):
    # On CUDA the op is cuDNN's convolution, which follows torch's TF32 switch: exact fp32 here.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    args = make_args(*shape, requires_grad=True)
    cuda_args = tuple(t.detach().cuda().requires_grad_() for t in args[:3]) + args[3:]
    out = ops.qkv_projection(*cuda_args)
    torch.testing.assert_close(out.cpu(), reference_qkv(*args), rtol=1e-4, atol=1e-5)
    grad = torch.randn(out.shape)
    mine = torch.autograd.grad(out, cuda_args[:3], grad.cuda())
    theirs = torch.autograd.grad(reference_qkv(*args), args[:3], grad)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- attention
# (N, h, S, d): spatial heads (J = 15/17, d = 4), temporal heads (odd T, d = 68), T = 351
# (the largest receptive field the issue names), one token.
# (N, h, S, d_head). S <= 128 runs the query-major kernel in blocks of at most 4 vectors of
# queries (32 in fp32 on AVX2, 16 in the 4-lane build that fp64 uses): 81, 33 and 128 take
# several blocks, the last one partial; odd d_head exercises its pairs-of-features remainder.
ATTENTION_SHAPES = [(5, 8, 17, 4), (3, 2, 15, 4), (1, 8, 27, 68), (2, 1, 9, 68), (1, 2, 351, 16), (2, 3, 1, 8),
                    (2, 3, 81, 68), (1, 1, 33, 3), (1, 2, 128, 5)]


def reference_attention(qkv):
    q, k, v = qkv.unbind(0)
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    out = torch.softmax(scores, dim=-1) @ v  # (N, h, S, d)
    n, h, s, d = out.shape
    return out.transpose(1, 2).reshape(n, s, h * d), torch.logsumexp(scores, dim=-1)


def make_qkv(n, h, s, d, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(n * 100 + s)
    return (torch.randn(3, n, h, s, d, generator=gen, dtype=dtype) * scale).requires_grad_()


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_attention_matches_softmax_reference(shape, dtype):
    qkv = make_qkv(*shape, dtype=dtype, scale=3.0)  # large logits: the max subtraction matters
    out, lse = torch.ops.convformer_fast.attention(qkv)
    expected_out, expected_lse = reference_attention(qkv)
    # fp32: BLAS and the reference sum in different orders; with logits this large that
    # costs up to ~2e-5 absolute on outputs of magnitude ~5.
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expected_out, **tol)
    torch.testing.assert_close(lse, expected_lse, **tol)
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, qkv, grad)[0]
    theirs = torch.autograd.grad(expected_out, qkv, grad)[0]
    torch.testing.assert_close(mine, theirs, rtol=1e-3 if dtype == torch.float32 else 1e-10,
                               atol=1e-4 if dtype == torch.float32 else 1e-12)


def test_attention_does_not_overflow_on_huge_logits():
    qkv = make_qkv(2, 2, 17, 4, scale=1e3).detach()
    out = ops.attention(qkv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(qkv)[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 2, 5, 4), (1, 1, 70, 3)], ids=str)
def test_attention_gradcheck_float64(shape):
    qkv = make_qkv(*shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(ops.attention, (qkv,))


@pytest.mark.parametrize("shape", [(3, 2, 17, 4), (1, 2, 81, 68)], ids=str)
def test_attention_opcheck(shape):
    qkv = make_qkv(*shape)
    torch.library.opcheck(torch.ops.convformer_fast.attention.default, (qkv,))
    out, lse = torch.ops.convformer_fast.attention(qkv.detach())
    torch.library.opcheck(torch.ops.convformer_fast.attention_backward.default,
                          (torch.randn_like(out), qkv.detach(), out, lse))


def test_attention_nan_stays_in_its_head():
    qkv = make_qkv(2, 2, 9, 4).detach()
    qkv[1, 0, 1, 3, 2] = float("nan")  # a key of sample 0, head 1
    out = ops.attention(qkv)
    assert out[0, :, 4:].isnan().all()  # head 1 of sample 0: every query sees that key
    assert not out[0, :, :4].isnan().any() and not out[1].isnan().any()


def test_attention_non_contiguous_input():
    base = make_qkv(4, 2, 9, 4).detach()
    strided = base[:, ::2]
    torch.testing.assert_close(ops.attention(strided), reference_attention(strided)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(2, 1, 2, 3, 4), r"qkv must be \(3, N, h, S, d_head\)"),
    (torch.randn(3, 1, 2, 3), r"qkv must be \(3, N, h, S, d_head\)"),
    (torch.randn(3, 1, 2, 3, 4, dtype=torch.float16), "float32 and float64"),
])
def test_attention_bad_input(bad, match):
    with pytest.raises(ValueError, match="attention: .*" + match):
        ops.attention(bad)
