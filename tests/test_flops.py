"""FLOP counting (fvcore and torch.utils.flop_counter fed by one registry), paper Table 5,
the `flops` command, and the memory-traffic / roofline estimate."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils import flop_counter

import convformer_fast as cf
from convformer_fast.cli import app as cli
from convformer_fast.perf import flops, roofline
from convformer_fast.presets import preset_config

needs_ext = pytest.mark.skipif(not cf.extension_loaded(), reason="convformer_fast._C not built")
# fvcore is in requirements.txt, but the GPU machines (and a user's torch-only install) lack
# it: there the fvcore counts skip and the torch.utils.flop_counter tests still run.
needs_fvcore = pytest.mark.skipif(importlib.util.find_spec("fvcore") is None, reason="needs fvcore")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Counting does not depend on threads, and on a shared 2-core machine two OpenMP
    # threads wait on each other at every op (seconds per forward instead of tens of ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _qkv_macs_per_kernel(config: dict, batch: int) -> list[tuple[int, int]]:
    """Per DMHCSA layer, (sum over Q/K/V filters of N*3C*C*k*length / k, k_max): what the
    eager model and the folded model multiply-add, derived from the config alone."""
    t, j, d = config["num_frames"], config["num_joints"], config["embed_dim"]
    layers = [(batch * t, d, j)] * config["spatial_depth"] + [(batch, t, j * d)] * config["temporal_depth"]
    return [(n * 3 * c * c * length, max(config["kernel_sizes"])) for n, c, length in layers]


@pytest.fixture(scope="module")
def eager_reports():
    """count_flops of the eager model for every T of paper Table 5 (batch 1)."""
    reports = {}
    for t in flops.PAPER_TABLE5:
        model = cf.ConvFormer.from_preset(f"h36m-{t}").eval()
        reports[t] = flops.count_flops(model, flops.model_inputs(model))
    return reports


def test_every_namespace_op_has_a_formula():
    # A new convformer_fast op declares its formula in its OpSpec (convformer_fast/ops/<op>.py).
    if cf.available_backends()["triton"].available:  # its ops are defined on first use
        from convformer_fast import triton as triton_backend

        triton_backend.load_ops()
        assert "convformer_fast::triton_attention" in flops.namespace_ops()
    if cf.extension_loaded():
        assert "convformer_fast::qkv_projection" in flops.namespace_ops()
    assert flops.ops_without_formula() == []


def test_registry_formulas_are_registered_with_torch():
    flops.register_flop_formulas()
    for name in flops.FLOP_FORMULAS:
        packet = flops._op_packet(name)
        if packet is not None:
            assert packet in flop_counter.flop_registry, name


@needs_fvcore
@pytest.mark.parametrize("t", sorted(flops.PAPER_TABLE5))
def test_eager_model_reproduces_paper_table5(eager_reports, t):
    paper_params_m, paper_flops_m = flops.PAPER_TABLE5[t]
    report = eager_reports[t]
    assert report.unsupported == {}
    assert abs(report.total / 1e6 / paper_flops_m - 1) < 0.07, (t, report.total)  # README: "within 7 %"
    assert abs(report.params / 1e6 / paper_params_m - 1) < 0.015, (t, report.params)


@needs_fvcore
def test_fast_model_counts_the_folded_conv_at_t243(eager_reports):
    eager = eager_reports[243]
    fast = cf.ConvFormerFast.from_preset("h36m-243", backend="torch").eval()
    report = flops.count_flops(fast, flops.model_inputs(fast))
    # docs/ARCHITECTURE.md section 2: about 5.3 G multiply-adds eager, 2.3 G folded.
    assert 5.2e9 < eager.macs < 5.45e9
    assert 2.2e9 < report.macs < 2.4e9
    expected_saving = sum(macs * (sum(preset_config("h36m-243")["kernel_sizes"]) - k)
                          for macs, k in _qkv_macs_per_kernel(preset_config("h36m-243"), 1))
    assert eager.macs - report.macs == expected_saving


@needs_fvcore
def test_fvcore_and_flop_counter_agree_and_fold_saving_is_exact(fast_backend):
    backend = fast_backend
    # Small (the triton backend runs in its interpreter here), odd sizes, mixed kernels.
    config = {**preset_config("h36m-9"), "num_frames": 7, "num_joints": 5, "embed_dim": 8,
              "num_heads": 2, "kernel_sizes": (3, 5, 7)}
    batch = 2
    torch.manual_seed(0)
    eager = cf.ConvFormer(**config).eval()
    fast = cf.ConvFormerFast.from_reference(eager, backend=backend)
    x = flops.model_inputs(eager, batch)
    e, f = flops.count_flops(eager, x), flops.count_flops(fast, x)
    assert e.unsupported == {} and f.unsupported == {}
    assert sum(f.by_op.values()) == f.total and e.macs * 2 == e.total
    with torch.no_grad():
        assert flops.flop_counter_flops(lambda: eager(x)).total == e.total
        counted = flops.flop_counter_flops(lambda: fast(x))
    assert counted.uncounted == [] and counted.total == f.total
    # Only the Q/K/V convolutions differ: every filter vs one folded filter of size k_max.
    saving = sum(macs * (3 + 5 + 7 - k) for macs, k in _qkv_macs_per_kernel(config, batch))
    assert e.total - f.total == 2 * saving


@needs_ext
@pytest.mark.parametrize("layout", ["spatial", "temporal"])
def test_qkv_projection_formula_matches_torch_conv_formula(layout):
    n, s, f, h, k = 3, 7, 12, 2, 5
    c = f if layout == "spatial" else s
    x = torch.randn(n, s, f, requires_grad=True)
    weight = torch.randn(3 * c, c, k, requires_grad=True)
    bias = torch.randn(3 * c, requires_grad=True)
    ours = flops.flop_counter_flops(lambda: cf.ops.qkv_projection(x, weight, bias, h, layout).sum().backward())
    conv_in = x.transpose(1, 2) if layout == "spatial" else x
    theirs = flops.flop_counter_flops(lambda: F.conv1d(conv_in, weight, bias, padding=k // 2).sum().backward())
    assert ours.by_op["convformer_fast.qkv_projection"] == theirs.by_op["aten.convolution"] > 0
    assert ours.by_op["convformer_fast.qkv_projection_backward"] == theirs.by_op["aten.convolution_backward"]


def test_attention_formulas_match_torch_sdpa_formulas():
    n, h, s, d = 2, 3, 11, 4
    q, k, v = (torch.randn(n, h, s, d, requires_grad=True) for _ in range(3))
    expected = flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape)
    expected_bwd = flop_counter.sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape)
    counted = flops.flop_counter_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert counted.total == expected + expected_bwd  # the aten CPU kernels of SDPA
    if hasattr(torch.ops.convformer_fast, "attention"):
        qkv = torch.stack([q, k, v]).detach().requires_grad_()
        fused = flops.flop_counter_flops(
            lambda: torch.ops.convformer_fast.attention(qkv)[0].sum().backward())
        assert fused.by_op["convformer_fast.attention"] == expected
        assert fused.by_op["convformer_fast.attention_backward"] == expected_bwd


@needs_fvcore
def test_count_flops_reports_what_it_cannot_count():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 4)

        def forward(self, x):
            return torch.cumsum(F.gelu(self.linear(x)), dim=0)

    report = cf.count_flops(Odd(), torch.randn(5, 6))
    assert report.total == 2 * 5 * 6 * 4 and report.by_op == {"linear": 2 * 5 * 6 * 4}
    assert report.params == 6 * 4 + 4
    assert report.unsupported == {"aten::cumsum": 1}
    assert report.ignored == {"aten::gelu": 1}


def test_traffic_mode_counts_bytes_and_flops_of_each_op():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    kernels = roofline.measure_traffic(lambda: (a @ b).t().contiguous() + 1.0)
    names = [k.name for k in kernels]
    assert "aten::t" not in names  # views move no data
    mm = kernels[names.index("aten::mm")]
    assert (mm.flops, mm.bytes_read, mm.bytes_written) == (2 * 64 * 32 * 16, 4 * (64 * 32 + 32 * 16), 4 * 64 * 16)
    add = kernels[names.index("aten::add")]
    assert (add.flops, add.bytes_read, add.bytes_written) == (0, 4 * 64 * 16, 4 * 64 * 16)


def test_roofline_takes_the_slower_of_compute_and_memory():
    spec = roofline.GPU_SPECS["H100"]
    peak, bandwidth = spec.peak_flops[torch.float32], spec.bandwidth
    kernels = [roofline.KernelTraffic("compute", int(peak), 1, 0),          # 1 s of compute
               roofline.KernelTraffic("memory", 0, int(2 * bandwidth), 0)]  # 2 s of traffic
    estimate = roofline.roofline(kernels, "H100", torch.float32)
    assert estimate.time_s == pytest.approx(3.0)
    assert estimate.compute_bound_kernels == 1
    assert estimate.time_with_launch_s == pytest.approx(3.0 + 2 * roofline.LAUNCH_LATENCY_S)


@needs_fvcore
def test_fused_design_does_the_fast_models_flops_with_less_traffic():
    streams = roofline.model_traffic("h36m-9", batch=2)
    eager, torch_ops, fused = streams.values()
    fast = cf.ConvFormerFast.from_preset("h36m-9", backend="torch").eval()
    expected = flops.count_flops(fast, flops.model_inputs(fast, 2)).total
    assert sum(k.flops for k in fused) == sum(k.flops for k in torch_ops) == expected
    assert sum(k.bytes for k in fused) < sum(k.bytes for k in torch_ops) < sum(k.bytes for k in eager)
    assert len(fused) == 2 + 2 * 4  # embed, head, two kernels per block


@needs_fvcore
def test_flops_command_json_and_table5(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(flops, "PAPER_TABLE5", {t: flops.PAPER_TABLE5[t] for t in (9, 27)})
    path = tmp_path / "flops.json"
    assert cli.main(["flops", "--preset", "h36m-9", "--backend", "torch", "--table5",
                     "--roofline", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Paper Table 5" in text and "ESTIMATE, not a measurement" in text
    data = json.loads(path.read_text())
    model = cf.ConvFormer.from_preset("h36m-9").eval()
    assert data["presets"]["h36m-9"]["eager"]["total"] == flops.count_flops(model, flops.model_inputs(model)).total
    assert [row["frames"] for row in data["table5"]] == [9, 27]
    assert data["presets"]["h36m-9"]["flop_counter"]["fast"] == data["presets"]["h36m-9"]["fast"]["total"]


@pytest.mark.parametrize("argv, listed", [
    (["--preset", "h36m-10"], "h36m-243"),
    (["--backend", "nope"], "eager"),
    (["--dtype", "int8"], "bfloat16"),
    (["--gpu", "V100"], "H100"),
])
def test_flops_command_bad_input_is_one_line_and_exit_code_2(capsys, argv, listed):
    assert cli.main(["flops", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "available:" in err and listed in err


def test_flops_command_without_fvcore_is_one_line_and_exit_code_2(capsys, monkeypatch):
    # As on the GPU machines: fvcore cannot be imported (None in sys.modules blocks it).
    monkeypatch.setitem(__import__("sys").modules, "fvcore", None)
    assert not flops.fvcore_installed()
    assert cli.main(["flops", "--preset", "h36m-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install fvcore" in err
    model = cf.ConvFormer.from_preset("h36m-9").eval()
    with pytest.raises(ImportError, match="pip install fvcore"):
        flops.count_flops(model, flops.model_inputs(model))
