"""CUDA-graph capture of the fast model (``ConvFormerFast.cuda_graph``) and the bench's
``graph:<backend>`` variant.

The replay tests need a GPU and the CUDA build; they skip elsewhere and are written to run
on an H100 by benchmarks/gpu_check.sh. The argument checks run everywhere.
"""

from __future__ import annotations

import pytest
import torch

import convformer_fast as cf
from convformer_fast import ConvFormer, ConvFormerFast
from convformer_fast.cli.app import main as cli_main

HAS_CUDA = torch.cuda.is_available()
GRAPH_BACKENDS = ["cuda", "triton"]


def _usable_on_gpu(backend: str) -> bool:
    info = cf.available_backends()[backend]
    return HAS_CUDA and info.available and "cuda" in info.devices


def _tiny_model(backend="torch"):
    torch.manual_seed(0)
    eager = ConvFormer(num_frames=9, num_joints=17, embed_dim=16, num_heads=4).eval()
    return eager, ConvFormerFast.from_reference(eager, backend=backend)


# ---------------------------------------------------------------------------------------
# Bad input: everywhere
# ---------------------------------------------------------------------------------------


def test_training_mode_is_refused():
    _, fast = _tiny_model()
    with pytest.raises(ValueError, match=r"model: is in training mode.*model\.eval\(\)"):
        fast.train().cuda_graph(torch.randn(1, 9, 17, 2))


def test_cpu_input_is_refused_naming_the_argument():
    _, fast = _tiny_model()
    with pytest.raises(ValueError, match=r"example_input: is on cpu, expected a CUDA tensor"):
        fast.cuda_graph(torch.randn(1, 9, 17, 2))


@pytest.mark.parametrize("warmup", [0, -1, 1.5, True])
def test_bad_warmup_is_refused(warmup):
    _, fast = _tiny_model()
    with pytest.raises(ValueError, match=r"warmup: got"):
        fast.cuda_graph(torch.randn(1, 9, 17, 2), warmup=warmup)


def test_non_tensor_input_is_refused():
    _, fast = _tiny_model()
    with pytest.raises(ValueError, match=r"example_input: got list"):
        fast.cuda_graph([1.0])


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without a GPU")
def test_bench_graph_variant_needs_a_gpu(capsys):
    code = cli_main(["bench", "--preset", "h36m-9", "--backends", "graph:torch", "--repeats", "1"])
    assert code == 2
    assert "graph:torch" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Replay against eager: on a GPU
# ---------------------------------------------------------------------------------------


def _gpu_models(preset: str, backend: str, dtype=torch.float32):
    torch.manual_seed(0)
    eager = ConvFormer.from_preset(preset).eval().to("cuda", dtype)
    return eager, ConvFormerFast.from_reference(eager, backend=backend)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("preset,batch", [("h36m-9", 1), ("h36m-243", 1), ("h36m-81", 4)])
def test_replay_matches_eager_and_follows_new_inputs(backend, preset, batch, exact_fp32):
    if not _usable_on_gpu(backend):
        pytest.skip(f"needs a GPU and the {backend} backend")
    eager, fast = _gpu_models(preset, backend)
    shape = (batch, eager.num_frames, eager.num_joints, 2)
    x1, x2 = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
    graphed = fast.cuda_graph(x1)
    with torch.inference_mode():
        expected1, expected2 = eager(x1), eager(x2)
        direct2 = fast(x2)
    out1 = graphed(x1).clone()
    out2 = graphed(x2).clone()  # the same graph, a new input copied in
    torch.testing.assert_close(out1, expected1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out2, expected2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out2, direct2, rtol=1e-6, atol=1e-7)  # replay = the same kernels


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_replay_in_bfloat16_within_twice_eager_error(backend):
    if not _usable_on_gpu(backend):
        pytest.skip(f"needs a GPU and the {backend} backend")
    eager32, _ = _gpu_models("h36m-81", backend)
    eager16, fast16 = _gpu_models("h36m-81", backend, torch.bfloat16)
    x = torch.randn(2, 81, 17, 2, device="cuda")
    with torch.inference_mode():
        exact = eager32(x)
        eager_error = (eager16(x.bfloat16()).float() - exact).abs().max().item()
    replay = fast16.cuda_graph(x.bfloat16())(x.bfloat16()).float()
    assert (replay - exact).abs().max().item() <= 2 * eager_error + 1e-3


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_stale_weights_and_other_shapes_are_refused(backend):
    if not _usable_on_gpu(backend):
        pytest.skip(f"needs a GPU and the {backend} backend")
    _, fast = _gpu_models("h36m-9", backend)
    x = torch.randn(1, 9, 17, 2, device="cuda")
    graphed = fast.cuda_graph(x)
    with pytest.raises(ValueError, match=r"x: got \(2, 9, 17, 2\)"):
        graphed(torch.randn(2, 9, 17, 2, device="cuda"))
    with torch.no_grad():
        next(fast.parameters()).add_(1.0)  # an optimizer step would do the same
    with pytest.raises(RuntimeError, match=r"changed since the capture"):
        graphed(x)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_our_kernels_per_forward_match_the_launch_plans(backend):
    """torch.profiler's count of this package's kernels in one forward equals the estimate
    of convformer_fast.perf.launches (its 'ours' column in docs/gpu.md)."""
    if not _usable_on_gpu(backend):
        pytest.skip(f"needs a GPU and the {backend} backend")
    from torch.profiler import ProfilerActivity, profile

    from convformer_fast.perf.launches import count_launches

    _, fast = _gpu_models("h36m-9", backend)
    x = torch.randn(1, 9, 17, 2, device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            fast(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fast(x)
            torch.cuda.synchronize()
    ours = ("run_kernel_on_gpu",) if backend == "cuda" else ("qkv_projection_fwd_kernel", "attention_fwd_kernel")
    counted = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                  and any(name in e.name for name in ours))
    assert counted == count_launches("h36m-9", backend).ours
