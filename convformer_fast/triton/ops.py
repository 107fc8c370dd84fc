"""Launch wrappers, ``torch.library`` ops and autograd of the Triton backend.

The Triton kernels implement the ops of the registry (:mod:`convformer_fast.ops`) under
the prefix ``triton_`` in namespace ``convformer_fast``, with the schemas ``csrc/ops.cpp``
wrote for the C++ ops (read back from the loaded library, never written twice):

    triton_qkv_projection(x, weight, bias, num_heads, layout, winograd_weight=None)
        -> qkv (3, N, h, S, F/h)          (winograd_weight, a CPU shortcut, is ignored)
    triton_qkv_projection_backward(grad_qkv, x, weight, num_heads, layout)
        -> (grad_x, grad_weight, grad_bias)
    triton_attention(qkv) -> (out (N, S, h * d_head), lse2 (N, h, S))
    triton_attention_backward(grad_out, qkv, out, lse2) -> grad_qkv (3, N, h, S, d_head)

qkv uses the layout of kernels/qkv_layout.h (the C++ op's), so backends agree. The forward
ops carry autograd formulas whose backward calls the backward ops.

On a GPU the ops are ``torch.library.triton_op``s launching through ``wrap_triton``, so
torch.compile and torch.export see the kernels. Under ``TRITON_INTERPRET=1`` the kernels
are Python functions that ``wrap_triton`` cannot trace, so the same implementations are
registered as opaque ``custom_op``s with explicit fake (shape) functions instead: compiled
graphs call them as single nodes.
"""

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import triton

from ..ops.spec import FLOAT_DTYPES, NAMESPACE, TRITON_PREFIX, library_schema
from . import MAX_HEAD_DIM, configs, kernels

INTERPRETED = kernels.INTERPRETED
SUPPORTED_DTYPES = FLOAT_DTYPES
LAYOUTS = ("spatial", "temporal")
# Kernel offsets are int32.
MAX_ELEMENTS = 2**31 - 1


# ---------------------------------------------------------------------------------------
# Input checks: clear errors instead of Triton compile errors
# ---------------------------------------------------------------------------------------


def _check_tensors(kernel: str, **tensors: torch.Tensor) -> torch.dtype:
    """Device, dtype and size limits shared by every op; returns the common dtype."""
    names = list(tensors)
    first = tensors[names[0]]
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{kernel}: {name} is a {type(t).__name__}, expected a torch.Tensor")
        if t.device.type != "cuda" and not INTERPRETED:
            raise ValueError(
                f"{kernel}: {name} is on {t.device}; the Triton kernels need CUDA tensors (to run "
                f"them on CPU tensors, set TRITON_INTERPRET=1 before convformer_fast.triton.ops "
                f"is first imported)"
            )
        if t.device.type not in ("cuda", "cpu"):
            raise ValueError(f"{kernel}: {name} is on {t.device}, expected a cuda (or cpu under "
                             "the interpreter) tensor")
        if t.device != first.device:
            raise ValueError(f"{kernel}: {name} is on {t.device} but {names[0]} is on "
                             f"{first.device}; expected one device")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{kernel}: {name} has dtype {t.dtype}, expected one of "
                             f"{[str(d) for d in SUPPORTED_DTYPES]}")
        if t.dtype != first.dtype:
            raise ValueError(f"{kernel}: mixed dtypes: {name} is {t.dtype} but {names[0]} is "
                             f"{first.dtype}; expected one dtype")
        if t.numel() > MAX_ELEMENTS:
            raise ValueError(f"{kernel}: {name} has {t.numel()} elements, above the int32 "
                             f"offset limit of {MAX_ELEMENTS}; split the batch")
    if INTERPRETED and first.dtype == torch.bfloat16:
        raise ValueError(f"{kernel}: bfloat16 is not supported under TRITON_INTERPRET=1 (the "
                         "interpreter has no bfloat16 arithmetic); use a GPU, or float16/float32")
    return first.dtype


def _check_head_dim(kernel: str, head_dim: int) -> None:
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"{kernel}: head dim {head_dim} is above the largest supported, "
                         f"{MAX_HEAD_DIM} (num_features / num_heads); use more heads")


def _projection_geometry(kernel, x, weight, num_heads, layout, bias=None):
    """Validate a projection call and return (N, S, F, C, L, k, head_dim)."""
    if layout not in LAYOUTS:
        raise ValueError(f"{kernel}: layout {layout!r}, expected one of {list(LAYOUTS)}")
    if x.dim() != 3:
        raise ValueError(f"{kernel}: x has shape {tuple(x.shape)}, expected (N, S, F)")
    n, s, f = x.shape
    if num_heads <= 0 or f % num_heads:
        raise ValueError(f"{kernel}: num_heads = {num_heads} does not divide F = {f}")
    c, length = (f, s) if layout == "spatial" else (s, f)
    if weight.dim() != 3 or weight.shape[0] != 3 * c or weight.shape[1] != c or weight.shape[2] % 2 == 0:
        raise ValueError(f"{kernel}: weight has shape {tuple(weight.shape)}, expected "
                         f"(3C, C, k) = ({3 * c}, {c}, odd k) for the {layout} layout")
    if bias is not None and bias.shape != (3 * c,):
        raise ValueError(f"{kernel}: bias has shape {tuple(bias.shape)}, expected ({3 * c},)")
    _check_head_dim(kernel, f // num_heads)
    if 3 * x.numel() > MAX_ELEMENTS:
        raise ValueError(f"{kernel}: qkv would have {3 * x.numel()} elements, above the int32 "
                         f"offset limit of {MAX_ELEMENTS}; split the batch")
    return n, s, f, c, length, weight.shape[2], f // num_heads


def _conv_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(stride over n, c, l) of a contiguous (N, S, F) tensor in conv view."""
    s, f = x.shape[1], x.shape[2]
    return (s * f, 1, f) if layout == "spatial" else (s * f, f, 1)


def _allow_tf32(t: torch.Tensor) -> bool:
    """TF32 tensor-core inputs only where torch itself allows them for fp32 matmuls."""
    return t.dtype == torch.float32 and t.is_cuda and bool(torch.backends.cuda.matmul.allow_tf32)


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch(kernel):
    """wrap_triton on a GPU (traceable); the plain kernel under the interpreter."""
    return kernel if INTERPRETED else torch.library.wrap_triton(kernel)


def _block_d(head_dim: int) -> int:
    # tl.dot needs every dimension >= 16; pad the head dim to a power of two with masks.
    return max(16, triton.next_power_of_2(head_dim))


def _weight_grad_splits(rows: int, out_channels: int, reduction: int, sm_count: int) -> int:
    """How many row chunks the weight-gradient GEMM is split into (partial sums)."""
    if INTERPRETED:
        return 2 if rows > 256 else 1  # exercises the split path at test sizes
    tiles = triton.cdiv(out_channels, 64) * triton.cdiv(reduction, 64)
    return max(1, min(triton.cdiv(4 * sm_count, tiles), triton.cdiv(rows, 512), 256))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


# Op names (errors name the op).
_PROJ = "triton_qkv_projection"
_PROJ_BWD = "triton_qkv_projection_backward"
_ATTN = "triton_attention"
_ATTN_BWD = "triton_attention_backward"


# ---------------------------------------------------------------------------------------
# Launch plans: the one place where kernel arguments are derived from the op's tensors.
# The ops run them; convformer_fast.perf.audit compiles them for sm_80 / sm_90 without a GPU
# (from "meta" tensors), so the audit sees exactly the specialisations the ops launch.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelLaunch:
    """``kernel[grid](*args, **kwargs)``: grid is a function of the chosen config's
    meta-parameters (as Triton calls it), args may hold tensors, ints and None."""

    kernel: Any
    grid: Callable[[dict], tuple]
    args: tuple
    kwargs: dict

    def run(self, config: triton.Config | None = None) -> None:
        """Launch; ``config``: this configuration's meta-parameters instead of the
        autotuner's choice (the tests force each configuration a GPU may pick)."""
        if config is None:
            _launch(self.kernel)[self.grid](*self.args, **self.kwargs)
            return
        kernel = self.kernel
        while hasattr(kernel, "configs"):  # under @triton.autotune: launch the kernel itself
            kernel = kernel.fn
        meta = {**self.kwargs, **config.all_kwargs()}
        _launch(kernel)[self.grid](*self.args, **meta)


def _run(launches: list[KernelLaunch], like: torch.Tensor) -> None:
    with _device_guard(like):
        for launch in launches:
            launch.run()


def qkv_projection_plan(x, weight, bias, num_heads, layout, allow_tf32=False):
    """Allocate qkv and plan the forward kernel: ``(qkv, [KernelLaunch])``. Shapes are
    validated here; devices and dtypes by the op."""
    n, s, f, c, length, ksize, head_dim = _projection_geometry(_PROJ, x, weight, num_heads, layout,
                                                               bias)
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    qkv = x.new_empty((3, n, num_heads, s, head_dim))
    if x.numel() == 0:
        return qkv, []  # an empty grid is not launched
    sxn, sxc, sxl = _conv_strides(x, layout)

    def grid(meta):
        return (triton.cdiv(n * length, meta["BLOCK_M"]), triton.cdiv(3 * c, meta["BLOCK_N"]))

    launch = KernelLaunch(
        kernels.qkv_projection_fwd_kernel, grid,
        (x, weight, bias, qkv, n, length, c, s, num_heads, head_dim, ksize, ksize // 2, sxn, sxc, sxl),
        dict(SPATIAL=layout == "spatial", ACC_FP64=x.dtype == torch.float64,
             ALLOW_TF32=allow_tf32))
    return qkv, [launch]


def qkv_projection_backward_plan(grad_qkv, x, weight, num_heads, layout, allow_tf32=False,
                                 sm_count=1, splits=None):
    """Allocate grad x and the fp32 (fp64) partial sums of grad W and grad b, and plan the two
    backward kernels: ``((grad_x, grad_w_parts, grad_b_parts), [KernelLaunch])``.
    ``splits``: row chunks of the weight gradient (default: as many as keep the GPU busy)."""
    n, s, f, c, length, ksize, head_dim = _projection_geometry(_PROJ_BWD, x, weight, num_heads,
                                                               layout)
    if grad_qkv.shape != (3, n, num_heads, s, head_dim):
        raise ValueError(f"{_PROJ_BWD}: grad_qkv has shape {tuple(grad_qkv.shape)}, expected "
                         f"{(3, n, num_heads, s, head_dim)}")
    grad_qkv, x, weight = grad_qkv.contiguous(), x.contiguous(), weight.contiguous()
    sxn, sxc, sxl = _conv_strides(x, layout)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows, reduction = n * length, c * ksize
    splits = splits or _weight_grad_splits(rows, 3 * c, reduction, sm_count)
    grad_x = torch.empty_like(x)
    grad_w_parts = x.new_empty((splits, 3 * c, reduction), dtype=acc_dtype)
    grad_b_parts = x.new_empty((splits, 3 * c), dtype=acc_dtype)
    outputs = (grad_x, grad_w_parts, grad_b_parts)
    if x.numel() == 0:
        return outputs, []
    common = dict(SPATIAL=layout == "spatial", ACC_FP64=x.dtype == torch.float64,
                  ALLOW_TF32=allow_tf32)
    shape_args = (n, length, c, s, num_heads, head_dim, ksize, ksize // 2, sxn, sxc, sxl)

    def grid_x(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_N"]))

    def grid_w(meta):
        return (triton.cdiv(3 * c, meta["BLOCK_N"]), triton.cdiv(c, meta["BLOCK_K"]) * ksize, splits)

    return outputs, [
        KernelLaunch(kernels.qkv_projection_grad_input_kernel, grid_x,
                     (grad_qkv, weight, grad_x, *shape_args), common),
        KernelLaunch(kernels.qkv_projection_grad_weight_kernel, grid_w,
                     (grad_qkv, x, grad_w_parts, grad_b_parts, *shape_args), common),
    ]


def _attention_grid(s: int, nh: int):
    """Programs (row blocks of a head group, head groups): BLOCK_M rows owned per program,
    max(1, BLOCK_M // S) heads packed per group."""

    def grid(meta):
        pack = max(1, meta["BLOCK_M"] // s)
        return (triton.cdiv(min(pack, nh) * s, meta["BLOCK_M"]), triton.cdiv(nh, pack))

    return grid


def attention_plan(qkv, allow_tf32=False):
    """Allocate out and lse2 and plan the forward kernel: ``((out, lse), [KernelLaunch])``."""
    n, h, s, head_dim = _attention_geometry(_ATTN, qkv)
    qkv = qkv.contiguous()
    out = qkv.new_empty((n, s, h * head_dim))
    lse_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    lse = qkv.new_empty((n, h, s), dtype=lse_dtype)
    if qkv.numel() == 0:
        return (out, lse), []
    nh = n * h
    launch = KernelLaunch(
        kernels.attention_fwd_kernel, _attention_grid(s, nh),
        (qkv, out, lse, nh, s, h, head_dim, nh * s * head_dim, s * h * head_dim, head_dim,
         h * head_dim),
        dict(ACC_FP64=qkv.dtype == torch.float64, ALLOW_TF32=allow_tf32,
             BLOCK_D=_block_d(head_dim)))
    return (out, lse), [launch]


def attention_backward_plan(grad_out, qkv, out, lse, allow_tf32=False):
    """Allocate grad qkv and the row terms delta and plan the three backward kernels:
    ``(grad_qkv, [KernelLaunch])``."""
    n, h, s, head_dim = _attention_geometry(_ATTN_BWD, qkv)
    for name, t, shape in (("grad_out", grad_out, (n, s, h * head_dim)),
                           ("out", out, (n, s, h * head_dim)), ("lse", lse, (n, h, s))):
        if t.shape != shape:
            raise ValueError(f"{_ATTN_BWD}: {name} has shape {tuple(t.shape)}, expected {shape}")
    lse_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    if lse.dtype != lse_dtype or lse.device != qkv.device:
        raise ValueError(f"{_ATTN_BWD}: lse is {lse.dtype} on {lse.device}, expected {lse_dtype} on "
                         f"{qkv.device} (the second output of {_ATTN})")
    grad_out, qkv, out, lse = grad_out.contiguous(), qkv.contiguous(), out.contiguous(), lse.contiguous()
    nh = n * h
    block_d = _block_d(head_dim)
    delta = torch.empty_like(lse)
    grad_qkv = torch.empty_like(qkv)
    if qkv.numel() == 0:
        return grad_qkv, []
    out_strides = (s * h * head_dim, head_dim, h * head_dim)
    common = dict(ACC_FP64=qkv.dtype == torch.float64, ALLOW_TF32=allow_tf32, BLOCK_D=block_d)
    args = (nh, s, h, head_dim, nh * s * head_dim, *out_strides)
    preprocess_rows = configs.preprocess_block_rows(block_d)
    grid = _attention_grid(s, nh)  # both kernels own BLOCK_M rows (keys for dK/dV, queries for dQ)
    return grad_qkv, [
        KernelLaunch(kernels.attention_bwd_preprocess_kernel,
                     lambda meta: (triton.cdiv(nh * s, meta["BLOCK_M"]),),
                     (out, grad_out, delta, nh, s, h, head_dim, *out_strides),
                     dict(BLOCK_M=preprocess_rows, BLOCK_D=block_d)),
        KernelLaunch(kernels.attention_bwd_dkdv_kernel, grid,
                     (qkv, grad_out, lse, delta, grad_qkv, *args), common),
        KernelLaunch(kernels.attention_bwd_dq_kernel, grid,
                     (qkv, grad_out, lse, delta, grad_qkv, *args), common),
    ]


# ---------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------


def _qkv_projection_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                         layout: str, winograd_weight: torch.Tensor | None = None) -> torch.Tensor:
    _check_tensors(_PROJ, x=x, weight=weight, bias=bias)
    qkv, launches = qkv_projection_plan(x, weight, bias, num_heads, layout, _allow_tf32(x))
    _run(launches, x)
    return qkv


def _qkv_projection_backward_impl(grad_qkv: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                  num_heads: int, layout: str
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = _check_tensors(_PROJ_BWD, grad_qkv=grad_qkv, x=x, weight=weight)
    (grad_x, grad_w_parts, grad_b_parts), launches = qkv_projection_backward_plan(
        grad_qkv, x, weight, num_heads, layout, _allow_tf32(x), _sm_count(x.device))
    if x.numel() == 0:
        return grad_x, torch.zeros_like(weight), weight.new_zeros((weight.shape[0],))
    _run(launches, x)
    grad_weight = grad_w_parts.sum(0).view(weight.shape).to(dtype)
    grad_bias = grad_b_parts.sum(0).to(dtype)
    return grad_x, grad_weight, grad_bias


def _attention_geometry(kernel, qkv):
    if qkv.dim() != 5 or qkv.shape[0] != 3:
        raise ValueError(f"{kernel}: qkv has shape {tuple(qkv.shape)}, expected (3, N, h, S, d_head)")
    _, n, h, s, head_dim = qkv.shape
    _check_head_dim(kernel, head_dim)
    return n, h, s, head_dim


def _attention_impl(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_tensors(_ATTN, qkv=qkv)
    (out, lse), launches = attention_plan(qkv, _allow_tf32(qkv))
    _run(launches, qkv)
    return out, lse


def _attention_backward_impl(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor) -> torch.Tensor:
    _check_tensors(_ATTN_BWD, grad_out=grad_out, qkv=qkv, out=out)
    grad_qkv, launches = attention_backward_plan(grad_out, qkv, out, lse, _allow_tf32(qkv))
    _run(launches, qkv)
    return grad_qkv


# ---------------------------------------------------------------------------------------
# Fake (shape) functions: used as the fake kernels of the interpreted custom ops
# ---------------------------------------------------------------------------------------


def _qkv_projection_fake(x, weight, bias, num_heads, layout, winograd_weight=None):
    _check_tensors(_PROJ, x=x, weight=weight, bias=bias)
    n, s, f, _, _, _, head_dim = _projection_geometry(_PROJ, x, weight, num_heads, layout, bias)
    return x.new_empty((3, n, num_heads, s, head_dim))


def _qkv_projection_backward_fake(grad_qkv, x, weight, num_heads, layout):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty((weight.shape[0],))


def _attention_fake(qkv):
    _check_tensors(_ATTN, qkv=qkv)
    n, h, s, head_dim = _attention_geometry(_ATTN, qkv)
    lse_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    return qkv.new_empty((n, s, h * head_dim)), qkv.new_empty((n, h, s), dtype=lse_dtype)


def _attention_backward_fake(grad_out, qkv, out, lse):
    return torch.empty_like(qkv)


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------

def _define(name, impl, fake):
    qualname = f"{NAMESPACE}::{name}"
    schema = library_schema(f"{NAMESPACE}::{name.removeprefix(TRITON_PREFIX)}")
    if INTERPRETED:
        op = torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
        op.register_fake(fake)
    else:
        # triton_op registers impl itself as the fake kernel (wrap_triton makes it traceable).
        # torch 2.11's triton_op ignores schema= and infers it from impl's annotations, so
        # those must spell the same schema (inference writes int as SymInt, which takes the
        # same Python ints): checked here rather than found in a later call.
        op = torch.library.triton_op(qualname, impl, mutates_args=(), schema=schema)
        registered = str(op._opoverload._schema)
        if registered[registered.index("("):].replace("SymInt", "int") != schema:
            raise RuntimeError(f"{qualname}: registered as {registered!r}, but csrc/ops.cpp says "
                               f"{schema!r}; the annotations of {impl.__name__} disagree")
    return op


triton_qkv_projection = _define(_PROJ, _qkv_projection_impl, _qkv_projection_fake)
triton_qkv_projection_backward = _define(_PROJ_BWD, _qkv_projection_backward_impl,
                                         _qkv_projection_backward_fake)
triton_attention = _define(_ATTN, _attention_impl, _attention_fake)
triton_attention_backward = _define(_ATTN_BWD, _attention_backward_impl, _attention_backward_fake)


def _projection_setup_context(ctx, inputs, output):
    x, weight, _bias, num_heads, layout, _winograd_weight = inputs
    ctx.save_for_backward(x, weight)
    ctx.num_heads, ctx.layout = num_heads, layout


def _projection_backward(ctx, grad_qkv):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.convformer_fast.triton_qkv_projection_backward(
        grad_qkv, x, weight, ctx.num_heads, ctx.layout)
    return grad_x, grad_weight, grad_bias, None, None, None


def _attention_setup_context(ctx, inputs, output):
    (qkv,) = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.mark_non_differentiable(lse)


def _attention_backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    if grad_out is None:
        return None
    return torch.ops.convformer_fast.triton_attention_backward(grad_out, qkv, out, lse)


triton_qkv_projection.register_autograd(_projection_backward, setup_context=_projection_setup_context)
triton_attention.register_autograd(_attention_backward, setup_context=_attention_setup_context)


# ---------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------


def qkv_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                   layout: str) -> torch.Tensor:
    """Folded conv-QKV projection (one kernel): x (N, S, F), weight (3C, C, k), bias (3C,)
    from :func:`convformer_fast.fold.fold_qkv` -> qkv (3, N, h, S, F/h), the layout of the
    C++ op ``convformer_fast::qkv_projection``. Differentiable w.r.t. x, weight and bias."""
    return torch.ops.convformer_fast.triton_qkv_projection(x, weight, bias, num_heads, layout)


def attention(qkv: torch.Tensor) -> torch.Tensor:
    """Fused multi-head attention (paper eq. 7): qkv (3, N, h, S, d_head) -> (N, S, h*d_head),
    heads concatenated. Differentiable w.r.t. qkv."""
    return torch.ops.convformer_fast.triton_attention(qkv)[0]


def dmhcsa(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
           layout: str) -> torch.Tensor:
    """A whole DMHCSA layer after the fold: projection, then attention. (N, S, F) -> (N, S, F)."""
    return attention(qkv_projection(x, weight, bias, num_heads, layout))
