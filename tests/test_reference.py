"""The eager reference: paper parameter counts, shapes, eq. 6 semantics, bad input."""

from __future__ import annotations

import pytest
import torch

import convformer_fast as cf
from convformer_fast.reference import DMHCSA

# Paper Tables 3-5 (docs/ARCHITECTURE.md section 1): (T, d, B_sp, B_temp, kernels, params in M).
PAPER_PARAMS = [
    (9, 32, 2, 2, (7, 7, 7), 2.56), (9, 16, 2, 2, (7, 7, 7), 0.65), (9, 64, 2, 2, (7, 7, 7), 9.97),
    (9, 32, 2, 4, (7, 7, 7), 4.95), (9, 32, 4, 2, (7, 7, 7), 2.70), (9, 32, 2, 2, (3,), 2.44),
    (9, 32, 2, 2, (7,), 2.47), (9, 32, 2, 2, (9, 9, 9), 2.60), (9, 32, 2, 2, (3, 5, 7), 2.52),
    (27, 32, 2, 2, (7, 7, 7), 2.65), (81, 32, 2, 2, (7, 7, 7), 3.43),
    (143, 32, 2, 2, (7, 7, 7), 5.24), (243, 32, 2, 2, (7, 7, 7), 10.24),
]


@pytest.mark.parametrize("t,d,b_sp,b_temp,kernels,paper_m", PAPER_PARAMS)
def test_parameter_count_matches_paper(t, d, b_sp, b_temp, kernels, paper_m):
    with torch.device("meta"):  # counts only: no memory, no init time
        model = cf.ConvFormer(num_frames=t, embed_dim=d, spatial_depth=b_sp,
                              temporal_depth=b_temp, kernel_sizes=kernels)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    # The README states "all within 1.5 %".
    assert abs(count - paper_m) / paper_m < 0.015, f"{count:.3f} M vs paper {paper_m} M"


@pytest.mark.parametrize("name", sorted(cf.PRESETS))
def test_presets_build_and_run(name):
    with torch.device("meta"):
        model = cf.ConvFormer.from_preset(name)
        out = model.eval()(torch.empty(2, model.num_frames, model.num_joints, 2))
    assert out.shape == (2, 1, model.num_joints, 3)
    assert model.num_joints == (15 if name.startswith("humaneva") else 17)


def test_forward_shape_and_backward():
    model = cf.ConvFormer(num_frames=9, num_joints=17, embed_dim=8, num_heads=4)
    out = model(torch.randn(3, 9, 17, 2))
    assert out.shape == (3, 1, 17, 3)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dmhcsa_follows_equation_6():
    """Q = sum_i eta_i Conv_i(X): with theta strongly favouring one kernel, the layer equals
    single-kernel attention built from that kernel alone."""
    torch.manual_seed(0)
    layer = DMHCSA("temporal", num_tokens=5, num_features=12, kernel_sizes=(3, 5), num_heads=3).eval()
    single = DMHCSA("temporal", num_tokens=5, num_features=12, kernel_sizes=(5,), num_heads=3).eval()
    with torch.no_grad():
        layer.theta.copy_(torch.tensor([[-1e4, 0.0]] * 3))
        for many, one in zip(layer.conv_groups(), single.conv_groups()):
            one[0].load_state_dict(many[1].state_dict())
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(layer(x), single(x))


def test_aggregation_dropout_only_in_training():
    layer = DMHCSA("spatial", num_tokens=17, num_features=8, num_heads=2, agg_dropout=0.5)
    torch.manual_seed(0)
    masks = {tuple((layer.aggregation_weights() == 0).flatten().tolist()) for _ in range(20)}
    assert len(masks) > 1  # dropout draws different masks
    layer.eval()
    torch.testing.assert_close(layer.aggregation_weights(), torch.full((3, 3), 1 / 3))


GOOD = dict(num_frames=9, num_joints=17, embed_dim=8, num_heads=4)


@pytest.mark.parametrize("cls", [cf.ConvFormer, cf.ConvFormerFast])
@pytest.mark.parametrize("x,match", [
    (torch.randn(9, 17, 2), "rank 4"),
    (torch.randn(1, 9, 15, 2), "num_joints=17"),
    (torch.randn(1, 8, 17, 2), "num_frames=9"),
    (torch.randn(1, 9, 17, 3), "expected 2"),
    (torch.ones(1, 9, 17, 2, dtype=torch.long), "floating-point"),
])
def test_bad_input_names_argument(cls, x, match):
    model = cls(**GOOD)
    with pytest.raises(ValueError, match=match) as info:
        model(x)
    assert str(info.value).startswith("x:")


@pytest.mark.parametrize("cls", [cf.ConvFormer, cf.ConvFormerFast])
@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_sizes=(7, 4)), "kernel_sizes"),
    (dict(kernel_sizes=(0,)), "kernel_sizes"),
    (dict(kernel_sizes=(-3,)), "kernel_sizes"),
    (dict(kernel_sizes=()), "kernel_sizes"),
    (dict(embed_dim=6, num_heads=4), "num_heads"),
    (dict(num_joints=3, embed_dim=4, num_heads=8), "num_heads"),
    (dict(num_frames=0), "num_frames"),
    (dict(drop_path=1.5), "drop_path"),
])
def test_bad_config_names_argument(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**{**GOOD, **kwargs})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'h36m-1'.*h36m-243"):
        cf.ConvFormer.from_preset("h36m-1")
    with pytest.raises(ValueError, match="unknown preset"):
        cf.ConvFormerFast.from_preset("nope")


def test_layer_input_shape_checked():
    layer = DMHCSA("spatial", num_tokens=17, num_features=8, num_heads=2)
    with pytest.raises(ValueError, match=r"expected \(N, 17, 8\)"):
        layer(torch.randn(2, 15, 8))
