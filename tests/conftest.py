"""Shared test helpers: configurations that hit edges, tolerances per dtype, comparisons."""

from __future__ import annotations

import os
import threading

import pytest
import torch
import torch.nn.functional as F

# Without a GPU the Triton kernels run through the interpreter, which triton reads when a
# kernel is defined: set it before anything imports convformer_fast.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import convformer_fast as cf

# Tolerances (rtol, atol) of a fast backend against eager, per dtype and kind.
FORWARD_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}
GRAD_TOL = {torch.float32: (1e-3, 1e-4), torch.float64: (1e-8, 1e-10)}

# Small model configurations chosen to hit edges: odd T, J = 15 and 17, one kernel, mixed
# kernel sizes, one head, kernels longer than the axis they slide over.
MODEL_CONFIGS = {
    "t9_j17_k777": dict(num_frames=9, num_joints=17, embed_dim=16, kernel_sizes=(7, 7, 7), num_heads=8),
    "t7_j15_mixed": dict(num_frames=7, num_joints=15, embed_dim=8, kernel_sizes=(3, 5, 9), num_heads=4),
    "t5_j17_single": dict(num_frames=5, num_joints=17, embed_dim=8, kernel_sizes=(3,), num_heads=2),
    "t3_j5_onehead": dict(num_frames=3, num_joints=5, embed_dim=4, kernel_sizes=(11, 1), num_heads=1,
                          spatial_depth=1, temporal_depth=3),
    # >= ops.WINOGRAD_MIN_CHANNELS (64) frames: the cpu backend computes the temporal
    # projection with Winograd F(4, 7).
    "t129_j3_winograd": dict(num_frames=129, num_joints=3, embed_dim=4, kernel_sizes=(3, 7), num_heads=2,
                            spatial_depth=1, temporal_depth=1),
}

FAST_BACKENDS = [name for name, info in cf.available_backends().items()
                 if info.available and name != "eager" and "cpu" in info.devices]


def assert_close(actual, expected, tol, what=""):
    rtol, atol = tol
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
    return request.param


def reference_qkv(x, weight, bias, num_heads, layout):
    """The folded projection through F.conv1d, split into heads: (3, N, h, S, F/h).

    The oracle of every backend's qkv projection (written out here, independent of the
    package's own head-split helper)."""
    n, s, f = x.shape
    pad = weight.shape[-1] // 2
    if layout == "spatial":
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=pad)  # (N, 3F, S)
        return y.view(n, 3, num_heads, f // num_heads, s).permute(1, 0, 2, 4, 3)
    y = F.conv1d(x, weight, bias, padding=pad)  # (N, 3S, F)
    return y.view(n, 3, s, num_heads, f // num_heads).permute(1, 0, 3, 2, 4)


def run_concurrently(worker, count: int) -> None:
    """Run ``worker`` on ``count`` threads at once and wait for all of them."""
    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
