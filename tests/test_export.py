"""The frozen model, its ONNX export (run in ONNX Runtime and OpenVINO) and its AOTInductor
package, against the eager model; the export command's bad input.

CI cost (2 cores): about 1.5 min, most of it ONNX exports (~3 s each) and one AOTInductor
compile (~20 s).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch

import convformer_fast as cf
from convformer_fast.cli import app as cli
from convformer_fast import export as E
from convformer_fast.pose.checkpoint import save_checkpoint

from conftest import FORWARD_TOL, MODEL_CONFIGS, assert_close
from test_fast import make_input, randomize

CPU_AVAILABLE = cf.available_backends()["cpu"].available
FREEZABLE = ["torch"] + (["cpu"] if CPU_AVAILABLE else [])
TOL = FORWARD_TOL[torch.float32]
# ONNX: two presets (J = 17 and J = 15) and the odd configurations an exporter could trip
# on (J = 15, odd T and mixed kernel sizes; one head and kernels longer than the axis).
ONNX_CONFIGS = {"h36m-9": cf.PRESETS["h36m-9"], "humaneva-27": cf.PRESETS["humaneva-27"],
                **{name: MODEL_CONFIGS[name] for name in ("t7_j15_mixed", "t3_j5_onehead")}}


def eager_model(config: dict) -> cf.ConvFormer:
    torch.manual_seed(0)
    return randomize(cf.ConvFormer(**config)).eval()


def onnx_runtime(path: str):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {E.INPUT_NAME: x.numpy()})[0])


def openvino(path: str):
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    return lambda x: torch.from_numpy(np.array(compiled(x.numpy())[0]))


# ------------------------------------------------------------------------------- freeze


@pytest.mark.parametrize("backend", FREEZABLE)
@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=str)
def test_frozen_model_matches_eager(config, backend):
    model = eager_model(MODEL_CONFIGS[config])
    frozen = E.freeze(model, backend=backend)
    assert list(frozen.parameters()) == [] and not frozen.training
    for batch in (1, 3):
        x = make_input(model, batch)
        with torch.no_grad():
            assert_close(frozen(x), model(x), TOL, f"frozen [{backend}] {config} batch {batch}")


def test_frozen_weights_are_constants_not_views_of_the_model():
    model = eager_model(MODEL_CONFIGS["t7_j15_mixed"])
    frozen = cf.ConvFormerFast.from_reference(model, backend="torch").eval().freeze()
    x = make_input(model)
    with torch.no_grad():
        before = frozen(x)
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(frozen(x), before)


def test_frozen_torch_model_is_one_standard_conv_per_layer():
    """What exporters see: aten ops only, one convolution per DMHCSA layer (the fold) plus
    the head's frame weighting, and SDPA."""
    config = MODEL_CONFIGS["t7_j15_mixed"]  # three kernel sizes: unfolded, 3 x 3 convs per layer
    frozen = E.freeze(eager_model(config))
    x = make_input(frozen)
    graph = torch.export.export(frozen, (x,)).graph
    targets = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    assert all(t.startswith("aten.") or t.startswith("<built-in") for t in targets), targets
    layers = config.get("spatial_depth", 2) + config.get("temporal_depth", 2)
    assert sum("conv" in t for t in targets) == layers + 1, targets
    assert sum("scaled_dot_product" in t for t in targets) == layers, targets


@pytest.mark.skipif(not CPU_AVAILABLE, reason="the cpu backend is unavailable")
def test_frozen_cpu_model_exports_with_the_packages_ops():
    frozen = E.freeze(eager_model(MODEL_CONFIGS["t129_j3_winograd"]), backend="cpu")
    x = make_input(frozen, 2)
    program = torch.export.export(frozen, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any(t.startswith("convformer_fast.") for t in targets), targets
    with torch.no_grad():
        assert_close(program.module()(make_input(frozen, 3)), frozen(make_input(frozen, 3)), TOL, "exported")


def test_freeze_refuses_training_mode_gradients_and_other_backends():
    model = eager_model(MODEL_CONFIGS["t5_j17_single"])
    with pytest.raises(ValueError, match="model: in training mode.*model.eval"):
        E.freeze(model.train())
    model.eval()
    model.temporal_blocks[0].attn.train()  # one layer left in training mode is refused too
    with pytest.raises(ValueError, match="model: in training mode \\(temporal_blocks.0.attn"):
        E.freeze(model)
    model.eval()
    frozen = E.freeze(model)
    x = make_input(model).requires_grad_()
    with pytest.raises(ValueError, match="x: requires_grad=True"):
        frozen(x)
    with torch.no_grad():
        frozen(x)  # no autograd: fine
    with pytest.raises(ValueError, match="mode: got train"):
        frozen.train()
    for backend in ("eager", "triton", "cuda", "nope"):
        with pytest.raises(ValueError, match=f"backend: got '{backend}', expected one of \\['torch', 'cpu'\\]"):
            E.freeze(model, backend=backend)
    with pytest.raises(ValueError, match="model: got Linear"):
        E.freeze(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already frozen"):
        E.freeze(frozen)


# ------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("config", ONNX_CONFIGS, ids=str)
def test_onnx_export_runs_in_onnx_runtime_and_openvino(tmp_path, config):
    model = eager_model(ONNX_CONFIGS[config])
    path = str(tmp_path / "model.onnx")
    exported = E.to_onnx(model, path)
    assert exported.path == path and exported.checked_with.startswith("onnxruntime")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a dynamic batch axis
    assert not any(n.domain.startswith("pkg.") or n.domain == "convformer_fast" for n in proto.graph.node)
    runtimes = {"ONNX Runtime": onnx_runtime(path), "OpenVINO": openvino(path)}
    for batch in (1, 3):
        x = make_input(model, batch)
        with torch.no_grad():
            expected = model(x)
        for name, run in runtimes.items():
            assert_close(run(x), expected, TOL, f"{name} {config} batch {batch}")


def test_unfolded_onnx_export_and_a_static_batch(tmp_path):
    model = eager_model(MODEL_CONFIGS["t7_j15_mixed"])
    path = str(tmp_path / "eager.onnx")
    E.to_onnx(model, path, batch=2, fold=False, opset=17, check=False)
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert convs == 4 * 9 + 1  # unfolded: 3 kernel sizes x Q/K/V per layer, + the frame weighting
    x = make_input(model, 2)
    with torch.no_grad():
        assert_close(onnx_runtime(path)(x), model(x), TOL, "unfolded export")


def test_onnx_bad_input_names_the_argument_and_leaves_no_file(tmp_path, monkeypatch):
    model = eager_model(MODEL_CONFIGS["t5_j17_single"])
    path = tmp_path / "model.onnx"
    cases = [
        (dict(path=tmp_path / "missing" / "m.onnx"), "path: cannot write .* does not exist"),
        (dict(path=tmp_path), "path: .* is a folder"),
        (dict(batch=0), "batch: got 0"),
        (dict(batch="auto"), "batch: got 'auto'"),
        (dict(opset=16), "opset: got 16, expected an integer >= 17"),
        (dict(model=model.train()), "model: in training mode"),
    ]
    for kwargs, message in cases:
        args = dict(model=eager_model(MODEL_CONFIGS["t5_j17_single"]), path=path) | kwargs
        with pytest.raises(E.ExportError, match=message):
            E.to_onnx(args.pop("model"), args.pop("path"), **args)
    if CPU_AVAILABLE:
        with pytest.raises(E.ExportError, match="model: frozen with backend 'cpu', expected 'torch'"):
            E.to_onnx(E.freeze(model.eval(), "cpu"), path)

    # A file that fails its check is never renamed into place, and its temporary is removed.
    def wrong(run, model, batch, what):
        raise E.ExportError(f"{what}: output differs (planted)")

    monkeypatch.setattr(E, "_deviation", wrong)
    with pytest.raises(E.ExportError, match="planted"):
        E.to_onnx(model.eval(), path)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------- AOTInductor


@pytest.mark.skipif(not CPU_AVAILABLE, reason="the cpu backend is unavailable")
def test_aoti_package_of_the_cpu_backend_matches_eager(tmp_path):
    model = eager_model(MODEL_CONFIGS["t129_j3_winograd"])  # the Winograd weight rides along too
    path = str(tmp_path / "model.pt2")
    exported = E.to_aoti(model, path)
    assert exported.checked_with.startswith("AOTInductor")
    package = torch._inductor.aoti_load_package(path)
    metadata = package.get_metadata()
    assert (metadata["num_frames"], metadata["num_joints"], metadata["backend"]) == ("129", "3", "cpu")
    for batch in (1, 3):
        x = make_input(model, batch)
        with torch.no_grad():
            assert_close(package(x), model(x), TOL, f"AOTInductor batch {batch}")
    assert sorted(os.listdir(tmp_path)) == ["model.pt2"]


# ------------------------------------------------------------------------------- the command


def test_export_command_from_a_checkpoint_and_a_preset(tmp_path, capsys):
    model = eager_model(MODEL_CONFIGS["t7_j15_mixed"])
    checkpoint = save_checkpoint(tmp_path / "best.pt", model)
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert "checked with onnxruntime" in capsys.readouterr().out
    x = make_input(model, 2)
    with torch.no_grad():
        assert_close(onnx_runtime(str(out))(x), model(x), TOL, "export --checkpoint")
    out = tmp_path / "preset.onnx"
    assert cli.main(["export", "--preset", "h36m-9", "--format", "onnx", "--batch", "4", "--out", str(out)]) == 0
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def _damaged(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", eager_model(MODEL_CONFIGS["t5_j17_single"]))
    data = Path(good).read_bytes()
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(data[: len(data) // 2])
    return str(damaged)


P9 = ["--preset", "h36m-9"]


@pytest.mark.parametrize("argv, message", [
    (P9 + ["--format", "tflite", "--out", "OUT/m.onnx"], "--format: got 'tflite', expected one of onnx, aoti"),
    (["--checkpoint", "OUT/none.pt", "--format", "onnx", "--out", "OUT/m.onnx"],
     "--checkpoint: .*none.pt: checkpoint file not found"),
    (["--checkpoint", "DAMAGED", "--format", "onnx", "--out", "OUT/m.onnx"],
     "--checkpoint: .*damaged.pt: truncated or corrupted"),
    (P9 + ["--format", "onnx", "--out", "OUT/no/m.onnx"], "--out: cannot write .* does not exist"),
    (P9 + ["--format", "aoti", "--backend", "triton", "--out", "OUT/m.pt2"], "--backend: got .triton., expected one"),
    (P9 + ["--format", "onnx", "--backend", "cpu", "--out", "OUT/m.onnx"], "--backend: got 'cpu' with --format onnx"),
    (P9 + ["--format", "aoti", "--out", "OUT/m.onnx"], "--out: got .*, expected a file name ending in .pt2"),
    (P9 + ["--format", "onnx", "--batch", "-1", "--out", "OUT/m.onnx"], "--batch: got '-1'"),
    (P9 + ["--format", "onnx", "--opset", "16", "--out", "OUT/m.onnx"], "--opset: got 16, expected an integer >= 1"),
    (["--preset", "h36m-10", "--format", "onnx", "--out", "OUT/m.onnx"], "unknown preset 'h36m-10'"),
    (["--format", "onnx", "--out", "OUT/m.onnx"], "--checkpoint / --preset: got neither"),
])
def test_export_command_bad_input_is_one_line_exit_2_and_no_file(tmp_path, capsys, argv, message):
    damaged = _damaged(tmp_path)
    before = set(os.listdir(tmp_path))
    argv = [a.replace("OUT", str(tmp_path)).replace("DAMAGED", damaged) for a in argv]
    assert cli.main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convformer-fast export: error: "), err
    assert re.search(message, err), err
    assert set(os.listdir(tmp_path)) == before
