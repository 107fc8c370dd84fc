"""The op registry: every op of ``convformer_fast._C`` (and its Triton and emulated twins)
as one :class:`~convformer_fast.ops.spec.OpSpec`, gathered from the op modules.

Derived from it, never listed by hand:

* :data:`EXTENSION_ERROR`: ``_C`` failed to load, or lacks an op declared here (an older
  build);
* the fake (meta) kernels and autograd formulas registered with torch (:func:`_register`);
* the FLOP formulas of every op name (:func:`flop_formulas`, used by ``convformer_fast.perf.flops``);
* the backends' limits (``spec.limits``) and the op tests' shapes (``spec.samples``);
* :func:`consistency_problems`: an op that exists in one layer and not in another (schema,
  kernel, fake, autograd, FLOP formula, test), which ``tests/test_op_registry.py`` turns
  into a failure.
"""

from __future__ import annotations

import importlib
import os

import torch

from .._extension import LOAD_ERROR, REBUILD_COMMAND
from . import limits
from .spec import (CPU, CUDA, EMULATED, EMULATED_NAMESPACE, NAMESPACE, TRITON, FlopFormula, OpSpec,
                   repository_path)

#: The op modules, each declaring its op(s) as ``SPECS``.
OP_MODULES = ("qkv_projection", "winograd_weight", "attention", "spatial_attention_residual",
              "feed_forward_residual", "limits", "emulator_selftest")

OPS: dict[str, OpSpec] = {}
#: op name -> the Python file that declares it (repository-relative).
HOMES: dict[str, str] = {}
for _module_name in OP_MODULES:
    # import_module, not `from . import`: this package's __init__ rebinds some module names
    # to the functions of the same name.
    _module = importlib.import_module(f"{__package__}.{_module_name}")
    for _spec in _module.SPECS:
        OPS[_spec.name] = _spec
        HOMES[_spec.name] = f"convformer_fast/ops/{_module_name}.py"


def expected_library_ops() -> dict[str, set[str]]:
    """namespace -> the op names ``_C`` must register there."""
    expected: dict[str, set[str]] = {NAMESPACE: set(), EMULATED_NAMESPACE: set()}
    for spec in OPS.values():
        for impl, qualname in spec.qualnames().items():
            if impl != TRITON:
                namespace, name = qualname.split("::")
                expected[namespace].add(name)
    return expected


def registered_ops(namespace: str) -> set[str]:
    """Every op of ``namespace`` the dispatcher knows right now (Python-defined ones included)."""
    prefix = namespace + "::"
    return {name[len(prefix):].split(".")[0] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith(prefix)}


def _stale_library_error() -> str | None:
    missing = sorted(f"{namespace}::{name}" for namespace, names in expected_library_ops().items()
                     for name in names - registered_ops(namespace))
    if missing:
        return (f"convformer_fast._C is older than this package's Python code (ops {missing} are "
                f"not registered); rebuild it with `{REBUILD_COMMAND}`")
    return None


#: Why the compiled ops cannot be used (not built, failed to load, or older than this
#: Python code), or None when every op of the registry is there.
EXTENSION_ERROR: str | None = LOAD_ERROR or _stale_library_error()


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None


def kernel_ops(emulated: bool):
    """The ops of the CUDA kernels: ``torch.ops.convformer_fast`` (CUDA tensors) or, with
    ``emulated=True``, ``torch.ops.convformer_fast_emulated`` (the same kernel source and host
    code on CPU tensors, through the emulator: slow, for tests and debugging)."""
    if EXTENSION_ERROR:
        raise RuntimeError(f"kernel_ops: {EXTENSION_ERROR}")
    return getattr(torch.ops, EMULATED_NAMESPACE if emulated else NAMESPACE)


def flop_formulas() -> dict[str, FlopFormula]:
    """Qualified op name (every implementation's) -> multiply-adds of one call."""
    return {qualname: spec.flops for spec in OPS.values() if spec.flops is not None
            for qualname in spec.qualnames().values()}


def _register() -> None:
    """Fake kernels and autograd formulas of every op ``_C`` registers (the Triton ops
    register their own when they are defined: convformer_fast/triton/ops.py)."""
    for spec in OPS.values():
        for impl, qualname in spec.qualnames().items():
            if impl in (TRITON, CUDA) or spec.fake is None:
                continue  # CUDA shares the CPU's op; Triton's are defined elsewhere
            torch.library.register_fake(qualname)(spec.fake)
            autograd = spec.emulated_autograd if impl == EMULATED and spec.emulated_autograd else spec.autograd
            if autograd is not None:
                torch.library.register_autograd(qualname, autograd.backward,
                                                setup_context=autograd.setup_context)


def _has_kernel(qualname: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


def _has_fake(qualname: str) -> bool:
    from torch._library.simple_registry import singleton

    return singleton.find(qualname).fake_impl.kernel is not None


def cuda_kernels_built() -> bool:
    """Whether ``_C`` was compiled with its CUDA kernels."""
    return extension_loaded() and _has_kernel(f"{NAMESPACE}::attention", "CUDA")


def consistency_problems(check_files: bool = True) -> list[str]:
    """Every way the layers disagree about the ops: an op ``_C`` registers that the registry
    does not declare (or the reverse), a declared kernel missing from its dispatch key or
    its file, a missing fake, autograd formula, FLOP formula, sample or test file. Needs
    ``_C`` loaded; the Triton ops are checked when they have been defined."""
    if LOAD_ERROR:
        return [f"cannot check: {LOAD_ERROR}"]
    problems = []
    for namespace, expected in expected_library_ops().items():
        registered = registered_ops(namespace)
        if namespace == NAMESPACE:
            registered = {name for name in registered if not name.startswith("triton_")}
        problems += [f"{namespace}::{name}: registered by _C but not declared in the op registry"
                     for name in sorted(registered - expected)]
        problems += [f"{namespace}::{name}: declared in the op registry but not registered by _C"
                     for name in sorted(expected - registered)]
    triton_defined = any(name.startswith("triton_") for name in registered_ops(NAMESPACE))
    for spec in OPS.values():
        where = spec.qualname
        for impl, qualname in spec.qualnames().items():
            if impl == TRITON and not triton_defined:
                continue
            if qualname.split("::")[1] not in registered_ops(qualname.split("::")[0]):
                continue  # reported above
            key = {CPU: "CPU", EMULATED: "CPU", CUDA: "CUDA", TRITON: None}[impl]
            if spec.fake is None:  # no tensors: one kernel for every device
                key = "CompositeExplicitAutograd"
            if impl == CUDA and not cuda_kernels_built():
                key = None
            if key and not _has_kernel(qualname, key):
                problems.append(f"{qualname}: declares a {impl} kernel but has none for dispatch key {key}")
            if spec.fake is not None and not _has_fake(qualname) and impl != TRITON:
                problems.append(f"{qualname}: no fake kernel registered")
            if spec.fake is not None and spec.backward_of is None and impl != TRITON:
                if not _has_kernel(qualname, "Autograd"):
                    problems.append(f"{qualname}: no autograd formula registered")
        if spec.fake is not None and spec.flops is None:
            problems.append(f"{where}: no FLOP formula")
        if spec.fake is not None and spec.samples is None:
            problems.append(f"{where}: no sample inputs for its tests")
        if spec.fake is not None and spec.reference is None and spec.backward_of is None and not spec.note:
            problems.append(f"{where}: no reference and no note naming the test that covers it")
        if check_files:
            for path in list(spec.kernels.values()) + list(spec.tests) + [HOMES[spec.name]]:
                if not os.path.exists(repository_path(path)):
                    problems.append(f"{where}: names {path}, which does not exist")
    return problems


def markdown_table() -> str:
    """Where each part of every op lives, as the table of docs/ARCHITECTURE.md section 4
    (tests/test_architecture.py checks that the document holds exactly this table)."""

    def cell(impl):
        path = spec.kernels.get(impl)
        return f"`{path}`" if path else "-"

    rows = ["| op | CPU kernel | CUDA kernel | emulated (CUDA source on the CPU) | Triton kernel | "
            "wrapper, reference, fake, autograd, FLOPs, limits, samples | tests |",
            "|---|---|---|---|---|---|---|"]
    for spec in OPS.values():
        rows.append(f"| `{spec.name}` | {cell(CPU)} | {cell(CUDA)} | {cell(EMULATED)} | {cell(TRITON)} | "
                    f"`{HOMES[spec.name]}` | {', '.join(f'`{t}`' for t in spec.tests)} |")
    return "\n".join(rows)


if EXTENSION_ERROR is None:
    _register()
    limits.read_all()
