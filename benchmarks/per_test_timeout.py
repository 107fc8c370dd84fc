"""A pytest plugin: ``--per-test-timeout S`` fails a test that runs longer than S seconds and
lets the run go on (the GPU machines have no pytest-timeout; benchmarks/gpu_check.sh loads
this with ``-p per_test_timeout``). SIGALRM-based: main thread, POSIX only."""

from __future__ import annotations

import signal

import pytest


class PerTestTimeout(Exception):
    pass


def pytest_addoption(parser):
    parser.addoption("--per-test-timeout", type=float, default=0.0, metavar="S",
                     help="fail any test whose call phase runs longer than S seconds (0: off)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    seconds = item.config.getoption("--per-test-timeout")
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise PerTestTimeout(f"{item.nodeid} ran longer than --per-test-timeout {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
