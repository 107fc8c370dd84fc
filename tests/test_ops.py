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
ATTENTION_SHAPES = [(5, 8, 17, 4), (3, 2, 15, 4), (1, 8, 27, 68), (2, 1, 9, 68), (1, 2, 351, 16), (2, 3, 1, 8)]


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
