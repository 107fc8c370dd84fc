"""Reliability across backends: property-based equivalence with eager, the fold cache under
threads, determinism, empty batches, non-finite inputs, degenerate configurations.

Property tests use the hypothesis profile named by HYPOTHESIS_PROFILE: "ci" (default: a
fixed seed and a bounded number of examples) or "long" for local runs.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convformer_fast as cf
from convformer_fast.fast import DMHCSAFast

from conftest import FORWARD_TOL, GRAD_TOL, assert_close

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The interpreter runs Triton kernels a thousand times slower than a GPU: its own tests
# cover it; here it would dominate the run.
CPU_BACKENDS = [name for name, info in cf.available_backends().items()
                if info.available and "cpu" in info.devices and name not in ("eager", "triton")]
# Emulations (cuda_emulated: real threads meeting at every barrier, ~0.5 ms each on 2 cores)
# take ~50 ms per small forward: the 200-example property test and the 2,200-call memory
# test run them through tests/test_cuda_emulated.py's smaller versions instead.
FAST_CPU_BACKENDS = [name for name in CPU_BACKENDS if not cf.available_backends()[name].emulated]


@st.composite
def configurations(draw):
    num_heads = draw(st.sampled_from([1, 2, 4]))
    embed_dim = num_heads * draw(st.integers(1, 4))
    return dict(
        num_frames=draw(st.integers(1, 64)),
        num_joints=draw(st.integers(1, 24)),
        embed_dim=embed_dim,
        num_heads=num_heads,
        kernel_sizes=tuple(draw(st.lists(st.sampled_from([1, 3, 5, 7, 9, 11]), min_size=1, max_size=4))),
        spatial_depth=draw(st.integers(1, 3)),
        temporal_depth=draw(st.integers(1, 3)),
        drop_path=0.0,
        agg_dropout=0.0,
    )


def random_model(config, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    model = cf.ConvFormer(**config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 2.0 if name.endswith("theta") else 0.3  # eta far from uniform
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * scale)
    return model


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@given(config=configurations(), batch=st.integers(1, 5), magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_every_backend_matches_eager(backend, config, batch, magnitude, dtype, seed):
    ref = random_model(config, dtype, seed)
    fast = cf.ConvFormerFast.from_reference(ref, backend=backend)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, config["num_frames"], config["num_joints"], 2, generator=gen, dtype=dtype) * magnitude
    ref.eval(), fast.eval()
    with torch.no_grad():
        assert_close(fast(x), ref(x), FORWARD_TOL[dtype], f"{backend} eval {config}")
    ref.train(), fast.train()  # dropouts are 0: train mode is deterministic here
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref).sum().backward()
    fast(x_fast).sum().backward()
    # Gradients scale with the input magnitude; compare relative to the largest one.
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        scale = max(p_ref.grad.abs().max().item(), 1.0)
        assert_close(p_fast.grad / scale, p_ref.grad / scale, GRAD_TOL[dtype], f"{backend} grad {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fold_cache_under_threads(backend):
    """Two threads run forward while a third updates a weight in place between rounds:
    every output equals the eager result for the weights of its round."""
    torch.manual_seed(0)
    layer = DMHCSAFast("temporal", 7, 24, (3, 5), 4, backend=backend).eval()
    reference = cf.DMHCSA("temporal", 7, 24, (3, 5), 4).eval()
    x = torch.randn(3, 7, 24)
    failures = []
    for round_ in range(6):
        with torch.no_grad():
            layer.value_convs[1].weight.add_(0.1 * round_)
            reference.load_state_dict(layer.state_dict())
            expected = reference(x)
        barrier = threading.Barrier(2)

        def worker():
            barrier.wait()
            for _ in range(5):
                with torch.no_grad():
                    out = layer(x)
                if not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
                    failures.append(round_)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, f"stale or torn fold in rounds {sorted(set(failures))}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_deterministic_outputs_and_gradients(backend):
    torch.manual_seed(0)
    model = cf.ConvFormerFast(num_frames=9, num_joints=17, embed_dim=8, num_heads=4,
                              kernel_sizes=(3, 7), drop_path=0.0, agg_dropout=0.0, backend=backend)
    x = torch.randn(4, 9, 17, 2)
    runs = []
    for _ in range(2):
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        runs.append((out.detach().clone(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("backend", ["eager"] + CPU_BACKENDS)
def test_empty_batch_returns_empty_output(backend):
    model = cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, backend=backend).eval()
    with torch.no_grad():
        out = model(torch.randn(0, 5, 17, 2))
    assert out.shape == (0, 1, 17, 3)


@pytest.mark.parametrize("backend", ["eager"] + CPU_BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_propagates(backend, value):
    model = cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, backend=backend).eval()
    x = torch.randn(2, 5, 17, 2)
    x[1, 2, 3, 0] = value
    with torch.no_grad():
        out = model(x)
    assert not torch.isfinite(out[1]).all()  # the poisoned sample shows it
    assert torch.isfinite(out[0]).all()  # and stays in its sample


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("config", [
    dict(num_frames=1, num_joints=17, embed_dim=8, num_heads=2, kernel_sizes=(3,)),   # T = 1
    dict(num_frames=5, num_joints=1, embed_dim=4, num_heads=2, kernel_sizes=(3,)),    # J = 1
    dict(num_frames=5, num_joints=5, embed_dim=4, num_heads=1, kernel_sizes=(1,)),    # one head, k = 1
    dict(num_frames=3, num_joints=5, embed_dim=4, num_heads=2, kernel_sizes=(11, 3)), # k > J and > T
], ids=["T1", "J1", "head1_k1", "k11_over_J5"])
def test_degenerate_configurations(backend, config):
    ref = random_model(dict(config, drop_path=0.0, agg_dropout=0.0), torch.float64, seed=3).eval()
    fast = cf.ConvFormerFast.from_reference(ref, backend=backend)
    x = torch.randn(2, config["num_frames"], config["num_joints"], 2, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fast(x), ref(x), FORWARD_TOL[torch.float64], str(config))


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_memory_stays_flat_over_many_calls(backend):
    """2,000 inference calls (the fold cache must not grow with distinct inputs) and 200
    training steps keep the resident set flat after warm-up."""
    torch.manual_seed(0)
    model = cf.ConvFormerFast(num_frames=9, num_joints=17, embed_dim=8, num_heads=4,
                              kernel_sizes=(3, 5), backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.eval()
    with torch.no_grad():
        for _ in range(200):
            model(torch.randn(2, 9, 17, 2))
        before = resident_mb()
        for _ in range(2000):
            model(torch.randn(2, 9, 17, 2))  # a new input every call
    inference_growth = resident_mb() - before
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        model(torch.randn(4, 9, 17, 2)).square().mean().backward()
        optimizer.step()
    before = resident_mb()
    for _ in range(200):
        optimizer.zero_grad()
        model(torch.randn(4, 9, 17, 2)).square().mean().backward()
        optimizer.step()
    training_growth = resident_mb() - before
    assert inference_growth < 16, f"inference grew {inference_growth:.1f} MB"
    assert training_growth < 16, f"training grew {training_growth:.1f} MB"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_deterministic_algorithms_mode_is_honoured(backend):
    torch.manual_seed(0)
    model = cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=2,
                              drop_path=0.0, agg_dropout=0.0, backend=backend)
    x = torch.randn(3, 5, 17, 2)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            model.zero_grad()
            model(x).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unservable_device_raises_before_any_work(backend):
    layer = DMHCSAFast("spatial", 17, 8, (3,), 2, backend=backend)
    with pytest.raises(ValueError, match=f"backend '{backend}' cannot run this input: .*device 'meta'"):
        layer(torch.empty(2, 17, 8, device="meta"))
