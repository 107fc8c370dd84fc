"""What the registry knows about one op (:class:`OpSpec`), and the small types it is made of.

An op's schema is written once, in ``csrc/ops.cpp``; everything else about it is declared
once, in ``convformer_fast/ops/<op>.py``, as one :class:`OpSpec`. The registry
(:mod:`convformer_fast.ops.registry`) gathers the specs; what used to be listed by hand in
several places (the ops ``_C`` must provide, the fake and autograd registrations, the FLOP
formulas, the backends' limits, the op tests' shapes) is derived from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .._extension import LOAD_ERROR, REBUILD_COMMAND

NAMESPACE = "convformer_fast"
#: The ops of the CUDA kernels (kernels/) run on CPU tensors by the emulator
#: (backend="cuda_emulated"): same op names and schemas as in :data:`NAMESPACE`.
EMULATED_NAMESPACE = "convformer_fast_emulated"
#: The Triton kernels' ops live in :data:`NAMESPACE` under this prefix (``triton_attention``).
TRITON_PREFIX = "triton_"

# Where an implementation's kernel is written, relative to the repository root, per device.
CPU, CUDA, EMULATED, TRITON = "cpu", "cuda", "emulated", "triton"
IMPLEMENTATIONS = (CPU, CUDA, EMULATED, TRITON)

Shape = tuple[int, ...]
#: The floating-point dtypes a kernel may serve.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class OpCall:
    """One call of an op as a FLOP formula sees it: tensor arguments and outputs replaced by
    their shapes (``None`` where a tracer did not know it), other arguments as values."""

    args: tuple[Any, ...]
    outputs: tuple[Shape | None, ...] = ()


#: Multiply-adds of one call (one multiply-add = 2 FLOPs, the paper's convention).
FlopFormula = Callable[[OpCall], int]


@dataclass(frozen=True)
class Limits:
    """What one implementation of an op accepts, beyond its schema.

    ``max_head_dim(dtype)`` reads limits owned by the C++/CUDA code from the library (see
    :mod:`convformer_fast.ops.limits`), so they are never copied into Python."""

    dtypes: tuple[torch.dtype, ...]
    max_head_dim: Callable[[torch.dtype], int] | None = None
    note: str = ""

    def reasons(self, dtype: torch.dtype, head_dim: int | None = None) -> list[str]:
        """Why a call with this dtype (and head dim) is outside these limits; empty if inside."""
        reasons = []
        if dtype not in self.dtypes:
            reasons.append(f"dtype {dtype} not in {[str(d) for d in self.dtypes]}")
        if head_dim is not None and self.max_head_dim is not None:
            limit = self.max_head_dim(dtype)
            if head_dim > limit:
                reasons.append(f"head_dim {head_dim} above the kernel's {limit}"
                               + (f" for {dtype}" if dtype == torch.float64 else ""))
        return reasons


@dataclass(frozen=True)
class Sample:
    """Arguments of one test call of an op (``id`` names it in test reports)."""

    args: tuple
    id: str


@dataclass(frozen=True)
class Autograd:
    """``torch.library.register_autograd(op, backward, setup_context=setup_context)``."""

    backward: Callable
    setup_context: Callable


def inference_only(qualname: str) -> Autograd:
    """The autograd formula of a kernel without a backward: a clear error, not a wrong
    gradient. The backends never let autograd reach one (they take an unfused path)."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{qualname} is an inference kernel and has no backward: the backends compute "
            "gradients on an unfused path (they switch to it whenever gradients are needed)")

    def setup_context(ctx, inputs, output):
        pass

    return Autograd(backward, setup_context)


def non_differentiable() -> Autograd:
    """The autograd formula of an op whose output carries no gradient (a weight layout
    derived from one that does): outputs are marked non-differentiable."""

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output)

    def backward(ctx, *grads):  # never reached: the output carries no gradient
        return (None,) * len(grads)

    return Autograd(backward, setup_context)


@dataclass(frozen=True)
class OpSpec:
    """Everything about one op outside its schema and kernels.

    name           the op's name in ``csrc/ops.cpp`` (namespace ``convformer_fast``)
    summary        one line: what it computes (paper equation where there is one)
    kernels        implementation (cpu, cuda, emulated, triton) -> file of its kernel; the
                   emulated and Triton implementations are ops of their own
                   (``convformer_fast_emulated::<name>``, ``convformer_fast::triton_<name>``)
    fake           shapes and dtypes of the outputs (torch.compile, torch.export); None for
                   an op without tensors
    autograd       how gradients flow (``None``: a backward op, or no tensors)
    emulated_autograd  the same for the emulated op, when it differs
    flops          multiply-adds of one call (``None``: counts nothing, e.g. a backward is
                   counted by its own formula)
    limits         implementation -> what it accepts beyond the schema
    reference      the op's maths in plain PyTorch, independent of the kernels (the tests'
                   oracle); ``None`` where another op's test covers it (named in ``note``)
    samples        dtype -> test calls that hit the op's edges
    backward_of    for a backward op, the op whose gradient it computes
    tests          the test file(s) of the op
    """

    name: str
    summary: str
    kernels: dict[str, str]
    fake: Callable | None
    autograd: Autograd | None = None
    emulated_autograd: Autograd | None = None
    flops: FlopFormula | None = None
    limits: dict[str, Limits] = field(default_factory=dict)
    reference: Callable | None = None
    samples: Callable[[torch.dtype], Iterable[Sample]] | None = None
    backward_of: str | None = None
    tests: tuple[str, ...] = ("tests/test_ops.py",)
    note: str = ""

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    def qualnames(self) -> dict[str, str]:
        """Implementation -> the op it is reached through (cpu and cuda share one op, told
        apart by the dispatch key)."""
        names = {}
        for impl in self.kernels:
            if impl == EMULATED:
                names[impl] = f"{EMULATED_NAMESPACE}::{self.name}"
            elif impl == TRITON:
                names[impl] = f"{NAMESPACE}::{TRITON_PREFIX}{self.name}"
            else:
                names[impl] = self.qualname
        return names


def library_op(name: str, namespace: str = NAMESPACE):
    """``torch.ops.<namespace>.<name>``, or a RuntimeError naming the op and why ``_C`` did
    not provide it (not built, failed to load, or older than this Python code)."""
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        reason = LOAD_ERROR or (f"convformer_fast._C does not register {namespace}::{name} (it is older "
                                f"than this package's Python code); rebuild it with `{REBUILD_COMMAND}`")
        raise RuntimeError(f"{name}: {reason}") from None


def library_schema(qualname: str) -> str:
    """The schema of a loaded op as ``csrc/ops.cpp`` wrote it, without the op's name:
    ``"(Tensor qkv) -> (Tensor, Tensor)"``."""
    namespace, name = qualname.split("::")
    schema = str(library_op(name, namespace).default._schema)
    return schema[schema.index("("):]


def repository_path(relative: str) -> str:
    """Absolute path of a repository file named in a spec (exists in a source checkout)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        relative)
