"""Roofline ESTIMATE per kernel (not a measurement): executed FLOPs and minimum bytes of the
cost model in :mod:`convformer_fast.triton.bench` against the GPU peaks of
:mod:`convformer_fast.perf.roofline`, beside the eager ops the kernels replace."""

from __future__ import annotations

from typing import Sequence

from .shapes import DTYPE_TAGS, LayerShape
from .targets import gpu_targets


def _row(base: dict, kind: str, name: str, stage: str, flops: float, executed_flops: float,
         nbytes: float, gpus: Sequence[str], dtype) -> dict:
    from .. import roofline

    times = {g: roofline.kernel_bound(executed_flops, nbytes, g, dtype) for g in gpus}
    return dict(base, kind=kind, name=name, stage=stage, gflop=flops / 1e9,
                gflop_executed=executed_flops / 1e9, mbytes=nbytes / 1e6,
                us={g: t * 1e6 for g, (t, _) in times.items()},
                compute_bound={g: cb for g, (_, cb) in times.items()})


def roofline_rows(shapes: Sequence[LayerShape], dtype_tags: Sequence[str],
                  archs: Sequence[int]) -> list[dict]:
    """Roofline time per kernel (executed FLOPs, minimum bytes) and per eager stage, on the
    GPUs of the targets. An ESTIMATE on paper, not a measurement."""
    from ...triton.bench import kernel_costs

    gpus = [gpu_targets()[a].gpu for a in archs]
    rows = []
    for shape in shapes:
        for tag in dtype_tags:
            if tag == "tf32":
                continue  # no TF32 peak in roofline.GPU_SPECS
            dtype = DTYPE_TAGS[tag]
            costs = kernel_costs(shape.layout, shape.n, shape.tokens, shape.features, shape.heads,
                                 shape.kernel_sizes, dtype)
            base = dict(shape=shape.label, preset=shape.preset, batch=shape.batch,
                        layout=shape.layout, dtype=tag)
            for name, cost in costs["kernels"].items():
                rows.append(_row(base, "kernel", name, cost["stage"], cost["flops"],
                                 cost["executed_flops"], cost["min_bytes"], gpus, dtype))
            for stage, cost in costs["eager"].items():
                rows.append(_row(base, "eager", f"eager {stage}", stage, cost["flops"], cost["flops"],
                                 cost["bytes"], gpus, dtype))
    return rows
