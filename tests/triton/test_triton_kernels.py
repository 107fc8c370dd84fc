"""The Triton kernels through their torch.library ops: numerics and gradients against eager
references, opcheck, torch.compile, torch.export, low precision, bad input.

Without a GPU every kernel runs in the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py). The interpreter uses one fixed tile configuration (projection:
BLOCK_M 64, BLOCK_N 64, BLOCK_K 32; attention: BLOCK_M 128 owned rows, BLOCK_N 64 streamed
rows); the shapes below are chosen against it so that every mask and loop edge is hit.
"""

from __future__ import annotations

import pytest
import torch

from triton_helpers import (DEVICE, FP64_TOL, FWD_TOL, GRAD_TOL, HAS_CUDA, assert_close, cuda_only,
                            interpreter_only, projection_args, qkv_args, reference_attention,
                            reference_qkv, requires_triton, tops)

pytestmark = requires_triton

# (layout, N, S, F, heads, k)
PROJECTION_SHAPES = {
    # 51 rows: one partial row tile; 3C = 96: a full and a partial channel tile; d_head 4.
    "spatial-j17-dh4-k7": ("spatial", 3, 17, 32, 8, 7),
    "spatial-j15-k3-batch1": ("spatial", 1, 15, 8, 2, 3),
    # 340 rows: 6 row tiles, and the weight gradient split in two row chunks.
    "spatial-j17-340rows": ("spatial", 20, 17, 4, 1, 5),
    "spatial-k11-longer-than-axis": ("spatial", 2, 5, 4, 1, 11),
    # d_head 68, 136 rows (two full row tiles and a partial one), C = 9 channels.
    "temporal-t9-dh68": ("temporal", 2, 9, 68, 1, 5),
    # C = 70: three channel blocks (32, 32, 6); 3C = 210: four output-channel tiles.
    "temporal-t70-k9": ("temporal", 1, 70, 12, 3, 9),
}

# (N, h, S, d_head)
ATTENTION_SHAPES = {
    # 24 heads of 17 tokens: 7 per program (119 rows), last group holds 3; keys 64 + 55.
    "j17-dh4": (3, 8, 17, 4),
    "j15-dh4-batch1": (1, 2, 15, 4),
    "t9-dh68-batch1": (1, 2, 9, 68),
    # 2 heads of 43 per program: the second head's keys straddle the 64-row key block.
    "s43-dh2": (2, 3, 43, 2),
    "t81-dh36": (2, 1, 81, 36),
    # 150 > 128 rows: two query blocks of one head, three key blocks.
    "t150-dh20": (1, 1, 150, 20),
    "dh256-max": (1, 1, 7, 256),
}


def _grads(outputs, inputs, seed=3):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(outputs.shape, generator=gen, dtype=torch.float64).to(outputs)
    return torch.autograd.grad(outputs, inputs, weights)


@pytest.mark.parametrize("shape", PROJECTION_SHAPES, ids=str)
def test_projection_forward_and_gradients_fp32(shape):
    layout, n, s, f, heads, k = PROJECTION_SHAPES[shape]
    args = projection_args(layout, n, s, f, heads, k)
    qkv = tops().qkv_projection(*args, heads, layout)
    assert qkv.shape == (3, n, heads, s, f // heads) and qkv.is_contiguous()
    expected = reference_qkv(*args, heads, layout)
    assert_close(qkv, expected, f"{shape} qkv", **FWD_TOL)
    for name, mine, theirs in zip(("x", "weight", "bias"), _grads(qkv, args), _grads(expected, args)):
        assert_close(mine, theirs, f"{shape} grad {name}", **GRAD_TOL)


@pytest.mark.parametrize("shape", ["spatial-j17-dh4-k7", "temporal-t70-k9"], ids=str)
def test_projection_float64_is_exact_to_rounding(shape):
    layout, n, s, f, heads, k = PROJECTION_SHAPES[shape]
    args = projection_args(layout, n, s, f, heads, k, torch.float64)
    qkv = tops().qkv_projection(*args, heads, layout)
    expected = reference_qkv(*args, heads, layout)
    assert_close(qkv, expected, "qkv", **FP64_TOL)
    for name, mine, theirs in zip(("x", "weight", "bias"), _grads(qkv, args), _grads(expected, args)):
        assert_close(mine, theirs, f"grad {name}", rtol=1e-9, atol=1e-11)


def test_projection_reads_non_contiguous_input():
    x, weight, bias = projection_args("temporal", 2, 9, 68, 4, 5, requires_grad=False)
    wide = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, transposed strides
    assert not wide.is_contiguous()
    assert_close(tops().qkv_projection(wide, weight, bias, 4, "temporal"),
                 reference_qkv(x, weight, bias, 4, "temporal"), "non-contiguous", **FWD_TOL)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
def test_attention_forward_and_gradients_fp32(shape):
    n, h, s, d = ATTENTION_SHAPES[shape]
    qkv = qkv_args(n, h, s, d)
    out = tops().attention(qkv)
    assert out.shape == (n, s, h * d) and out.is_contiguous()
    expected = reference_attention(qkv)
    assert_close(out, expected, f"{shape} out", **FWD_TOL)
    (mine,), (theirs,) = _grads(out, [qkv]), _grads(expected, [qkv])
    for i, name in enumerate("qkv"):
        assert_close(mine[i], theirs[i], f"{shape} grad {name}", **GRAD_TOL)


@pytest.mark.parametrize("shape", ["j17-dh4", "t150-dh20"], ids=str)
def test_attention_float64_is_exact_to_rounding(shape):
    n, h, s, d = ATTENTION_SHAPES[shape]
    qkv = qkv_args(n, h, s, d, torch.float64)
    out = tops().attention(qkv)
    expected = reference_attention(qkv)
    assert_close(out, expected, "out", **FP64_TOL)
    (mine,), (theirs,) = _grads(out, [qkv]), _grads(expected, [qkv])
    assert_close(mine, theirs, "grad qkv", rtol=1e-9, atol=1e-11)


def test_float64_gradcheck_on_tiny_shapes():
    """Finite differences (gradcheck's fast mode: random projections of the Jacobian),
    independent of eager autograd: both ops, both layouts."""
    ops = tops()
    for layout, n, s, f, heads, k in [("spatial", 1, 3, 2, 1, 3), ("temporal", 1, 2, 3, 1, 3)]:
        args = projection_args(layout, n, s, f, heads, k, torch.float64)
        assert torch.autograd.gradcheck(lambda *t: ops.qkv_projection(*t, heads, layout), args,
                                         fast_mode=True)
    qkv = qkv_args(1, 2, 3, 2, torch.float64)
    assert torch.autograd.gradcheck(ops.attention, (qkv,), fast_mode=True)


def test_attention_logsumexp_output():
    """lse2 (the op's second output) is log2 of each softmax denominator."""
    qkv = qkv_args(2, 3, 11, 8, requires_grad=False)
    out, lse2 = torch.ops.convformer_fast.triton_attention(qkv)
    q, k, _ = qkv.unbind(0)
    scores = q @ k.transpose(-2, -1) / 8 ** 0.5
    assert_close(lse2, torch.logsumexp(scores, dim=-1) / torch.log(torch.tensor(2.0)), "lse2",
                 **FWD_TOL)


# ----------------------------------------------------------------------------------------
# Low precision: the kernel's error against an fp64 reference must stay within twice the
# error of eager PyTorch at the same precision, plus a small absolute slack.
# ----------------------------------------------------------------------------------------


def _low_precision_check(dtype, slack):
    x, weight, bias = projection_args("temporal", 2, 9, 68, 2, 5, torch.float64, requires_grad=False)
    layout, heads = "temporal", 2
    exact = reference_attention(reference_qkv(x, weight, bias, heads, layout))
    low = [t.to(dtype) for t in (x, weight, bias)]
    mine = tops().dmhcsa(*low, heads, layout).double()
    eager = reference_attention(reference_qkv(*low, heads, layout)).double()
    err_mine = (mine - exact).abs().max().item()
    err_eager = (eager - exact).abs().max().item()
    assert err_mine <= 2 * err_eager + slack, (dtype, err_mine, err_eager)


@interpreter_only
def test_float16_within_twice_eager_error():
    _low_precision_check(torch.float16, slack=1e-3)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_on_gpu_within_twice_eager_error(dtype):
    _low_precision_check(dtype, slack=1e-3 if dtype == torch.float16 else 8e-3)


@cuda_only
def test_bfloat16_gradients_on_gpu():
    """bf16 gradients within twice eager bf16's error (vs fp64), plus slack."""
    layout, heads = "spatial", 8
    x, weight, bias = projection_args(layout, 4, 17, 32, heads, 7, torch.float64)
    exact = _grads(reference_attention(reference_qkv(x, weight, bias, heads, layout)), [x, weight, bias])
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in (x, weight, bias)]
    mine = _grads(tops().dmhcsa(*low, heads, layout), low)
    eager = _grads(reference_attention(reference_qkv(*low, heads, layout)), low)
    for name, m, e, ref in zip(("x", "weight", "bias"), mine, eager, exact):
        err_mine = (m.double() - ref).abs().max().item()
        err_eager = (e.double() - ref).abs().max().item()
        assert err_mine <= 2 * err_eager + 2e-2, (name, err_mine, err_eager)


@cuda_only
def test_tf32_is_opt_in(exact_fp32):
    """fp32 on a GPU is exact ("ieee") unless torch allows TF32 for fp32 matmuls, and then
    the kernels do use TF32 (10-bit mantissas: errors far above ieee's, within TF32's)."""
    x, weight, bias = projection_args("temporal", 2, 27, 136, 2, 7, requires_grad=False)
    qkv = qkv_args(2, 2, 81, 68, requires_grad=False)
    expected = reference_qkv(*(t.double() for t in (x, weight, bias)), 2, "temporal")
    expected_attention = reference_attention(qkv.double())
    errors = {}
    for allow in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = allow  # exact_fp32 restores it
        projection = tops().qkv_projection(x, weight, bias, 2, "temporal").double()
        attention = tops().attention(qkv).double()
        errors[allow] = ((projection - expected).abs().max().item(), (attention - expected_attention).abs().max().item())
        if not allow:
            assert_close(projection, expected, "ieee fp32 projection", **FWD_TOL)
            assert_close(attention, expected_attention, "ieee fp32 attention", **FWD_TOL)
        else:
            # TF32 rounds inputs to 2^-11 relative: on these unit-scale problems (189-term
            # and 68-term dot products) ~1e-3; rtol = atol = 1e-2 bounds it.
            assert_close(projection, expected, "tf32 projection", rtol=1e-2, atol=1e-2)
            assert_close(attention, expected_attention, "tf32 attention", rtol=1e-2, atol=1e-2)
    for what, ieee, tf32 in zip(("projection", "attention"), errors[False], errors[True]):
        assert tf32 > 10 * ieee, f"{what}: allow_tf32=True changed nothing ({tf32:.2e} vs ieee {ieee:.2e})"


# ----------------------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------------------


def test_opcheck_every_op():
    ops = tops()
    x, weight, bias = projection_args("spatial", 2, 5, 8, 2, 3)
    torch.library.opcheck(ops.triton_qkv_projection, (x, weight, bias, 2, "spatial"))
    xt, weight_t, bias_t = projection_args("temporal", 1, 5, 12, 3, 3)
    torch.library.opcheck(ops.triton_qkv_projection, (xt, weight_t, bias_t, 3, "temporal"))
    grad_qkv = torch.randn(3, 2, 2, 5, 4, device=DEVICE)
    torch.library.opcheck(ops.triton_qkv_projection_backward,
                          (grad_qkv, x.detach(), weight.detach(), 2, "spatial"))
    qkv = qkv_args(2, 2, 5, 4)
    torch.library.opcheck(ops.triton_attention, (qkv,))
    out, lse = ops.triton_attention(qkv.detach())
    torch.library.opcheck(ops.triton_attention_backward,
                          (torch.randn_like(out), qkv.detach(), out, lse))


def test_torch_compile_fullgraph_forward_and_backward():
    """Under the interpreter the ops are opaque custom ops (fake kernels give the shapes);
    on a GPU they are triton_ops that Inductor traces into. Either way one graph."""
    torch._dynamo.reset()
    ops = tops()

    def layer(x, weight, bias):
        return ops.dmhcsa(x, weight, bias, 2, "spatial").square().sum()

    args = projection_args("spatial", 2, 5, 8, 2, 3)
    compiled = torch.compile(layer, fullgraph=True)
    loss = compiled(*args)
    expected = reference_attention(reference_qkv(*args, 2, "spatial")).square().sum()
    assert_close(loss, expected, "compiled loss", **FWD_TOL)
    mine = torch.autograd.grad(loss, args)
    theirs = torch.autograd.grad(expected, args)
    for name, a, b in zip(("x", "weight", "bias"), mine, theirs):
        assert_close(a, b, f"compiled grad {name}", **GRAD_TOL)


def test_torch_export_keeps_the_ops():
    ops = tops()

    class Layer(torch.nn.Module):
        def __init__(self, weight, bias):
            super().__init__()
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias)

        def forward(self, x):
            return ops.dmhcsa(x, self.weight, self.bias, 3, "temporal")

    x, weight, bias = projection_args("temporal", 1, 5, 12, 3, 3, requires_grad=False)
    program = torch.export.export(Layer(weight, bias), (x,))
    graph = str(program.graph)
    assert "convformer_fast.triton_qkv_projection" in graph
    assert "convformer_fast.triton_attention" in graph
    assert_close(program.module()(x), reference_attention(reference_qkv(x, weight, bias, 3, "temporal")),
                 "exported", **FWD_TOL)


# ----------------------------------------------------------------------------------------
# Bad input: clear errors naming the kernel and the limit, never a Triton compile error
# ----------------------------------------------------------------------------------------


def test_head_dim_above_the_limit_is_refused():
    ops = tops()
    qkv = torch.zeros(3, 1, 1, 2, ops.MAX_HEAD_DIM + 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"triton_attention: head dim 264 is above the largest "
                                         r"supported, 256"):
        ops.attention(qkv)
    x = torch.zeros(1, 3, 264, device=DEVICE)
    weight, bias = torch.zeros(9, 3, 1, device=DEVICE), torch.zeros(9, device=DEVICE)
    with pytest.raises(ValueError, match=r"triton_qkv_projection: head dim 264 .* 256"):
        ops.qkv_projection(x, weight, bias, 1, "temporal")


def test_mixed_dtypes_and_bad_shapes_are_refused():
    ops = tops()
    x, weight, bias = projection_args("spatial", 1, 5, 8, 2, 3, requires_grad=False)
    with pytest.raises(ValueError, match=r"triton_qkv_projection: mixed dtypes: weight is torch.float64"):
        ops.qkv_projection(x, weight.double(), bias, 2, "spatial")
    with pytest.raises(ValueError, match=r"triton_qkv_projection: weight has shape \(24, 8, 2\)"):
        ops.qkv_projection(x, weight[..., :2], bias, 2, "spatial")
    with pytest.raises(ValueError, match=r"num_heads = 3 does not divide F = 8"):
        ops.qkv_projection(x, weight, bias, 3, "spatial")
    with pytest.raises(ValueError, match=r"layout 'diagonal'"):
        ops.qkv_projection(x, weight, bias, 2, "diagonal")
    with pytest.raises(ValueError, match=r"triton_attention: qkv has shape \(2, 1, 5, 8\)"):
        ops.attention(x.new_zeros(2, 1, 5, 8))
    with pytest.raises(ValueError, match=r"dtype torch.int64"):
        ops.attention(torch.zeros(3, 1, 1, 5, 4, dtype=torch.long, device=DEVICE))


@interpreter_only
def test_bfloat16_is_refused_by_the_interpreter():
    ops = tops()
    with pytest.raises(ValueError, match=r"triton_attention: bfloat16 is not supported under "
                                         r"TRITON_INTERPRET=1"):
        ops.attention(torch.zeros(3, 1, 1, 5, 4, dtype=torch.bfloat16))


@pytest.mark.skipif(HAS_CUDA, reason="checks CPU tensors on a machine without a GPU")
def test_cpu_tensors_refused_when_kernels_are_compiled_for_a_gpu(monkeypatch):
    """The device check as it runs when the kernels were defined without the interpreter
    (the whole situation is exercised in a fresh process by test_triton_backend.py)."""
    ops = tops()
    monkeypatch.setattr(ops, "INTERPRETED", False)
    x, weight, bias = projection_args("spatial", 1, 5, 8, 2, 3, requires_grad=False)
    with pytest.raises(ValueError, match=r"triton_qkv_projection: x is on cpu; the Triton kernels "
                                         r"need CUDA tensors .*TRITON_INTERPRET=1"):
        ops.qkv_projection(x, weight, bias, 2, "spatial")
