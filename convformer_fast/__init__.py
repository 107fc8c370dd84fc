"""convformer_fast: ConvFormer (3D human pose lifting) with a fused, exactly folded hot path.

Public API:
    ConvFormer, ConvFormerBlock, DMHCSA           eager reference (the test oracle)
    ConvFormerFast, ConvFormerBlockFast, DMHCSAFast  drop-in fast twins (backend=...)
    convert(module, backend)                      swap eager layers for fast ones in place
    available_backends()                          which backends work here, and why not
    PRESETS                                       named paper configurations
    fold_qkv, ops                                 the exact fold and the compiled ops
"""

from __future__ import annotations

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import ops
from ._extension import EXTENSION_ERROR, extension_loaded
from .backends import BACKEND_NAMES, available_backends
from .fast import ConvFormerBlockFast, ConvFormerFast, DMHCSAFast, convert
from .flops import count_flops
from .fold import fold_qkv
from .presets import PRESETS
from .reference import ConvFormer, ConvFormerBlock, DMHCSA

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES", "ConvFormer", "ConvFormerBlock", "ConvFormerBlockFast", "ConvFormerFast",
    "DMHCSA", "DMHCSAFast", "EXTENSION_ERROR", "PRESETS", "available_backends", "convert",
    "extension_loaded", "fold_qkv", "ops",
]
