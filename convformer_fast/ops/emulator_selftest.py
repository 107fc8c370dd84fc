"""``convformer_fast_emulated::emulator_selftest`` (tests only): a tiny kernel with
switchable bugs that the CPU emulator of the CUDA kernels must catch
(csrc/emulated/selftest_kernel.h)."""

from __future__ import annotations

import torch

from .spec import EMULATED, EMULATED_NAMESPACE, OpSpec, Sample, inference_only, library_op

FAULTS = ("none", "missing_barrier", "off_by_one_tile", "divergent_barrier", "global_out_of_bounds")


def emulator_selftest(x: torch.Tensor, fault: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n,) float32 -> (out, sums): per tile of 32 elements, out = x + x rolled by one
    within the tile (through shared memory) and the tile's sum."""
    return library_op("emulator_selftest", EMULATED_NAMESPACE)(x, fault)


def reference(x, fault="none"):
    tiles = x.split(32)
    return torch.cat([tile + tile.roll(-1) for tile in tiles]), torch.stack([tile.sum() for tile in tiles])


def _fake(x, fault):
    return torch.empty_like(x), x.new_empty(((x.shape[0] + 31) // 32,))


SPEC = OpSpec(
    name="emulator_selftest",
    summary="test kernel of the CPU emulator with planted faults it must report",
    kernels={EMULATED: "csrc/emulated/emulator_selftest.cpp"},
    fake=_fake,
    autograd=inference_only(f"{EMULATED_NAMESPACE}::emulator_selftest"),
    flops=lambda call: 0,  # no multiply-adds
    reference=reference,
    samples=lambda dtype: [Sample((torch.randn(70), "none"), "70 elements")] if dtype == torch.float32 else [],
    tests=("tests/test_cuda_emulated.py",),
)

SPECS = (SPEC,)
