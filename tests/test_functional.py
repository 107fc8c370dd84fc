"""The functional layer (convformer_fast.functional) and the backends' declared policies:
layers on tensors equal the modules, a backend is resolved once per block forward, and a
handoff is declared, visible and the only way a layer changes backend."""

from __future__ import annotations

import pytest
import torch

import convformer_fast as cf
from convformer_fast import backends, functional
from convformer_fast.backends import BACKENDS, Layer, resolve

from conftest import FAST_BACKENDS, FORWARD_TOL, GRAD_TOL, assert_close

FOLDING_BACKENDS = [name for name in FAST_BACKENDS if BACKENDS[name].folds]


def randomized_block(layout, tokens, features, kernels, heads, seed=0):
    torch.manual_seed(seed)
    block = cf.ConvFormerBlock(layout, tokens, features, kernels, heads)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    return block


def folded(block):
    return cf.fold_qkv(block.attn.conv_groups(), block.attn.aggregation_weights())


@pytest.mark.parametrize("backend", FOLDING_BACKENDS)
@pytest.mark.parametrize("layout,tokens,features,kernels,heads", [
    ("spatial", 17, 16, (3, 5), 8), ("temporal", 9, 34, (7,), 2), ("spatial", 15, 8, (1, 3, 9), 1)])
def test_block_halves_on_tensors_equal_the_eager_block(backend, layout, tokens, features, kernels, heads):
    block = randomized_block(layout, tokens, features, kernels, heads).eval()
    x = torch.randn(3, tokens, features)
    weight, bias = folded(block)
    n1, n2, mlp = block.norm1, block.norm2, block.mlp
    with torch.no_grad():
        expected = block(x)
        y = functional.attention_residual(x, n1.weight, n1.bias, n1.eps, weight, bias, heads, layout,
                                          backend=backend)
        y = functional.feed_forward_residual(y, n2.weight, n2.bias, n2.eps, mlp[0].weight, mlp[0].bias,
                                             mlp[2].weight, mlp[2].bias, backend=backend)
    assert_close(y, expected, FORWARD_TOL[torch.float32], f"{backend} block on tensors")


@pytest.mark.parametrize("backend", FOLDING_BACKENDS)
def test_dmhcsa_on_tensors_has_the_modules_gradients(backend):
    block = randomized_block("temporal", 7, 12, (3, 5), 2)
    x = torch.randn(2, 7, 12, requires_grad=True)
    layer = block.attn
    expected = layer(x)
    weight, bias = folded(block)
    actual = functional.dmhcsa(x, weight, bias, 2, "temporal", backend=backend)
    assert_close(actual, expected, FORWARD_TOL[torch.float32], backend)
    grad = torch.randn_like(expected)
    mine = torch.autograd.grad(actual, [x, layer.theta, layer.query_convs[0].weight], grad)
    theirs = torch.autograd.grad(expected, [x, layer.theta, layer.query_convs[0].weight], grad)
    for a, b in zip(mine, theirs):
        assert_close(a, b, GRAD_TOL[torch.float32], f"{backend} gradient")


def test_branch_is_applied_to_the_branch_only():
    block = randomized_block("spatial", 5, 8, (3,), 2).eval()
    x = torch.randn(2, 5, 8)
    weight, bias = folded(block)
    n1 = block.norm1
    with torch.no_grad():
        plain = functional.attention_residual(x, n1.weight, n1.bias, n1.eps, weight, bias, 2, "spatial",
                                              backend="torch")
        doubled = functional.attention_residual(x, n1.weight, n1.bias, n1.eps, weight, bias, 2, "spatial",
                                                backend="torch", branch=lambda t: 2 * t)
    torch.testing.assert_close(doubled - x, 2 * (plain - x))


def test_eager_has_no_functional_form():
    block = randomized_block("spatial", 5, 8, (3,), 2)
    weight, bias = folded(block)
    with pytest.raises(RuntimeError, match="backend 'eager' computes from the unfolded filters"):
        functional.dmhcsa(torch.randn(1, 5, 8), weight, bias, 2, "spatial", backend="eager")


@pytest.mark.skipif(not cf.available_backends()["cuda_emulated"].available, reason="needs _C")
def test_handoff_is_declared_visible_and_applied():
    info = cf.available_backends()["cuda_emulated"]
    assert info.handoff == "torch"
    assert any("autograd" in when for when in info.handoff_when)
    x = torch.randn(1, 5, 8)
    emulated = BACKENDS["cuda_emulated"]
    assert resolve("cuda_emulated", x, Layer("spatial", 4, needs_grad=False)) is emulated
    assert resolve("cuda_emulated", x, Layer("spatial", 4, needs_grad=True)) is BACKENDS["torch"]
    too_wide = cf.ops.limits.attention_max_head_dim() + 1
    assert resolve("cuda_emulated", x, Layer("temporal", too_wide)) is BACKENDS["torch"]
    reasons = emulated.not_supported_reasons(x, Layer("temporal", too_wide, needs_grad=True))
    assert any("inference-only" in r for r in reasons) and any(f"head_dim {too_wide}" in r for r in reasons)


def test_a_backend_without_a_handoff_refuses_a_layer_beyond_its_limits(monkeypatch):
    class Narrow(backends.TorchBackend):
        name = "torch"

        def layer_reasons(self, x, layer):
            return [f"head_dim {layer.head_dim} above 2"] if layer.head_dim > 2 else []

    monkeypatch.setitem(BACKENDS, "torch", Narrow())
    with pytest.raises(ValueError, match="backend 'torch' cannot run this input: head_dim 4 above 2"):
        resolve("torch", torch.randn(1, 3, 8), Layer("spatial", 4))


def test_a_block_resolves_its_backend_once_per_forward(monkeypatch):
    model = cf.ConvFormerFast(num_frames=3, num_joints=5, embed_dim=4, num_heads=2, backend="torch").eval()
    calls = []
    original = cf.fast.resolve

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cf.fast, "resolve", counting)
    with torch.no_grad():
        model(torch.randn(2, 3, 5, 2))
    assert len(calls) == len(model.spatial_blocks) + len(model.temporal_blocks)
