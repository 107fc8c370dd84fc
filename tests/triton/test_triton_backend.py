"""The ``triton`` backend behind the drop-in modules: layers and a whole small model against
the eager reference (forward, and every gradient through the fold to the per-kernel
weights and theta), backend reporting and selection, the no-GPU-no-interpreter case, and
that the kernels compile for A100/H100 targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import convformer_fast as cf
from convformer_fast.backends import BACKENDS, select_backend
from convformer_fast.reference import DMHCSA
from triton_helpers import (DEVICE, FWD_TOL, GRAD_TOL, HAS_CUDA, assert_close, cuda_only,
                            interpreter_only, requires_triton)

pytestmark = requires_triton
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (layout, tokens, features, kernel_sizes, heads, batch)
LAYERS = {
    "spatial-j17-dh4-single-k3-batch1": ("spatial", 17, 32, (3,), 8, 1),
    "spatial-j15-dh4-mixed-359": ("spatial", 15, 8, (3, 5, 9), 2, 2),
    "temporal-t9-dh68-mixed-359-batch1": ("temporal", 9, 68, (3, 5, 9), 1, 1),
    "temporal-t11-dh68-single-k7": ("temporal", 11, 136, (7,), 2, 2),
}


def _randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.5 if name.endswith("theta") else 0.3
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return module


def _pair(layout, tokens, features, kernel_sizes, heads, **kwargs):
    reference = _randomize(DMHCSA(layout, tokens, features, kernel_sizes, heads, **kwargs)).to(DEVICE)
    fast = cf.DMHCSAFast(layout, tokens, features, kernel_sizes, heads, backend="triton",
                         **kwargs).to(DEVICE)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


@pytest.mark.parametrize("layer", LAYERS, ids=str)
def test_layer_forward_and_every_gradient_match_eager(layer):
    layout, tokens, features, kernel_sizes, heads, batch = LAYERS[layer]
    reference, fast = _pair(layout, tokens, features, kernel_sizes, heads, agg_dropout=0.3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, tokens, features, generator=gen).to(DEVICE)
    reference.eval(), fast.eval()
    with torch.no_grad():
        assert_close(fast(x), reference(x), f"{layer} eval forward", **FWD_TOL)
    # Training: aggregation dropout masks eta; the same RNG state gives the same mask.
    reference.train(), fast.train()
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(7)
    out_ref = reference(x_ref)
    torch.manual_seed(7)
    out_fast = fast(x_fast)
    assert_close(out_fast, out_ref, f"{layer} train forward", **GRAD_TOL)
    weights = torch.randn(out_ref.shape, generator=gen).to(DEVICE)
    (out_ref * weights).sum().backward()
    (out_fast * weights).sum().backward()
    assert_close(x_fast.grad, x_ref.grad, f"{layer} grad x", **GRAD_TOL)
    fast_params = dict(fast.named_parameters())
    for name, p in reference.named_parameters():
        assert fast_params[name].grad is not None, name
        assert_close(fast_params[name].grad, p.grad, f"{layer} grad {name}", **GRAD_TOL)


def test_small_model_forward_and_backward_match_eager():
    """A whole ConvFormerFast(backend="triton"): spatial d_head 4, temporal d_head 68
    (J*d/h = 17*8/2), mixed kernels, drop-path and aggregation dropout on, batch 1."""
    config = dict(num_frames=9, num_joints=17, embed_dim=8, kernel_sizes=(3, 5, 9), num_heads=2,
                  spatial_depth=1, temporal_depth=1, drop_path=0.2, agg_dropout=0.2)
    torch.manual_seed(0)
    reference = _randomize(cf.ConvFormer(**config)).to(DEVICE).train()
    fast = cf.ConvFormerFast.from_reference(reference, backend="triton")
    assert fast.backend == "triton"
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 9, 17, 2, generator=gen).to(DEVICE)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(11)
    out_ref = reference(x_ref)
    torch.manual_seed(11)
    out_fast = fast(x_fast)
    assert_close(out_fast, out_ref, "model forward", **GRAD_TOL)
    out_ref.square().sum().backward()
    out_fast.square().sum().backward()
    assert_close(x_fast.grad, x_ref.grad, "grad x", **GRAD_TOL)
    fast_params = dict(fast.named_parameters())
    for name, p in reference.named_parameters():
        assert_close(fast_params[name].grad, p.grad, f"grad {name}", **GRAD_TOL)
    reference.eval(), fast.eval()
    with torch.inference_mode():
        assert_close(fast(x), reference(x), "model eval forward", **FWD_TOL)


def test_backend_is_reported_and_selectable():
    info = cf.available_backends()["triton"]
    assert info.available and info.reason == ""
    assert "cuda" in info.devices
    assert ("cpu" in info.devices) == (not HAS_CUDA)
    x = torch.randn(1, 17, 8, device=DEVICE)
    assert select_backend("triton", x).name == "triton"


@interpreter_only
def test_backend_refuses_bfloat16_under_the_interpreter():
    x = torch.randn(1, 17, 8, dtype=torch.bfloat16)
    assert any("bfloat16" in r for r in BACKENDS["triton"].not_supported_reasons(x))
    with pytest.raises(ValueError, match="backend 'triton' cannot run this input: .*bfloat16"):
        select_backend("triton", x)


def test_module_head_dim_above_the_limit_raises_clearly():
    # The backend declares the limit (from the op registry), so the layer is refused before
    # any kernel runs; the op itself refuses too.
    layer = cf.DMHCSAFast("temporal", 2, 264, (1,), 1, backend="triton").to(DEVICE)
    with pytest.raises(ValueError, match=r"backend 'triton' cannot run this input: head_dim 264 above the "
                                         r"kernel's 256"):
        layer(torch.randn(1, 2, 264, device=DEVICE))
    from convformer_fast.triton import load_ops

    x = torch.randn(1, 2, 264, device=DEVICE)
    weight, bias = torch.randn(6, 2, 1, device=DEVICE), torch.randn(6, device=DEVICE)
    with pytest.raises(ValueError, match=r"triton_qkv_projection: head dim 264 is above the "
                                         r"largest supported, 256"):
        load_ops().qkv_projection(x, weight, bias, 1, "temporal")


@cuda_only
def test_auto_uses_triton_on_cuda_unless_the_cuda_backend_exists():
    x = torch.randn(1, 17, 8, device="cuda")
    expected = "cuda" if cf.available_backends()["cuda"].available else "triton"
    assert select_backend("auto", x).name == expected


def _run_fresh_python(code: str, env_updates: dict, drop: tuple = ()) -> str:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_updates)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a GPU")
def test_without_gpu_or_interpreter_the_backend_explains_itself():
    """A fresh process without TRITON_INTERPRET: the backend reports why it is unavailable,
    refuses to be selected, and the op refuses CPU tensors naming the kernel."""
    code = """
        import json, torch
        import convformer_fast as cf
        from convformer_fast import triton as triton_backend
        info = cf.available_backends()["triton"]
        result = {"available": info.available, "reason": info.reason, "devices": list(info.devices)}
        try:
            cf.DMHCSAFast("spatial", 5, 8, (3,), 2, backend="triton")
            result["module"] = "built"
        except ValueError as exc:
            result["module"] = str(exc)
        ops = triton_backend.load_ops()
        try:
            ops.qkv_projection(torch.zeros(1, 5, 8), torch.zeros(24, 8, 3), torch.zeros(24), 2, "spatial")
            result["op"] = "ran"
        except ValueError as exc:
            result["op"] = str(exc)
        print(json.dumps(result))
    """
    result = json.loads(_run_fresh_python(code, {"CUDA_VISIBLE_DEVICES": ""}, drop=("TRITON_INTERPRET",)))
    assert not result["available"]
    assert "no CUDA device" in result["reason"] and "TRITON_INTERPRET=1" in result["reason"]
    assert result["devices"] == ["cuda"]
    assert "'triton' is unavailable: no CUDA device" in result["module"]
    assert result["op"].startswith("triton_qkv_projection: x is on cpu; the Triton kernels need CUDA")
