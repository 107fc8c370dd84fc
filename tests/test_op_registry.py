"""Every op of the registry (convformer_fast/ops/registry.py: ``OPS``), every implementation
of it that runs here, every sample the op declares: derived, never listed by hand, so a new
op, implementation or sample is tested the moment it is declared.

* the layers agree (``consistency_problems() == []``: schema, kernel, fake, autograd, FLOP
  formula, samples, files);
* ``torch.library.opcheck`` (schema, autograd registration, fake tensors, AOT dispatch) on
  every op and implementation, fp32, on its first samples;
* the fake kernel's shapes, dtypes and strides equal the real kernel's, on every sample;
* forward and gradients against the op's ``reference`` (plain PyTorch, independent of the
  kernels: unfold + einsum for the projection, an explicit softmax for attention), the
  reference evaluated in fp64 on the same inputs, elementwise at :data:`OP_TOL` /
  :data:`OP_GRAD_TOL` per dtype.

Implementations that cannot run here are generated and skipped with their reason (a CUDA
device), so the skip list shows them. Op-specific tests (bad input messages, NaN
confinement, Winograd shapes, compile / export captures) are in tests/test_ops.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from convformer_fast import ops
from convformer_fast.ops.registry import OPS, consistency_problems
from convformer_fast.ops.spec import CPU, CUDA, EMULATED, EMULATED_NAMESPACE, NAMESPACE, TRITON, TRITON_PREFIX
from convformer_fast import triton as triton_backend

# Elementwise |actual - reference| <= atol + rtol * |reference|, the reference in fp64.
OP_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-12)}
OP_GRAD_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}
DTYPES = (torch.float32, torch.float64)
# Outputs an implementation returns in another unit than the op's reference, converted
# before the comparison: (op, implementation) -> {output index: factor}. Triton's attention
# keeps its scores in base 2 and returns lse2 = lse / ln 2 for its own backward
# (convformer_fast/triton/ops.py), under the attention op's schema.
OUTPUT_UNITS = {("attention", TRITON): {1: math.log(2.0)}}
# opcheck runs each op about ten times (fake, real, AOT): it gets the first samples only.
OPCHECK_SAMPLES = 2


def unavailable(impl: str) -> str | None:
    """Why an implementation cannot run in this process, or None."""
    if ops.EXTENSION_ERROR:
        return ops.EXTENSION_ERROR
    if impl == CUDA:
        if not ops.cuda_kernels_built():
            return "convformer_fast._C was built without its CUDA kernels"
        if not torch.cuda.is_available():
            return "needs a CUDA device"
    if impl == TRITON:
        return triton_backend.unavailable_reason()
    return None


def op_of(spec, impl: str):
    """The OpOverloadPacket an implementation is reached through."""
    if impl == TRITON:
        triton_backend.load_ops()  # defines the Triton ops
        return getattr(getattr(torch.ops, NAMESPACE), TRITON_PREFIX + spec.name)
    return getattr(getattr(torch.ops, EMULATED_NAMESPACE if impl == EMULATED else NAMESPACE), spec.name)


def device_of(impl: str) -> str:
    return "cuda" if impl == CUDA or (impl == TRITON and torch.cuda.is_available()) else "cpu"


def backward_spec(spec):
    return next((other for other in OPS.values() if other.backward_of == spec.name), None)


def differentiable(spec, impl: str) -> bool:
    """Whether gradients flow through this implementation: a backward op serves it (the
    emulated ops use the default namespace's backward unless they declare their own
    autograd, which for inference kernels is a clear error)."""
    backward = backward_spec(spec)
    if spec.backward_of or backward is None:
        return False
    if impl == EMULATED:
        return spec.emulated_autograd is None and CPU in backward.kernels
    return impl in backward.kernels


def tensor_ops():
    return [spec for spec in OPS.values() if spec.fake is not None]


def cases(dtypes=DTYPES, first: int | None = None, need=lambda spec, impl: True):
    """pytest params (op, implementation, dtype, sample index) of every tensor op and
    implementation, marked skip where the implementation cannot run here."""
    params = []
    for spec in tensor_ops():
        for impl in spec.kernels:
            if not need(spec, impl):
                continue
            limits = spec.limits.get(impl)
            reason = unavailable(impl)
            for dtype in dtypes:
                if limits is not None and dtype not in limits.dtypes:
                    continue
                for index, sample in enumerate(list(spec.samples(dtype))[:first]):
                    marks = [pytest.mark.skip(reason=f"{impl}: {reason}")] if reason else []
                    params.append(pytest.param(spec.name, impl, dtype, index, marks=marks,
                                               id=f"{spec.name}-{impl}-{str(dtype)[6:]}-{sample.id}"))
    return params


def sample_args(name, impl, dtype, index):
    """The sample's arguments on the implementation's device (fresh leaves; requiring
    gradients only where the implementation is differentiable)."""
    args = list(OPS[name].samples(dtype))[index].args
    device, grads = device_of(impl), differentiable(OPS[name], impl)

    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        return t.detach().to(device).requires_grad_(grads and t.requires_grad)

    return tuple(move(a) for a in args)


# fp32 on a GPU: no TF32 in cuDNN convolutions or matmuls (the kernels follow torch's
# switches), so fp32 is compared at fp32 tolerances.
pytestmark = pytest.mark.usefixtures("exact_fp32")


def test_registry_layers_agree():
    assert consistency_problems() == []


def test_every_op_has_an_implementation_tested_here():
    """The derived params cover every tensor op (a spec without samples or kernels would
    drop out of the parametrisation silently)."""
    covered = {param.values[0] for param in cases(first=1)}
    assert covered == {spec.name for spec in tensor_ops()}


@pytest.mark.parametrize("name,impl,dtype,index", cases(dtypes=(torch.float32,), first=OPCHECK_SAMPLES))
def test_opcheck(name, impl, dtype, index):
    torch.library.opcheck(op_of(OPS[name], impl).default, sample_args(name, impl, dtype, index))


def _outputs(result):
    return result if isinstance(result, (tuple, list)) else (result,)


def _in_fp64(args):
    return tuple(a.detach().cpu().double().requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


@pytest.mark.parametrize("name,impl,dtype,index", cases())
def test_forward_matches_reference_and_fake(name, impl, dtype, index):
    spec = OPS[name]
    args = sample_args(name, impl, dtype, index)
    op = op_of(spec, impl)
    with torch.no_grad():
        real = _outputs(op(*args))
    with FakeTensorMode() as mode:
        fake = _outputs(op(*tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args)))
    for i, (r, f) in enumerate(zip(real, fake, strict=True)):
        assert (f.shape, f.dtype, f.device) == (r.shape, r.dtype, r.device), f"output {i}: fake vs real"
        if r.numel() > 1:  # strides of views are part of the contract (qkv_projection)
            assert f.stride() == r.stride(), f"output {i}: fake strides {f.stride()} vs real {r.stride()}"
    if spec.reference is None:
        return  # covered through another op (spec.note)
    with torch.no_grad():
        expected = _outputs(spec.reference(*_in_fp64(args)))
    rtol, atol = OP_TOL[dtype]
    units = OUTPUT_UNITS.get((name, impl), {})
    for i, (r, e) in enumerate(zip(real, expected, strict=True)):
        torch.testing.assert_close(r.cpu().double() * units.get(i, 1.0), e, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name} [{impl}, {dtype}] output {i}: {m}")


@pytest.mark.parametrize("name,impl,dtype,index", cases(need=differentiable))
def test_gradients_match_reference(name, impl, dtype, index):
    spec = OPS[name]
    args = sample_args(name, impl, dtype, index)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    assert inputs, f"{name}: the samples of a differentiable op must require gradients"
    out = _outputs(op_of(spec, impl)(*args))[0]
    gen = torch.Generator().manual_seed(index)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    mine = torch.autograd.grad(out, inputs, grad.to(out.device, out.dtype))
    exact_args = _in_fp64(args)
    exact_inputs = [a for a in exact_args if isinstance(a, torch.Tensor) and a.requires_grad]
    theirs = torch.autograd.grad(_outputs(spec.reference(*exact_args))[0], exact_inputs, grad)
    rtol, atol = OP_GRAD_TOL[dtype]
    for i, (m, t) in enumerate(zip(mine, theirs, strict=True)):
        torch.testing.assert_close(m.cpu().double(), t, rtol=rtol, atol=atol,
                                   msg=lambda msg: f"{name} [{impl}, {dtype}] grad of input {i}: {msg}")
