"""Named paper configurations (paper Tables 1-5): dataset and receptive field T."""

from __future__ import annotations

_PAPER_DEFAULTS = dict(
    embed_dim=32, spatial_depth=2, temporal_depth=2, kernel_sizes=(7, 7, 7),
    num_heads=8, mlp_ratio=2.0, drop_path=0.2, agg_dropout=0.2,
)

PRESETS: dict[str, dict] = {
    **{f"h36m-{t}": dict(num_frames=t, num_joints=17) for t in (9, 27, 81, 143, 243)},
    **{f"humaneva-{t}": dict(num_frames=t, num_joints=15) for t in (9, 27, 43)},
    "3dhp-9": dict(num_frames=9, num_joints=17),
}


def preset_config(name: str) -> dict:
    """The full constructor arguments of a named preset (a fresh dict)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return {**_PAPER_DEFAULTS, **PRESETS[name]}
