"""Deploying the model outside this package's Python: a frozen inference model, ONNX, and a
package for C++ (docs/deploy.md).

* :func:`freeze`: the model as an inference-only module whose folded Q/K/V weights
  (:func:`convformer_fast.fold.fold_qkv`) are constant buffers. With ``backend="torch"`` it
  uses only standard ops (one Conv1d per layer, SDPA, LayerNorm, Linear, GELU), which is what
  an exporter needs: the fold is computed once here, not inside the graph.
* :func:`to_onnx`: that model (or the unfolded eager one) as an ONNX file, checked.
* :func:`to_aoti`: the ``cpu``-backend frozen model, this package's custom ops inside,
  compiled by AOTInductor into a ``.pt2`` package that C++ loads (examples/cpp/).

Every writer leaves either the finished file or nothing: see :func:`convformer_fast.atomic.atomic_write`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, functional
from .atomic import atomic_write
from .backends import BACKENDS, Backend
from .errors import UserError
from .fold import fold_qkv
from .reference import ConvFormer, ConvFormerBlock

#: Backends a frozen model can compute with: ``torch`` (standard ops only: exportable to
#: ONNX) and ``cpu`` (this package's C++ ops: torch.export and AOTInductor carry them).
FREEZABLE_BACKENDS = {
    "torch": "standard PyTorch ops only (one Conv1d per layer, SDPA): for ONNX and any exporter",
    "cpu": "this package's C++ ops (convformer_fast._C): for torch.export / AOTInductor on CPUs",
}
FORMATS = {
    "onnx": "ONNX (opset >= 17) of the frozen model with standard ops: ONNX Runtime, OpenVINO, TensorRT",
    "aoti": "AOTInductor package (.pt2) of the frozen cpu-backend model: C++ via libtorch",
}
DEFAULT_OPSET = 18
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "keypoints", "pose3d"
#: rtol, atol of an exported model's output against the model it came from (fp32, outputs O(1)).
CHECK_TOLERANCE = (1e-4, 1e-4)


class ExportError(UserError):
    """An export that cannot be done as asked: the message names the argument, what was
    given and what was expected."""


@dataclass(frozen=True)
class Exported:
    """What :func:`to_onnx` and :func:`to_aoti` wrote, and how it was checked."""

    path: str
    format: str
    checked_with: str  # the runtime that ran the file before it was renamed into place, or ""
    max_abs_error: float | None  # max |exported - model| on random keypoints (None: not checked)
    note: str = ""  # why it was not checked


# ------------------------------------------------------------------------------- freeze


class FrozenBlock(nn.Module):
    """One ConvFormer block (paper eq. 8) in inference, its Q/K/V filters folded into
    constant buffers."""

    def __init__(self, block: ConvFormerBlock, backend: Backend):
        super().__init__()
        attn = block.attn
        self.layout, self.num_heads, self.backend = attn.layout, attn.num_heads, backend
        self.eps1, self.eps2 = block.norm1.eps, block.norm2.eps
        with torch.no_grad():
            weight, bias = fold_qkv(attn.conv_groups(), attn.aggregation_weights())
        fc1, fc2 = block.mlp[0], block.mlp[2]
        constants = dict(norm1_weight=block.norm1.weight, norm1_bias=block.norm1.bias, qkv_weight=weight,
                         qkv_bias=bias, norm2_weight=block.norm2.weight, norm2_bias=block.norm2.bias,
                         fc1_weight=fc1.weight, fc1_bias=fc1.bias, fc2_weight=fc2.weight, fc2_bias=fc2.bias)
        for name, tensor in constants.items():
            self.register_buffer(name, tensor.detach().clone())
        # The backend's own layouts of the folded weight (the cpu backend's Winograd weight).
        self.prepared_names = []
        for name, tensor in backend.prepare(self.qkv_weight, self.layout).items():
            self.register_buffer(name, tensor.detach().clone())
            self.prepared_names.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prepared = {name: getattr(self, name) for name in self.prepared_names}
        x = functional.attention_residual(
            x, self.norm1_weight, self.norm1_bias, self.eps1, self.qkv_weight, self.qkv_bias,
            self.num_heads, self.layout, backend=self.backend, prepared=prepared)
        return functional.feed_forward_residual(
            x, self.norm2_weight, self.norm2_bias, self.eps2, self.fc1_weight, self.fc1_bias,
            self.fc2_weight, self.fc2_bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}, heads={self.num_heads}, backend={self.backend.name!r}"


class FrozenConvFormer(nn.Module):
    """An inference-only ConvFormer: 2D keypoints (B, T, J, 2) -> (B, 1, J, 3), equal to the
    eager model in eval mode within rounding. It has no parameters (every weight is a
    buffer), no dropout, and refuses training mode and inputs that require gradients.
    Build it with :func:`freeze`."""

    def __init__(self, model: ConvFormer, backend: str):
        super().__init__()
        self.config = dict(model.config)
        self.num_frames, self.num_joints, self.embed_dim = model.num_frames, model.num_joints, model.embed_dim
        self.backend = backend
        chosen = BACKENDS[backend]
        norm, linear = model.head[0], model.head[1]
        constants = dict(embed_weight=model.joint_embed.weight, embed_bias=model.joint_embed.bias,
                         spatial_pos_embed=model.spatial_pos_embed, temporal_pos_embed=model.temporal_pos_embed,
                         head_norm_weight=norm.weight, head_norm_bias=norm.bias, head_weight=linear.weight,
                         head_bias=linear.bias, frame_weight=model.frame_weights.weight,
                         frame_bias=model.frame_weights.bias)
        for name, tensor in constants.items():
            self.register_buffer(name, tensor.detach().clone())
        self.head_eps = norm.eps
        self.spatial_blocks = nn.ModuleList(FrozenBlock(b, chosen) for b in model.spatial_blocks)
        self.temporal_blocks = nn.ModuleList(FrozenBlock(b, chosen) for b in model.temporal_blocks)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenConvFormer":
        if mode:
            raise ValueError("mode: got train(True), expected eval: a frozen model is inference-only "
                             "(its folded weights are constants); train the ConvFormer and freeze it again")
        return super().train(False)

    def extra_repr(self) -> str:
        return (f"frames={self.num_frames}, joints={self.num_joints}, embed_dim={self.embed_dim}, "
                f"backend={self.backend!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_keypoints(x, self.num_frames, self.num_joints)
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError("x: requires_grad=True with autograd on, expected an inference input: a frozen "
                             "model has no gradients (detach x, or run under torch.no_grad / inference_mode)")
        b, t, j, _ = x.shape
        x = F.linear(x.reshape(b * t, j, 2), self.embed_weight, self.embed_bias) + self.spatial_pos_embed
        for block in self.spatial_blocks:
            x = block(x)
        x = x.reshape(b, t, j * self.embed_dim) + self.temporal_pos_embed
        for block in self.temporal_blocks:
            x = block(x)
        x = F.layer_norm(x, x.shape[-1:], self.head_norm_weight, self.head_norm_bias, self.head_eps)
        x = F.linear(x, self.head_weight, self.head_bias)  # (B, T, 3J)
        return F.conv1d(x, self.frame_weight, self.frame_bias).reshape(b, 1, j, 3)


def check_freezable_backend(backend: str, argument: str = "backend") -> str:
    """``backend`` if a frozen model can compute with it here, else ExportError naming ``argument``."""
    if backend not in FREEZABLE_BACKENDS:
        raise ExportError(f"{argument}: got {backend!r}, expected one of {list(FREEZABLE_BACKENDS)}, the "
                          "backends a frozen model can compute with (" +
                          "; ".join(f"{k}: {v}" for k, v in FREEZABLE_BACKENDS.items()) + ")")
    reason = BACKENDS[backend].unavailable_reason()
    if reason:
        raise ExportError(f"{argument}: {backend!r} is unavailable here: {reason}")
    return backend


def freeze(model: nn.Module, backend: str = "torch") -> FrozenConvFormer:
    """An inference-only copy of ``model`` (a ConvFormer or ConvFormerFast in eval mode)
    whose folded Q/K/V weights are constant buffers, computed by ``backend``
    (:data:`FREEZABLE_BACKENDS`; the model's own ``backend=`` does not matter: the fold is
    the same maths for every backend). Same device and dtype as ``model``."""
    if isinstance(model, FrozenConvFormer):
        raise ExportError("model: got a FrozenConvFormer, expected the ConvFormer it was frozen from "
                          "(a frozen model is already frozen)")
    if not isinstance(model, ConvFormer):
        raise ExportError(f"model: got {type(model).__name__}, expected a ConvFormer or ConvFormerFast")
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise ExportError(f"model: in training mode ({training[0]}{' and others' if len(training) > 1 else ''}: "
                          "stochastic depth and aggregation dropout active), expected eval mode: call "
                          "model.eval() before freezing")
    check_freezable_backend(backend)
    param = next(model.parameters())
    if backend == "cpu" and param.device.type != "cpu":
        raise ExportError(f"backend: 'cpu' runs on CPU tensors, but the model is on {param.device}; "
                          "move it with model.cpu() or freeze with backend='torch'")
    return FrozenConvFormer(model, backend)


# ------------------------------------------------------------------------------- writing


def check_output_path(path, argument: str = "path") -> str:
    """``path`` if a file can be written there (an existing, writable folder; not a folder
    itself), else ExportError naming ``argument``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ExportError(f"{argument}: {path!r} is a folder, expected a file path")
    if not os.path.isdir(folder):
        raise ExportError(f"{argument}: cannot write {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{argument}: cannot write {path!r}: folder {folder!r} is not writable")
    return path


def _check_batch(batch) -> int | str:
    if batch == "dynamic":
        return batch
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch: got {batch!r}, expected 'dynamic' or a positive integer")
    return batch


def _example_input(frozen: nn.Module, batch: int | str) -> tuple[torch.Tensor, tuple | None]:
    """An example input and the dynamic_shapes of torch.export for ``batch``. The example
    batch of a dynamic export is 2: torch.export specialises sizes 0 and 1."""
    tensor = next(iter(frozen.state_dict().values()))
    n = 2 if batch == "dynamic" else batch
    x = torch.randn(n, frozen.num_frames, frozen.num_joints, 2, device=tensor.device, dtype=tensor.dtype)
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if batch == "dynamic" else None
    return x, dynamic


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Silence the exporters' warnings that say nothing about this model (torchvision ops
    not registered, no CUDA runtime on a CPU build)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _deviation(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, batch, what: str) -> float:
    """max |run(x) - model(x)| on seeded random keypoints; ExportError beyond CHECK_TOLERANCE."""
    tensor = next(iter(model.state_dict().values()))
    n = 3 if batch == "dynamic" else batch  # not the export's example batch (2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, model.num_frames, model.num_joints, 2, generator=generator).to(tensor.device, tensor.dtype)
    with torch.no_grad():
        expected = model(x)
        actual = torch.as_tensor(run(x)).to(expected.device, expected.dtype)
    if actual.shape != expected.shape:
        raise ExportError(f"{what}: output shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    deviation = (actual - expected).abs()
    rtol, atol = CHECK_TOLERANCE
    worst = deviation.max().item()
    if not deviation.isfinite().all() or bool((deviation > atol + rtol * expected.abs()).any()):
        raise ExportError(f"{what}: output differs from the model's by up to {worst:.3g} "
                          f"(rtol {rtol:g}, atol {atol:g}); the file was not written")
    return worst


# ------------------------------------------------------------------------------- ONNX


def _onnx_module(model: nn.Module, fold: bool) -> nn.Module:
    if isinstance(model, FrozenConvFormer):
        if not fold:
            raise ExportError("fold: got False with a FrozenConvFormer, expected the ConvFormer itself "
                              "(a frozen model is folded already)")
        if model.backend != "torch":
            raise ExportError(f"model: frozen with backend {model.backend!r}, expected 'torch' for ONNX "
                              "(only standard ops export to ONNX; this package's C++ ops do not)")
        return model
    if not fold:
        if not isinstance(model, ConvFormer):
            raise ExportError(f"model: got {type(model).__name__}, expected a ConvFormer or ConvFormerFast")
        if model.training:
            raise ExportError("model: in training mode, expected eval mode: call model.eval() first")
        # The eager reference graph (one Conv1d per kernel size, explicit softmax): what
        # exporting the model without this package's fold gives; it exports as it stands.
        param = next(model.parameters())
        eager = ConvFormer(**model.config).to(device=param.device, dtype=param.dtype)
        eager.load_state_dict(model.state_dict())
        return _EagerForExport(eager.eval()).eval()
    return freeze(model, backend="torch")


class _EagerForExport(nn.Module):
    """The eager model with the shape facts an exporter asks for (frames, joints)."""

    def __init__(self, model: ConvFormer):
        super().__init__()
        self.model, self.num_frames, self.num_joints = model, model.num_frames, model.num_joints

    def forward(self, x):
        return self.model(x)


def onnx_program(model: nn.Module, batch="dynamic", *, opset: int = DEFAULT_OPSET, fold: bool = True):
    """The checked ONNX ``ModelProto`` of ``model`` (see :func:`to_onnx`), not written anywhere."""
    try:
        import onnx
    except ImportError as error:
        raise ExportError(f"format: 'onnx' needs the onnx and onnxscript packages ({error}); "
                          "pip install 'convformer_fast[deploy]'") from None
    batch = _check_batch(batch)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset: got {opset!r}, expected an integer >= {MIN_OPSET}")
    module = _onnx_module(model, fold)
    x, dynamic = _example_input(module, batch)
    with torch.no_grad(), _quiet("torch.onnx._internal.exporter._registration"):
        program = torch.onnx.export(
            module, (x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(model: nn.Module, path, batch="dynamic", *, opset: int = DEFAULT_OPSET, fold: bool = True,
            check: bool = True) -> Exported:
    """Write ``model`` as ONNX to ``path``.

    model: a ConvFormer / ConvFormerFast in eval mode (frozen here with ``backend="torch"``)
    or a :class:`FrozenConvFormer` of backend ``torch``. batch: ``"dynamic"`` (a symbolic
    first axis) or a fixed size. opset: >= 17. fold: False exports the unfolded eager
    graph instead (for comparisons: it is about twice the work).

    Input ``keypoints`` (batch, T, J, 2) float, output ``pose3d`` (batch, 1, J, 3). The model
    passes ``onnx.checker`` and, with ``check`` and ONNX Runtime installed, ONNX Runtime runs
    the file and must match ``model`` within :data:`CHECK_TOLERANCE` before it is renamed
    into place."""
    path = check_output_path(path)
    proto = onnx_program(model, batch, opset=opset, fold=fold)
    data = proto.SerializeToString()
    checked = {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
        if check:
            checked.update(_check_onnx(tmp, model, batch))

    atomic_write(path, write, defer_interrupts=False)
    return Exported(path, "onnx", **checked) if checked else Exported(path, "onnx", "", None, "check=False")


def _check_onnx(path: str, model: nn.Module, batch) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return dict(checked_with="", max_abs_error=None, note="onnxruntime is not installed")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(session.run(None, {INPUT_NAME: x.detach().cpu().numpy()})[0])

    worst = _deviation(run, model, batch, "ONNX Runtime")
    return dict(checked_with=f"onnxruntime {ort.__version__}", max_abs_error=worst)


# ------------------------------------------------------------------------------- AOTInductor


def to_aoti(model: nn.Module, path, batch="dynamic", *, backend: str = "cpu", check: bool = True) -> Exported:
    """Compile ``model`` with AOTInductor into the package ``path`` (``.pt2``) and return ``path``.

    model: a ConvFormer / ConvFormerFast in eval mode, frozen here with ``backend``
    (default ``cpu``: this package's C++ ops, called from the compiled code through
    libtorch's dispatcher, so a C++ program must load the op library; ``torch``: standard
    ops only), or a :class:`FrozenConvFormer`. batch: ``"dynamic"`` or a fixed size.

    The package's metadata holds ``num_frames`` and ``num_joints`` (and the backend), which
    examples/cpp reads. Compiling takes a C++ compiler and tens of seconds. With ``check``,
    the package is loaded back and must match ``model`` before it is renamed into place."""
    path = check_output_path(path)
    if not path.endswith(".pt2"):
        raise ExportError(f"path: got {path!r}, expected a file name ending in .pt2 (what AOTInductor "
                          "packages are called, and what it insists on)")
    batch = _check_batch(batch)
    frozen = model if isinstance(model, FrozenConvFormer) else freeze(model, backend=backend)
    x, dynamic = _example_input(frozen, batch)
    with torch.no_grad():
        program = torch.export.export(frozen, (x,), dynamic_shapes=dynamic)
    from . import __version__

    metadata = dict(num_frames=str(frozen.num_frames), num_joints=str(frozen.num_joints),
                    backend=frozen.backend, batch=str(batch), convformer_fast=__version__,
                    input=f"{INPUT_NAME} (batch, T, J, 2)", output=f"{OUTPUT_NAME} (batch, 1, J, 3)")

    checked = {}

    def write(tmp: str) -> None:
        with _quiet("torch.utils.cpp_extension"):
            torch._inductor.aoti_compile_and_package(
                program, package_path=tmp, inductor_configs={"aot_inductor.metadata": metadata})
        if check:
            loaded = torch._inductor.aoti_load_package(tmp)
            checked.update(checked_with=f"AOTInductor (torch {torch.__version__})",
                           max_abs_error=_deviation(loaded, frozen, batch, "the AOTInductor package"))

    atomic_write(path, write, defer_interrupts=False)
    return Exported(path, "aoti", **checked) if checked else Exported(path, "aoti", "", None, "check=False")
