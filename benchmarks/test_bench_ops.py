"""Microbenchmarks: folded conv-QKV, spatial and temporal attention, a block, the model.

Each test times one implementation (eager, torch.compile of eager, or a fast backend) of
one op on one shape; tests of the same op and shape share a pytest-benchmark group.
"""

from __future__ import annotations

import pytest

from bench_cases import (EAGER, COMPILE, FOLDED_QKV, LAYOUTS, attention_case, block_case,
                         check_against_eager, model_case, qkv_case)
from convformer_fast.perf.flops import flop_counter_flops


def _flops(fn) -> int:
    """FLOPs of one call (FlopCounterMode; torch.compile is credited with eager's)."""
    return flop_counter_flops(fn).total


def _group(op: str, shape, layout: str | None = None) -> str:
    where = f" {layout}" if layout else ""
    dims = f" x{shape.tokens(layout)}" if layout else ""
    return f"{op}{where} {shape.id}{dims}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_folded_qkv(measure, shape, impl, layout, compile_backend):
    if impl not in (EAGER, COMPILE) and impl not in FOLDED_QKV:
        pytest.skip(f"backend {impl!r} has no standalone conv-QKV entry point")
    fn, reference = qkv_case(shape, layout, impl, compile_backend)
    check_against_eager(fn, reference, f"conv-QKV [{impl}]")
    measure(fn, _group("conv-QKV", shape, layout), _flops(fn if impl != COMPILE else reference),
            impl=impl, layout=layout, shape=shape.id)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attention(measure, shape, impl, layout, compile_backend):
    fn, reference = attention_case(shape, layout, impl, compile_backend)
    check_against_eager(fn, reference, f"{layout} attention [{impl}]")
    measure(fn, _group("attention", shape, layout), _flops(fn if impl != COMPILE else reference),
            impl=impl, layout=layout, shape=shape.id)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_block(measure, shape, impl, layout, compile_backend):
    fn, reference = block_case(shape, layout, impl, compile_backend)
    check_against_eager(fn, reference, f"{layout} block [{impl}]")
    measure(fn, _group("block", shape, layout), _flops(fn if impl != COMPILE else reference),
            impl=impl, layout=layout, shape=shape.id)


def test_model(measure, shape, impl, compile_backend):
    fn, reference = model_case(shape, impl, compile_backend)
    check_against_eager(fn, reference, f"model [{impl}]")
    measure(fn, _group("model", shape), _flops(fn if impl != COMPILE else reference),
            impl=impl, shape=shape.id)
