"""Argument validation shared by the reference and the fast modules.

Every error names the argument, what was given and what was expected.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch


def check_choice(name: str, value, choices: Sequence):
    if value not in choices:
        raise ValueError(f"{name}: got {value!r}, expected one of {list(choices)}")
    return value


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: got {value!r}, expected a positive integer")
    return int(value)


def check_nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: got {value!r}, expected a non-negative integer")
    return int(value)


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name}: got {value!r}, expected a positive number")
    return float(value)


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: got {value!r}, expected a probability in [0, 1)")
    return float(value)


def check_kernel_sizes(kernel_sizes) -> tuple[int, ...]:
    if isinstance(kernel_sizes, numbers.Integral):
        kernel_sizes = (kernel_sizes,)
    sizes = tuple(kernel_sizes)
    if not sizes or any(
        isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0 or k % 2 == 0
        for k in sizes
    ):
        raise ValueError(
            f"kernel_sizes: got {kernel_sizes!r}, expected a non-empty sequence of odd "
            "positive integers (padding k // 2 keeps the length only for odd k)"
        )
    return tuple(int(k) for k in sizes)


def check_heads(num_heads, features: int, features_name: str) -> int:
    num_heads = check_positive_int("num_heads", num_heads)
    if features % num_heads:
        raise ValueError(
            f"num_heads: {features_name} = {features} is not divisible by num_heads = "
            f"{num_heads}; expected a divisor of {features}"
        )
    return num_heads


def check_keypoints(x, num_frames: int, num_joints: int) -> None:
    """Input of ConvFormer.forward: (B, T, J, 2) floating point."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: got {type(x).__name__}, expected a torch.Tensor")
    expected = f"(B, {num_frames}, {num_joints}, 2)"
    if x.dim() != 4:
        raise ValueError(f"x: got rank {x.dim()} shape {tuple(x.shape)}, expected rank 4 {expected}")
    if not x.is_floating_point():
        raise ValueError(f"x: got dtype {x.dtype}, expected a floating-point dtype")
    _, t, j, c = x.shape
    if c != 2:
        raise ValueError(f"x: last dim is {c} (shape {tuple(x.shape)}), expected 2 (u, v) {expected}")
    if j != num_joints:
        raise ValueError(f"x: got {j} joints (shape {tuple(x.shape)}), expected num_joints={num_joints} {expected}")
    if t != num_frames:
        raise ValueError(f"x: got {t} frames (shape {tuple(x.shape)}), expected num_frames={num_frames} {expected}")


def check_tokens(x, num_tokens: int, num_features: int, where: str) -> None:
    """Input of a DMHCSA / block: (N, S, F) floating point."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where} x: got {type(x).__name__}, expected a torch.Tensor")
    if x.dim() != 3 or x.shape[1] != num_tokens or x.shape[2] != num_features:
        raise ValueError(
            f"{where} x: got shape {tuple(x.shape)}, expected (N, {num_tokens}, {num_features})"
        )
    if not x.is_floating_point():
        raise ValueError(f"{where} x: got dtype {x.dtype}, expected a floating-point dtype")
