"""Fast drop-in modules vs the eager reference: forward in eval, outputs and every gradient
in train mode with the same RNG state, state_dict compatibility, convert, fold cache."""

from __future__ import annotations

import copy
import pickle
import re
import sys

import pytest
import torch

import convformer_fast as cf
from convformer_fast import backends
from convformer_fast.fast import DMHCSAFast
from convformer_fast.reference import DMHCSA

from conftest import FORWARD_TOL, GRAD_TOL, MODEL_CONFIGS, assert_close


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with eta far from uniform, so the fold is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.5 if name.endswith("theta") else 0.3
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


def make_pair(config: dict, backend: str, dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    ref = randomize(cf.ConvFormer(**config, **overrides)).to(dtype)
    fast = cf.ConvFormerFast.from_reference(ref, backend=backend)
    return ref, fast


def make_input(model, batch=2, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.num_frames, model.num_joints, 2, generator=gen, dtype=dtype)


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_eval_forward_matches_eager(fast_backend, config, batch, dtype):
    ref, fast = make_pair(MODEL_CONFIGS[config], fast_backend, dtype)
    ref.eval(), fast.eval()
    x = make_input(ref, batch, dtype)
    with torch.inference_mode():
        expected = ref(x)
        actual = fast(x)
    assert_close(actual, expected, FORWARD_TOL[dtype], f"{fast_backend} {config} forward")


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=str)
def test_train_step_matches_eager(fast_backend, config):
    """Drop-path and aggregation dropout on: same RNG state -> same masks -> same outputs
    and gradients for every parameter."""
    ref, fast = make_pair(MODEL_CONFIGS[config], fast_backend, drop_path=0.3, agg_dropout=0.3)
    ref.train(), fast.train()
    x = make_input(ref, batch=3)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(123)
    out_ref = ref(x_ref)
    torch.manual_seed(123)
    out_fast = fast(x_fast)
    assert_close(out_fast, out_ref, GRAD_TOL[torch.float32], "train forward")
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    (out_fast * weights).sum().backward()
    assert_close(x_fast.grad, x_ref.grad, GRAD_TOL[torch.float32], "grad x")
    fast_params = dict(fast.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(fast_params[name].grad, p.grad, GRAD_TOL[torch.float32], f"grad {name}")


@pytest.mark.skipif(not cf.extension_loaded(), reason=str(cf.EXTENSION_ERROR))
def test_cpu_backend_computes_long_windows_with_winograd():
    torch.manual_seed(0)
    layer = DMHCSAFast("temporal", 129, 12, (3, 7), 2, backend="cpu").eval()
    with torch.no_grad():
        layer(torch.randn(2, 129, 12))
    weight = layer._fold_cache[1]
    torch.testing.assert_close(layer._fold_cache[3]["cpu"]["winograd_weight"], cf.ops.winograd_weight(weight, 4))


def test_layer_level_modules(fast_backend):
    torch.manual_seed(0)
    for layout, tokens, features, heads in [("spatial", 15, 8, 2), ("temporal", 7, 60, 4)]:
        ref = randomize(DMHCSA(layout, tokens, features, (3, 5), heads)).eval()
        fast = DMHCSAFast(layout, tokens, features, (3, 5), heads, backend=fast_backend).eval()
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(2, tokens, features)
        assert_close(fast(x), ref(x), FORWARD_TOL[torch.float32], layout)
        block_ref = cf.ConvFormerBlock(layout, tokens, features, (3,), heads).eval()
        block_fast = cf.ConvFormerBlockFast(layout, tokens, features, (3,), heads,
                                            backend=fast_backend).eval()
        block_fast.load_state_dict(randomize(block_ref).state_dict())
        assert_close(block_fast(x), block_ref(x), FORWARD_TOL[torch.float32], f"{layout} block")


def test_state_dict_round_trip_is_strict():
    ref = cf.ConvFormer(**MODEL_CONFIGS["t7_j15_mixed"])
    fast = cf.ConvFormerFast(**MODEL_CONFIGS["t7_j15_mixed"], backend="torch")
    assert list(ref.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(randomize(ref).state_dict(), strict=True)
    back = cf.ConvFormer(**MODEL_CONFIGS["t7_j15_mixed"])
    back.load_state_dict(fast.state_dict(), strict=True)
    for a, b in zip(ref.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_from_preset_and_from_reference_keep_dtype_and_mode():
    fast = cf.ConvFormerFast.from_preset("h36m-9", backend="torch")
    assert fast.num_frames == 9 and fast.backend == "torch"
    ref = cf.ConvFormer(**MODEL_CONFIGS["t5_j17_single"]).double().eval()
    copy_ = cf.ConvFormerFast.from_reference(ref, backend="torch")
    assert next(copy_.parameters()).dtype == torch.float64
    assert not copy_.training
    assert copy_.config == ref.config


def test_convert_swaps_in_place_and_keeps_parameters(fast_backend):
    class UserModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = torch.nn.Linear(8, 8)
            self.block = cf.ConvFormerBlock("spatial", 17, 8, (3, 5), 2)
            self.attn = DMHCSA("temporal", 5, 8, (3,), 2)

    model = randomize(UserModel()).eval()
    x = torch.randn(2, 17, 8)
    expected = model.block(x)
    params_before = [id(p) for p in model.parameters()]
    assert cf.convert(model, backend=fast_backend) is model
    assert isinstance(model.block, cf.ConvFormerBlockFast)
    assert isinstance(model.attn, cf.DMHCSAFast) and model.attn.backend == fast_backend
    assert [id(p) for p in model.parameters()] == params_before
    assert_close(model.block(x), expected, FORWARD_TOL[torch.float32], "converted block")


def test_fold_cache_reused_and_invalidated():
    layer = randomize(DMHCSAFast("temporal", 5, 12, (3, 5), 3, backend="torch")).eval()
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        first = layer(x)
        cached = layer._fold_cache
        layer(x)
        assert layer._fold_cache is cached  # reused, not recomputed
        layer.query_convs[0].weight.add_(1.0)  # in-place update bumps the version
        updated = layer(x)
    assert layer._fold_cache is not cached
    assert not torch.allclose(first, updated)
    reference = DMHCSA("temporal", 5, 12, (3, 5), 3).eval()
    reference.load_state_dict(layer.state_dict())
    assert_close(updated, reference(x), FORWARD_TOL[torch.float32], "after update")


def test_a_layer_built_inside_inference_mode_runs_and_sees_updates():
    # Inference tensors have no version counter: the fold cannot be cached for them.
    x = torch.randn(2, 5, 12)
    with torch.inference_mode():
        layer = randomize(DMHCSAFast("temporal", 5, 12, (3, 5), 3, backend="torch")).eval()
        first = layer(x)
        layer.query_convs[0].weight.add_(1.0)
        updated = layer(x)
    assert layer._fold_cache is None
    reference = DMHCSA("temporal", 5, 12, (3, 5), 3).eval()
    reference.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    assert not torch.allclose(first, updated)
    assert_close(updated, reference(x), FORWARD_TOL[torch.float32], "built in inference_mode")


def test_no_cache_when_grad_enabled():
    layer = DMHCSAFast("spatial", 17, 8, (3,), 2, backend="torch").eval()
    layer(torch.randn(1, 17, 8)).sum().backward()
    assert layer._fold_cache is None
    assert layer.theta.grad is not None


# Small (one block per stage) because the Triton interpreter runs it a dozen times.
REPLICATION_CONFIG = dict(num_frames=5, num_joints=7, embed_dim=8, num_heads=2, kernel_sizes=(3, 5),
                          spatial_depth=1, temporal_depth=1, drop_path=0.0, agg_dropout=0.0)


def _replicate_on_cpu(monkeypatch, module, copies: int, detach: bool):
    """``torch.nn.parallel.replicate`` (what DataParallel runs on every forward) with its
    CUDA-only broadcast replaced by CPU clones. Everything else is torch's own code:
    shallow module copies whose parameters are non-leaf tensors set as plain attributes.
    Clones are differentiable, so the replicas' gradients add up in the original's
    parameters, as DataParallel's reduction does."""
    replicate_module = sys.modules["torch.nn.parallel.replicate"]
    monkeypatch.setattr(replicate_module, "_get_device_index", lambda device, optional=False: device)
    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape", lambda tensors, devices, detach=False: [
        [t.detach().clone() if detach else t.clone() for t in tensors] for _ in devices])
    return replicate_module.replicate(module, [torch.device("cpu")] * copies, detach)


def _outputs_and_gradients(model, x):
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_copies_pickles_saved_modules_and_state_dicts_compute_identically(fast_backend, tmp_path):
    """deepcopy, pickle, torch.save of the whole module and state_dict into a fresh module:
    same backend, no fold cache carried over, bitwise-identical outputs and gradients, and
    no storage shared with the original."""
    config = REPLICATION_CONFIG
    model = randomize(cf.ConvFormerFast(**config, backend=fast_backend)).eval()
    x = make_input(model)
    with torch.no_grad():
        expected = model(x)  # also fills the fold cache
    torch.save(model, tmp_path / "module.pt")
    fresh = cf.ConvFormerFast(**config, backend=fast_backend)
    fresh.load_state_dict(model.state_dict())
    clones = {"deepcopy": copy.deepcopy(model), "pickle": pickle.loads(pickle.dumps(model)),
              "torch.save": torch.load(tmp_path / "module.pt", weights_only=False), "state_dict": fresh.eval()}
    train_expected = _outputs_and_gradients(model.train(), x)
    for how, clone in clones.items():
        assert clone.backend == fast_backend, how
        assert all(m._fold_cache is None for m in clone.modules() if isinstance(m, DMHCSAFast)), how
        with torch.no_grad():
            assert torch.equal(clone.eval()(x), expected), how
        out, grads = _outputs_and_gradients(clone.train(), x)
        assert torch.equal(out, train_expected[0]), how
        assert all(torch.equal(a, b) for a, b in zip(grads, train_expected[1])), how
        with torch.no_grad():
            next(clone.parameters()).add_(1.0)
            assert torch.equal(model.eval()(x), expected), f"{how}: the clone shares storage"


def test_data_parallel_replicas_compute_like_the_module(fast_backend, monkeypatch):
    config = REPLICATION_CONFIG
    model = randomize(cf.ConvFormerFast(**config, backend=fast_backend)).eval()
    x = make_input(model, batch=4)
    halves = x.chunk(2)
    with torch.no_grad():
        expected = model(x)  # fills the cache that the replicas' shallow copies inherit
        replicas = _replicate_on_cpu(monkeypatch, model, 2, detach=True)
        gathered = torch.cat([replica(half) for replica, half in zip(replicas, halves)])
        assert_close(gathered, expected, FORWARD_TOL[torch.float32], "eval replicas")
        model.temporal_blocks[0].attn.query_convs[0].weight.add_(0.5)  # a folded weight
        replicas = _replicate_on_cpu(monkeypatch, model, 2, detach=True)  # as on every call
        gathered = torch.cat([replica(half) for replica, half in zip(replicas, halves)])
        reference = cf.ConvFormer(**config).eval()
        reference.load_state_dict(model.state_dict())
        assert_close(gathered, reference(x), FORWARD_TOL[torch.float32], "replicas after an update")
    out, grads = _outputs_and_gradients(model.train(), x)
    model.zero_grad()
    replicas = _replicate_on_cpu(monkeypatch, model, 2, detach=False)
    gathered = torch.cat([replica(half) for replica, half in zip(replicas, halves)])
    gathered.square().sum().backward()
    assert_close(gathered.detach(), out, GRAD_TOL[torch.float32], "train replicas")
    for (name, p), expected_grad in zip(model.named_parameters(), grads):
        assert_close(p.grad, expected_grad, GRAD_TOL[torch.float32], f"replica gradient {name}")


def test_backend_errors():
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        cf.ConvFormerFast(**MODEL_CONFIGS["t5_j17_single"], backend="fastest")
    with pytest.raises(ValueError, match="unknown backend"):
        cf.ConvFormerFast(**MODEL_CONFIGS["t5_j17_single"]).set_backend("nope")


def test_naming_a_backend_that_cannot_run_here_raises_with_its_reason():
    """The cuda backend runs where a GPU and the CUDA build exist, and is refused elsewhere
    with the reason available_backends() gives."""
    info = cf.available_backends()["cuda"]
    if info.available:
        assert cf.DMHCSAFast("spatial", 17, 8, (3,), 2, backend="cuda").backend == "cuda"
    else:
        with pytest.raises(ValueError, match="backend: 'cuda' is unavailable: " + re.escape(info.reason)):
            cf.DMHCSAFast("spatial", 17, 8, (3,), 2, backend="cuda")


def test_available_backends_reports_reasons():
    infos = cf.available_backends()
    assert {"eager", "torch", "cpu", "triton", "cuda", "cuda_emulated"} <= set(infos)
    assert infos["eager"].available and infos["torch"].available
    for info in infos.values():
        assert info.available == (info.reason == "")


@pytest.mark.skipif(not cf.extension_loaded(), reason=str(cf.EXTENSION_ERROR))
def test_auto_picks_cpu_kernels(monkeypatch):
    monkeypatch.delenv(backends.AUTO_ENV_VAR, raising=False)
    x = torch.randn(1, 17, 8)
    assert backends.select_backend("auto", x).name == "cpu"
    monkeypatch.setenv(backends.AUTO_ENV_VAR, "eager")
    assert backends.select_backend("auto", x).name == "eager"


def test_auto_falls_back_to_torch_with_one_warning_without_the_kernels(monkeypatch):
    monkeypatch.delenv(backends.AUTO_ENV_VAR, raising=False)
    reason = "convformer_fast._C is not built (planted by the test)"
    monkeypatch.setattr(backends, "EXTENSION_ERROR", reason)
    monkeypatch.setattr(backends, "_warned_fallback", False)
    monkeypatch.setattr(type(backends.BACKENDS["cpu"]), "unavailable_reason", lambda self: reason)
    x = torch.randn(1, 17, 8)
    with pytest.warns(RuntimeWarning, match="backend 'auto' falls back to 'torch': " + re.escape(reason)):
        assert backends.select_backend("auto", x).name == "torch"
