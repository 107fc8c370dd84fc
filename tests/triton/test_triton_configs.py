"""Every configuration a GPU's pruned autotuner may pick, executed and checked against the
op registry's references.

Under the interpreter each autotuner holds one fixed configuration, so the tile shapes a
GPU picks from (``convformer_fast.triton.configs.AUTOTUNED``, pruned per arithmetic path and head-dim class) would
otherwise only be compiled (by the audit), never run. Here each one is forced
(``KernelLaunch.run(config)``) on shapes built from its tile: one full tile plus one element
on every tiled axis (rows, output channels, the reduction loop, owned and streamed attention
rows, the head dim padded to BLOCK_D), packed attention heads whose last group is partial,
and a weight gradient split into row chunks of which the last is empty. fp32 runs the
spatial layout, fp64 the temporal one, so each configuration meets both. The interpreter
ignores num_warps and num_stages, so configurations that differ only in those run once there
(on a GPU each runs).

Budget: by default a sample (one configuration per kernel, head-dim class and dtype, rotated
by ``CONVFORMER_TRITON_CONFIGS_SEED``); ``CONVFORMER_TRITON_CONFIGS=all`` runs every one.
The counts and times are in docs/gpu.md.
"""

from __future__ import annotations

import math
import os
import sys
import zlib
from dataclasses import dataclass

import pytest
import torch

from triton_helpers import DEVICE, UNAVAILABLE, assert_close, requires_triton, tops

from convformer_fast.ops import OPS

pytestmark = requires_triton

ALL_ENV_VAR = "CONVFORMER_TRITON_CONFIGS"
SEED_ENV_VAR = "CONVFORMER_TRITON_CONFIGS_SEED"
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# fp32 against an fp64 reference; fp64 to rounding (forward; gradients).
TOL = {"fp32": (dict(rtol=1e-4, atol=1e-5), dict(rtol=1e-3, atol=1e-4)),
       "fp64": (dict(rtol=1e-10, atol=1e-12), dict(rtol=1e-9, atol=1e-11))}
LAYOUT_OF = {"fp32": "spatial", "fp64": "temporal"}
# A head dim of each class of the attention pruning, padded with masks: 4 -> BLOCK_D 16,
# 68 (the paper's temporal d_head) -> BLOCK_D 128.
HEAD_DIM_OF = {"narrow": 4, "wide": 68}
GEMM_KERNELS = ("qkv_projection_fwd_kernel", "qkv_projection_grad_input_kernel",
                "qkv_projection_grad_weight_kernel")
ATTENTION_KERNELS = ("attention_fwd_kernel", "attention_bwd_preprocess_kernel",
                     "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel")


def _kernels():
    if UNAVAILABLE is not None:
        return None
    tops()  # defines the kernels (interpreted where there is no GPU)
    from convformer_fast.triton import kernels

    return kernels


@dataclass(frozen=True)
class ConfigCase:
    kernel: str
    head_dim_class: str | None   # attention kernels only
    config_name: str             # as the pruning names it ("64x32x16 w4 s3")
    meta: tuple                  # the meta-parameters forced, as sorted (name, value) pairs
    paths: tuple[str, ...]       # arithmetic paths on which a GPU may pick it
    dtype: str

    @property
    def id(self) -> str:
        cls = f"-{self.head_dim_class}" if self.head_dim_class else ""
        return f"{self.kernel.removesuffix('_kernel')}{cls}-{self.config_name.replace(' ', '-')}-{self.dtype}"


def pruned_configurations(kernels) -> list[tuple[str, str | None, str, object]]:
    """(kernel, head-dim class, arithmetic path, config) for every configuration a pruned
    autotuner may pick, and the preprocess kernel's fixed tile per class."""
    rows = []
    for kernel in GEMM_KERNELS + ATTENTION_KERNELS:
        classes = CONFIGS.HEAD_DIM_CLASSES if kernel in ATTENTION_KERNELS else {None: None}
        for cls, block_d in classes.items():
            for path in CONFIGS.ARITHMETIC_PATHS:
                for config in CONFIGS.gpu_configs(kernel, path, block_d):
                    rows.append((kernel, cls, path, config))
    return rows


def config_cases(kernels, interpreted: bool) -> list[ConfigCase]:
    """One case per distinct execution and dtype: under the interpreter configurations that
    differ only in num_warps / num_stages are one execution."""
    groups: dict[tuple, list] = {}
    for kernel, cls, path, config in pruned_configurations(kernels):
        name = CONFIGS.config_name(config)
        key = (kernel, cls, name.split(" ")[0] if interpreted else name)
        groups.setdefault(key, [config, set()])[1].add(path)
    cases = []
    for (kernel, cls, name), (config, paths) in groups.items():
        meta = tuple(sorted(config.kwargs.items()))
        for dtype in DTYPES:
            cases.append(ConfigCase(kernel, cls, name, meta, tuple(sorted(paths)), dtype))
    return cases


def selected(cases: list[ConfigCase]) -> list[ConfigCase]:
    """Every case with CONVFORMER_TRITON_CONFIGS=all; otherwise one per kernel, head-dim
    class and dtype, chosen by the seed (a different seed covers others)."""
    if os.environ.get(ALL_ENV_VAR, "") == "all":
        return cases
    seed = int(os.environ.get(SEED_ENV_VAR, "0"))
    by_group: dict[tuple, list[ConfigCase]] = {}
    for case in cases:
        by_group.setdefault((case.kernel, case.head_dim_class, case.dtype), []).append(case)
    chosen = []
    for group, members in by_group.items():
        spread = zlib.crc32(repr(group).encode())  # groups start at different members
        chosen.append(members[(seed + spread) % len(members)])
    return chosen


KERNELS = _kernels()
# imported through the kernels (above), so its interpreted/GPU mode is theirs
CONFIGS = sys.modules["convformer_fast.triton.configs"] if KERNELS else None
INTERPRETED = bool(KERNELS and KERNELS.INTERPRETED)
ALL_CASES = config_cases(KERNELS, INTERPRETED) if KERNELS else []
CASES = selected(ALL_CASES)


# ---------------------------------------------------------------------------------------
# Shapes built from a tile
# ---------------------------------------------------------------------------------------


def _over(tile: int) -> int:
    """One full tile plus one element."""
    return tile + 1


def _channels(*axes: tuple[int, int]) -> int:
    """The smallest C such that ``times * C`` is above ``block`` and not a multiple of it for
    each (times, block): a full and a partial block on every tiled channel axis."""
    c = 1
    while not all(times * c > block and (times * c) % block for times, block in axes):
        c += 1
    return c


def _smallest_factor(value: int) -> int:
    return next((p for p in range(2, int(math.isqrt(value)) + 1) if value % p == 0), 1)


def projection_shape(kernel: str, meta: dict, layout: str, rows: int):
    """(layout, N, S, F, heads, k) whose conv view has ``rows`` = N * L positions and channel
    counts giving a full and a partial block on each tiled channel axis of ``kernel``."""
    if kernel == "qkv_projection_grad_input_kernel":
        # programs tile the C input channels by BLOCK_N; the loop walks 3C by BLOCK_K
        c = _channels((1, meta["BLOCK_N"]), (3, meta["BLOCK_K"]))
    else:  # programs tile the 3C output channels by BLOCK_N; the loop walks C by BLOCK_K
        c = _channels((3, meta["BLOCK_N"]), (1, meta["BLOCK_K"]))
    n = _smallest_factor(rows)
    length = rows // n
    if layout == "spatial":  # C = F channels over L = S joints; heads split F
        return layout, n, length, c, _smallest_factor(c), 3
    return layout, n, c, length, _smallest_factor(length), 3  # C = S frames over L = F


# ---------------------------------------------------------------------------------------
# Running one forced configuration
# ---------------------------------------------------------------------------------------


def _randn(shape, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)


def _projection_inputs(shape, dtype):
    layout, n, s, f, heads, k = shape
    c = f if layout == "spatial" else s
    x = _randn((n, s, f), 1, dtype)
    weight = _randn((3 * c, c, k), 2, dtype) / math.sqrt(c * k)
    bias = _randn((3 * c,), 3, dtype)
    return x, weight, bias, heads, layout


def _launch_of(launches, kernel_name):
    """The launch of ``kernel_name`` among a plan's launches."""
    def name(launch):
        inner = launch.kernel
        while hasattr(inner, "configs"):  # the autotuner around the jit function
            inner = inner.fn
        return inner.fn.__name__

    [launch] = [launch for launch in launches if name(launch) == kernel_name]
    return launch


def _check_projection(case: ConfigCase, config, meta: dict):
    ops = tops()
    reference = OPS["qkv_projection"].reference
    forward_tol, grad_tol = TOL[case.dtype]
    dtype = DTYPES[case.dtype]
    layout = LAYOUT_OF[case.dtype]
    grad_weight = case.kernel == "qkv_projection_grad_weight_kernel"
    # the weight gradient in fp64 is also split into 4 row chunks: BLOCK_M, BLOCK_M, a few
    # rows, none
    splits = 4 if grad_weight and case.dtype == "fp64" else None
    rows = 2 * meta["BLOCK_M"] + 1 if splits else _over(meta["BLOCK_M"])
    while _smallest_factor(rows) == 1:  # a prime row count would make one head of > 256
        rows += 2
    shape = projection_shape(case.kernel, meta, layout, rows)
    x, weight, bias, heads, layout = _projection_inputs(shape, dtype)
    exact = [t.double().requires_grad_() for t in (x, weight, bias)]
    expected = reference(*exact, heads, layout)
    what = f"{case.id} on {shape}"
    if case.kernel == "qkv_projection_fwd_kernel":
        qkv, launches = ops.qkv_projection_plan(x, weight, bias, heads, layout)
        _launch_of(launches, case.kernel).run(config)
        assert_close(qkv, expected.detach().to(dtype), what, **forward_tol)
        return
    grad_qkv = _randn(expected.shape, 4, dtype)
    grads = torch.autograd.grad(expected, exact, grad_qkv.double())
    (grad_x, grad_w_parts, grad_b_parts), launches = ops.qkv_projection_backward_plan(
        grad_qkv, x, weight, heads, layout, splits=splits)
    _launch_of(launches, case.kernel).run(config)
    if grad_weight:
        assert grad_w_parts.shape[0] == (splits or grad_w_parts.shape[0])
        assert_close(grad_w_parts.sum(0).view(weight.shape).to(dtype), grads[1].to(dtype),
                     f"{what}: grad weight", **grad_tol)
        assert_close(grad_b_parts.sum(0).to(dtype), grads[2].to(dtype), f"{what}: grad bias", **grad_tol)
    else:
        assert_close(grad_x, grads[0].to(dtype), f"{what}: grad x", **grad_tol)


def attention_shapes(meta: dict, head_dim: int) -> list[tuple[int, int, int, int]]:
    """(N, h, S, d): packed heads of 17 tokens, max(1, BLOCK_M // 17) per program, with a
    partial last group; and one head of BLOCK_M + 1 tokens (a full and a one-row owned block,
    streamed in full and partial blocks)."""
    owned = meta.get("BLOCK_M", 16)
    per_group = max(1, owned // 17)
    return [(1, 2 * per_group + 1, 17, head_dim), (1, 1, _over(owned), head_dim)]


def _check_attention(case: ConfigCase, config, meta: dict):
    ops = tops()
    reference = OPS["attention"].reference
    forward_tol, grad_tol = TOL[case.dtype]
    dtype = DTYPES[case.dtype]
    for n, h, s, d in attention_shapes(meta, HEAD_DIM_OF[case.head_dim_class]):
        what = f"{case.id} on (N, h, S, d) = {(n, h, s, d)}"
        qkv = _randn((3, n, h, s, d), 5, dtype)
        exact = qkv.double().requires_grad_()
        out_ref, lse_ref = reference(exact)
        lse2_ref = lse_ref / math.log(2)  # the kernels keep base-2 log-sum-exps
        if case.kernel == "attention_fwd_kernel":
            (out, lse2), launches = ops.attention_plan(qkv)
            _launch_of(launches, case.kernel).run(config)
            assert_close(out, out_ref.detach().to(dtype), f"{what}: out", **forward_tol)
            assert_close(lse2.view(n, h, s), lse2_ref.detach().to(lse2.dtype), f"{what}: lse2",
                         **forward_tol)
            continue
        grad_out = _randn(out_ref.shape, 6, dtype)
        (grad_ref,) = torch.autograd.grad(out_ref, exact, grad_out.double())
        grad_qkv, launches = ops.attention_backward_plan(
            grad_out, qkv, out_ref.detach().to(dtype), lse2_ref.detach().to(
                torch.float64 if dtype == torch.float64 else torch.float32))
        # The preprocess kernel always runs (dK, dV and dQ read its row terms); the kernel
        # under test gets the configuration, and only what it writes is compared.
        written = {"attention_bwd_dkdv_kernel": slice(1, 3), "attention_bwd_dq_kernel": slice(0, 1),
                   "attention_bwd_preprocess_kernel": slice(0, 3)}[case.kernel]
        for kernel in ATTENTION_KERNELS[1:]:
            forced = kernel == case.kernel
            if forced or kernel == "attention_bwd_preprocess_kernel" or written == slice(0, 3):
                _launch_of(launches, kernel).run(config if forced else None)
        assert_close(grad_qkv[written], grad_ref[written].to(dtype), f"{what}: grad qkv", **grad_tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forced_configuration_matches_reference(case: ConfigCase):
    allowed = {CONFIGS.config_name(c): c for path in case.paths for c in CONFIGS.gpu_configs(
        case.kernel, path, CONFIGS.HEAD_DIM_CLASSES.get(case.head_dim_class))}
    config = next(c for name, c in allowed.items()
                  if name == case.config_name or name.split(" ")[0] == case.config_name)
    meta = dict(case.meta)
    if case.kernel in GEMM_KERNELS:
        _check_projection(case, config, meta)
    else:
        _check_attention(case, config, meta)


def test_every_kernel_path_and_class_has_configurations():
    """The enumeration above reaches every autotuned kernel on every arithmetic path and
    head-dim class (a kernel added to AUTOTUNED without configurations would fail here)."""
    rows = pruned_configurations(KERNELS)
    seen = {(k, c, p) for k, c, p, _ in rows}
    for kernel in CONFIGS.AUTOTUNED:
        classes = CONFIGS.HEAD_DIM_CLASSES if kernel in ATTENTION_KERNELS else [None]
        for cls in classes:
            for path in CONFIGS.ARITHMETIC_PATHS:
                assert (kernel, cls, path) in seen, (kernel, cls, path)
    assert {c.kernel for c in ALL_CASES} == set(GEMM_KERNELS + ATTENTION_KERNELS)


@pytest.mark.parametrize("release", sorted(CONFIGS.SPILLS_BY_TRITON_RELEASE))
def test_each_triton_releases_spill_list_drops_allowed_shapes_and_leaves_some(release):
    """Every shape a release's spill list names is one the triton 3.8 pruning allows for that
    kernel, set and class (a renamed or mistyped entry would silently drop nothing), and
    what remains under that release is never empty (an autotuner with nothing left fails)."""
    for kernel, spills in CONFIGS.SPILLS_BY_TRITON_RELEASE[release].items():
        _, allowed_under_3_8 = CONFIGS._AUDITED_UNDER_TRITON_3_8[kernel]
        without = CONFIGS._without_spills(kernel, allowed_under_3_8, release)
        for (arithmetic_set, head_class), names in spills.items():
            path = "fp32" if arithmetic_set == "fp32" else "fp16/bf16"
            kwargs = {"BLOCK_D": CONFIGS.HEAD_DIM_CLASSES[head_class] if head_class else None}
            before = allowed_under_3_8(path, kwargs)
            assert names <= before, (release, kernel, arithmetic_set, head_class, names - before)
            assert without(path, kwargs) == before - names
        for path in CONFIGS.ARITHMETIC_PATHS:
            for block_d in (CONFIGS.HEAD_DIM_CLASSES.values() if kernel in ATTENTION_KERNELS else [None]):
                assert without(path, {"BLOCK_D": block_d}), (release, kernel, path, block_d)
