"""Kernel launches of one forward per backend (convformer_fast.perf.launches): the counts
docs/gpu.md tabulates, from the op stream and the launch plans."""

from __future__ import annotations

import pytest
import torch

import convformer_fast as cf
from convformer_fast.perf import launches
from convformer_fast.presets import preset_config

PRESET = "h36m-9"
CONFIG = preset_config(PRESET)
LAYERS = CONFIG["spatial_depth"] + CONFIG["temporal_depth"]


def _available(backend: str) -> bool:
    name = launches.RECORDED_AS.get(backend, backend) if not torch.cuda.is_available() else backend
    return cf.available_backends()[name].available


@pytest.fixture(scope="module")
def counts():
    return {b: launches.count_launches(PRESET, b) for b in launches.BACKENDS if _available(b)}


def test_triton_forward_launches_its_plans_two_kernels_per_layer(counts):
    if "triton" not in counts:
        pytest.skip("triton backend unavailable")
    count = counts["triton"]
    assert not count.error, count.error
    by_op = count.by_op()
    # the projection and the attention plan one launch each, per layer
    assert by_op["triton_qkv_projection"] == LAYERS and by_op["triton_attention"] == LAYERS
    assert count.ours == 2 * LAYERS


def test_cuda_forward_fuses_each_spatial_half_into_one_kernel(counts):
    if "cuda" not in counts:
        pytest.skip("cuda kernels unavailable")
    count = counts["cuda"]
    assert not count.error, count.error
    by_op = count.by_op()
    assert by_op["spatial_attention_residual"] == CONFIG["spatial_depth"]
    assert by_op["attention"] == CONFIG["temporal_depth"]
    # spatial halves: 1 fused kernel; temporal: cuDNN conv (not ours) + our attention
    assert count.ours == CONFIG["spatial_depth"] + CONFIG["temporal_depth"]
    assert count.total < counts["torch"].total < counts["eager"].total


def test_views_and_allocations_launch_nothing_and_convolutions_two():
    aten = torch.ops.aten
    assert launches.op_launches(aten.view.default, ()) is None
    assert launches.op_launches(aten.empty.memory_format, ()) is None
    assert launches.op_launches(aten.conv1d.default, ()).launches == 2
    assert launches.op_launches(aten.gelu.default, ()).launches == 1


def test_markdown_table_has_a_row_per_preset(counts):
    table = launches.format_markdown(list(counts.values()))
    assert table.splitlines()[2].startswith(f"| {PRESET} |")
    assert f"{counts['torch'].total} (0)" in table
