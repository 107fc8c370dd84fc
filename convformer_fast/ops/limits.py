"""Limits that the C++/CUDA code owns, read back from the library (``csrc/kernel_limits.h``
through the op ``convformer_fast::kernel_limits``), never copied into Python.

Read once, on first use, into a plain dict (so that torch.compile traces a lookup, not a
library call); each function raises RuntimeError naming the reason when ``_C`` is not loaded.
"""

from __future__ import annotations

import torch

from .spec import CPU, NAMESPACE, OpSpec, library_op

_read: dict[str, tuple[int, ...]] = {}


def kernel_limits(name: str) -> tuple[int, ...]:
    """One named limit of ``csrc/kernel_limits.h`` as the library reports it."""
    value = _read.get(name)
    if value is None:
        value = _read[name] = tuple(library_op("kernel_limits", NAMESPACE)(name))
    return value


LIMIT_NAMES = ("spatial_head_dim_buckets", "spatial_head_dim_buckets_float64", "attention_head_dim_buckets",
               "shared_memory_per_block_optin", "emulated_shared_memory_per_block", "winograd_max_points")


def read_all() -> None:
    """Read every limit now (the registry does once the library is loaded)."""
    for name in LIMIT_NAMES:
        kernel_limits(name)


def spatial_head_dim_buckets(dtype: torch.dtype) -> tuple[int, ...]:
    """Head-dim register buckets of the CUDA spatial block kernel (fp64 has fewer)."""
    return kernel_limits("spatial_head_dim_buckets_float64" if dtype == torch.float64
                         else "spatial_head_dim_buckets")


def attention_head_dim_buckets(dtype: torch.dtype | None = None) -> tuple[int, ...]:
    """Head-dim register buckets of the CUDA attention kernel (the same for every dtype)."""
    return kernel_limits("attention_head_dim_buckets")


def spatial_max_head_dim(dtype: torch.dtype) -> int:
    return spatial_head_dim_buckets(dtype)[-1]


def attention_max_head_dim(dtype: torch.dtype | None = None) -> int:
    return attention_head_dim_buckets(dtype)[-1]


def shared_memory_per_block_optin() -> dict[int, int]:
    """Compute capability x 10 -> bytes of shared memory one block may use, per GPU the
    CUDA kernels are built for."""
    flat = kernel_limits("shared_memory_per_block_optin")
    return dict(zip(flat[::2], flat[1::2]))


def emulated_shared_memory_per_block() -> int:
    """What the CPU emulator lets one block use: the smallest of the targets'."""
    return kernel_limits("emulated_shared_memory_per_block")[0]


def winograd_max_points() -> int:
    """Largest alpha = m + k - 1 of the cpu backend's Winograd F(m, k)."""
    return kernel_limits("winograd_max_points")[0]


SPEC = OpSpec(
    name="kernel_limits",
    summary="name -> int[]: a limit of our kernels (csrc/kernel_limits.h), read by this module",
    kernels={CPU: "csrc/kernel_limits.cpp"},
    fake=None,
    note="no tensors: one CompositeExplicitAutograd kernel serves every device; "
         "tests/test_ops.py checks the values the backends and the audit rely on",
)

SPECS = (SPEC,)
