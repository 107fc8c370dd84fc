"""FLOP counting: one registry of formulas, fvcore and ``torch.utils.flop_counter`` fed from it.

Convention (the paper's, Table 5): only multiply-adds are counted, and one multiply-add is
2 FLOPs. Elementwise ops (add, mul, softmax, GELU, padding) and normalisation layers are
not counted; :class:`FlopReport` lists them under ``.ignored`` so that nothing disappears
silently, and anything else that no formula covers under ``.unsupported``.

:data:`FLOP_FORMULAS` maps a qualified op name to a function of one
:class:`~convformer_fast.ops.spec.OpCall` returning its multiply-adds: the formulas of this
package's ops come from the op registry (each op's module declares its own, for every
implementation: ``convformer_fast::``, ``convformer_fast_emulated::`` and the ``triton_``
ops), plus SDPA's below. It serves both counters:

* fvcore's ``FlopCountAnalysis`` (JIT trace; its unit is one multiply-add) gets a handle
  per entry, so ``aten::scaled_dot_product_attention`` and every ``convformer_fast::`` op
  are counted;
* PyTorch's ``FlopCounterMode`` (dispatch level; its unit is 2 FLOPs per multiply-add)
  gets a formula per entry whose op exists, so both counters agree.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..ops import OPS, registry
from ..ops.attention import backward_macs as _attention_backward_macs
from ..ops.attention import macs as _attention_macs
from ..ops.spec import NAMESPACE, FlopFormula, OpCall, Shape

#: qualified op name ("namespace::name") -> multiply-adds of one call.
FLOP_FORMULAS: dict[str, FlopFormula] = dict(registry.flop_formulas())


def _sdpa_dims(q: Shape, k: Shape, v: Shape) -> tuple[int, int, int, int, int]:
    batch_heads = math.prod(q[:-2])
    return batch_heads, q[-2], k[-2], q[-1], v[-1]


def _sdpa(call: OpCall) -> int:
    return _attention_macs(*_sdpa_dims(*call.args[:3]))


def _sdpa_backward(call: OpCall) -> int:
    _grad_out, q, k, v = call.args[:4]
    return _attention_backward_macs(*_sdpa_dims(q, k, v))


# fvcore's JIT trace sees the composite op; FlopCounterMode sees what it dispatches to on
# the CPU, which torch's own registry does not cover (it has the CUDA variants).
FLOP_FORMULAS["aten::scaled_dot_product_attention"] = _sdpa
FLOP_FORMULAS["aten::_scaled_dot_product_flash_attention_for_cpu"] = _sdpa
FLOP_FORMULAS["aten::_scaled_dot_product_flash_attention_for_cpu_backward"] = _sdpa_backward


# Not multiply-adds: counted by neither counter under the paper's convention.
IGNORED_OPS = frozenset(
    f"aten::{name}" for name in (
        "add", "add_", "sub", "rsub", "mul", "mul_", "div", "div_", "neg", "exp", "sum",
        "mean", "softmax", "_softmax", "log_softmax", "gelu", "pad", "constant_pad_nd",
        "dropout", "bernoulli_", "layer_norm", "native_layer_norm", "group_norm",
        "batch_norm", "sqrt", "rsqrt", "pow", "square", "stack", "empty_like",
        "ones_like", "clone", "fill_", "zero_",
    )
)
_FVCORE_NORM_OPS = ("aten::layer_norm", "aten::group_norm", "aten::batch_norm",
                    "aten::instance_norm")


def namespace_ops() -> list[str]:
    """Every ``convformer_fast::`` op registered with the dispatcher right now."""
    return sorted(f"{NAMESPACE}::{name}" for name in registry.registered_ops(NAMESPACE))


def ops_without_formula() -> list[str]:
    """Ops of the namespace (Triton's included, once defined) that no formula covers; an op
    without tensors (``kernel_limits``) computes nothing."""
    exempt = {spec.qualname for spec in OPS.values() if spec.fake is None}
    return [name for name in namespace_ops() if name not in FLOP_FORMULAS and name not in exempt]


# ---------------------------------------------------------------------------------------
# torch.utils.flop_counter


def _as_shape(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return value


def _flop_counter_formula(formula: FlopFormula):
    def count(*args, out_val=None, **kwargs):
        outputs = out_val if isinstance(out_val, (tuple, list)) else (out_val,)
        call = OpCall(tuple(_as_shape(a) for a in args), tuple(_as_shape(o) for o in outputs))
        return 2 * formula(call)  # flop_counter counts 2 FLOPs per multiply-add

    return count


def _op_packet(qualified: str):
    namespace, name = qualified.split("::")
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def register_flop_formulas() -> list[str]:
    """Register every registry formula whose op exists with ``torch.utils.flop_counter``.

    Idempotent; call it again after new ops are loaded (every counting function here
    does). Returns the op names registered by this call."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    registered = []
    for name, formula in FLOP_FORMULAS.items():
        packet = _op_packet(name)
        if packet is None or packet in flop_registry:
            continue
        register_flop_formula(packet, get_raw=True)(_flop_counter_formula(formula))
        registered.append(name)
    return registered


@dataclass
class FlopCount:
    """FLOPs (2 per multiply-add) of running something under ``FlopCounterMode``."""

    total: int
    by_op: dict[str, int]
    uncounted: list[str]  # convformer_fast ops that ran without a FLOP formula


def flop_counter_flops(fn: Callable[[], Any]) -> FlopCount:
    """Count ``fn()`` (a forward, or a whole training step) with PyTorch's
    ``FlopCounterMode``, the registry's formulas registered."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    register_flop_formulas()
    seen: set[str] = set()

    class _NamespaceOps(TorchDispatchMode):
        # Entered after FlopCounterMode, so it sees each op first: ops defined while fn runs
        # (kernels loaded on first use) get their formula registered before they are counted.
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == NAMESPACE and func._overloadpacket not in flop_registry:
                register_flop_formulas()
                if func._overloadpacket not in flop_registry:
                    seen.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    mode = FlopCounterMode(display=False)
    with mode, _NamespaceOps():
        fn()
    by_op = {str(op): int(n) for op, n in mode.get_flop_counts().get("Global", {}).items()}
    return FlopCount(int(mode.get_total_flops()), by_op, sorted(seen))


# ---------------------------------------------------------------------------------------
# fvcore


def _jit_value(value):
    if value.type().kind() == "TensorType":
        return tuple(value.type().sizes()) if value.isCompleteTensor() else None
    try:
        return value.toIValue()
    except RuntimeError:  # not a constant
        return None


def _fvcore_handle(formula: FlopFormula):
    def handle(inputs, outputs) -> int:
        call = OpCall(tuple(_jit_value(v) for v in inputs), tuple(_jit_value(v) for v in outputs))
        return formula(call)  # fvcore's unit is one multiply-add

    return handle


def _tally_handle(name: str, calls: dict[str, int] | None):
    def handle(inputs, outputs):
        if calls is not None:
            calls[name] = calls.get(name, 0) + 1
        return Counter()  # counts nothing

    return handle


def fvcore_installed() -> bool:
    """Whether fvcore can be imported (``flops`` needs it; ``bench`` does not)."""
    import importlib.util

    return importlib.util.find_spec("fvcore") is not None


def fvcore_analysis(model: nn.Module, inputs, norm_calls: dict[str, int] | None = None):
    """fvcore ``FlopCountAnalysis`` of ``model(*inputs)`` with the registry's handles.

    Normalisation layers count nothing (fvcore's own estimate, 5 per element, is not a
    multiply-add count); their calls are tallied in ``norm_calls`` if given."""
    if not fvcore_installed():  # fvcore is in requirements.txt, not on the GPU machines
        raise ImportError("count_flops needs fvcore, which is not installed: pip install fvcore")
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    for name, formula in FLOP_FORMULAS.items():
        analysis.set_op_handle(name, _fvcore_handle(formula))
    for name in _FVCORE_NORM_OPS:
        analysis.set_op_handle(name, _tally_handle(name, norm_calls))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@dataclass
class FlopReport:
    """FLOPs of one forward pass (paper convention: one multiply-add = 2 FLOPs)."""

    total: int
    params: int
    by_op: dict[str, int]
    by_module: dict[str, int] = field(repr=False)
    unsupported: dict[str, int]  # op -> calls left uncounted that may hold multiply-adds
    ignored: dict[str, int]      # op -> calls not counted by convention (elementwise, norms)

    @property
    def macs(self) -> int:
        return self.total // 2

    def by_stage(self) -> dict[str, int]:
        """FLOPs per part of a :class:`~convformer_fast.ConvFormer`: embedding, spatial /
        temporal attention and FFN, head."""
        stages: dict[str, int] = {}
        for name, flops in self.by_module.items():
            parts = name.split(".")
            if len(parts) == 1 and name and not name.endswith("_blocks"):
                stage = "embed + head"
            elif len(parts) == 3 and parts[0].endswith("_blocks") and parts[2] in ("attn", "mlp"):
                stage = f"{parts[0].split('_')[0]} {'attention' if parts[2] == 'attn' else 'FFN'}"
            else:
                continue
            stages[stage] = stages.get(stage, 0) + flops
        return stages


def count_flops(model: nn.Module, inputs) -> FlopReport:
    """Parameters and forward FLOPs of ``model(*inputs)`` via fvcore, every op of
    ``convformer_fast`` and SDPA included. ``inputs``: a tensor or a tuple of them.

    Runs one traced forward without autograd; the model's train/eval mode is kept."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    register_flop_formulas()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracer and deprecation chatter
        norm_calls: dict[str, int] = {}
        analysis = fvcore_analysis(model, tuple(inputs), norm_calls)
        by_op = {op: 2 * int(n) for op, n in analysis.by_operator().items() if n}
        by_module = {name: 2 * int(n) for name, n in analysis.by_module().items()}
        uncounted = analysis.unsupported_ops()
    unsupported = {op: n for op, n in uncounted.items() if op not in IGNORED_OPS}
    ignored = {op: n for op, n in uncounted.items() if op in IGNORED_OPS}
    ignored.update(norm_calls)
    return FlopReport(
        total=sum(by_op.values()),
        params=sum(p.numel() for p in model.parameters()),
        by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        by_module=by_module,
        unsupported=dict(unsupported),
        ignored=dict(ignored),
    )


# ---------------------------------------------------------------------------------------
# Paper Table 5 (ConvFormer rows; "FLOPs (M)" per sample), for --table5. These are the
# paper's numbers, printed as such next to our counts.

PAPER_TABLE5 = {  # T: (params in M, FLOPs in M)
    9: (2.56, 100.0),
    27: (2.65, 360.0),
    81: (3.43, 1600.0),
    143: (5.24, 4220.0),
    243: (10.24, 10000.0),
}


def model_inputs(model: nn.Module, batch: int = 1, dtype=None, device=None) -> torch.Tensor:
    """Random 2D keypoints (B, T, J, 2) matching a ConvFormer."""
    param = next(model.parameters())
    return torch.randn(batch, model.num_frames, model.num_joints, 2,
                       dtype=dtype or param.dtype, device=device or param.device)


def table5(frames: Sequence[int] | None = None, backend: str = "auto") -> list[dict]:
    """Our counts next to paper Table 5 for h36m-T (default: every T of the table)."""
    from ..fast import ConvFormerFast
    from ..reference import ConvFormer

    rows = []
    for t in PAPER_TABLE5 if frames is None else frames:
        eager = ConvFormer.from_preset(f"h36m-{t}").eval()
        fast = ConvFormerFast.from_reference(eager, backend=backend)
        x = model_inputs(eager)
        eager_report, fast_report = count_flops(eager, x), count_flops(fast, x)
        paper_params, paper_flops = PAPER_TABLE5.get(t, (None, None))
        rows.append(dict(
            frames=t, paper_params_m=paper_params, paper_flops_m=paper_flops,
            params_m=eager_report.params / 1e6, eager_flops_m=eager_report.total / 1e6,
            fast_flops_m=fast_report.total / 1e6,
            eager_vs_paper=(eager_report.total / 1e6 / paper_flops - 1) if paper_flops else None,
            eager=eager_report, fast=fast_report,
        ))
    return rows
