"""The compiled ops, beyond what tests/test_op_registry.py derives for every op from the
registry (opcheck, fake shapes, forward and gradients against each op's reference): fp64
gradcheck, strided and empty inputs, NaN confinement, large logits, bad input messages,
Winograd shapes, torch.compile / export captures, and that the CUDA build compiled and
linked every hand-written CUDA kernel."""

from __future__ import annotations

import pytest
import torch

import convformer_fast as cf
from convformer_fast import ops
from convformer_fast.toolchain import cuda_build
from convformer_fast.ops.attention import make_qkv
from convformer_fast.ops.attention import reference as reference_attention
from convformer_fast.ops.feed_forward_residual import SHAPES as FEED_FORWARD_SHAPES
from convformer_fast.ops.feed_forward_residual import make_args as feed_forward_args
from convformer_fast.ops.qkv_projection import SHAPES
from convformer_fast.ops.qkv_projection import make_args
from convformer_fast.ops.registry import OPS
from convformer_fast.ops.spatial_attention_residual import SHAPES as SPATIAL_BLOCK_SHAPES
from convformer_fast.ops.spatial_attention_residual import make_args as spatial_block_args
from convformer_fast.ops.spec import CUDA
from convformer_fast.ops.winograd_weight import PROJECTION_SHAPES as WINOGRAD_SHAPES

from conftest import reference_qkv

pytestmark = pytest.mark.skipif(not cf.extension_loaded(), reason=str(cf.EXTENSION_ERROR))


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
# (csrc/cpu/winograd.h; the cpu backend does so from WINOGRAD_MIN_CHANNELS frames), on the
# registry's shapes (convformer_fast/ops/winograd_weight.py: PROJECTION_SHAPES).


def winograd_args(n, s, f, heads, k, tile, dtype=torch.float32):
    x, weight, bias, heads, layout = make_args("temporal", n, s, f, heads, k, dtype)
    return x, weight, bias, heads, layout, ops.winograd_weight(weight, tile)


# Winograd's transforms cost about 10x the rounding error of a direct fp32 convolution
# (norm-relative ~3e-6 for k = 7): rtol = atol = 1e-4 in fp32, against the reference in fp64.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, (1e-4, 1e-4)), (torch.float64, (1e-10, 1e-12))], ids=str)
@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=str)
def test_winograd_projection_matches_reference(shape, dtype, tol):
    args = winograd_args(*shape, dtype=dtype)
    expected = reference_qkv(*(a.double() if isinstance(a, torch.Tensor) else a for a in args[:5]))
    torch.testing.assert_close(ops.qkv_projection(*args).double(), expected, rtol=tol[0], atol=tol[1])


def test_winograd_projection_gradients_flow_through_weight():
    args = list(winograd_args(*WINOGRAD_SHAPES[1]))
    for t in args[:3]:
        t.requires_grad_(True)
    grad = torch.randn(ops.qkv_projection(*args).shape)
    mine = torch.autograd.grad(ops.qkv_projection(*args), args[:3], grad)
    exact = [t.detach().double().requires_grad_() for t in args[:3]]
    theirs = torch.autograd.grad(reference_qkv(*exact, *args[3:5]), exact, grad.double())
    for name, a, b in zip(("x", "weight", "bias"), mine, theirs):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=lambda m: f"grad {name}: {m}")


def test_winograd_tile_rule():
    assert [ops.winograd_tile(k, 243) for k in (1, 3, 5, 7, 9, 11)] == [0, 8, 6, 4, 2, 0]
    assert ops.winograd_tile(7, ops.WINOGRAD_MIN_CHANNELS - 1) == 0


def test_winograd_opcheck():
    x, weight, bias, heads, layout, transformed = winograd_args(*WINOGRAD_SHAPES[1])
    torch.library.opcheck(torch.ops.convformer_fast.winograd_weight.default, (weight, 8))
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), heads, layout, transformed)
    torch.library.opcheck(torch.ops.convformer_fast.qkv_projection.default, args)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] == "temporal"], ids=str)
def test_temporal_gemm_projection_opcheck(shape):
    # The registry's opcheck takes the first samples (spatial); this is the temporal layout
    # without a Winograd weight: csrc/cpu/temporal_projection.cpp on the CPU.
    x, weight, bias, heads, layout = make_args(*shape, requires_grad=True)
    torch.library.opcheck(torch.ops.convformer_fast.qkv_projection.default, (x, weight, bias, heads, layout, None))


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


@pytest.mark.parametrize("shape", [SPATIAL_BLOCK_SHAPES[1], SPATIAL_BLOCK_SHAPES[5]], ids=str)
def test_spatial_attention_residual_empty_batch_and_nan_confined_to_its_frame(shape):
    x, *rest = spatial_block_args(*shape)
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


def test_feed_forward_residual_strided_empty_and_inf_confined_to_its_row():
    x, *params = feed_forward_args(*FEED_FORWARD_SHAPES[0])
    torch.library.opcheck(torch.ops.convformer_fast.feed_forward_residual.default, (x.transpose(0, 1), *params))
    with torch.no_grad():
        assert ops.feed_forward_residual(x[:0], *params).shape == (0, 17, 8)
        x = x.clone()
        x[7, 2, 3] = float("inf")
        out = ops.feed_forward_residual(x, *params)
    assert out[7, 2].isnan().all() and not out[7, 3].isnan().any() and out[:7].isfinite().all()


@pytest.mark.parametrize("bad,match", [
    (dict(norm_weight=torch.ones(7)), r"norm_weight must be \[8\]"),
    (dict(w1=torch.randn(16, 9)), r"w1 must be \[16, 8\]"),
    (dict(b2=torch.zeros(8, dtype=torch.float64)), "b2 dtype"),
    (dict(eps=-1.0), "eps must be > 0"),
    (dict(x=torch.randn(2, 8).half()), "float32 and float64"),
])
def test_feed_forward_residual_bad_arguments(bad, match):
    names = ("x", "norm_weight", "norm_bias", "eps", "w1", "b1", "w2", "b2")
    args = dict(zip(names, feed_forward_args(*FEED_FORWARD_SHAPES[0]))) | bad
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


CUDA_BUILD, CUDA_BUILD_REASON = cuda_build(torch.version.cuda)


@pytest.mark.skipif(not CUDA_BUILD, reason=f"the CUDA kernels are not built here: {CUDA_BUILD_REASON}")
@pytest.mark.parametrize("op", [name for name, spec in OPS.items() if CUDA in spec.kernels])
def test_cuda_kernels_were_compiled_and_linked(op):
    """Where the build rule builds them (convformer_fast/toolchain.py: cuda_build), every
    CUDA kernel the registry declares is in _C: nothing CUDA runs here, this only proves the
    sources were compiled and linked and register for the CUDA dispatch key."""
    assert ops.cuda_kernels_built()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(OPS[op].qualname, "CUDA")


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("shape", [(5, 8, 17, 4), (2, 3, 81, 68), (1, 2, 128, 5)], ids=str)
def test_attention_with_large_logits(shape):
    """Logits of std ~9 (qkv x 3): the max subtraction matters. fp64 to rounding; fp32 within
    twice eager fp32's own error, both against fp64 (fp32 itself cannot do better there)."""
    exact_qkv = make_qkv(*shape, dtype=torch.float64, scale=3.0, requires_grad=False)
    exact_out, exact_lse = reference_attention(exact_qkv)
    out, lse = torch.ops.convformer_fast.attention(exact_qkv)
    torch.testing.assert_close(out, exact_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, exact_lse, rtol=1e-10, atol=1e-12)
    qkv = exact_qkv.float()
    err_mine = (ops.attention(qkv).double() - exact_out).abs().max().item()
    err_eager = (reference_attention(qkv)[0].double() - exact_out).abs().max().item()
    assert err_mine <= 2 * err_eager, (err_mine, err_eager)


def test_attention_does_not_overflow_on_huge_logits():
    qkv = make_qkv(2, 2, 17, 4, scale=1e3, requires_grad=False)
    out = ops.attention(qkv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(qkv)[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 2, 5, 4), (1, 1, 70, 3)], ids=str)
def test_attention_gradcheck_float64(shape):
    qkv = make_qkv(*shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(ops.attention, (qkv,))


def test_attention_nan_stays_in_its_head():
    qkv = make_qkv(2, 2, 9, 4, requires_grad=False)
    qkv[1, 0, 1, 3, 2] = float("nan")  # a key of sample 0, head 1
    out = ops.attention(qkv)
    assert out[0, :, 4:].isnan().all()  # head 1 of sample 0: every query sees that key
    assert not out[0, :, :4].isnan().any() and not out[1].isnan().any()


def test_attention_non_contiguous_input():
    base = make_qkv(4, 2, 9, 4, requires_grad=False)
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
