"""Options and parametrisation of the microbenchmarks (run: pytest benchmarks/ --benchmark-only).

    --smoke / CONVFORMER_BENCH_SMOKE=1   one tiny shape, one timed call per benchmark; the
                                         compile baseline uses dynamo with its "eager" backend
                                         (inductor needs ~20 s per graph on a cold cache):
                                         checks that every benchmark still runs, times nothing
    --bench-presets h36m-9,h36m-27,...   paper shapes (default h36m-9/27/81/243)
    --bench-batches 1,16                 batch 1 and a throughput batch
    --bench-backends eager,compile,...   implementations (default: eager, compile and every
                                         available fast backend that runs on the device; an
                                         emulation such as cuda_emulated only in --smoke)
    --bench-compile-backend inductor     backend of the torch.compile baseline
    --bench-threads N                    torch.set_num_threads
    --bench-device cpu                   cpu, or cuda where a GPU is present (timed calls
                                         end with torch.cuda.synchronize)

Benchmarks are grouped by op, layout and shape, so pytest-benchmark's table compares the
implementations on the same input; extra_info holds each call's FLOPs (FlopCounterMode).
"""

from __future__ import annotations

import os

import pytest
import torch

import convformer_fast as cf
from bench_cases import COMPILE, EAGER, paper_shape, tiny_shape

SMOKE_ENV = "CONVFORMER_BENCH_SMOKE"
PAPER_PRESETS = "h36m-9,h36m-27,h36m-81,h36m-243"


def pytest_addoption(parser):
    group = parser.getgroup("convformer_fast benchmarks")
    group.addoption("--smoke", action="store_true",
                    help=f"tiny shape, one call per benchmark (also {SMOKE_ENV}=1)")
    group.addoption("--bench-presets", default=PAPER_PRESETS)
    group.addoption("--bench-batches", default="1,16", help="batch 1 and a throughput batch")
    group.addoption("--bench-backends", default=None)
    group.addoption("--bench-compile-backend", default=None)
    group.addoption("--bench-threads", type=int, default=None)
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"))


def is_smoke(config) -> bool:
    return config.getoption("--smoke") or os.environ.get(SMOKE_ENV, "") not in ("", "0")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def device(config) -> str:
    chosen = config.getoption("--bench-device")
    if chosen == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: no CUDA device here")
    return chosen


def implementations(config) -> list[str]:
    fast = [name for name, info in cf.available_backends().items()
            if info.available and name != EAGER and device(config) in info.devices]
    chosen = config.getoption("--bench-backends")
    if not chosen:
        # Emulations (cuda_emulated) are not worth timing: only the smoke pass runs them,
        # to check that every benchmark still works through them.
        return [EAGER, COMPILE] + [name for name in fast
                                   if is_smoke(config) or not cf.available_backends()[name].emulated]
    names = _split(chosen)
    unknown = [n for n in names if n not in [EAGER, COMPILE] + fast]
    if unknown:
        raise pytest.UsageError(f"--bench-backends: unavailable {unknown}; available: "
                                f"{[EAGER, COMPILE] + fast}")
    return names


def shapes(config):
    if is_smoke(config):
        return [tiny_shape(device(config))]
    return [paper_shape(p, int(b), device(config)) for p in _split(config.getoption("--bench-presets"))
            for b in _split(config.getoption("--bench-batches"))]


def pytest_configure(config):
    threads = config.getoption("--bench-threads", default=None)
    if threads:
        torch.set_num_threads(threads)


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "shape" in metafunc.fixturenames:
        cases = shapes(config)
        metafunc.parametrize("shape", cases, ids=[s.id for s in cases])
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", implementations(config))


@pytest.fixture
def smoke(request) -> bool:
    return is_smoke(request.config)


@pytest.fixture
def compile_backend(request, smoke) -> str:
    chosen = request.config.getoption("--bench-compile-backend")
    return chosen or ("eager" if smoke else "inductor")


@pytest.fixture
def measure(benchmark, smoke, request):
    """measure(fn, group, **info): warm up (compiles), then time fn in `group`."""
    cuda = device(request.config) == "cuda"

    def run(call, group: str, flops: int, **info):
        def fn():
            call()
            if cuda:  # time the kernels, not their launch
                torch.cuda.synchronize()

        benchmark.group = group
        benchmark.extra_info.update(info, flops=flops)
        # The tests already called fn (its check against eager), which compiled it; in
        # full runs two more calls let caches and allocators settle.
        for _ in range(0 if smoke else 2):
            fn()
        if smoke:
            return benchmark.pedantic(fn, rounds=1, iterations=1)
        return benchmark(fn)

    return run
