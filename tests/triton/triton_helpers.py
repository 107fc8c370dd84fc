"""Shared helpers of the Triton backend tests (tests/triton/).

This is deliberately not a ``conftest.py``: the suite runs in pytest's default "prepend"
import mode, where a second ``conftest.py`` (in a folder without ``__init__.py``) replaces
``sys.modules["conftest"]`` and breaks ``from conftest import ...`` in tests/test_*.py.
``TRITON_INTERPRET=1`` is set where no GPU exists by tests/conftest.py, before anything can
define a Triton kernel; :func:`ensure_interpreter_when_no_gpu` repeats that (idempotently)
for runs that somehow bypass it.
"""

from __future__ import annotations

import math
import os

import pytest
import torch


def ensure_interpreter_when_no_gpu() -> None:
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


ensure_interpreter_when_no_gpu()

from convformer_fast import triton as triton_backend  # noqa: E402
from conftest import reference_qkv  # noqa: E402,F401  (the one oracle, re-exported)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
UNAVAILABLE = triton_backend.unavailable_reason()

requires_triton = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
interpreter_only = pytest.mark.skipif(not triton_backend.interpreted(),
                                      reason="only meaningful under TRITON_INTERPRET=1")

# fp32 tolerances of issue 4 (forward; gradients).
FWD_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-3, atol=1e-4)
FP64_TOL = dict(rtol=1e-10, atol=1e-12)


def tops():
    """The Triton ops module (defines the kernels on first use)."""
    return triton_backend.load_ops()


def reference_attention(qkv):
    """Explicit softmax attention per head, heads merged: (3, N, h, S, d) -> (N, S, h*d)."""
    q, k, v = qkv.unbind(0)
    n, h, s, d = q.shape
    out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1) @ v
    return out.transpose(1, 2).reshape(n, s, h * d)


def projection_args(layout, n, s, f, heads, k, dtype=torch.float32, seed=0, requires_grad=True):
    c = f if layout == "spatial" else s
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, s, f, generator=gen, dtype=torch.float64)
    weight = torch.randn(3 * c, c, k, generator=gen, dtype=torch.float64) / math.sqrt(c * k)
    bias = torch.randn(3 * c, generator=gen, dtype=torch.float64)
    return [t.to(DEVICE, dtype).requires_grad_(requires_grad) for t in (x, weight, bias)]


def qkv_args(n, h, s, d, dtype=torch.float32, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(3, n, h, s, d, generator=gen, dtype=torch.float64)
    return qkv.to(DEVICE, dtype).requires_grad_(requires_grad)


def assert_close(actual, expected, what, **tol):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")
