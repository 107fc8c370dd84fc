"""The exact fold of docs/ARCHITECTURE.md section 2, shared by every fast backend.

Convolution is linear in its weights, so the n filters of Q (likewise K, V) followed by the
eta-weighted sum (paper eq. 6) are one convolution:

    W_Q = sum_i eta[0, i] * pad(W_Q,i)        b_Q = sum_i eta[0, i] * b_Q,i

(smaller kernels zero-padded symmetrically to the largest). Q, K and V stack into one
weight of shape (3C, C, k_max). The fold is weight-sized, exact and differentiable, so
gradients reach every per-kernel weight and theta through it, and an aggregation-dropout
mask on eta is folded the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_qkv(conv_groups: tuple[nn.ModuleList, ...], eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the Q/K/V filter banks with aggregation weights ``eta`` (3, n).

    Returns ``(weight (3C, C, k_max), bias (3C,))``.
    """
    k_max = max(conv.kernel_size[0] for convs in conv_groups for conv in convs)
    weights, biases = [], []
    for row, convs in enumerate(conv_groups):
        weights.append(sum(
            eta[row, i] * F.pad(conv.weight, ((k_max - conv.kernel_size[0]) // 2,) * 2)
            for i, conv in enumerate(convs)
        ))
        biases.append(sum(eta[row, i] * conv.bias for i, conv in enumerate(convs)))
    return torch.cat(weights), torch.cat(biases)
