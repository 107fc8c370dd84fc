"""The CUDA kernels of kernels/, run on the CPU by the emulator (backend="cuda_emulated"),
and on a GPU where one exists (backend="cuda"; those tests skip here).

Numerics against the eager reference on shapes that hit every edge (J = 15 and 17, T not a
multiple of the 32-row tile, d_head 1, 4, 68, 128 and every register bucket, kernels longer
than the axis, mixed kernel sizes, one frame / batch 1): fp32 rtol 1e-4 / atol 1e-5, fp64
tight, fp16/bf16 within twice eager's own error at that precision (both against fp64).
Then: the emulator's checks (a deliberately broken kernel), opcheck, torch.compile /
export, bad input, that the kernels really run (and that gradients switch to the torch path).
"""

from __future__ import annotations

import copy
import os
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import convformer_fast as cf
from convformer_fast import ops
from convformer_fast.fast import DMHCSAFast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convformer_fast.ops.attention import reference as reference_attention
from convformer_fast.ops.spatial_attention_residual import reference as spatial_reference

from conftest import FORWARD_TOL, assert_close, reference_qkv, run_concurrently
from test_reliability import DTYPES, MAGNITUDES, model_examples, random_model, resident_mb, tolerance

pytestmark = pytest.mark.skipif(not cf.extension_loaded(), reason=str(cf.EXTENSION_ERROR))

HAS_CUDA = torch.cuda.is_available() and cf.available_backends()["cuda"].available
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build")
LOW_PRECISION = [torch.float16, torch.bfloat16]


def emulated():
    return ops.kernel_ops(emulated=True)


# ----------------------------------------------------------------------------- references
# The registry's references (convformer_fast/ops/): the projection written out with unfold +
# einsum, attention with an explicit softmax, the spatial half as LayerNorm -> projection ->
# attention -> residual in x's dtype.


def reference_spatial_half(x, norm_weight, norm_bias, eps, weight, bias, heads):
    return spatial_reference(x, norm_weight, norm_bias, eps, weight, bias, heads)


def spatial_args(frames, joints, features, heads, k, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, joints, features, generator=gen, dtype=dtype)
    norm_weight = 1 + 0.3 * torch.randn(features, generator=gen, dtype=dtype)
    norm_bias = 0.3 * torch.randn(features, generator=gen, dtype=dtype)
    weight = torch.randn(3 * features, features, k, generator=gen, dtype=dtype) * 2 / (features * k) ** 0.5
    bias = torch.randn(3 * features, generator=gen, dtype=dtype)
    return x, norm_weight, norm_bias, 1e-5, weight, bias, heads


def random_qkv(n, h, s, d, dtype=torch.float64, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, n, h, s, d, generator=gen, dtype=dtype) * scale


def cast(args, dtype):
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args)


# --------------------------------------------------------------------- the emulator's checks

SELFTEST_FAULTS = {
    # fault: (input size, message pattern). Each names the kernel and the offending index.
    "missing_barrier": (70, r"data race on shared 'tile'\[\d+\]: thread \d+ (reads|writes) it while "
                            r"(thread \d+ (wrote|reads)|other threads read)"),
    "off_by_one_tile": (70, r"shared-memory read at index 32 is out of bounds of 'tile' \(32 elements\)"),
    "divergent_barrier": (70, r"barrier divergence: thread \d+ .* while thread \d+"),
    "global_out_of_bounds": (70, r"global-memory index (7\d|8\d|9\d) is out of bounds of 'x' \(70 elements\)"),
}


def test_selftest_kernel_without_faults_is_correct():
    x = torch.randn(70)
    out, sums = emulated().emulator_selftest(x, "none")
    for b, tile in enumerate(x.split(32)):
        torch.testing.assert_close(out[32 * b:32 * b + len(tile)], tile + tile.roll(-1))
        torch.testing.assert_close(sums[b], tile.sum())


@pytest.mark.parametrize("fault", SELFTEST_FAULTS)
def test_emulator_catches_each_planted_bug_every_time(fault):
    """A GPU might run these bugs to a plausible answer; the emulator must fail loudly,
    naming the kernel and the index, on every run (not by luck of scheduling)."""
    size, pattern = SELFTEST_FAULTS[fault]
    for _ in range(5):
        with pytest.raises(RuntimeError, match=r"emulated CUDA kernel 'emulator_selftest' \(block \d+ of 3, "
                                               r"thread \d+ of 32\): " + pattern):
            emulated().emulator_selftest(torch.randn(size), fault)
    out, _ = emulated().emulator_selftest(torch.ones(size), "none")  # the pool recovered
    assert torch.equal(out, torch.full((size,), 2.0))


def test_emulator_reports_reads_of_never_written_shared_memory():
    # A partial tile (20 of 32 loaded): the off-by-one now reads tile[20], which no thread wrote.
    with pytest.raises(RuntimeError, match=r"reads shared 'tile'\[20\] before any thread of this block wrote it"):
        emulated().emulator_selftest(torch.randn(20), "off_by_one_tile")


def test_emulator_serialises_launches_from_threads():
    x = torch.randn(3, 2, 4, 40, 8, dtype=torch.float64)
    expected = emulated().attention(x)[0]
    results, errors = [], []

    def worker():
        try:
            for _ in range(3):
                results.append(emulated().attention(x)[0])
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    run_concurrently(worker, 3)
    assert not errors and len(results) == 9
    assert all(torch.equal(r, expected) for r in results)  # deterministic, not torn


# ------------------------------------------------------------- fused spatial half-block op

# (frames, J, d, heads, k): J = 17 / 15, d_head 4 (paper), 1, 16 and 64 (register buckets
# 8, 32, 64), frames not a multiple of the frames per block, k longer than J, k = 1.
SPATIAL_SHAPES = [
    (3, 17, 32, 8, 7),
    (1, 15, 8, 2, 3),
    (13, 17, 16, 4, 9),
    (2, 5, 4, 1, 11),
    (2, 17, 8, 8, 1),
    (1, 3, 64, 1, 3),
    (9, 15, 16, 1, 5),
]


def within_spatial_limit(dtype):
    """SPATIAL_SHAPES whose head dim the kernel serves in ``dtype`` (fp64 has fewer register
    buckets; the limit itself is tested in test_python_limits_match_the_kernels)."""
    limit = ops.limits.spatial_max_head_dim(dtype) if cf.extension_loaded() else 0
    return [pytest.param(shape, dtype, id=f"{shape}-{str(dtype)[6:]}") for shape in SPATIAL_SHAPES
            if shape[2] // shape[3] <= limit]


@pytest.mark.parametrize("shape,dtype", within_spatial_limit(torch.float32) + within_spatial_limit(torch.float64))
def test_spatial_attention_residual_matches_reference(shape, dtype):
    args = spatial_args(*shape)
    expected = reference_spatial_half(*args)
    actual = emulated().spatial_attention_residual(*cast(args, dtype))
    assert actual.dtype == dtype and actual.shape == args[0].shape
    tol = FORWARD_TOL[torch.float32] if dtype == torch.float32 else (1e-12, 1e-12)
    assert_close(actual.double(), expected, tol, f"spatial {shape} {dtype}")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_spatial_attention_residual_low_precision_within_twice_eager_error(dtype):
    args = spatial_args(6, 17, 32, 8, 7)
    exact = reference_spatial_half(*args)
    low = cast(args, dtype)
    err_mine = (emulated().spatial_attention_residual(*low).double() - exact).abs().max().item()
    err_eager = (reference_spatial_half(*low).double() - exact).abs().max().item()
    assert err_mine <= 2 * err_eager, (dtype, err_mine, err_eager)


def test_spatial_attention_residual_non_contiguous_and_nan_confined_to_its_frame():
    x, *rest = spatial_args(4, 17, 8, 2, 3)
    wide = torch.randn(4, 8, 17, dtype=torch.float64).transpose(1, 2)  # strided like x
    assert_close(emulated().spatial_attention_residual(wide, *rest),
                 reference_spatial_half(wide, *rest), (1e-12, 1e-12), "strided x")
    x[2, 5, 1] = float("nan")
    out = emulated().spatial_attention_residual(x, *rest)
    assert out[2].isnan().any() and not out[[0, 1, 3]].isnan().any()


def test_spatial_attention_residual_empty_batch():
    x, *rest = spatial_args(1, 17, 8, 2, 3)
    assert emulated().spatial_attention_residual(x[:0], *rest).shape == (0, 17, 8)


# --------------------------------------------------------------------- tiled attention op

# (N, h, S, d): T not a multiple of 32 (33, 81, 35), exactly 32, d_head 68 (paper), 128
# (the limit), 4 and 1, S = 1, and d_head in every register bucket (16, 32, 72, 128).
ATTENTION_SHAPES = [
    (2, 3, 17, 4),
    (1, 2, 81, 68),
    (2, 1, 33, 128),
    (1, 2, 35, 32),
    (3, 1, 32, 1),
    (1, 4, 1, 16),
    (2, 2, 9, 72),
]


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_attention_matches_reference(shape, dtype):
    # fp64 with large logits (the running max across key tiles matters); fp32 with unit
    # ones, where eager fp32 itself is within the tolerance (larger logits: next test).
    qkv = random_qkv(*shape, scale=3.0 if dtype == torch.float64 else 1.0)
    expected_out, expected_lse = reference_attention(qkv)
    out, lse = emulated().attention(qkv.to(dtype))
    tol = FORWARD_TOL[torch.float32] if dtype == torch.float32 else (1e-12, 1e-12)
    assert_close(out.double(), expected_out, tol, f"out {shape}")
    assert_close(lse.double(), expected_lse, tol, f"lse {shape}")


@pytest.mark.parametrize("layout,n,s,f,heads,k", [("temporal", 2, 35, 68, 1, 5), ("temporal", 1, 81, 544, 8, 7),
                                                 ("spatial", 3, 17, 32, 8, 7)])
def test_attention_reads_the_projection_layout_in_place(layout, n, s, f, heads, k):
    """qkv_projection hands out a strided view (temporal: rows of d contiguous; spatial:
    columns): the kernel reads it through its strides, no copy."""
    c = f if layout == "spatial" else s
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, s, f, generator=gen, dtype=torch.float64)
    weight = torch.randn(3 * c, c, k, generator=gen, dtype=torch.float64) / (c * k) ** 0.5
    bias = torch.randn(3 * c, generator=gen, dtype=torch.float64)
    qkv = emulated().qkv_projection(x, weight, bias, heads, layout)
    assert not qkv.is_contiguous()
    assert_close(qkv, reference_qkv(x, weight, bias, heads, layout), (1e-12, 1e-12), "projection")
    out, lse = emulated().attention(qkv)
    expected_out, expected_lse = reference_attention(qkv)
    assert_close(out, expected_out, (1e-12, 1e-12), "out")
    assert_close(lse, expected_lse, (1e-12, 1e-12), "lse")


@pytest.mark.parametrize("dtype", [torch.float32] + LOW_PRECISION, ids=str)
def test_attention_large_logits_or_low_precision_within_twice_eager_error(dtype):
    qkv = random_qkv(2, 2, 70, 68, scale=3.0)
    exact, _ = reference_attention(qkv)
    err_mine = (emulated().attention(qkv.to(dtype))[0].double() - exact).abs().max().item()
    err_eager = (reference_attention(qkv.to(dtype))[0].double() - exact).abs().max().item()
    assert err_mine <= 2 * err_eager, (dtype, err_mine, err_eager)


def test_attention_huge_logits_and_nan_stay_in_their_head():
    qkv = random_qkv(2, 2, 40, 8, dtype=torch.float32, scale=1e3)
    out = emulated().attention(qkv)[0]
    assert torch.isfinite(out).all()
    assert_close(out, reference_attention(qkv)[0], (1e-4, 1e-3), "huge logits")
    qkv[1, 0, 1, 37, 2] = float("nan")  # a key of sample 0, head 1, in the second key tile
    out = emulated().attention(qkv)[0]
    assert out[0, :, 8:].isnan().all()
    assert not out[0, :, :8].isnan().any() and not out[1].isnan().any()


# ------------------------------------------------------------- through the backend, layers

class RecordOps(TorchDispatchMode):
    """Names of the ops of one namespace that run inside the context."""

    def __init__(self, namespace):
        super().__init__()
        self.namespace, self.names = namespace, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == self.namespace:
            self.names.append(func._schema.name.split("::")[1])
        return func(*args, **(kwargs or {}))


def randomized(module, seed=0):
    """Weights at their initial scale (1/sqrt(fan-in)), but eta far from uniform and random
    LayerNorm affines and biases. (Weights of std 0.3 in a 35 x 9-tap temporal conv give
    logits of std ~30, where eager fp32 itself is 1e-4 away from fp64: no fp32 test there.)"""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("theta"):
                p.copy_(1.5 * noise)
            elif "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
    return module


# (layout, tokens, features, kernel sizes, heads): J = 17 and 15 with d_head 4; T = 35 and
# 33 (not multiples of the 32-row tile) with d_head 68 and 4; mixed kernel sizes; k > J.
BLOCK_CASES = [
    ("spatial", 17, 32, (7, 7, 7), 8),
    ("spatial", 15, 8, (3, 5, 9), 2),
    ("spatial", 5, 4, (11, 1), 1),
    ("temporal", 35, 17 * 4, (3, 5, 9), 1),
    ("temporal", 33, 15 * 8, (7,), 30),
]


@pytest.mark.parametrize("case", BLOCK_CASES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_block_in_inference_runs_the_kernels_and_matches_eager(case, batch):
    layout, tokens, features, kernels, heads = case
    ref = randomized(cf.ConvFormerBlock(layout, tokens, features, kernels, heads)).eval()
    fast = cf.ConvFormerBlockFast(layout, tokens, features, kernels, heads, backend="cuda_emulated").eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(batch, tokens, features)
    with torch.inference_mode():
        expected = ref(x)
        with RecordOps(ops.EMULATED_NAMESPACE) as record:
            actual = fast(x)
    assert_close(actual, expected, FORWARD_TOL[torch.float32], f"{case} block")
    fused = ["spatial_attention_residual"] if layout == "spatial" else ["qkv_projection", "attention"]
    assert record.names == fused


def test_model_in_inference_runs_every_layer_on_the_kernels():
    config = dict(num_frames=9, num_joints=17, embed_dim=16, kernel_sizes=(3, 7), num_heads=4)
    torch.manual_seed(0)
    ref = randomized(cf.ConvFormer(**config)).eval()
    fast = cf.ConvFormerFast.from_reference(ref, backend="cuda_emulated")
    x = torch.randn(2, 9, 17, 2)
    with torch.no_grad():
        with RecordOps(ops.EMULATED_NAMESPACE) as record:
            actual = fast(x)
        assert_close(actual, ref(x), FORWARD_TOL[torch.float32], "model")
    assert record.names == ["spatial_attention_residual"] * 2 + ["qkv_projection", "attention"] * 2


def test_flop_count_equals_the_torch_backend():
    """The kernels' FLOP formulas count what the exact fold does (convformer_fast/flops.py)."""
    from convformer_fast.perf.flops import flop_counter_flops

    config = dict(num_frames=9, num_joints=17, embed_dim=16, kernel_sizes=(3, 7), num_heads=4)
    counts = {}
    for backend in ("torch", "cuda_emulated"):
        torch.manual_seed(0)
        model = cf.ConvFormerFast(**config, backend=backend).eval()
        x = torch.randn(2, 9, 17, 2)
        with torch.no_grad():
            count = flop_counter_flops(lambda: model(x))
        assert not count.uncounted
        counts[backend] = count.total
    assert counts["cuda_emulated"] == counts["torch"] > 0


def test_gradients_take_the_torch_path():
    layer = randomized(DMHCSAFast("temporal", 9, 24, (3, 5), 2, backend="cuda_emulated")).train()
    ref = cf.DMHCSA("temporal", 9, 24, (3, 5), 2).train()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 9, 24)
    with RecordOps(ops.EMULATED_NAMESPACE) as record:
        out = layer(x)
        out.square().sum().backward()
    assert record.names == []  # no kernel ran: autograd was recording
    ref(x).square().sum().backward()
    assert_close(layer.theta.grad, ref.theta.grad, (1e-3, 1e-4), "grad theta")


def test_active_drop_path_falls_back_with_eager_random_order():
    """In training (under no_grad) with DropPath and aggregation dropout on, the block must
    draw its random numbers as eager does: the fused kernel is not used."""
    kwargs = dict(layout="spatial", num_tokens=17, num_features=8, kernel_sizes=(3, 5), num_heads=2,
                  drop_path=0.5, agg_dropout=0.3)
    ref = randomized(cf.ConvFormerBlock(**kwargs)).train()
    fast = cf.ConvFormerBlockFast(**kwargs, backend="cuda_emulated").train()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 17, 8)
    with torch.no_grad():
        torch.manual_seed(7)
        expected = ref(x)
        torch.manual_seed(7)
        with RecordOps(ops.EMULATED_NAMESPACE) as record:
            actual = fast(x)
    assert "spatial_attention_residual" not in record.names
    assert record.names == ["qkv_projection", "attention"]  # the layer itself, no grad needed
    assert_close(actual, expected, FORWARD_TOL[torch.float32], "drop-path block")


def test_layers_beyond_the_kernel_limits_take_the_torch_path():
    layer = randomized(DMHCSAFast("temporal", 5, 2 * 130, (3,), 2, backend="cuda_emulated")).eval()
    assert layer.head_dim > ops.limits.attention_max_head_dim()
    ref = cf.DMHCSA("temporal", 5, 260, (3,), 2).eval()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, 5, 260)
    with torch.no_grad(), RecordOps(ops.EMULATED_NAMESPACE) as record:
        assert_close(layer(x), ref(x), FORWARD_TOL[torch.float32], "d_head 130")
    assert record.names == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_python_limits_match_the_kernels(dtype):
    limit = ops.limits.spatial_max_head_dim(dtype)
    emulated().spatial_attention_residual(*spatial_args(1, 3, limit, 1, 3, dtype=dtype))  # at the limit: served
    with pytest.raises(ValueError, match=f"d_head = F / num_heads = {limit + 1} / 1 = {limit + 1} exceeds "
                                         f"the kernel's limit of {limit}"):
        emulated().spatial_attention_residual(*spatial_args(1, 3, limit + 1, 1, 3, dtype=dtype))
    limit = ops.limits.attention_max_head_dim()
    emulated().attention(random_qkv(1, 1, 3, limit))
    with pytest.raises(ValueError, match=f"attention: d_head = {limit + 1} exceeds the kernel's limit of {limit}"):
        emulated().attention(random_qkv(1, 1, 3, limit + 1))


# Property test: tests/test_reliability.py's broad model strategy (T 1-64, J 1-24, 1-4 kernel
# sizes, 1-3 blocks per stage, 1-8 heads of 1-16 features, batch 1-5, all within its cost
# budget; fp32/fp64, inputs x1e-3/1/1e3; its weights and elementwise tolerances), fewer
# examples than there (each emulated forward costs ~50-500 ms here), eval only (with
# gradients the backend is the torch path, tested there).
@settings(max_examples=int(os.environ.get("CUDA_EMULATED_EXAMPLES", "10")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(example_=model_examples(), magnitude=MAGNITUDES, dtype=DTYPES, seed=st.integers(0, 2**16))
def test_property_emulated_model_matches_eager(example_, magnitude, dtype, seed):
    config, batch = example_
    ref = random_model(config, dtype, seed).eval()
    fast = cf.ConvFormerFast.from_reference(ref, backend="cuda_emulated")
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, config["num_frames"], config["num_joints"], 2, generator=gen, dtype=dtype) * magnitude
    with torch.no_grad():
        assert_close(fast(x), ref(x), tolerance(FORWARD_TOL, dtype, magnitude), f"eval {config} batch {batch}")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_emulator_memory_stays_flat_over_many_launches():
    """Each launch allocates its shared memory (~50 KiB here) and access records (4x that):
    300 launches, half of them failing, must leave nothing behind (a leak would be ~75 MB)."""
    qkv = random_qkv(1, 1, 1, 128, dtype=torch.float64)  # one block, the largest tiles
    x = torch.randn(70)
    for _ in range(20):
        emulated().attention(qkv)
    before = resident_mb()
    for _ in range(150):
        emulated().attention(qkv)
        with pytest.raises(RuntimeError, match="data race"):
            emulated().emulator_selftest(x, "missing_barrier")
    growth = resident_mb() - before
    assert growth < 8, f"grew {growth:.1f} MB over 300 launches"


# ------------------------------------------------------------ opcheck, compile, export

def test_opcheck():
    args = spatial_args(3, 17, 8, 2, 3, dtype=torch.float32)
    torch.library.opcheck(torch.ops.convformer_fast_emulated.spatial_attention_residual.default, args)
    qkv = random_qkv(2, 2, 35, 8, dtype=torch.float32)
    torch.library.opcheck(torch.ops.convformer_fast_emulated.attention.default, (qkv,))
    x, weight, bias = (t.float().requires_grad_() for t in (args[0], args[4], args[5]))
    torch.library.opcheck(torch.ops.convformer_fast_emulated.qkv_projection.default,
                          (x, weight, bias, 2, "spatial"))
    torch.library.opcheck(torch.ops.convformer_fast_emulated.emulator_selftest.default,
                          (torch.randn(40), "none"))


def test_inference_only_ops_refuse_backward_clearly():
    args = list(spatial_args(2, 5, 4, 1, 3, dtype=torch.float32))
    args[0] = args[0].requires_grad_()
    out = emulated().spatial_attention_residual(*args)
    with pytest.raises(RuntimeError, match="spatial_attention_residual is an inference kernel and has no backward"):
        out.sum().backward()


def small_model():
    torch.manual_seed(0)
    return cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, kernel_sizes=(3, 5),
                             backend="cuda_emulated").eval()


def test_torch_compile_fullgraph():
    model = small_model()
    x = torch.randn(2, 5, 17, 2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_torch_export_captures_the_kernels():
    model = small_model()
    x = torch.randn(2, 5, 17, 2)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        targets = {str(node.target) for node in program.graph.nodes}
        assert {"convformer_fast_emulated.spatial_attention_residual.default",
                "convformer_fast_emulated.attention.default"} <= targets
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("change,match", [
    (dict(heads=3), "num_heads=3 must divide"),
    (dict(features=128, heads=1), "d_head = F / num_heads = 128 / 1 = 128 exceeds the kernel's limit of 32 "
                                  "for float64"),
    (dict(joints=2000), r"one frame of J = 2000 joints x F = 16 features \(k = 3, Double\) needs \d+ KiB of "
                        r"shared memory per block, above this device's limit of 163 KiB"),
    (dict(norm_weight=torch.randn(5, dtype=torch.float64)), r"norm_weight must be \(F,\) = \(16,\)"),
    (dict(norm_bias=torch.randn(16)), "norm_bias dtype Float differs from x dtype Double"),
    (dict(eps=0.0), r"eps must be in \(0, 1\)"),
    (dict(weight=torch.randn(48, 16, 4, dtype=torch.float64)), r"weight must be \(3C, C, k\) with C=16 and odd k"),
    (dict(dtype=torch.int32), "x must be floating point"),
])
def test_spatial_bad_input(change, match):
    joints, features, heads = change.pop("joints", 7), change.pop("features", 16), change.pop("heads", 2)
    x, norm_weight, norm_bias, eps, weight, bias, _ = spatial_args(2, joints, features, 1, 3)
    args = dict(x=x, norm_weight=norm_weight, norm_bias=norm_bias, eps=eps, weight=weight, bias=bias,
                heads=heads)
    if "dtype" in change:
        args["x"] = args["x"].to(change.pop("dtype"))
    args.update(change)
    with pytest.raises(ValueError, match="spatial_attention_residual: " + match):
        emulated().spatial_attention_residual(*args.values())


@pytest.mark.parametrize("bad,match", [
    (torch.randn(2, 1, 2, 3, 4), r"qkv must be \(3, N, h, S, d_head\)"),
    (torch.randn(3, 1, 2, 3), r"qkv must be \(3, N, h, S, d_head\)"),
    (torch.randn(3, 1, 2, 3, 130), "d_head = 130 exceeds the kernel's limit of 128"),
    (torch.ones(3, 1, 2, 3, 4, dtype=torch.int64), "qkv must be float16, bfloat16, float32 or float64"),
])
def test_attention_bad_input(bad, match):
    with pytest.raises(ValueError, match="attention: " + match):
        emulated().attention(bad)


def test_cuda_backend_reports_why_it_is_unavailable():
    info = cf.available_backends()["cuda"]
    if not HAS_CUDA:
        assert not info.available and re.search("CUDA device|CUDA kernels|_C", info.reason), info.reason
    assert "inference only" in info.description
    assert cf.available_backends()["cuda_emulated"].emulated


# ---------------------------------------------------------- on a GPU (skipped without one)

# exact_fp32 (conftest.py): no TF32 in cuDNN convolutions or matmuls, ours or eager's.


@cuda_only
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=str)
def test_cuda_spatial_kernel_matches_reference(shape, exact_fp32):
    args = spatial_args(*shape)
    expected = reference_spatial_half(*args)
    gpu = tuple(a.float().cuda() if isinstance(a, torch.Tensor) else a for a in args)
    actual = ops.spatial_attention_residual(*gpu)
    assert_close(actual.double().cpu(), expected, FORWARD_TOL[torch.float32], f"cuda spatial {shape}")


@cuda_only
@pytest.mark.parametrize("shape", ATTENTION_SHAPES + [(2, 8, 351, 68)], ids=str)
def test_cuda_attention_kernel_matches_reference(shape):
    # Unit logits, where eager fp32 itself is within FORWARD_TOL (as in
    # test_attention_matches_reference); larger logits: the next test.
    qkv = random_qkv(*shape, scale=1.0)
    expected_out, expected_lse = reference_attention(qkv)
    out, lse = torch.ops.convformer_fast.attention(qkv.float().cuda())
    assert_close(out.double().cpu(), expected_out, FORWARD_TOL[torch.float32], f"cuda out {shape}")
    assert_close(lse.double().cpu(), expected_lse, FORWARD_TOL[torch.float32], f"cuda lse {shape}")


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32] + LOW_PRECISION, ids=str)
def test_cuda_attention_large_logits_or_low_precision_within_twice_eager_error(dtype, exact_fp32):
    """Logits of std ~9 (fp32, where eager fp32 is ~2e-5 off fp64) and fp16/bf16: within
    twice eager's own error at that precision on the same GPU, both against fp64."""
    qkv = random_qkv(2, 8, 81, 68, scale=3.0).cuda()
    exact, _ = reference_attention(qkv)
    err_mine = (torch.ops.convformer_fast.attention(qkv.to(dtype))[0].double() - exact).abs().max().item()
    err_eager = (reference_attention(qkv.to(dtype))[0].double() - exact).abs().max().item()
    assert err_mine <= 2 * err_eager, (dtype, err_mine, err_eager)


@cuda_only
@pytest.mark.parametrize("preset", ["h36m-9", "h36m-243", "humaneva-27"])
@pytest.mark.parametrize("batch", [1, 4])
def test_cuda_backend_matches_eager_on_paper_models(preset, batch, exact_fp32):
    torch.manual_seed(0)
    ref = randomized(cf.ConvFormer.from_preset(preset)).eval().cuda()
    fast = cf.ConvFormerFast.from_reference(ref, backend="cuda")
    x = torch.randn(batch, ref.num_frames, ref.num_joints, 2, device="cuda")
    with torch.inference_mode():
        with RecordOps("convformer_fast") as record:
            actual = fast(x)
        eager = ref(x)
        exact = copy.deepcopy(ref).double()(x.double())
    # A whole paper model (up to 243 frames, 16 blocks) in fp32 on a GPU: eager fp32 itself
    # need not be within FORWARD_TOL of fp64 everywhere, so the kernels get twice its error
    # (plus FORWARD_TOL's atol, for where eager happens to be almost exact), both against fp64.
    err_mine = (actual.double() - exact).abs().max().item()
    err_eager = (eager.double() - exact).abs().max().item()
    assert err_mine <= 2 * err_eager + FORWARD_TOL[torch.float32][1], (preset, err_mine, err_eager)
    assert "spatial_attention_residual" in record.names and "attention" in record.names


@cuda_only
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_cuda_backend_low_precision_within_twice_eager_error(dtype):
    torch.manual_seed(0)
    exact_model = randomized(cf.ConvFormer.from_preset("h36m-27")).eval().cuda().double()
    eager_low = cf.ConvFormer.from_preset("h36m-27").eval().cuda()
    eager_low.load_state_dict(exact_model.state_dict())
    eager_low.to(dtype)
    fast = cf.ConvFormerFast.from_reference(eager_low, backend="cuda")
    x = torch.randn(4, 27, 17, 2, device="cuda")
    with torch.inference_mode():
        exact = exact_model(x.double())
        err_mine = (fast(x.to(dtype)).double() - exact).abs().max().item()
        err_eager = (eager_low(x.to(dtype)).double() - exact).abs().max().item()
    assert err_mine <= 2 * err_eager + 1e-3, (dtype, err_mine, err_eager)


@cuda_only
def test_cuda_and_emulated_kernels_agree():
    """The same source on both: GPU and emulator differ only by float rounding."""
    args = spatial_args(5, 17, 32, 8, 7, dtype=torch.float32)
    gpu = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    assert_close(ops.spatial_attention_residual(*gpu).cpu(), emulated().spatial_attention_residual(*args),
                 (1e-5, 1e-6), "spatial")
    qkv = random_qkv(2, 8, 81, 68, dtype=torch.float32)
    assert_close(torch.ops.convformer_fast.attention(qkv.cuda())[0].cpu(), emulated().attention(qkv)[0],
                 (1e-5, 1e-6), "attention")
