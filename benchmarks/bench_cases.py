"""One setup per benchmarked op, shared by every implementation of it.

An implementation is ``"eager"`` (the reference modules), ``"compile"`` (``torch.compile``
of the eager code) or a fast backend name. Every builder returns a zero-argument callable
that runs one inference call; :func:`check_against_eager` makes sure an implementation
computes the same thing before it is timed.

Shapes follow the paper (docs/ARCHITECTURE.md section 1): for h36m-T at batch B, embed dim d,
J joints, the spatial layers see x (B*T, J, d) and the temporal layers x (B, T, J*d).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import convformer_fast as cf
from convformer_fast import ops
from convformer_fast.presets import preset_config
from convformer_fast.reference import SPATIAL, TEMPORAL

EAGER, COMPILE = "eager", "compile"
LAYOUTS = (SPATIAL, TEMPORAL)


@dataclass(frozen=True)
class Shape:
    """A model configuration and a batch size."""

    name: str      # "h36m-243" or "tiny"
    config: dict   # ConvFormer constructor arguments
    batch: int
    device: str = "cpu"

    @property
    def id(self) -> str:
        return f"{self.name}-b{self.batch}" + ("" if self.device == "cpu" else f"-{self.device}")

    def randn(self, *size: int) -> torch.Tensor:
        return torch.randn(*size, device=self.device)

    def tokens(self, layout: str) -> tuple[int, int, int]:
        """(N, S, F) of the DMHCSA input of a layout."""
        t, j, d = self.config["num_frames"], self.config["num_joints"], self.config["embed_dim"]
        return (self.batch * t, j, d) if layout == SPATIAL else (self.batch, t, j * d)


def paper_shape(preset: str, batch: int, device: str = "cpu") -> Shape:
    return Shape(preset, preset_config(preset), batch, device)


TINY = dict(num_frames=9, num_joints=5, embed_dim=8, spatial_depth=1, temporal_depth=1,
            kernel_sizes=(3, 5, 7), num_heads=2, mlp_ratio=2.0)


def tiny_shape(device: str = "cpu") -> Shape:
    return Shape("tiny", {**preset_config("h36m-9"), **TINY}, 2, device)


def _inference(fn):
    def call():
        with torch.inference_mode():
            return fn()

    return call


def _compiled(fn, compile_backend: str):
    torch._dynamo.reset()  # fresh cache per case: the recompile limit must never be hit
    return torch.compile(fn, backend=compile_backend)


# ----------------------------------------------------------------------- folded conv-QKV


def eager_qkv(module: cf.DMHCSA, x: torch.Tensor) -> torch.Tensor:
    """The reference projection (paper eqs. 3-6): every kernel's Conv1d, mixed with eta;
    returns (3, N, h, S, F/h) like ``ops.qkv_projection``."""
    eta = module.aggregation_weights()
    conv_in = x.transpose(1, 2) if module.layout == SPATIAL else x
    heads = []
    for row, convs in enumerate(module.conv_groups()):
        y = sum(eta[row, i] * conv(conv_in) for i, conv in enumerate(convs))
        heads.append(module.split_heads(y.transpose(1, 2) if module.layout == SPATIAL else y))
    return torch.stack(heads)


def _torch_folded_qkv(weight, bias, num_heads, layout, x):
    """The folded projection as one F.conv1d (what the ``torch`` backend runs)."""
    n, s, f = x.shape
    dh = f // num_heads
    if layout == SPATIAL:
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] // 2)
        return y.view(n, 3, num_heads, dh, s).permute(1, 0, 2, 4, 3)
    y = F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2)
    return y.view(n, 3, s, num_heads, dh).permute(1, 0, 3, 2, 4)


def _triton_folded_qkv(weight, bias, num_heads, layout, x):
    from convformer_fast import triton as triton_backend

    triton_backend.load_ops()  # defines torch.ops.convformer_fast.triton_* on first use
    return torch.ops.convformer_fast.triton_qkv_projection(x, weight, bias, num_heads, layout)


# Backend -> its standalone folded conv-QKV entry point (weight, bias, heads, layout, x).
# A backend without one is skipped in the conv-QKV benchmark (its whole layer is timed
# in the attention benchmarks all the same).
FOLDED_QKV = {
    "torch": _torch_folded_qkv,
    "cpu": lambda w, b, h, layout, x: ops.qkv_projection(x, w, b, h, layout),
    "triton": _triton_folded_qkv,
    # the cuda backends' projection is cuDNN's (ATen's) convolution behind the same op
    "cuda": lambda w, b, h, layout, x: ops.qkv_projection(x, w, b, h, layout),
    "cuda_emulated": lambda w, b, h, layout, x: ops.kernel_ops(emulated=True).qkv_projection(x, w, b, h, layout),
}


def dmhcsa(shape: Shape, layout: str) -> cf.DMHCSA:
    c = shape.config
    n, s, f = shape.tokens(layout)
    torch.manual_seed(0)
    module = cf.DMHCSA(layout, s, f, c["kernel_sizes"], c["num_heads"]).eval().to(shape.device)
    with torch.no_grad():  # a non-uniform eta, as after training
        module.theta.normal_()
    return module


def qkv_case(shape: Shape, layout: str, impl: str, compile_backend: str):
    """(fn, reference fn) timing the folded conv-QKV projection of one layer. The fold
    itself is done once outside the timing, as the fold cache does in inference."""
    module = dmhcsa(shape, layout)
    x = shape.randn(*shape.tokens(layout))
    reference = _inference(lambda: eager_qkv(module, x))
    if impl == EAGER:
        return reference, reference
    if impl == COMPILE:
        return _inference(_compiled(lambda: eager_qkv(module, x), compile_backend)), reference
    with torch.no_grad():
        weight, bias = cf.fold_qkv(module.conv_groups(), module.aggregation_weights())
    project = FOLDED_QKV[impl]
    return _inference(lambda: project(weight, bias, module.num_heads, layout, x)), reference


# --------------------------------------------------------------- attention, block, model


def _module_case(eager_module: torch.nn.Module, fast_cls, x: torch.Tensor, impl: str,
                 compile_backend: str, **fast_kwargs):
    eager_module = eager_module.eval()
    reference = _inference(lambda: eager_module(x))
    if impl == EAGER:
        return reference, reference
    if impl == COMPILE:
        compiled = _compiled(copy.deepcopy(eager_module), compile_backend)
        return _inference(lambda: compiled(x)), reference
    fast = fast_cls(**fast_kwargs, backend=impl).eval().to(x.device)
    fast.load_state_dict(eager_module.state_dict(), strict=True)
    return _inference(lambda: fast(x)), reference


def attention_case(shape: Shape, layout: str, impl: str, compile_backend: str):
    """A whole DMHCSA layer: conv-QKV (folded or not) and attention."""
    module = dmhcsa(shape, layout)
    c = shape.config
    n, s, f = shape.tokens(layout)
    x = shape.randn(n, s, f)
    return _module_case(module, cf.DMHCSAFast, x, impl, compile_backend, layout=layout,
                        num_tokens=s, num_features=f, kernel_sizes=c["kernel_sizes"],
                        num_heads=c["num_heads"])


def block_case(shape: Shape, layout: str, impl: str, compile_backend: str):
    """A whole pre-norm ConvFormer block: LN, DMHCSA, residual, LN, FFN, residual."""
    c = shape.config
    n, s, f = shape.tokens(layout)
    torch.manual_seed(0)
    kwargs = dict(layout=layout, num_tokens=s, num_features=f, kernel_sizes=c["kernel_sizes"],
                  num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"])
    block = cf.ConvFormerBlock(**kwargs).to(shape.device)
    return _module_case(block, cf.ConvFormerBlockFast, shape.randn(n, s, f), impl,
                        compile_backend, **kwargs)


def model_case(shape: Shape, impl: str, compile_backend: str):
    """The whole model: (B, T, J, 2) -> (B, 1, J, 3)."""
    torch.manual_seed(0)
    model = cf.ConvFormer(**shape.config).to(shape.device)
    c = shape.config
    x = shape.randn(shape.batch, c["num_frames"], c["num_joints"], 2)
    return _module_case(model, cf.ConvFormerFast, x, impl, compile_backend, **shape.config)


def check_against_eager(fn, reference, what: str) -> None:
    """An implementation must compute what eager computes before it is timed."""
    expected, actual = reference(), fn()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4,
                               msg=lambda m: f"{what} differs from eager: {m}")
