"""The functional layer: a DMHCSA layer and the two halves of a ConvFormer block as functions
of tensors, computed by a backend (:mod:`convformer_fast.backends`).

Arguments are tensors only: the input, the folded Q/K/V weight (3C, C, k) and bias (3C,)
of :func:`convformer_fast.fold.fold_qkv`, the LayerNorm's weight, bias and eps, and the
FFN's ``nn.Linear`` weights. ``backend`` is a name (``"auto"`` by default) or a
:class:`~convformer_fast.backends.Backend` already resolved (what the modules of
:mod:`convformer_fast.fast` pass: they resolve once per block forward).

A half of a block runs as one fused kernel when the backend fuses it, autograd would not
record it, and no ``branch`` function (a DropPath in training) has to see the branch;
otherwise it is composed from the backend's :meth:`~convformer_fast.backends.Backend.dmhcsa`
and plain PyTorch ops, with gradients.

    import convformer_fast.functional as CF
    weight, bias = fold_qkv(layer.conv_groups(), layer.aggregation_weights())
    y = CF.dmhcsa(x, weight, bias, num_heads=8, layout="spatial", backend="cpu")
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .backends import AUTO, Backend, Layer, needs_grad, resolve

Branch = Callable[[torch.Tensor], torch.Tensor]


def layer_of(x: torch.Tensor, weight: torch.Tensor, num_heads: int, layout: str, *tensors) -> Layer:
    """The :class:`~convformer_fast.backends.Layer` a backend is chosen for."""
    return Layer(layout, x.shape[-1] // num_heads, needs_grad(x, weight, *tensors))


def dmhcsa(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int, layout: str, *,
           backend: str | Backend = AUTO, prepared: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One DMHCSA layer after the fold (paper eqs. 3-7): x (N, S, F) -> (N, S, F).

    ``prepared``: ``backend.prepare(weight, layout)`` when the caller caches it (the modules
    do); computed here otherwise."""
    chosen = resolve(backend, x, layer_of(x, weight, num_heads, layout, bias))
    if prepared is None or chosen is not backend:
        prepared = chosen.prepare(weight, layout)
    return chosen.dmhcsa(x, weight, bias, num_heads, layout, **prepared)


def attention_residual(x: torch.Tensor, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                       eps: float, weight: torch.Tensor, bias: torch.Tensor, num_heads: int, layout: str, *,
                       backend: str | Backend = AUTO, branch: Branch | None = None,
                       prepared: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``x + branch(DMHCSA(LayerNorm(x)))``: the attention half of a block (paper eq. 8)."""
    chosen = resolve(backend, x, layer_of(x, weight, num_heads, layout, bias, norm_weight, norm_bias))
    if prepared is None or chosen is not backend:
        prepared = chosen.prepare(weight, layout)
    fused = (branch is None and norm_weight is not None and norm_bias is not None
             and chosen.can_fuse_attention(x, layout, x.shape[-1] // num_heads)
             and not needs_grad(x, norm_weight, norm_bias, weight, bias))
    if fused:
        return chosen.fused_attention_residual(x, norm_weight, norm_bias, eps, weight, bias, num_heads, layout,
                                               **prepared)
    normed = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
    out = chosen.dmhcsa(normed, weight, bias, num_heads, layout, **prepared)
    return x + (branch(out) if branch is not None else out)


def feed_forward_residual(x: torch.Tensor, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                          eps: float, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                          b2: torch.Tensor | None, *, backend: str | Backend = AUTO,
                          branch: Branch | None = None) -> torch.Tensor:
    """``x + branch(W2 GELU(W1 LayerNorm(x) + b1) + b2)``: the feed-forward half of a block
    (paper eq. 8; GELU in its exact erf form, as ``nn.GELU()``)."""
    chosen = resolve(backend, x) if not isinstance(backend, Backend) else backend
    tensors = (norm_weight, norm_bias, w1, b1, w2, b2)
    fused = (branch is None and "feed_forward" in chosen.fuses and all(t is not None for t in tensors)
             and not needs_grad(x, *tensors))
    if fused:
        return chosen.fused_feed_forward_residual(x, norm_weight, norm_bias, eps, w1, b1, w2, b2)
    out = F.linear(F.gelu(F.linear(F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps), w1, b1)), w2, b2)
    return x + (branch(out) if branch is not None else out)
