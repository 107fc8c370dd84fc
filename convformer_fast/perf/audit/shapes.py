"""What is audited: the paper's layers as (n, tokens, features) shapes, and the dtype tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

#: The audit's dtype tags; "tf32" is fp32 with TF32 tensor cores allowed.
DTYPE_TAGS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
              "fp64": torch.float64, "tf32": torch.float32}
PAPER_PRESETS = ("h36m-9", "h36m-27", "h36m-81", "h36m-243")
LAYOUTS = ("spatial", "temporal")


def dtype_tag(dtype: torch.dtype) -> str:
    """The tag of a torch dtype (exact arithmetic: fp32, not tf32)."""
    return next(tag for tag, d in DTYPE_TAGS.items() if d == dtype)


@dataclass(frozen=True)
class LayerShape:
    """One DMHCSA layer of a preset: x is (n, tokens, features)."""

    preset: str
    batch: int
    layout: str
    n: int
    tokens: int
    features: int
    heads: int
    kernel_sizes: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.preset}/b{self.batch}/{self.layout}"


def layer_shapes(presets: Sequence[str], batches: Sequence[int],
                 layouts: Sequence[str] = LAYOUTS) -> list[LayerShape]:
    from ...presets import preset_config

    shapes = []
    for preset in presets:
        cfg = preset_config(preset)
        t, j, d = cfg["num_frames"], cfg["num_joints"], cfg["embed_dim"]
        for batch in batches:
            for layout in layouts:
                n, tokens, features = (batch * t, j, d) if layout == "spatial" else (batch, t, j * d)
                shapes.append(LayerShape(preset, batch, layout, n, tokens, features,
                                         cfg["num_heads"], tuple(cfg["kernel_sizes"])))
    return shapes
