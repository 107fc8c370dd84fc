"""Triton kernels of the ``triton`` backend (docs/triton-kernels.md; their autotune configurations: :mod:`.configs`).

Imported lazily (by :mod:`convformer_fast.triton.ops`), never by ``import convformer_fast``:
``@triton.jit`` decides between compiled and interpreted kernels when it runs, so
``TRITON_INTERPRET=1`` must be in the environment before this module is imported.

Notation (docs/ARCHITECTURE.md section 1, kernels/qkv_layout.h). A DMHCSA input is x (N, S, F);
the folded projection is one 1-D convolution (kernel k, zero padding k // 2, 3C output
channels) seen as conv(n, c, l) over a length axis L:

    spatial : C = F, L = S, x[n, l, c]       heads split the channels, token = l
    temporal: C = S, L = F, x[n, c, l]       heads split the length,   token = c

As a GEMM (implicit im2col: the patch matrix is never written to memory):

    out[m, co] = b[co] + sum_{r < C*k} Xcol[m, r] * W[co, r]
    m = n * L + l (M = N * L rows),  r = c * k + t,  Xcol[m, r] = x(n, c, l + t - k // 2)

and ``out`` is stored straight into qkv (3, N, h, S, F/h): Q, K, V split into heads.
Attention runs on qkv rows: head problem b = n * h + head owns rows b * S .. b * S + S - 1
of each of Q, K, V (row length d_head), and writes its output into (N, S, h * d_head).

Every kernel accumulates in fp32 (fp64 for fp64 inputs) and states the ``tl.dot`` precision:
"ieee" unless the caller allows TF32 for fp32 inputs.
"""

from __future__ import annotations

import triton
import triton.language as tl

# INTERPRETED: the mode these kernels were defined in (read by triton/__init__.py and the audit)
from .configs import ATTN_BWD_CONFIGS, ATTN_CONFIGS, GEMM_CONFIGS, INTERPRETED, pruning


def _interpreter_index_squeezes_scalars() -> None:
    """Make the interpreter's ``tensor.__index__`` accept the 1-element arrays it uses for scalars.

    The interpreter of triton 3.6 (the GPU machines' version) holds a scalar kernel argument
    as a 1-element array and converts it with ``int(array)``, which numpy refuses for
    ndim > 0 arrays (2.4.6 and 2.5.5 here: "only 0-dimensional arrays can be converted to
    Python scalars"), so every loop over a runtime bound, ``range(0, C, BLOCK_K)``, failed.
    Triton 3.8 squeezes the array first; this wraps the older patcher to do the same. It
    changes nothing where the interpreter already squeezes, or has another layout."""
    import inspect

    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    try:
        unsqueezed = "int(self.handle.data))" in inspect.getsource(patch_tensor)
    except (TypeError, OSError):  # not there, or no source: nothing known to fix
        return
    if not unsqueezed:
        return

    def patch_tensor_with_squeeze(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_tensor_with_squeeze


if INTERPRETED:
    _interpreter_index_squeezes_scalars()

# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, ALLOW_TF32: tl.constexpr):
    """acc + a @ b with the precision stated: TF32 only when the caller allows it (fp32).

    out_dtype is the accumulator's: triton 3.6 defaults it to fp32 and refuses an fp64
    accumulator otherwise (3.8 takes it from acc)."""
    if ALLOW_TF32:
        return tl.dot(a, b, acc, input_precision="tf32", out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)


@triton.jit
def _qkv_channel_offset(co, N, C, S, H, HEAD_DIM, SPATIAL: tl.constexpr):
    """The part of a qkv (3, N, h, S, F/h) offset that depends on the conv output channel co.

    QkvGeometry::qkv_offset (kernels/qkv_layout.h) separates into a channel part and a
    position part, qkv_offset(n, co, l) = channel(co) + position(n, l), so a 2-D tile of
    offsets costs two 1-D vectors and one broadcast add.
    """
    which = co // C
    c = co - which * C
    if SPATIAL:  # heads split the channels; token = l
        head = c // HEAD_DIM
        return which * (N * H * S * HEAD_DIM) + head * (S * HEAD_DIM) + (c - head * HEAD_DIM)
    else:  # token = c; heads split the length
        return which * (N * H * S * HEAD_DIM) + c * HEAD_DIM


@triton.jit
def _qkv_position_offset(n, l, S, H, HEAD_DIM, SPATIAL: tl.constexpr):
    """The part of a qkv offset that depends on the position (n, l); see above."""
    if SPATIAL:
        return n * (H * S * HEAD_DIM) + l * HEAD_DIM
    else:
        head = l // HEAD_DIM
        return n * (H * S * HEAD_DIM) + head * (S * HEAD_DIM) + (l - head * HEAD_DIM)


# ----------------------------------------------------------------------------------------
# 1. Fused conv-QKV projection (forward): implicit-im2col GEMM, bias epilogue, head split
# ----------------------------------------------------------------------------------------
#
# The reduction r = (c, t) is walked tap-outer: for each tap t the input rows are the
# output positions shifted by t - k // 2 (one 1-D validity mask per tap for the zero
# padding), and channels are streamed in BLOCK_K blocks. No im2col tensor exists.


@triton.autotune(configs=GEMM_CONFIGS, key=["N", "L", "C", "KSIZE", "SPATIAL", "ALLOW_TF32"],
                 prune_configs_by=pruning("qkv_projection_fwd_kernel", "x_ptr"))
@triton.jit
def qkv_projection_fwd_kernel(
    x_ptr, w_ptr, b_ptr, qkv_ptr,
    N, L, C, S, H, HEAD_DIM, KSIZE, PAD,
    stride_xn, stride_xc, stride_xl,
    SPATIAL: tl.constexpr, ACC_FP64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Q, K, V of one DMHCSA layer from the folded weight (paper eqs. 3-6 after the fold).

    x (N, S, F) read through (stride_xn, stride_xc, stride_xl) in conv view (n, c, l);
    w (3C, C, k) contiguous, b (3C,); writes qkv (3, N, h, S, F/h) contiguous:
    qkv[which, n, head, token, e] = b[co] + sum_{t < k} sum_{c < C} W[co, c, t] x(n, c, l + t - PAD)
    Program (pid_m, pid_n): BLOCK_M output positions m = n * L + l times BLOCK_N output
    channels co; bias add, cast and the head-split store are the epilogue.
    """
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    R = C * KSIZE
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_idx = offs_m // L
    l_idx = offs_m - n_idx * L
    m_ok = offs_m < N * L
    co_ok = offs_co < 3 * C
    x_rows = x_ptr + n_idx * stride_xn + l_idx * stride_xl
    w_cols = w_ptr + offs_co * R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for t in range(0, KSIZE):
        src_l = l_idx + (t - PAD)
        row_ok = m_ok & (src_l >= 0) & (src_l < L)
        x_tap = x_rows + (t - PAD) * stride_xl
        for c0 in range(0, C, BLOCK_K):
            offs_c = c0 + tl.arange(0, BLOCK_K)
            c_ok = offs_c < C
            x_tile = tl.load(x_tap[:, None] + (offs_c * stride_xc)[None, :],
                             mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            w_tile = tl.load(w_cols[None, :] + (offs_c * KSIZE + t)[:, None],
                             mask=c_ok[:, None] & co_ok[None, :], other=0.0)
            acc = _dot(x_tile, w_tile, acc, ALLOW_TF32)
    bias = tl.load(b_ptr + offs_co, mask=co_ok, other=0.0)
    acc += bias.to(ACC)[None, :]
    out_off = (_qkv_position_offset(n_idx, l_idx, S, H, HEAD_DIM, SPATIAL)[:, None]
               + _qkv_channel_offset(offs_co, N, C, S, H, HEAD_DIM, SPATIAL)[None, :])
    tl.store(qkv_ptr + out_off, acc.to(qkv_ptr.dtype.element_ty),
             mask=m_ok[:, None] & co_ok[None, :])


# ----------------------------------------------------------------------------------------
# 2. Projection backward: grad input (a transposed convolution) and grad weight / bias
# ----------------------------------------------------------------------------------------


@triton.autotune(configs=GEMM_CONFIGS, key=["N", "L", "C", "KSIZE", "SPATIAL", "ALLOW_TF32"],
                 prune_configs_by=pruning("qkv_projection_grad_input_kernel", "g_ptr"))
@triton.jit
def qkv_projection_grad_input_kernel(
    g_ptr, w_ptr, gx_ptr,
    N, L, C, S, H, HEAD_DIM, KSIZE, PAD,
    stride_xn, stride_xc, stride_xl,
    SPATIAL: tl.constexpr, ACC_FP64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dL/dx of the projection: the transposed convolution of dL/dqkv with W.

    g = dL/dqkv (3, N, h, S, F/h) contiguous, w (3C, C, k) contiguous; writes gx (N, S, F)
    through the conv-view strides:
    gx(n, c, l) = sum_{t < k} sum_{co < 3C} g(n, co, l - t + PAD) W[co, c, t]
    Program (pid_m, pid_n): BLOCK_M positions m = n * L + l times BLOCK_N input channels;
    per tap, the shifted rows of g are gathered from the head-split layout.
    """
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    CO = 3 * C
    R = C * KSIZE
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_idx = offs_m // L
    l_idx = offs_m - n_idx * L
    m_ok = offs_m < N * L
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for t in range(0, KSIZE):
        src_l = l_idx - t + PAD
        row_ok = m_ok & (src_l >= 0) & (src_l < L)
        g_rows = g_ptr + _qkv_position_offset(n_idx, src_l, S, H, HEAD_DIM, SPATIAL)
        w_tap = w_ptr + offs_c * KSIZE + t
        for co0 in range(0, CO, BLOCK_K):
            offs_co = co0 + tl.arange(0, BLOCK_K)
            co_ok = offs_co < CO
            g_cols = _qkv_channel_offset(offs_co, N, C, S, H, HEAD_DIM, SPATIAL)
            g_tile = tl.load(g_rows[:, None] + g_cols[None, :],
                             mask=row_ok[:, None] & co_ok[None, :], other=0.0)
            w_tile = tl.load(w_tap[None, :] + (offs_co * R)[:, None],
                             mask=co_ok[:, None] & c_ok[None, :], other=0.0)
            acc = _dot(g_tile, w_tile, acc, ALLOW_TF32)
    gx_off = (n_idx * stride_xn + l_idx * stride_xl)[:, None] + (offs_c * stride_xc)[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.autotune(configs=GEMM_CONFIGS, key=["N", "L", "C", "KSIZE", "SPATIAL", "ALLOW_TF32"],
                 prune_configs_by=pruning("qkv_projection_grad_weight_kernel", "g_ptr"))
@triton.jit
def qkv_projection_grad_weight_kernel(
    g_ptr, x_ptr, gw_ptr, gb_ptr,
    N, L, C, S, H, HEAD_DIM, KSIZE, PAD,
    stride_xn, stride_xc, stride_xl,
    SPATIAL: tl.constexpr, ACC_FP64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dL/dW and dL/db of the projection, split over the positions m for parallelism.

    g = dL/dqkv (3, N, h, S, F/h), x (N, S, F) in conv view. Writes fp32 (fp64 for fp64)
    partial sums gw (SPLIT, 3C, C * k) and gb (SPLIT, 3C); the caller sums over SPLIT
    (deterministic, no atomics):
    gW[co, c, t] = sum_m g(n, co, l) x(n, c, l + t - PAD),   gb[co] = sum_m g(n, co, l)
    Program (pid_co, pid_ct, split): BLOCK_N output channels times BLOCK_K input channels
    of tap t = pid_ct % k, over positions [split * chunk, (split + 1) * chunk) with chunk a
    multiple of BLOCK_M. Programs of tap 0 and the first channel block also sum the bias
    gradient from the g tiles they load anyway.
    """
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_co = tl.program_id(0)
    pid_ct = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    M = N * L
    R = C * KSIZE
    t = pid_ct % KSIZE
    c_block = pid_ct // KSIZE
    chunk = tl.cdiv(tl.cdiv(M, num_splits), BLOCK_M) * BLOCK_M
    offs_co = pid_co * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = c_block * BLOCK_K + tl.arange(0, BLOCK_K)
    co_ok = offs_co < 3 * C
    c_ok = offs_c < C
    g_cols = g_ptr + _qkv_channel_offset(offs_co, N, C, S, H, HEAD_DIM, SPATIAL)
    x_cols = x_ptr + offs_c * stride_xc + (t - PAD) * stride_xl
    with_bias = pid_ct == 0
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC)
    m_start = split * chunk
    m_end = tl.minimum(m_start + chunk, M)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_end
        n_idx = offs_m // L
        l_idx = offs_m - n_idx * L
        g_rows = _qkv_position_offset(n_idx, l_idx, S, H, HEAD_DIM, SPATIAL)
        g_tile = tl.load(g_cols[:, None] + g_rows[None, :],
                         mask=co_ok[:, None] & m_ok[None, :], other=0.0)
        src_l = l_idx + (t - PAD)
        row_ok = m_ok & (src_l >= 0) & (src_l < L)
        x_tile = tl.load(x_cols[None, :] + (n_idx * stride_xn + l_idx * stride_xl)[:, None],
                         mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        acc = _dot(g_tile, x_tile, acc, ALLOW_TF32)
        if with_bias:
            bias_acc += tl.sum(g_tile.to(ACC), axis=1)
    gw_off = split * (3 * C * R) + (offs_co * R)[:, None] + (offs_c * KSIZE + t)[None, :]
    tl.store(gw_ptr + gw_off, acc, mask=co_ok[:, None] & c_ok[None, :])
    if with_bias:
        tl.store(gb_ptr + split * (3 * C) + offs_co, bias_acc, mask=co_ok)


# ----------------------------------------------------------------------------------------
# 3. Attention: flash-style forward and backward with several small heads packed per program
# ----------------------------------------------------------------------------------------
#
# Head problems b = n * h + head are independent, each S x S. A program owns a group of
# P = max(1, BLOCK_M // S) consecutive problems (P * S rows of Q, K, V are consecutive in
# memory) and a BLOCK_M block of those rows; keys are streamed in BLOCK_N blocks with an
# online softmax, restricted to the problems the query block touches, and a block-diagonal
# mask keeps each query inside its own problem. With S = 17 (spatial, d_head 4) and
# BLOCK_M = 128 one program serves 7 heads; with S = 243 (temporal) P = 1 and it is plain
# flash attention. The head dim is padded to BLOCK_D (a power of two >= 16) with masks.
# Scores are kept in base 2: s2 = (q . k) * sm_scale * log2(e), lse2 = log2(sum 2^s2).


@triton.jit
def _softmax_scales(HEAD_DIM, ACC: tl.constexpr):
    """1 / sqrt(d_head) and the same times log2(e), computed in the accumulation dtype
    (a float kernel argument would be fp32, too coarse for fp64 inputs)."""
    if ACC == tl.float64:
        root = tl.sqrt(tl.cast(HEAD_DIM, ACC))  # fp64 sqrt is correctly rounded (sqrt.rn.f64)
    else:
        root = tl.sqrt_rn(tl.cast(HEAD_DIM, ACC))  # not the approximate fp32 sqrt
    sm_scale = 1.0 / root
    return sm_scale, sm_scale * 1.4426950408889634


@triton.jit
def _attention_row_geometry(pid_row, pid_g, NH, S, BLOCK: tl.constexpr):
    """Rows (local to the group) of this program's block, the group's row count and base."""
    P = tl.maximum(BLOCK // S, 1)
    rows_in_group = tl.minimum(P, NH - pid_g * P) * S
    base = pid_g * P * S
    local = pid_row * BLOCK + tl.arange(0, BLOCK)
    return local, rows_in_group, base


@triton.jit
def _partner_range(first_local, rows_in_group, S, BLOCK: tl.constexpr):
    """[lo, hi): the rows of the problems that local rows first_local .. +BLOCK touch."""
    last_local = tl.minimum(first_local + BLOCK, rows_in_group) - 1
    lo = (first_local // S) * S
    hi = (last_local // S + 1) * S
    return lo, hi


@triton.jit
def _out_offset(row, S, H, stride_on, stride_oh, stride_os):
    """Offset of global qkv row (b * S + i) in the merged-head output (N, S, h * d_head)."""
    b = row // S
    i = row - b * S
    n = b // H
    head = b - n * H
    return n * stride_on + head * stride_oh + i * stride_os


@triton.autotune(configs=ATTN_CONFIGS, key=["NH", "S", "BLOCK_D", "ALLOW_TF32"],
                 prune_configs_by=pruning("attention_fwd_kernel", "qkv_ptr"))
@triton.jit
def attention_fwd_kernel(
    qkv_ptr, out_ptr, lse_ptr,
    NH, S, H, HEAD_DIM, stride_which,
    stride_on, stride_oh, stride_os,
    ACC_FP64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """softmax(Q K^T / sqrt(d_head)) V per head (paper eq. 7), heads merged on the way out.

    qkv (3, N, h, S, d_head) contiguous (Q, K, V at offsets 0, stride_which, 2 stride_which);
    writes out (N, S, h * d_head) through (stride_on, stride_oh, stride_os) and
    lse2 (N * h * S,) = log2 of each softmax denominator (fp32; fp64 for fp64 inputs), kept
    for the backward. No S x S matrix is written anywhere.
    Program (pid_m, pid_g): query rows pid_m * BLOCK_M .. of head group pid_g.
    """
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    _, qk_scale_log2 = _softmax_scales(HEAD_DIM, ACC)
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    lq, rows_in_group, base = _attention_row_geometry(pid_m, pid_g, NH, S, BLOCK_M)
    q_ok = lq < rows_in_group
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptr = qkv_ptr
    k_ptr = qkv_ptr + stride_which
    v_ptr = qkv_ptr + 2 * stride_which
    q = tl.load(q_ptr + (base + lq)[:, None] * HEAD_DIM + offs_d[None, :],
                mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l_i = tl.zeros((BLOCK_M,), dtype=ACC)
    q_problem = lq // S
    lo, hi = _partner_range(pid_m * BLOCK_M, rows_in_group, S, BLOCK_M)
    for start_n in range(lo, hi, BLOCK_N):
        lk = start_n + tl.arange(0, BLOCK_N)
        k_ok = lk < hi
        kv_off = (base + lk)[:, None] * HEAD_DIM + offs_d[None, :]
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC),
                 ALLOW_TF32) * qk_scale_log2
        valid = q_ok[:, None] & k_ok[None, :] & (q_problem[:, None] == (lk // S)[None, :])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows with no valid key yet (padding rows, or a key block of another problem)
        # keep m = -inf; shift by 0 there so that exp2 gives 0 instead of NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = _dot(p.to(v.dtype), v, acc, ALLOW_TF32)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    rows = base + lq
    tl.store(lse_ptr + rows, m_i + tl.log2(l_safe), mask=q_ok)
    o_off = _out_offset(rows, S, H, stride_on, stride_oh, stride_os)
    tl.store(out_ptr + o_off[:, None] + offs_d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def attention_bwd_preprocess_kernel(
    out_ptr, dout_ptr, delta_ptr,
    NH, S, H, HEAD_DIM,
    stride_on, stride_oh, stride_os,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[row] = sum_e dO[row, e] * O[row, e] over rows (b, i) of (N * h * S), in fp32
    (fp64 for fp64 inputs): the row term of the softmax backward."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < NH * S
    offs_d = tl.arange(0, BLOCK_D)
    mask = ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    off = _out_offset(rows, S, H, stride_on, stride_oh, stride_os)[:, None] + offs_d[None, :]
    o = tl.load(out_ptr + off, mask=mask, other=0.0).to(delta_ptr.dtype.element_ty)
    do = tl.load(dout_ptr + off, mask=mask, other=0.0).to(delta_ptr.dtype.element_ty)
    tl.store(delta_ptr + rows, tl.sum(o * do, axis=1), mask=ok)


@triton.autotune(configs=ATTN_BWD_CONFIGS, key=["NH", "S", "BLOCK_D", "ALLOW_TF32"],
                 prune_configs_by=pruning("attention_bwd_dkdv_kernel", "qkv_ptr"))
@triton.jit
def attention_bwd_dkdv_kernel(
    qkv_ptr, dout_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    NH, S, H, HEAD_DIM, stride_which,
    stride_on, stride_oh, stride_os,
    ACC_FP64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dK and dV of attention (flash-attention-2 backward), written into dqkv[1], dqkv[2].

    Program (pid_k, pid_g) owns key rows pid_k * BLOCK_M .. of head group pid_g (groups of
    max(1, BLOCK_M // S) problems; BLOCK_M is the owned side in every attention kernel) and
    streams the query rows of the problems they touch in BLOCK_N blocks:
    P = 2^(s2 - lse2), dV += P^T dO, dP = dO V^T, dS = P * (dP - delta), dK += dS^T Q * scale.
    """
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    sm_scale, qk_scale_log2 = _softmax_scales(HEAD_DIM, ACC)
    pid_k = tl.program_id(0)
    pid_g = tl.program_id(1)
    lk, rows_in_group, base = _attention_row_geometry(pid_k, pid_g, NH, S, BLOCK_M)
    k_ok = lk < rows_in_group
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_off = (base + lk)[:, None] * HEAD_DIM + offs_d[None, :]
    kv_mask = k_ok[:, None] & d_ok[None, :]
    k = tl.load(qkv_ptr + stride_which + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(qkv_ptr + 2 * stride_which + kv_off, mask=kv_mask, other=0.0)
    dk = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    dv = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    k_problem = lk // S
    lo, hi = _partner_range(pid_k * BLOCK_M, rows_in_group, S, BLOCK_M)
    for start_q in range(lo, hi, BLOCK_N):
        lq = start_q + tl.arange(0, BLOCK_N)
        q_ok = lq < hi
        rows = base + lq
        q_mask = q_ok[:, None] & d_ok[None, :]
        q = tl.load(qkv_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=q_mask, other=0.0)
        o_off = _out_offset(rows, S, H, stride_on, stride_oh, stride_os)
        do = tl.load(dout_ptr + o_off[:, None] + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + rows, mask=q_ok, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=q_ok, other=0.0)
        # Transposed scores (keys x queries) so that dK, dV need no transpose of P or dS.
        st = _dot(k, tl.trans(q), tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC),
                  ALLOW_TF32) * qk_scale_log2
        valid = k_ok[:, None] & q_ok[None, :] & (k_problem[:, None] == (lq // S)[None, :])
        pt = tl.where(valid, tl.exp2(st - lse[None, :]), 0.0)
        dv = _dot(pt.to(do.dtype), do, dv, ALLOW_TF32)
        dpt = _dot(v, tl.trans(do), tl.zeros_like(pt), ALLOW_TF32)
        dst = pt * (dpt - delta[None, :])
        dk = _dot(dst.to(q.dtype), q, dk, ALLOW_TF32)
    dk = dk * sm_scale
    tl.store(dqkv_ptr + stride_which + kv_off, dk.to(dqkv_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dqkv_ptr + 2 * stride_which + kv_off, dv.to(dqkv_ptr.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=ATTN_BWD_CONFIGS, key=["NH", "S", "BLOCK_D", "ALLOW_TF32"],
                 prune_configs_by=pruning("attention_bwd_dq_kernel", "qkv_ptr"))
@triton.jit
def attention_bwd_dq_kernel(
    qkv_ptr, dout_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    NH, S, H, HEAD_DIM, stride_which,
    stride_on, stride_oh, stride_os,
    ACC_FP64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dQ of attention, written into dqkv[0]: dQ = sum over keys of dS K * scale, with
    dS = P * (dO V^T - delta) recomputed per key block (no S x S matrix stored).
    Program (pid_m, pid_g) as in the forward kernel."""
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    sm_scale, qk_scale_log2 = _softmax_scales(HEAD_DIM, ACC)
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    lq, rows_in_group, base = _attention_row_geometry(pid_m, pid_g, NH, S, BLOCK_M)
    q_ok = lq < rows_in_group
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    rows = base + lq
    q_mask = q_ok[:, None] & d_ok[None, :]
    q_off = rows[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(qkv_ptr + q_off, mask=q_mask, other=0.0)
    o_off = _out_offset(rows, S, H, stride_on, stride_oh, stride_os)
    do = tl.load(dout_ptr + o_off[:, None] + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + rows, mask=q_ok, other=0.0)
    delta = tl.load(delta_ptr + rows, mask=q_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    q_problem = lq // S
    lo, hi = _partner_range(pid_m * BLOCK_M, rows_in_group, S, BLOCK_M)
    for start_n in range(lo, hi, BLOCK_N):
        lk = start_n + tl.arange(0, BLOCK_N)
        k_ok = lk < hi
        kv_off = (base + lk)[:, None] * HEAD_DIM + offs_d[None, :]
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(qkv_ptr + stride_which + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(qkv_ptr + 2 * stride_which + kv_off, mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC),
                 ALLOW_TF32) * qk_scale_log2
        valid = q_ok[:, None] & k_ok[None, :] & (q_problem[:, None] == (lk // S)[None, :])
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), tl.zeros_like(p), ALLOW_TF32)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, ALLOW_TF32)
    dq = dq * sm_scale
    tl.store(dqkv_ptr + q_off, dq.to(dqkv_ptr.dtype.element_ty), mask=q_mask)
