"""The ``triton`` backend: fused Triton kernels for the folded conv-QKV projection and for
attention, forward and backward (README.md in this folder: kernels, cost model, testing).

Importing this package is cheap and does not define any kernel. ``@triton.jit`` decides
between compiled and interpreted kernels when it runs, and ``TRITON_INTERPRET=1`` (the
CPU interpreter) must be set before that, so the kernels and their ``torch.library`` ops
live in :mod:`convformer_fast.triton.ops`, imported on first use (:func:`load_ops`).

    from convformer_fast.triton import load_ops
    tops = load_ops()
    qkv = tops.qkv_projection(x, weight, bias, num_heads, layout)   # (3, N, h, S, F/h)
    out = tops.attention(qkv)                                        # (N, S, F)
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import torch

INTERPRET_ENV_VAR = "TRITON_INTERPRET"
#: Largest head dim of the kernels: BLOCK_D = 256 (the paper's d = 64 model has
#: J*d/h = 136 -> 256).
MAX_HEAD_DIM = 256
_KERNELS_MODULE = __name__ + ".kernels"

_triton_import_error: str | None = None
_triton_checked = False


def _triton_error() -> str | None:
    """Why ``import triton`` fails here, or None. Checked once."""
    global _triton_checked, _triton_import_error
    if not _triton_checked:
        _triton_checked = True
        try:
            import triton  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install raising anything else
            _triton_import_error = f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return _triton_import_error


def interpreter_requested() -> bool:
    """TRITON_INTERPRET is set to a true value in the environment (read now)."""
    return os.environ.get(INTERPRET_ENV_VAR, "0") not in ("", "0")


def interpreted() -> bool:
    """Whether the kernels run (or, once defined, will run) through the CPU interpreter.

    Once the kernel module is imported its mode is fixed; before that, the environment
    decides."""
    kernels = sys.modules.get(_KERNELS_MODULE)
    if kernels is not None:
        return kernels.INTERPRETED
    return interpreter_requested()


def unavailable_reason() -> str | None:
    """Why the Triton kernels cannot run in this process, or None if they can."""
    error = _triton_error()
    if error:
        return error
    kernels = sys.modules.get(_KERNELS_MODULE)
    if kernels is not None and not kernels.INTERPRETED and interpreter_requested():
        if not torch.cuda.is_available():
            return (f"the Triton kernels were defined before {INTERPRET_ENV_VAR}=1 was set, so "
                    "they are compiled for a GPU and no CUDA device is available")
    if not interpreted() and not torch.cuda.is_available():
        return (f"no CUDA device, and {INTERPRET_ENV_VAR}=1 is not set (set it before triton "
                "kernels are defined to run them on CPU tensors through the interpreter)")
    return None


def supported_devices() -> tuple[str, ...]:
    """cuda always; cpu only through the interpreter."""
    return ("cuda", "cpu") if interpreted() else ("cuda",)


def load_ops() -> ModuleType:
    """Import (once) and return :mod:`convformer_fast.triton.ops`: defines the kernels and
    registers the ``convformer_fast::triton_*`` ops. Raises RuntimeError when triton is
    missing."""
    error = _triton_error()
    if error:
        raise RuntimeError(f"convformer_fast.triton: {error}")
    return importlib.import_module(__name__ + ".ops")
