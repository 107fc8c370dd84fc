"""convformer_fast: ConvFormer (3D human pose lifting) with a fused, exactly folded hot path.

Public API:
    ConvFormer, ConvFormerBlock, DMHCSA           eager reference (the test oracle)
    ConvFormerFast, ConvFormerBlockFast, DMHCSAFast  drop-in fast twins (backend=...)
    convert(module, backend)                      swap eager layers for fast ones in place
    available_backends()                          which backends work here, and why not
    PRESETS                                       named paper configurations
    fold_qkv, functional, ops                     the exact fold, the layers on tensors, the compiled ops
    convformer_fast.export                        freeze(), to_onnx(), to_aoti(): deployment (docs/deploy.md)
"""

from __future__ import annotations

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import functional, ops
from .backends import BACKEND_NAMES, available_backends
from .fast import ConvFormerBlockFast, ConvFormerFast, DMHCSAFast, convert
from .fold import fold_qkv
from .ops import EXTENSION_ERROR, extension_loaded
from .presets import PRESETS
from .reference import ConvFormer, ConvFormerBlock, DMHCSA

__version__ = "0.1.0"


def __getattr__(name: str):
    # The FLOP counter lives with the performance tools; imported only when asked for.
    if name == "count_flops":
        from .perf.flops import count_flops

        return count_flops
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BACKEND_NAMES", "ConvFormer", "ConvFormerBlock", "ConvFormerBlockFast", "ConvFormerFast",
    "DMHCSA", "DMHCSAFast", "EXTENSION_ERROR", "PRESETS", "available_backends", "convert",
    "extension_loaded", "fold_qkv", "functional", "ops",
]
