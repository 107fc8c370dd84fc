"""Cost model and timing of the Triton kernels, as clean callables for ``benchmarks/``.

    from convformer_fast.triton import bench
    bench.layer_costs("temporal", n=1, tokens=243, features=544, heads=8, kernel_sizes=(7, 7, 7))
    bench.time_layer("temporal", n=1, tokens=243, features=544, heads=8, kernel_sizes=(7, 7, 7))

Costs are analytic (README.md in this folder explains each formula): ``flops`` is useful
work (one multiply-add = 2 FLOPs), ``executed_flops`` includes what the kernels spend on
padding the head dim to BLOCK_D and packing heads, ``min_bytes`` is the traffic a fused
kernel cannot avoid (inputs read once, outputs written once) and ``eager_bytes`` a lower
bound of what the eager reference (convformer_fast.reference.DMHCSA) moves for the same
work. Nothing here needs a GPU except :func:`time_layer`.
"""

from __future__ import annotations

from typing import Sequence

import torch

DTYPE_BYTES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}


def _geometry(layout: str, tokens: int, features: int) -> tuple[int, int]:
    """(channels C, length L) of the folded convolution."""
    if layout not in ("spatial", "temporal"):
        raise ValueError(f"layout: got {layout!r}, expected 'spatial' or 'temporal'")
    return (features, tokens) if layout == "spatial" else (tokens, features)


def projection_costs(layout: str, n: int, tokens: int, features: int, kernel_sizes: Sequence[int],
                     dtype: torch.dtype = torch.bfloat16) -> dict:
    """Folded conv-QKV projection of one DMHCSA layer, forward and backward.

    E = n * tokens * features elements per activation; C channels, k = max kernel size.
    Fused forward: one GEMM of (n L) x 3C x (C k) -> 2 * 3C * C * k * (n L) = 6 E C k FLOPs;
    it reads x and the folded weight once and writes qkv once: (4E + 3C C k + 3C) * b.
    Eager forward (reference): per Q/K/V and kernel i a Conv1d (reads x, writes y_i), the
    eta scaling (reads and writes y_i) and the running sum (two reads and a write per
    kernel after the first), plus each per-kernel weight: at least
    (3 (4 n_k E + 3 (n_k - 1) E) + 3 sum_i (C C k_i + C)) * b.
    Backward: grad input and grad weight are each as large as the forward GEMM.
    Eager backward (autograd of the reference), per Q/K/V and kernel i: the eta scaling's
    input gradient (read g, write) and eta gradient (read g and y_i), the conv's grad input
    (read, write) and grad weight (read g and x) and grad bias (read g): 9E, plus
    accumulating the 3 n_k input gradients (3 (3 n_k - 1) E) and reading and writing every
    weight: at least (27 n_k E + 3 (3 n_k - 1) E + 2 * 3 sum_i (C C k_i + C)) * b.
    """
    c, length = _geometry(layout, tokens, features)
    b = DTYPE_BYTES[dtype]
    e = n * tokens * features
    k = max(kernel_sizes)
    n_k = len(kernel_sizes)
    folded_weight = 3 * c * c * k + 3 * c
    fwd_flops = 2 * (n * length) * (3 * c) * (c * k)
    eager_flops = sum(2 * (n * length) * (3 * c) * (c * ki) for ki in kernel_sizes) + 2 * 3 * n_k * e
    eager_weights = 3 * sum(c * c * ki + c for ki in kernel_sizes)
    return dict(
        fwd_flops=fwd_flops,
        fwd_min_bytes=(4 * e + folded_weight) * b,
        eager_fwd_flops=eager_flops,
        eager_fwd_bytes=(3 * (4 * n_k * e + 3 * (n_k - 1) * e) + eager_weights) * b,
        # grad x (transposed conv) + grad W; reads g (3E), x, W; writes gx and the fp32
        # partial sums of gW (one per row chunk; counted once here).
        bwd_flops=2 * fwd_flops,
        bwd_min_bytes=(5 * e + 2 * folded_weight) * b,
        eager_bwd_flops=2 * eager_flops,
        eager_bwd_bytes=(27 * n_k * e + 3 * (3 * n_k - 1) * e + 2 * eager_weights) * b,
    )


def attention_costs(n: int, heads: int, tokens: int, head_dim: int,
                    dtype: torch.dtype = torch.bfloat16, block_m: int = 128) -> dict:
    """Multi-head attention of one DMHCSA layer (paper eq. 7), forward and backward.

    NH = n * heads problems of S = tokens, E = NH * S * d elements per tensor.
    Forward: Q K^T and P V, 4 NH S^2 d FLOPs; the fused kernel reads Q, K, V, writes the
    output (heads merged) and a fp32 log-sum-exp per row: 4E b + 4 NH S bytes.
    Eager (reference DMHCSA): scores written, scaled (read + write), softmax (read + write),
    read again by P V, plus reading Q, K, V, writing the output and the head-merge copy:
    at least (6E + 6 NH S^2) * b.
    Backward: 8 NH S^2 d useful FLOPs (what eager autograd does, keeping P in memory);
    the flash-attention-2 kernels recompute the scores in both the dK/dV and the dQ
    kernel and execute 14 NH S^2 d;
    it reads Q, K, V, O, dO, lse, delta and writes dQ, dK, dV: 8E b + 12 NH S bytes.
    Eager autograd reads P and writes dP, dS and the scaled dS (S x S each, 9 NH S^2 in
    all) besides 10E for the matmul operands and results.
    executed_*: with the head dim padded to BLOCK_D = max(16, next power of two) and, when
    S <= block_m, P = block_m // S heads packed per program with a block-diagonal mask
    (every packed query meets every packed key).
    """
    b = DTYPE_BYTES[dtype]
    nh = n * heads
    e = nh * tokens * head_dim
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    pack = max(1, block_m // tokens)
    pack = min(pack, nh)
    score_pairs = nh * tokens * tokens
    executed_pairs = score_pairs * pack
    return dict(
        fwd_flops=4 * score_pairs * head_dim,
        fwd_executed_flops=4 * executed_pairs * block_d,
        fwd_min_bytes=4 * e * b + 4 * nh * tokens,
        eager_fwd_bytes=(6 * e + 6 * score_pairs) * b,
        bwd_flops=8 * score_pairs * head_dim,
        bwd_executed_flops=14 * executed_pairs * block_d,
        bwd_min_bytes=8 * e * b + 12 * nh * tokens,
        eager_bwd_bytes=(10 * e + 9 * score_pairs) * b,
    )


def layer_costs(layout: str, n: int, tokens: int, features: int, heads: int,
                kernel_sizes: Sequence[int], dtype: torch.dtype = torch.bfloat16) -> dict:
    """Both kernels of one DMHCSA layer: {"projection": {...}, "attention": {...}}."""
    return dict(
        projection=projection_costs(layout, n, tokens, features, kernel_sizes, dtype),
        attention=attention_costs(n, heads, tokens, features // heads, dtype),
    )


def kernel_costs(layout: str, n: int, tokens: int, features: int, heads: int,
                 kernel_sizes: Sequence[int], dtype: torch.dtype = torch.bfloat16) -> dict:
    """The same costs per Triton kernel (the cost model above split where an op runs
    several kernels), and per op ("stage") what the eager reference spends on it.

    Returns {"kernels": {kernel name: {stage, flops, executed_flops, min_bytes}},
             "eager": {stage: {flops, bytes}}}. Each kernel's minimum bytes count what that
    kernel alone must read and write, so the backward kernels together move more than the
    op's fused minimum (they each read dL/dqkv, or Q, K, V and dO):

      grad input  : transposed conv, FLOPs of the forward GEMM; reads g (3E) and W, writes
                    dx: (4E + 3C C k) b
      grad weight : FLOPs of the forward GEMM; reads g and x: 4E b, writes one set of
                    fp32 (fp64) partial sums of dW and db: (3C C k + 3C) * 4 (8)
      bwd preprocess: delta = rowsum(dO * O): reads O, dO, writes delta: 2E b + 4 NH S
      bwd dK/dV   : useful dV, dP, dK (6 NH S^2 d), executes those and the recomputed
                    scores (8 per packed pair and BLOCK_D); reads Q, K, V, dO, lse, delta,
                    writes dK, dV: 6E b + 8 NH S
      bwd dQ      : useful dQ (2 NH S^2 d), executes scores, dP and dQ (6); reads Q, K, V,
                    dO, lse, delta, writes dQ: 5E b + 8 NH S
    """
    proj = projection_costs(layout, n, tokens, features, kernel_sizes, dtype)
    head_dim = features // heads
    attn = attention_costs(n, heads, tokens, head_dim, dtype)
    b = DTYPE_BYTES[dtype]
    acc_bytes = 8 if dtype == torch.float64 else 4
    c, _ = _geometry(layout, tokens, features)
    k = max(kernel_sizes)
    e = n * tokens * features
    nh_s = n * heads * tokens
    folded_weight = 3 * c * c * k + 3 * c
    gemm = proj["fwd_flops"]
    # Executed attention FLOPs per unit of "matmul work" (one S x S x BLOCK_D product):
    # the forward runs two products (4 = 2 matmuls x 2 FLOPs per multiply-add).
    attn_unit = attn["fwd_executed_flops"] // 4
    useful_unit = attn["fwd_flops"] // 4

    def kernel(stage, flops, executed, nbytes):
        return dict(stage=stage, flops=flops, executed_flops=executed, min_bytes=nbytes)

    return dict(
        kernels={
            "qkv_projection_fwd_kernel": kernel("projection_fwd", gemm, gemm, proj["fwd_min_bytes"]),
            "qkv_projection_grad_input_kernel": kernel(
                "projection_bwd", gemm, gemm, (4 * e + 3 * c * c * k) * b),
            "qkv_projection_grad_weight_kernel": kernel(
                "projection_bwd", gemm, gemm, 4 * e * b + folded_weight * acc_bytes),
            "attention_fwd_kernel": kernel("attention_fwd", attn["fwd_flops"],
                                           attn["fwd_executed_flops"], attn["fwd_min_bytes"]),
            "attention_bwd_preprocess_kernel": kernel("attention_bwd", 0, 0,
                                                      2 * e * b + 4 * nh_s),
            "attention_bwd_dkdv_kernel": kernel("attention_bwd", 6 * useful_unit, 8 * attn_unit,
                                                6 * e * b + 8 * nh_s),
            "attention_bwd_dq_kernel": kernel("attention_bwd", 2 * useful_unit, 6 * attn_unit,
                                              5 * e * b + 8 * nh_s),
        },
        eager=dict(
            projection_fwd=dict(flops=proj["eager_fwd_flops"], bytes=proj["eager_fwd_bytes"]),
            projection_bwd=dict(flops=proj["eager_bwd_flops"], bytes=proj["eager_bwd_bytes"]),
            attention_fwd=dict(flops=attn["fwd_flops"], bytes=attn["eager_fwd_bytes"]),
            attention_bwd=dict(flops=attn["bwd_flops"], bytes=attn["eager_bwd_bytes"]),
        ),
    )


def _layer_inputs(layout, n, tokens, features, heads, kernel_sizes, dtype, device, seed=0):
    from ..fast import DMHCSAFast
    from ..reference import DMHCSA

    torch.manual_seed(seed)
    reference = DMHCSA(layout, tokens, features, kernel_sizes, heads).to(device, dtype)
    fast = DMHCSAFast(layout, tokens, features, kernel_sizes, heads, backend="triton").to(device, dtype)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(n, tokens, features, device=device, dtype=dtype)
    return reference, fast, x


def time_layer(layout: str, n: int, tokens: int, features: int, heads: int,
               kernel_sizes: Sequence[int] = (7, 7, 7), dtype: torch.dtype = torch.bfloat16,
               device: str = "cuda", quantiles: Sequence[float] = (0.5, 0.2, 0.8)) -> list[dict]:
    """Time each Triton kernel of one DMHCSA layer and the eager layer on a CUDA device.

    Returns rows {"stage", "ms", "ms_p20", "ms_p80", "tflops", "gbps"} for: projection
    forward / backward, attention forward / backward, the whole Triton layer forward and
    forward + backward, and the eager reference layer forward and forward + backward.
    Achieved TFLOP/s and GB/s use the useful FLOPs and minimum bytes of
    :func:`layer_costs`. Raises RuntimeError without a CUDA device.
    """
    import triton.testing

    from . import load_ops

    if not torch.cuda.is_available() or not str(device).startswith("cuda"):
        raise RuntimeError("time_layer: needs a CUDA device (the interpreter is not timed)")
    ops = load_ops()
    costs = layer_costs(layout, n, tokens, features, heads, kernel_sizes, dtype)
    proj, attn = costs["projection"], costs["attention"]
    reference, fast, x = _layer_inputs(layout, n, tokens, features, heads, kernel_sizes, dtype, device)
    with torch.no_grad():
        weight, bias = fast.folded_qkv()
    qkv = ops.qkv_projection(x, weight, bias, heads, layout)
    out, lse = torch.ops.convformer_fast.triton_attention(qkv)
    grad_out = torch.randn_like(out)
    grad_qkv = torch.ops.convformer_fast.triton_attention_backward(grad_out, qkv, out, lse)
    x_grad = x.detach().requires_grad_()

    def fwd_bwd(module):
        def run():
            module(x_grad).backward(grad_out)
        return run

    stages = [
        ("projection_fwd", lambda: ops.qkv_projection(x, weight, bias, heads, layout),
         proj["fwd_flops"], proj["fwd_min_bytes"]),
        ("projection_bwd", lambda: torch.ops.convformer_fast.triton_qkv_projection_backward(
            grad_qkv, x, weight, heads, layout), proj["bwd_flops"], proj["bwd_min_bytes"]),
        ("attention_fwd", lambda: torch.ops.convformer_fast.triton_attention(qkv),
         attn["fwd_flops"], attn["fwd_min_bytes"]),
        ("attention_bwd", lambda: torch.ops.convformer_fast.triton_attention_backward(
            grad_out, qkv, out, lse), attn["bwd_flops"], attn["bwd_min_bytes"]),
        ("triton_layer_fwd", lambda: fast(x), proj["fwd_flops"] + attn["fwd_flops"],
         proj["fwd_min_bytes"] + attn["fwd_min_bytes"]),
        ("triton_layer_fwd_bwd", fwd_bwd(fast), None, None),
        ("eager_layer_fwd", lambda: reference(x), proj["eager_fwd_flops"] + attn["fwd_flops"],
         proj["eager_fwd_bytes"] + attn["eager_fwd_bytes"]),
        ("eager_layer_fwd_bwd", fwd_bwd(reference), None, None),
    ]
    rows = []
    for name, fn, flops, nbytes in stages:
        ms, lo, hi = triton.testing.do_bench(fn, quantiles=list(quantiles))
        rows.append(dict(stage=name, layout=layout, n=n, tokens=tokens, features=features,
                         heads=heads, dtype=str(dtype), ms=ms, ms_p20=lo, ms_p80=hi,
                         tflops=flops / ms / 1e9 if flops else None,
                         gbps=nbytes / ms / 1e6 if nbytes else None,
                         device=torch.cuda.get_device_name()))
    return rows

