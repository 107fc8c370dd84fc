"""The Triton kernels' autotune configurations, and which of them each kernel may pick.

On a GPU, an autotuner times the configurations its pruning allows for the arithmetic path
(fp16/bf16 tensor cores, TF32, exact fp32, fp64) and, for attention, the head-dim class;
under the interpreter each collapses to one small fixed configuration. :data:`AUTOTUNED`
and :func:`gpu_configs` name what a GPU may pick, so that tests can force and run each one
under the interpreter (tests/triton/test_triton_configs.py) and the kernel audit can compile
each one (docs/kernel-audit.md). Importing this module imports no kernel.
"""

from __future__ import annotations

import os
from typing import Callable

import triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: "first": each autotuner keeps only its first allowed configuration (no timing of the
#: others when a shape is first seen; for GPU test runs, which see many shapes once).
AUTOTUNE_ENV_VAR = "CONVFORMER_TRITON_AUTOTUNE"

# ----------------------------------------------------------------------------------------
# Autotune configurations. On a GPU: A100/H100 tile shapes keyed on the problem shape. Under
# the interpreter: one small fixed configuration (no benchmarking; every program runs in
# Python: per-op overhead favours few programs, per-element cost favours little padding;
# these sizes were the fastest on the test models) whose sizes the kernel tests then
# exercise with partial tiles, several blocks per loop and head packing. The GPU
# configurations are run under the interpreter too, forced one by one (AUTOTUNED below).
# ----------------------------------------------------------------------------------------


def _as_configs(shapes: list[dict]) -> list:
    return [triton.Config({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")},
                          num_warps=c["num_warps"], num_stages=c["num_stages"]) for c in shapes]


def _configs(gpu: list[dict], interpreted: dict) -> list:
    if INTERPRETED:
        return [triton.Config(interpreted, num_warps=4, num_stages=1)]
    return _as_configs(gpu)


def config_name(config) -> str:
    """'64x32x16 w4 s3': the tile (BLOCK_M x BLOCK_N [x BLOCK_K]), warps and stages."""
    tile = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in config.kwargs)
    return f"{tile} w{config.num_warps} s{config.num_stages}"


def arithmetic_path(dtype, allow_tf32: bool) -> str:
    """How tl.dot multiplies: 'fp16/bf16' and 'tf32' on tensor cores, 'fp32' (exact, the
    default) and 'fp64' on CUDA cores, where each thread holds more of the tiles."""
    name = str(dtype).replace("torch.", "")
    if name == "float64":
        return "fp64"
    if name == "float32":
        return "tf32" if allow_tf32 else "fp32"
    return "fp16/bf16"


def _pruned_to(allowed: Callable[[str, dict], set[str]], dtype_arg: str):
    """An ``early_config_prune`` keeping the shapes ``allowed(path, launch kwargs)`` names."""

    def prune(configs, named_args, **kwargs):
        path = arithmetic_path(named_args[dtype_arg].dtype, bool(kwargs.get("ALLOW_TF32")))
        names = allowed(path, kwargs)
        kept = [c for c in configs if config_name(c) in names]
        if not kept:
            raise RuntimeError(f"no autotune configuration for the {path} path with {kwargs}")
        if os.environ.get(AUTOTUNE_ENV_VAR, "") == "first":
            return kept[:1]  # one configuration: no benchmarking (test runs on a GPU)
        return kept

    return prune


# Which shapes each kernel may use on each arithmetic path: those `convformer-fast kernels`
# compiled for sm_80 and sm_90 at the paper's shapes (h36m, both layouts) without register
# spills and within both GPUs' shared memory (triton 3.8). The autotuners prune to them, so
# they cannot pick a shape that spills; tests/test_audit.py re-checks every one in CI.
# The exact-fp32 (FMA) path holds whole tiles per thread and wants a short BLOCK_K; the
# larger tensor-core tiles spill there. TF32 and fp64 use the tensor-core and the FMA
# sets (audited with --dtype tf32,fp64, not in CI).
_SETS_OF = {"tf32": "fp16/bf16", "fp64": "fp32"}
_GEMM_GPU = [
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=2, num_stages=3),  # small batches
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3),  # FMA path
    dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=3),
    dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=2, num_stages=3),
]
_GEMM_INTERPRETED = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
GEMM_CONFIGS = _configs(_GEMM_GPU, _GEMM_INTERPRETED)
_GEMM_ALL = {config_name(c) for c in _as_configs(_GEMM_GPU)}
_GEMM_FMA = {"64x64x16 w4 s3", "32x64x16 w4 s3", "64x32x16 w4 s3", "32x32x16 w2 s3"}
_GEMM_ALLOWED = {
    "fwd": {"fp16/bf16": _GEMM_ALL, "fp32": _GEMM_FMA},
    # 64x64x32 spills 8 B on sm_80 (temporal); at batch 64 (spatial), 32x32x16 w2 spills
    # 8-16 B on tensor cores and 64x64x16 4 B on sm_90's FMA path; the grad-weight GEMM keeps
    # a larger accumulator live and spills with most BLOCK_K = 32 tiles (64x128 everywhere).
    "grad_input": {"fp16/bf16": _GEMM_ALL - {"64x64x32 w4 s3", "32x32x16 w2 s3"},
                   "fp32": _GEMM_FMA - {"64x64x16 w4 s3"}},
    "grad_weight": {"fp16/bf16": {"128x64x32 w8 s3"} | _GEMM_FMA,
                    "fp32": _GEMM_FMA - {"64x64x16 w4 s3"}},
}


def _gemm_allowed(kernel: str):
    def allowed(path: str, kwargs: dict) -> set[str]:
        return _GEMM_ALLOWED[kernel][_SETS_OF.get(path, path)]
    return allowed


_ATTN_GPU = [
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    dict(BLOCK_M=32, BLOCK_N=32, num_warps=2, num_stages=2),
    dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
    dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=2),
    dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1),
    # The exact-fp32 shapes for d_head > 16: few tile elements per thread.
    dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2),
    dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
]
# BLOCK_M = 128 packs seven 17-token (eight 15-token) problems per program; BLOCK_N = 64
# streams those 119 rows as a full and a partial block.
_ATTN_INTERPRETED = dict(BLOCK_M=128, BLOCK_N=64)
ATTN_CONFIGS = _configs(_ATTN_GPU, _ATTN_INTERPRETED)
# Every attention kernel owns BLOCK_M rows (queries in the forward and dQ kernels, keys in
# the dK/dV kernel) and streams the other side in BLOCK_N blocks; the same shapes serve,
# each kernel pruned to its own set.
ATTN_BWD_CONFIGS = ATTN_CONFIGS
_ATTN_ALL = {config_name(c) for c in _as_configs(_ATTN_GPU)}
_ATTN_SMALL_FP32 = {"32x16 w8 s2", "16x16 w4 s1"}
# Per kernel, path and head-dim class: "narrow" is BLOCK_D <= 16 (the spatial blocks' d_head
# 4), "wide" anything larger (verified at BLOCK_D = 128, the temporal blocks' d_head 68;
# narrower heads need fewer registers). Above 128 (d_head > 128) the wide sets spill.
_ATTN_ALLOWED = {
    "fwd": {
        ("fp16/bf16", "narrow"): _ATTN_ALL,
        ("fp32", "narrow"): _ATTN_ALL - {"64x32 w4 s2", "32x32 w8 s2"},
        ("fp16/bf16", "wide"): _ATTN_ALL - {"128x64 w8 s3", "64x64 w4 s3"},
        ("fp32", "wide"): _ATTN_SMALL_FP32,
    },
    "dkdv": {
        ("fp16/bf16", "narrow"): _ATTN_ALL,
        ("fp32", "narrow"): _ATTN_ALL - {"128x64 w8 s3", "16x16 w1 s1", "64x64 w4 s3"},
        ("fp16/bf16", "wide"): {"32x16 w4 s2", "32x32 w8 s2"} | _ATTN_SMALL_FP32,
        ("fp32", "wide"): {"32x32 w8 s2"} | _ATTN_SMALL_FP32,
    },
    "dq": {
        ("fp16/bf16", "narrow"): _ATTN_ALL,
        ("fp32", "narrow"): _ATTN_ALL - {"128x64 w8 s3", "64x64 w4 s3"},
        ("fp16/bf16", "wide"): {"32x32 w8 s2", "64x32 w8 s2"} | _ATTN_SMALL_FP32,
        ("fp32", "wide"): {"32x32 w8 s2"} | _ATTN_SMALL_FP32,
    },
}


def _attention_allowed(kernel: str):
    def allowed(path: str, kwargs: dict) -> set[str]:
        return _ATTN_ALLOWED[kernel][(_SETS_OF.get(path, path), _head_dim_class(kwargs["BLOCK_D"]))]
    return allowed


def _head_dim_class(block_d: int) -> str:
    return "narrow" if block_d <= 16 else "wide"


# The sets above hold under triton 3.8. Each Triton release generates its own PTX (and 3.6
# bundles an older ptxas), so registers run out elsewhere: these shapes spill under the release named
# (`convformer-fast kernels --quick` in tools/compat.sh's venvs, 2026-12-05: 4 to 536 bytes,
# on sm_80 or sm_90 or both) and are dropped there, on both GPUs. Keyed by kernel, then
# (arithmetic set, head-dim class; None for the GEMMs). A release not listed uses the sets
# as they are; the audit in CI (tests/test_audit.py) and tools/compat.sh say whether it may.
SPILLS_BY_TRITON_RELEASE: dict[str, dict[str, dict[tuple[str, str | None], set[str]]]] = {
    "3.6": {  # the GPU machines' Triton
        "qkv_projection_fwd_kernel": {("fp32", None): {"64x32x16 w4 s3"}},
        "qkv_projection_grad_input_kernel": {("fp16/bf16", None): {"64x128x32 w4 s3"},
                                             ("fp32", None): {"32x64x16 w4 s3"}},
        "attention_fwd_kernel": {("fp16/bf16", "wide"): {"64x32 w4 s2", "32x32 w2 s2", "16x16 w1 s1"},
                                 ("fp32", "wide"): {"16x16 w4 s1"}},
        "attention_bwd_dkdv_kernel": {("fp16/bf16", "narrow"): {"128x64 w8 s3", "64x64 w4 s3"},
                                      ("fp16/bf16", "wide"): {"32x16 w4 s2"},
                                      ("fp32", "wide"): {"32x32 w8 s2"}},
        "attention_bwd_dq_kernel": {("fp32", "wide"): {"32x32 w8 s2"}},
    },
    "3.9": {  # torch 2.15's
        "qkv_projection_grad_input_kernel": {("fp32", None): {"32x64x16 w4 s3", "32x32x16 w2 s3"}},
        "attention_fwd_kernel": {("fp16/bf16", "wide"): {"64x32 w4 s2", "32x32 w2 s2"}},
        "attention_bwd_dkdv_kernel": {("fp16/bf16", "narrow"): {"16x16 w1 s1"},
                                      ("fp32", "narrow"): {"64x32 w4 s2", "32x32 w2 s2"},
                                      ("fp16/bf16", "wide"): {"16x16 w4 s1", "32x16 w4 s2"},
                                      ("fp32", "wide"): {"16x16 w4 s1"}},
        "attention_bwd_dq_kernel": {("fp16/bf16", "narrow"): {"128x64 w8 s3", "64x32 w8 s2", "32x32 w8 s2"}},
    },
}
TRITON_RELEASE = ".".join(triton.__version__.split(".")[:2])


def _without_spills(kernel: str, allowed: Callable[[str, dict], set[str]], release: str = TRITON_RELEASE):
    """``allowed`` less the shapes that spill under Triton ``release``."""
    spills = SPILLS_BY_TRITON_RELEASE.get(release, {}).get(kernel, {})

    def allowed_here(path: str, kwargs: dict) -> set[str]:
        head_class = _head_dim_class(kwargs["BLOCK_D"]) if kernel.startswith("attention") else None
        return allowed(path, kwargs) - spills.get((_SETS_OF.get(path, path), head_class), set())
    return allowed_here


def preprocess_block_rows(block_d: int, interpreted: bool = INTERPRETED) -> int:
    """Rows per program of attention_bwd_preprocess_kernel: 4096-element tiles on a GPU
    (no spills up to BLOCK_D 256 with 4 warps), large tiles under the interpreter."""
    return 512 if interpreted else max(16, 4096 // block_d)


# Every autotuned kernel's GPU configurations and what its pruning keeps, in one table that
# holds whatever mode the kernels run in: the autotuners below prune with it on a GPU, and
# the tests force each configuration it names under the interpreter
# (tests/triton/test_triton_configs.py), where the autotuners hold one fixed configuration.
_AUDITED_UNDER_TRITON_3_8 = {
    "qkv_projection_fwd_kernel": (_GEMM_GPU, _gemm_allowed("fwd")),
    "qkv_projection_grad_input_kernel": (_GEMM_GPU, _gemm_allowed("grad_input")),
    "qkv_projection_grad_weight_kernel": (_GEMM_GPU, _gemm_allowed("grad_weight")),
    "attention_fwd_kernel": (_ATTN_GPU, _attention_allowed("fwd")),
    "attention_bwd_dkdv_kernel": (_ATTN_GPU, _attention_allowed("dkdv")),
    "attention_bwd_dq_kernel": (_ATTN_GPU, _attention_allowed("dq")),
}
AUTOTUNED: dict[str, tuple[list[dict], Callable[[str, dict], set[str]]]] = {
    kernel: (shapes, _without_spills(kernel, allowed))
    for kernel, (shapes, allowed) in _AUDITED_UNDER_TRITON_3_8.items()}
ARITHMETIC_PATHS = ("fp16/bf16", "tf32", "fp32", "fp64")
#: A BLOCK_D of each head-dim class of the attention kernels' pruning (<= 16, above 16).
HEAD_DIM_CLASSES = {"narrow": 16, "wide": 128}


def pruning(kernel_name: str, dtype_arg: str) -> dict:
    """``prune_configs_by`` of an autotuned kernel: keep what :data:`AUTOTUNED` allows."""
    return dict(early_config_prune=_pruned_to(AUTOTUNED[kernel_name][1], dtype_arg))


def gpu_configs(kernel_name: str, path: str, block_d: int | None = None) -> list:
    """The configurations a GPU's pruned autotuner may pick for ``kernel_name`` on arithmetic
    ``path`` (:func:`arithmetic_path`) and, for attention, head dim padded to ``block_d``;
    for the attention backward's preprocess kernel (not autotuned) its fixed GPU tile."""
    if kernel_name == "attention_bwd_preprocess_kernel":
        return [triton.Config({"BLOCK_M": preprocess_block_rows(block_d, interpreted=False)},
                              num_warps=4, num_stages=1)]
    shapes, allowed = AUTOTUNED[kernel_name]
    names = allowed(path, {"BLOCK_D": block_d})
    return [c for c in _as_configs(shapes) if config_name(c) in names]
