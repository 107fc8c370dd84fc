"""Reliability across backends: property-based equivalence with eager, the fold cache under
threads, determinism (and the backends' determinism declarations), empty batches,
non-finite inputs, degenerate configurations, resident memory over many calls.

Property tests (hypothesis)
---------------------------
* Whole models, broad and cheap (:func:`model_examples`): T 1-64, J 1-24, 1-3 blocks per
  stage, batch 1-5, 1-4 kernel sizes from 1..11, 1-8 heads of 1-16 features each, under a
  cost budget (:func:`model_cost`) that keeps wide embeddings small (the statistics: T >= 27
  in ~1 % of examples, J >= 15 with T >= 9 never).
* Whole models at the paper's widths (:func:`wide_model_examples`): 16 or 32 features in 4
  or 8 heads, J 13-24, T 9-64 as far as a larger budget allows, one block per stage, few
  examples (J >= 15, T >= 27, d >= 16 in ~40 %).
* Single blocks (LayerNorm + DMHCSA + residual, LayerNorm + FFN + residual, which
  backends may fuse), either layout, 1-64 tokens, 1-8 heads of 1-48 features, batch up to
  40 (several chunks of the spatial projection), and wide temporal blocks
  (:func:`wide_block_examples`: d_head 49-136, 9-81 frames).
* Triton, separately budgeted: the interpreter runs a kernel ~1000x slower than a GPU,
  so it gets tiny blocks (<= 17 tokens, <= 4 heads of <= 12 features, batch <= 3) and
  few examples. Its kernel tests (tests/triton/) cover multi-tile shapes.

All in fp32 and fp64, inputs scaled by 1e-3, 1 or 1e3, weights at trained scale
(:func:`randomize`). Each compares eval outputs and, in train mode with dropouts off,
every parameter and input gradient with eager, elementwise (:func:`assert_matches_eager`:
conftest's FORWARD_TOL / GRAD_TOL, atol scaled by the input's magnitude; fp32 examples
also run in fp64, where the elements that are ill-conditioned in fp32 are compared). Each
records hypothesis ``event``s: ``--hypothesis-show-statistics`` shows how often the
examples reach the stated ranges (docs/testing.md quotes them).

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default) pins the seed, so every run tries the
same examples; ``long`` runs 5x as many from a fresh seed each time, for local runs.
Examples run on one thread (:func:`one_thread` says why).

Regression cases: ``tests/hypothesis-db/``
------------------------------------------
A failing example is kept in ``tests/hypothesis-db/``, a DirectoryBasedExampleDatabase
committed with the repository, and every profile replays that folder before it generates
anything. The ``long`` profile writes each new minimal failure into it (commit the new
files with the fix) through :class:`KeepFailures`, which never deletes an entry that passes
again, so a fixed bug stays a regression case; shrinking's intermediate examples go to the
ignored ``.hypothesis/`` folder. The ``ci`` profile reads the folder read-only (a CI run
never edits the checkout) and pins the seed (:func:`configure`: hypothesis refuses a
database together with ``derandomize=True``, and ``@seed`` alone switches it off).

Why both a database and ``@example`` rows: the database records what a run found, with
no hand transcription, exactly as hypothesis replays it (the first entry, a key-bias
gradient compared against its own rounding noise, was found and replayed this way). But
an entry is filed under a hash of its test function's body and pytest node id (decorators
and comments excluded), so changing a property test's body, name or parameters orphans
its entries silently (:func:`test_regression_database_entries_are_all_replayed` then
fails, naming them), and an entry stores hypothesis's choices, which a changed strategy
reinterprets as some other example. So each fixed failure is also written as an explicit
``@example(...)`` row, which survives both.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import (DirectoryBasedExampleDatabase, ExampleDatabase, ReadOnlyDatabase,
                                 choices_from_bytes)

import convformer_fast as cf
from convformer_fast import backends, ops
from convformer_fast.fast import ConvFormerBlockFast, DMHCSAFast

from conftest import FORWARD_TOL, GRAD_TOL, assert_close, run_concurrently

TESTS_DIR = Path(__file__).resolve().parent
REGRESSION_DB = TESTS_DIR / "hypothesis-db"
SCRATCH_DB = TESTS_DIR.parent / ".hypothesis" / "examples"


class KeepFailures(ExampleDatabase):
    """Minimal failing examples go to ``kept`` and are never deleted there (hypothesis
    deletes an example once it passes; a fixed bug's example must stay as a regression
    case). The shrinker may still move a failure out when it finds a smaller one for the
    same bug. Secondary and Pareto corpora (shrink intermediates) go to ``scratch``."""

    def __init__(self, kept: ExampleDatabase, scratch: ExampleDatabase):
        super().__init__()
        self.kept, self.scratch = kept, scratch

    @staticmethod
    def _is_failure(key: bytes) -> bool:
        return not key.endswith((b".secondary", b".pareto"))

    def _db(self, key: bytes) -> ExampleDatabase:
        return self.kept if self._is_failure(key) else self.scratch

    def fetch(self, key):
        yield from self._db(key).fetch(key)

    def save(self, key, value):
        self._db(key).save(key, value)

    def delete(self, key, value):
        if not self._is_failure(key):
            self.scratch.delete(key, value)

    def move(self, src, dest, value):  # the shrinker replacing a failure by a smaller one
        self._db(src).delete(src, value)
        self.save(dest, value)


CI_SEED = 20261130
# Both profiles name their parent and derandomize=False: with a CI environment variable
# set, hypothesis makes its own built-in "ci" profile (derandomize=True, no database) the
# default that a profile without a parent inherits, and derandomize would drop the
# regression database.
settings.register_profile(
    "ci", parent=settings.get_profile("default"), derandomize=False, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow],
    database=ReadOnlyDatabase(DirectoryBasedExampleDatabase(REGRESSION_DB)))
settings.register_profile(
    "long", parent=settings.get_profile("default"), derandomize=False, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    database=KeepFailures(DirectoryBasedExampleDatabase(REGRESSION_DB),
                          DirectoryBasedExampleDatabase(SCRATCH_DB)))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
EXAMPLE_SCALE = 5 if PROFILE == "long" else 1


def configure(test, max_examples: int, pin_seed: bool, database: ExampleDatabase | None = None):
    """Hypothesis settings of a property test (``database``: the profile's unless given).

    ``@seed`` pins the generated examples but also sets ``database=None``; the settings
    applied after it (outside it) bring the database back, so the committed regression
    cases are replayed first and the same examples follow on every run. (Hypothesis
    forbids a database with ``derandomize=True`` outright.)"""
    if pin_seed:
        test = seed(CI_SEED)(test)
    return settings(max_examples=max_examples, **({} if database is None else {"database": database}))(test)


def property_test(ci_examples: int):
    """``ci_examples`` examples under the ci profile, with its pinned seed; 5x as many,
    from a fresh seed, under the long profile."""
    return lambda test: configure(test, ci_examples * EXAMPLE_SCALE, pin_seed=PROFILE == "ci")


# The interpreter runs Triton kernels a thousand times slower than a GPU: it gets its own,
# smaller property test.
AVAILABLE = [name for name, info in cf.available_backends().items() if info.available and "cpu" in info.devices]
# Emulations (cuda_emulated: real threads meeting at every barrier, ~0.5 ms each on 2 cores)
# take ~50 ms per small forward: tests/test_cuda_emulated.py runs smaller versions of these
# tests for them.
CPU_BACKENDS = [name for name in AVAILABLE
                if name not in ("eager", "triton") and not cf.available_backends()[name].emulated]
TRITON_ON_CPU = ["triton"] if "triton" in AVAILABLE else []
# Backends that declare themselves deterministic on the CPU: each declaration is tested.
DETERMINISTIC_ON_CPU = [name for name in AVAILABLE if "cpu" in cf.available_backends()[name].deterministic_devices]

KERNEL_SIZES = st.lists(st.sampled_from([1, 3, 5, 7, 9, 11]), min_size=1, max_size=4).map(tuple)
MAGNITUDES = st.sampled_from([1e-3, 1.0, 1e3])
DTYPES = st.sampled_from([torch.float32, torch.float64])
MLP_RATIO = 2.0

# Cost of one example in multiply-adds of one eager forward plus PARAMETER_COST per
# parameter (creating, randomising, copying and comparing weights and gradients costs
# about that per element: a T = 1 model with a 2,000-wide frame is cheap to run and slow to
# build). The budgets keep an example of the broad strategies near 0.1 s on one core of the
# development machine; the wide strategies' (the paper's widths) near 1 s, with few examples.
PARAMETER_COST = 100
MODEL_BUDGET = 1e7
BLOCK_BUDGET = 4e7
WIDE_MODEL_BUDGET = 3e8
WIDE_BLOCK_BUDGET = 2e8


def block_cost(layout: str, tokens: int, features: int, kernel_sizes, batch: int) -> float:
    channels = features if layout == "spatial" else tokens
    taps = sum(kernel_sizes)
    macs = tokens * features * (3 * channels * taps + 2 * tokens + 2 * MLP_RATIO * features)
    params = 3 * channels * channels * taps + 2 * MLP_RATIO * features * features
    return batch * macs + PARAMETER_COST * params


def model_cost(config: dict, batch: int) -> float:
    frames, joints, dim = config["num_frames"], config["num_joints"], config["embed_dim"]
    spatial = block_cost("spatial", joints, dim, config["kernel_sizes"], batch * frames)
    temporal = block_cost("temporal", frames, joints * dim, config["kernel_sizes"], batch)
    head = 3 * joints * joints * dim + frames * joints * dim
    return (config["spatial_depth"] * spatial + config["temporal_depth"] * temporal
            + (batch * frames + PARAMETER_COST) * head)


def largest(values, fits) -> int:
    """The largest of ``values`` for which ``fits`` holds (the smallest if none does)."""
    return max((v for v in values if fits(v)), default=min(values))


@st.composite
def model_examples(draw):
    """Broad and cheap: 1-8 heads of 1-16 features, T 1-64, J 1-24, 1-3 blocks per stage,
    batch 1-5, under MODEL_BUDGET (so wide embeddings come with few joints and frames)."""
    num_heads = draw(st.integers(1, 8))
    config = dict(num_heads=num_heads, embed_dim=num_heads * draw(st.integers(1, 16)),
                  kernel_sizes=draw(KERNEL_SIZES), spatial_depth=draw(st.integers(1, 3)),
                  temporal_depth=draw(st.integers(1, 3)), drop_path=0.0, agg_dropout=0.0)

    def fits(batch=1, **sizes):
        return model_cost({"num_frames": 1, "num_joints": 1, **config, **sizes}, batch) <= MODEL_BUDGET

    config["num_joints"] = draw(st.integers(1, largest(range(1, 25), lambda j: fits(num_joints=j))))
    config["num_frames"] = draw(st.integers(1, largest(range(1, 65), lambda t: fits(num_frames=t))))
    batch = draw(st.integers(1, largest(range(1, 6), lambda b: fits(batch=b))))
    return config, batch


@st.composite
def wide_model_examples(draw):
    """The paper's widths: 16 or 32 features in 4 or 8 heads (spatial heads of 2-8 features,
    temporal heads of J * d / h = 26-192), 13-24 joints, 9-64 frames, one block per stage,
    batch 1-2; the frames are drawn last, up to what WIDE_MODEL_BUDGET allows with the drawn
    kernels (so J >= 15 with T >= 27 is common here, where the broad strategy almost never
    reaches it)."""
    config = dict(num_heads=draw(st.sampled_from([4, 8])), embed_dim=draw(st.sampled_from([16, 32])),
                  num_joints=draw(st.integers(13, 24)),
                  kernel_sizes=draw(st.lists(st.sampled_from([1, 3, 5, 7, 9, 11]), min_size=1, max_size=3).map(tuple)),
                  spatial_depth=1, temporal_depth=1, drop_path=0.0, agg_dropout=0.0)
    batch = draw(st.integers(1, 2))
    most = largest(range(9, 65), lambda t: model_cost({**config, "num_frames": t}, batch) <= WIDE_MODEL_BUDGET)
    config["num_frames"] = draw(st.integers(9, most))
    return config, batch


@st.composite
def block_examples(draw, max_tokens=64, max_heads=8, max_head_dim=48, max_batch=40):
    layout = draw(st.sampled_from(["spatial", "temporal"]))
    num_heads = draw(st.integers(1, max_heads))
    kernel_sizes = draw(KERNEL_SIZES)

    def fits(tokens=1, batch=1, head_dim=1):
        return block_cost(layout, tokens, num_heads * head_dim, kernel_sizes, batch) <= BLOCK_BUDGET

    head_dim = draw(st.integers(1, largest(range(1, max_head_dim + 1), lambda d: fits(head_dim=d))))
    features = num_heads * head_dim
    tokens = draw(st.integers(1, largest(range(1, max_tokens + 1), lambda t: fits(t, 1, head_dim))))
    batch = draw(st.integers(1, largest(range(1, max_batch + 1), lambda b: fits(tokens, b, head_dim))))
    return dict(layout=layout, num_tokens=tokens, num_features=features, kernel_sizes=kernel_sizes,
                num_heads=num_heads), batch


@st.composite
def wide_block_examples(draw):
    """Temporal blocks with the paper's wide heads: d_head 49-136 (above the broad
    strategy's 48; 68 and 136 are h36m's d = 32 and d = 64 with 8 heads; above 128 the
    cuda kernels hand the layer over), 9-81 frames, 1-8 heads, batch 1-2, one or two
    kernels; the frames are drawn last, up to what WIDE_BLOCK_BUDGET allows."""
    num_heads = draw(st.integers(1, 8))
    head_dim = draw(st.integers(49, 136))
    kernel_sizes = draw(st.lists(st.sampled_from([1, 3, 5, 7, 9, 11]), min_size=1, max_size=2).map(tuple))
    batch = draw(st.integers(1, 2))
    features = num_heads * head_dim
    most = largest(range(9, 82), lambda t: block_cost("temporal", t, features, kernel_sizes, batch) <= WIDE_BLOCK_BUDGET)
    tokens = draw(st.integers(9, most))
    return dict(layout="temporal", num_tokens=tokens, num_features=features, kernel_sizes=kernel_sizes,
                num_heads=num_heads), batch


def randomize(module: torch.nn.Module, dtype: torch.dtype, seed_: int) -> torch.nn.Module:
    """Random weights in ``dtype`` at the scale of trained ones, so that activations stay of
    the input's order of magnitude (what fixed elementwise tolerances need; weights of std
    0.3 at every width made the paper's temporal block output values up to 78):

    * matrices and convolutions N(0, (gain / sqrt(fan-in))^2), gain 1.7 for the Q/K/V
      convolutions (attention logits of std ~3: a peaked softmax, whose max subtraction
      matters) and 1 elsewhere;
    * theta N(0, 2^2) (eta far from uniform), LayerNorm weights 1 + N(0, 0.3^2), biases and
      positional embeddings N(0, 0.3^2)."""
    gen = torch.Generator().manual_seed(seed_)
    module = module.to(dtype)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=dtype)
            if name.endswith("theta"):
                p.copy_(2.0 * noise)
            elif p.dim() >= 2 and not name.endswith("pos_embed"):
                gain = 1.7 if "_convs." in name else 1.0
                p.copy_(noise * gain / math.sqrt(p[0].numel()))
            elif p.dim() == 1 and name.endswith("weight"):  # LayerNorm
                p.copy_(1.0 + 0.3 * noise)
            else:
                p.copy_(0.3 * noise)
    return module


def random_model(config, dtype, seed_):
    return randomize(cf.ConvFormer(**config), dtype, seed_)


# The cpu backend in fp32 where a temporal layer runs through Winograd F(m, k) (>=
# ops.WINOGRAD_MIN_CHANNELS frames): its transforms cost ~10x the rounding of a direct
# convolution (the op's own tolerance in tests/test_ops.py is rtol = atol = 1e-4), which
# misses FORWARD_TOL's and GRAD_TOL's atol (measured on a 64-frame block of 49 features at
# |x| ~ 1e-3: output error 1.65e-5 on a value of 1.7e-4, mlp.0.weight gradient error 2.0e-4
# on 4.4e-2, and, 64 frames of 63 features, input gradient error 7.7e-3 on 5.8 (rtol
# 1.3e-3) where eager fp32 is within 1.5e-4: F(8, 3)'s 10 points, with LayerNorm's ~300x
# amplification of input gradients at that scale). Forward atol x 10, gradients rtol and
# atol x 10 there: a weaker guarantee than FORWARD_TOL / GRAD_TOL, stated in docs/testing.md.
WINOGRAD_FORWARD_TOL = {torch.float32: (1e-4, 1e-4), torch.float64: FORWARD_TOL[torch.float64]}
WINOGRAD_GRAD_TOL = {torch.float32: (1e-2, 1e-3), torch.float64: GRAD_TOL[torch.float64]}


def uses_winograd(backend: str, frames: int, kernel_sizes) -> bool:
    """The cpu backend's temporal projection (folded kernel = the largest) takes Winograd."""
    return backend == "cpu" and ops.winograd_tile(max(kernel_sizes), frames) > 0


def tolerance(kind: dict, dtype: torch.dtype, magnitude: float) -> tuple[float, float]:
    """(rtol, atol) of ``kind`` (FORWARD_TOL, GRAD_TOL or their WINOGRAD_ twins) for inputs
    scaled by ``magnitude``: the residual stream carries the input's scale, so absolute
    rounding errors (and with them atol) grow with it above 1."""
    rtol, atol = kind[dtype]
    return rtol, atol * max(1.0, magnitude)


def results(ref, fast, x, forward_tol=FORWARD_TOL, grad_tol=GRAD_TOL) -> dict[str, tuple[torch.Tensor, torch.Tensor, dict]]:
    """name -> (eager's, the fast module's, tolerance kind): eval outputs, then in train
    mode (dropouts off) the gradients of sum(output) w.r.t. every parameter and the input."""
    out = {}
    ref.eval(), fast.eval()
    with torch.no_grad():
        out["eval output"] = (ref(x), fast(x), forward_tol)
    grads = []
    for module in (ref, fast):
        module.train()
        leaf = x.detach().clone().requires_grad_()
        module(leaf).sum().backward()
        grads.append({**{name: p.grad for name, p in module.named_parameters()}, "input": leaf.grad})
    for name, expected in grads[0].items():
        out[f"grad {name}"] = (expected, grads[1][name], grad_tol)
    return out


# An fp32 element counts as well-conditioned where eager fp32 is within 1/40 of the
# tolerance of the fp64 result: a fast path may round up to ~10x worse than eager (the cpu
# backend's Winograd F(m, k) projection, csrc/cpu/winograd.h; test_ops.py) and then still
# has a 4x margin. (At 1/4, the cpu backend's input gradient of a 64-frame temporal block at
# |x| ~ 1e-3, where LayerNorm amplifies by ~300, missed rtol 1e-3 at 4 of 3,133 elements:
# 2.3e-2 against eager's 4.5e-3, on gradients up to 1.6e4.)
CONDITIONED_MARGIN = 1 / 40


def assert_matches_eager(pair, dtype: torch.dtype, magnitude: float, what: str, winograd: bool = False) -> None:
    """The fast module against eager, elementwise (``|fast - eager| <= atol + rtol * |eager|``
    at :func:`tolerance`), on eval outputs and every gradient. ``pair(dtype)`` builds
    (eager, fast, input) from the same weights and input in ``dtype``.

    fp64 examples compare directly. An fp32 example also runs in fp64, and

    * in fp64, everything is compared at the fp64 tolerance;
    * in fp32, the fast result is compared with the fp64 one (the exact answer, up to fp64
      rounding) at the fp32 tolerance wherever eager's own fp32 result is within
      CONDITIONED_MARGIN of that tolerance of it. Elsewhere the value is ill-conditioned in
      fp32: eager itself computes (amplified) rounding noise there, so two correct fp32
      implementations disagree, and only the fp64 comparison holds. The known cases, found by the long profile: key-bias
      gradients (zero in exact arithmetic: a key bias shifts every score of a query alike
      and softmax ignores shifts; fp32 sums key gradients of ~400 to noise of ~5e-5), and
      everything upstream of a LayerNorm over one feature (its output is its bias whatever
      its input, so gradients through it are zero in exact arithmetic and fp32 computes
      noise amplified by |x| / sqrt(eps): 0.016 apart between eager and the torch backend
      at |x| ~ 1e3) or over a few nearly equal features. Never a looser tolerance.
    """
    tols = (WINOGRAD_FORWARD_TOL, WINOGRAD_GRAD_TOL) if winograd else (FORWARD_TOL, GRAD_TOL)
    if winograd:
        event("cpu backend through Winograd: WINOGRAD_FORWARD_TOL / WINOGRAD_GRAD_TOL")
    found = results(*pair(dtype), *tols)
    if dtype == torch.float64:
        for name, (expected, actual, kind) in found.items():
            assert_close(actual, expected, tolerance(kind, dtype, magnitude), f"{what} {name}")
        return
    exact = results(*pair(torch.float64), *tols)
    ill_conditioned = total = 0
    for name, (expected, actual, kind) in found.items():
        expected64, actual64, _ = exact[name]
        assert_close(actual64, expected64, tolerance(kind, torch.float64, magnitude), f"{what} {name} (fp64 run)")
        rtol, atol = tolerance(kind, dtype, magnitude)
        bound = (atol + rtol * expected64.abs()) * CONDITIONED_MARGIN
        conditioned = (expected.double() - expected64).abs() <= bound
        ill_conditioned, total = ill_conditioned + int((~conditioned).sum()), total + conditioned.numel()
        assert_close(actual.double()[conditioned], expected64[conditioned], (rtol, atol),
                     f"{what} {name} ({dtype}, where eager {dtype} is accurate)")
    share = ill_conditioned / max(total, 1)
    event("fp32 elements compared in the fp64 run only: "
          + ("none" if not ill_conditioned else "< 1 %" if share < 0.01 else "1-10 %" if share < 0.1 else ">= 10 %"))


def coverage_events(frames: int, joints: int, features: int) -> None:
    """What hypothesis's statistics (``--hypothesis-show-statistics``) count, per test: how
    often the examples reach the stated ranges at the paper's widths."""
    event(f"T >= 27: {frames >= 27}")
    event(f"J >= 15 and T >= 9: {joints >= 15 and frames >= 9}")
    event(f"J >= 15, T >= 27, d >= 16: {joints >= 15 and frames >= 27 and features >= 16}")


@contextlib.contextmanager
def one_thread():
    """Property examples run on one thread. Each is small, and with two OpenMP threads on
    a busy 2-core machine the fork-join and spin-waits around thousands of tiny ops cost
    ~9x the CPU time (the previous 200-model run: 347 s against 39 s). The threaded paths
    run at the default thread count in test_fast.py, test_ops.py and the tests below."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@one_thread()
def check_model(backend, config, batch, magnitude, dtype, seed_):
    coverage_events(config["num_frames"], config["num_joints"], config["embed_dim"])
    gen = torch.Generator().manual_seed(seed_ + 1)
    x = torch.randn(batch, config["num_frames"], config["num_joints"], 2, generator=gen, dtype=torch.float64)

    def pair(dtype):
        ref = random_model(config, torch.float64, seed_).to(dtype)  # the same weights in either dtype
        return ref, cf.ConvFormerFast.from_reference(ref, backend=backend), (x * magnitude).to(dtype)

    assert_matches_eager(pair, dtype, magnitude, f"{backend} {config} batch {batch}",
                         uses_winograd(backend, config["num_frames"], config["kernel_sizes"]))


@one_thread()
def check_block(backend, block, batch, magnitude, dtype, seed_):
    event(f"{block['layout']}, tokens >= 27: {block['num_tokens'] >= 27}")
    event(f"{block['layout']}, d_head > 48: {block['num_features'] // block['num_heads'] > 48}")
    args = (block["layout"], block["num_tokens"], block["num_features"], block["kernel_sizes"],
            block["num_heads"], MLP_RATIO, 0.0, 0.0)
    gen = torch.Generator().manual_seed(seed_ + 1)
    x = torch.randn(batch, block["num_tokens"], block["num_features"], generator=gen, dtype=torch.float64)

    def pair(dtype):
        ref = randomize(cf.ConvFormerBlock(*args), torch.float64, seed_).to(dtype)
        fast = ConvFormerBlockFast(*args, backend=backend).to(dtype)
        fast.load_state_dict(ref.state_dict())
        return ref, fast, (x * magnitude).to(dtype)

    assert_matches_eager(pair, dtype, magnitude, f"{backend} {block} batch {batch}", block["layout"] == "temporal"
                         and uses_winograd(backend, block["num_tokens"], block["kernel_sizes"]))


# The paper's shapes, always tried: h36m-9's widths (J = 17, d = 32, 8 heads: spatial heads
# of 4 features, temporal heads of 68) and kernels (7, 7, 7).
PAPER_MODEL = (dict(num_frames=9, num_joints=17, embed_dim=32, num_heads=8, kernel_sizes=(7, 7, 7),
                    spatial_depth=1, temporal_depth=1, drop_path=0.0, agg_dropout=0.0), 1)
PAPER_SPATIAL_BLOCK = (dict(layout="spatial", num_tokens=17, num_features=32, kernel_sizes=(7, 7, 7),
                            num_heads=8), 9)
PAPER_TEMPORAL_BLOCK = (dict(layout="temporal", num_tokens=27, num_features=544, kernel_sizes=(7, 7, 7),
                             num_heads=8), 1)
# Regressions found by the long profile: a key-bias gradient, zero but for rounding (see
# assert_matches_eager) ...
KEY_BIAS_NOISE_BLOCK = (dict(layout="spatial", num_tokens=57, num_features=20, kernel_sizes=(9,),
                             num_heads=1), 12)
# ... and blocks whose LayerNorms normalise one feature (likewise).
ONE_FEATURE_BLOCK = (dict(layout="temporal", num_tokens=23, num_features=1, kernel_sizes=(1,), num_heads=1), 16)
ONE_FEATURE_WIDE_KERNEL_BLOCK = (dict(layout="temporal", num_tokens=6, num_features=1, kernel_sizes=(11,),
                                      num_heads=1), 3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@property_test(ci_examples=150)
@given(example_=model_examples(), magnitude=MAGNITUDES, dtype=DTYPES, seed_=st.integers(0, 2**16))
@example(example_=PAPER_MODEL, magnitude=1.0, dtype=torch.float32, seed_=0)
def test_models_match_eager(backend, example_, magnitude, dtype, seed_):
    config, batch = example_
    check_model(backend, config, batch, magnitude, dtype, seed_)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@property_test(ci_examples=12)
@given(example_=wide_model_examples(), magnitude=MAGNITUDES, dtype=DTYPES, seed_=st.integers(0, 2**16))
def test_wide_models_match_eager(backend, example_, magnitude, dtype, seed_):
    config, batch = example_
    check_model(backend, config, batch, magnitude, dtype, seed_)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@property_test(ci_examples=200)
@given(example_=block_examples(), magnitude=MAGNITUDES, dtype=DTYPES, seed_=st.integers(0, 2**16))
@example(example_=PAPER_SPATIAL_BLOCK, magnitude=1.0, dtype=torch.float32, seed_=0)
@example(example_=PAPER_TEMPORAL_BLOCK, magnitude=1.0, dtype=torch.float32, seed_=0)
@example(example_=KEY_BIAS_NOISE_BLOCK, magnitude=1.0, dtype=torch.float32, seed_=609)
@example(example_=ONE_FEATURE_BLOCK, magnitude=1e3, dtype=torch.float32, seed_=0)
def test_blocks_match_eager(backend, example_, magnitude, dtype, seed_):
    block, batch = example_
    check_block(backend, block, batch, magnitude, dtype, seed_)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@property_test(ci_examples=16)
@given(example_=wide_block_examples(), magnitude=MAGNITUDES, dtype=DTYPES, seed_=st.integers(0, 2**16))
def test_wide_blocks_match_eager(backend, example_, magnitude, dtype, seed_):
    block, batch = example_
    check_block(backend, block, batch, magnitude, dtype, seed_)


@pytest.mark.parametrize("backend", TRITON_ON_CPU)
@property_test(ci_examples=30)
@given(example_=block_examples(max_tokens=17, max_heads=4, max_head_dim=12, max_batch=3),
       magnitude=MAGNITUDES, dtype=DTYPES, seed_=st.integers(0, 2**16))
@example(example_=ONE_FEATURE_WIDE_KERNEL_BLOCK, magnitude=1e3, dtype=torch.float32, seed_=1791)
def test_triton_blocks_match_eager(backend, example_, magnitude, dtype, seed_):
    block, batch = example_
    check_block(backend, block, batch, magnitude, dtype, seed_)


# ---------------------------------------------------------------------------------------
# The regression database: replayed by the ci profile, never orphaned
# ---------------------------------------------------------------------------------------

PROPERTY_TESTS = {test.__name__: params for test, params in (
    (test_models_match_eager, CPU_BACKENDS), (test_wide_models_match_eager, CPU_BACKENDS),
    (test_blocks_match_eager, CPU_BACKENDS), (test_wide_blocks_match_eager, CPU_BACKENDS),
    (test_triton_blocks_match_eager, TRITON_ON_CPU))}


def test_ci_profile_replays_the_committed_database_with_a_pinned_seed():
    ci = settings.get_profile("ci")
    assert ci.database == ReadOnlyDatabase(DirectoryBasedExampleDatabase(REGRESSION_DB))
    assert not ci.derandomize  # hypothesis would drop the database
    if PROFILE == "ci":
        for test in (test_models_match_eager, test_wide_models_match_eager, test_blocks_match_eager,
                     test_wide_blocks_match_eager, test_triton_blocks_match_eager):
            assert test._hypothesis_internal_use_settings.database == ci.database, test.__name__
            assert test._hypothesis_internal_use_seed == CI_SEED, test.__name__


@pytest.mark.skipif(subprocess.run(["git", "-C", str(TESTS_DIR), "rev-parse"], capture_output=True).returncode,
                    reason="not a git checkout")
def test_regression_database_is_not_git_ignored():
    probe = REGRESSION_DB / "0123456789abcdef" / "0123456789abcdef"
    ignored = subprocess.run(["git", "-C", str(TESTS_DIR), "check-ignore", "-q", str(probe)])
    assert ignored.returncode == 1, f"{REGRESSION_DB} is hidden by .gitignore"


def _database_key(request, test_name: str, param: str) -> bytes:
    """The key hypothesis files the examples of one parametrized property test under: a
    digest of the test's source and signature plus its pytest node id (as the hypothesis
    pytest plugin sets it)."""
    from hypothesis.internal.reflection import function_digest

    inner = globals()[test_name].hypothesis.inner_test
    module_id = request.node.nodeid.split("::")[0]
    previous = getattr(inner, "_hypothesis_internal_add_digest", None)
    inner._hypothesis_internal_add_digest = f"{module_id}::{test_name}[{param}]".encode()
    try:
        return function_digest(inner)
    finally:
        if previous is None:
            del inner._hypothesis_internal_add_digest
        else:
            inner._hypothesis_internal_add_digest = previous


def test_regression_database_entries_are_all_replayed(request):
    """Every folder in tests/hypothesis-db belongs to a property test as it is now, and
    every example in it decodes with this hypothesis."""
    def folder(key: bytes) -> str:  # DirectoryBasedExampleDatabase's name for a key
        return hashlib.sha384(key).hexdigest()[:16]

    live = {folder(_database_key(request, name, param)): f"{name}[{param}]"
            for name, params in PROPERTY_TESTS.items() for param in params}
    index = folder(b".hypothesis-keys")  # the database's own list of keys
    entries = sorted(p for p in REGRESSION_DB.glob("*") if p.is_dir() and p.name != index)
    orphans = [p.name for p in entries if p.name not in live]
    assert not orphans, (
        f"{REGRESSION_DB}: {orphans} belong to no current property test (its body, name or "
        "parameters changed). Make sure each failure it held has an @example(...) row (replay "
        "it with the test's old body to see it), then delete the folder.")
    undecodable = [f"{p.parent.name}/{p.name}" for d in entries for p in d.iterdir()
                   if choices_from_bytes(p.read_bytes()) is None]
    assert not undecodable, f"{REGRESSION_DB}: entries this hypothesis cannot decode: {undecodable}"


def test_kept_failures_are_replayed_first_and_never_deleted(tmp_path):
    """The database mechanics the profiles rely on: the long profile keeps a failure (also
    after it passes again), and the ci profile's settings replay it before anything else."""
    kept = DirectoryBasedExampleDatabase(tmp_path / "kept")
    tried = []
    bug_fixed = False

    def prop(n):
        tried.append(n)
        assert bug_fixed or n < 1000

    strategy = st.integers(0, 10**6)
    finding = settings(settings.get_profile("long"), max_examples=200,
                       database=KeepFailures(kept, DirectoryBasedExampleDatabase(tmp_path / "scratch")))
    with pytest.raises(AssertionError):
        finding(given(strategy)(prop))()
    assert tried[-1] == 1000  # shrunk to the boundary and saved
    bug_fixed = True
    tried.clear()
    finding(given(strategy)(prop))()  # passes now: hypothesis would delete the example
    assert tried[0] == 1000
    tried.clear()
    configure(given(strategy)(prop), 5, pin_seed=True, database=ReadOnlyDatabase(kept))()
    assert tried[0] == 1000, tried  # the kept failure, replayed before the pinned examples
    replayed_first, tried[:] = tried[1:], []
    configure(given(strategy)(prop), 5, pin_seed=True, database=ReadOnlyDatabase(kept))()
    assert tried[1:] == replayed_first  # then the same examples on every run


# ---------------------------------------------------------------------------------------
# Threads, determinism, edge inputs, memory
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fold_cache_under_threads(backend):
    """Two threads run forward while a third updates a weight in place between rounds:
    every output equals the eager result for the weights of its round (a worker's failed
    assertion fails the test: run_concurrently re-raises it)."""
    torch.manual_seed(0)
    layer = DMHCSAFast("temporal", 7, 24, (3, 5), 4, backend=backend).eval()
    reference = cf.DMHCSA("temporal", 7, 24, (3, 5), 4).eval()
    x = torch.randn(3, 7, 24)
    for round_ in range(6):
        with torch.no_grad():
            layer.value_convs[1].weight.add_(0.1 * round_)
            reference.load_state_dict(layer.state_dict())
            expected = reference(x)
        barrier = threading.Barrier(2)

        def worker():
            barrier.wait()
            for _ in range(5):
                with torch.no_grad():
                    out = layer(x)
                assert_close(out, expected, FORWARD_TOL[torch.float32], f"round {round_}: stale or torn fold")

        run_concurrently(worker, 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_parameters_updated_while_forwards_run(backend):
    """Two threads run forwards while a third flips one logit of eta (theta[0, 0], a single
    float: its store is atomic, so the weights are always exactly the old or the new ones)
    back and forth: every output equals the old or the new weights' result, never a fold
    mixing them, and once the updates stop (20 times), the next output is the final
    weights' (a fold cached under a newer version than it was computed from would stay
    stale). 130 frames:
    the cpu backend's Winograd weight is derived from the fold and cached beside it."""
    torch.manual_seed(0)
    layer = DMHCSAFast("temporal", 130, 12, (3, 7), 2, backend=backend).eval()
    reference = cf.DMHCSA("temporal", 130, 12, (3, 7), 2).eval()
    x = torch.randn(2, 130, 12)
    values = (-2.0, 2.0)
    expected = []
    for value in values:
        with torch.no_grad():
            layer.theta[0, 0] = value
            reference.load_state_dict(layer.state_dict())
            expected.append(reference(x))
    assert not torch.allclose(expected[0], expected[1], rtol=1e-2, atol=1e-2)  # the two are told apart
    outputs = []
    tol = FORWARD_TOL[torch.float32]
    for epoch in range(20):
        running = threading.Event()
        running.set()

        def forwards():
            while running.is_set():
                with torch.no_grad():
                    outputs.append(layer(x))

        threads = [threading.Thread(target=forwards) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            flips = 10 + epoch % 2  # the epochs end on either value
            for flip in range(flips):
                with torch.no_grad():
                    layer.theta[0, 0] = values[flip % 2]
                time.sleep(0.001)
        finally:
            running.clear()
            for thread in threads:
                thread.join()
        with torch.no_grad():
            assert_close(layer(x), expected[(flips - 1) % 2], tol, f"epoch {epoch}: after the last update")
    assert len(outputs) >= 20, f"only {len(outputs)} forwards ran while the weights changed"
    mixed = [i for i, out in enumerate(outputs)
             if not any(torch.allclose(out, e, rtol=tol[0], atol=tol[1]) for e in expected)]
    assert not mixed, f"{len(mixed)} of {len(outputs)} outputs are neither the old nor the new weights' result"
    seen = {next(j for j, e in enumerate(expected) if torch.allclose(out, e, rtol=tol[0], atol=tol[1]))
            for out in outputs}
    assert seen == {0, 1}, f"the forwards saw only the weights {[values[j] for j in seen]}"


def small_model(backend, **overrides):
    """One block per stage: the Triton interpreter runs it several times."""
    torch.manual_seed(0)
    config = dict(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, kernel_sizes=(3, 7),
                  spatial_depth=1, temporal_depth=1, drop_path=0.0, agg_dropout=0.0)
    return cf.ConvFormerFast(**{**config, **overrides}, backend=backend)


def outputs_and_gradients(model, x, repeats=2):
    runs = []
    for _ in range(repeats):
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        runs.append((out.detach().clone(), [p.grad.clone() for p in model.parameters()]))
    return runs


@pytest.mark.parametrize("backend", DETERMINISTIC_ON_CPU)
def test_deterministic_outputs_and_gradients(backend):
    """Every backend that declares itself deterministic on the CPU is bitwise repeatable."""
    (out_a, grads_a), (out_b, grads_b) = outputs_and_gradients(small_model(backend), torch.randn(4, 5, 17, 2))
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("backend", DETERMINISTIC_ON_CPU)
def test_deterministic_algorithms_mode_is_honoured(backend):
    model = small_model(backend, num_heads=2)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        (_, grads_a), (_, grads_b) = outputs_and_gradients(model, torch.randn(3, 5, 17, 2))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_backends_declare_where_they_are_deterministic():
    infos = cf.available_backends()
    for name, info in infos.items():
        assert set(info.deterministic_devices) <= set(info.devices), name
    assert infos["eager"].deterministic_devices == infos["torch"].deterministic_devices == ("cpu", "cuda")
    assert infos["cpu"].deterministic_devices == ("cpu",)
    # Autotuning picks the tile shapes (and so the summation order) by timing on a GPU.
    assert "cuda" not in backends.BACKENDS["triton"].deterministic_devices


class _NondeterministicTorch(backends.TorchBackend):
    """The torch backend, declared nondeterministic everywhere (as a GPU-only kernel with
    atomics would be): stands in for such a backend on a machine without a GPU."""

    name = "cpu"
    deterministic_devices = ()


@pytest.fixture
def deterministic_mode():
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield torch.use_deterministic_algorithms
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_nondeterministic_backend_is_refused_or_passed_over_in_deterministic_mode(monkeypatch, deterministic_mode):
    monkeypatch.setitem(backends.BACKENDS, "cpu", _NondeterministicTorch())
    monkeypatch.delenv(backends.AUTO_ENV_VAR, raising=False)
    x = torch.randn(2, 17, 8)
    layer = DMHCSAFast("spatial", 17, 8, (3,), 2, backend="cpu").eval()
    assert backends.select_backend("auto", x).name == "cpu"  # mode off: the first choice
    deterministic_mode(True)
    assert backends.select_backend("auto", x).name == "torch"  # passed over
    with pytest.raises(RuntimeError, match="backend 'cpu' is not deterministic on 'cpu' .*"
                                           r"use_deterministic_algorithms\(True\)"):
        layer(x)
    deterministic_mode(True, warn_only=True)
    with pytest.warns(UserWarning, match="backend 'cpu' is not deterministic on 'cpu'"):
        layer(x)


@pytest.mark.parametrize("backend", ["eager"] + CPU_BACKENDS)
def test_empty_batch_returns_empty_output(backend):
    model = cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, backend=backend).eval()
    with torch.no_grad():
        out = model(torch.randn(0, 5, 17, 2))
    assert out.shape == (0, 1, 17, 3)


@pytest.mark.parametrize("backend", ["eager"] + CPU_BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_propagates(backend, value):
    model = cf.ConvFormerFast(num_frames=5, num_joints=17, embed_dim=8, num_heads=4, backend=backend).eval()
    x = torch.randn(2, 5, 17, 2)
    x[1, 2, 3, 0] = value
    with torch.no_grad():
        out = model(x)
    assert not torch.isfinite(out[1]).all()  # the poisoned sample shows it
    assert torch.isfinite(out[0]).all()  # and stays in its sample


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("config", [
    dict(num_frames=1, num_joints=17, embed_dim=8, num_heads=2, kernel_sizes=(3,)),   # T = 1
    dict(num_frames=5, num_joints=1, embed_dim=4, num_heads=2, kernel_sizes=(3,)),    # J = 1
    dict(num_frames=5, num_joints=5, embed_dim=4, num_heads=1, kernel_sizes=(1,)),    # one head, k = 1
    dict(num_frames=3, num_joints=5, embed_dim=4, num_heads=2, kernel_sizes=(11, 3)), # k > J and > T
], ids=["T1", "J1", "head1_k1", "k11_over_J5"])
def test_degenerate_configurations(backend, config):
    ref = random_model(dict(config, drop_path=0.0, agg_dropout=0.0), torch.float64, seed_=3).eval()
    fast = cf.ConvFormerFast.from_reference(ref, backend=backend)
    x = torch.randn(2, config["num_frames"], config["num_joints"], 2, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fast(x), ref(x), FORWARD_TOL[torch.float64], str(config))


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_memory_stays_flat_over_many_calls(backend):
    """2,000 inference calls (the fold cache must not grow with distinct inputs) and 200
    training steps keep the resident set flat after warm-up."""
    torch.manual_seed(0)
    model = cf.ConvFormerFast(num_frames=9, num_joints=17, embed_dim=8, num_heads=4,
                              kernel_sizes=(3, 5), backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.eval()
    with torch.no_grad():
        for _ in range(200):
            model(torch.randn(2, 9, 17, 2))
        before = resident_mb()
        for _ in range(2000):
            model(torch.randn(2, 9, 17, 2))  # a new input every call
    inference_growth = resident_mb() - before
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        model(torch.randn(4, 9, 17, 2)).square().mean().backward()
        optimizer.step()
    before = resident_mb()
    for _ in range(200):
        optimizer.zero_grad()
        model(torch.randn(4, 9, 17, 2)).square().mean().backward()
        optimizer.step()
    training_growth = resident_mb() - before
    assert inference_growth < 16, f"inference grew {inference_growth:.1f} MB"
    assert training_growth < 16, f"training grew {training_growth:.1f} MB"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unservable_device_raises_before_any_work(backend):
    layer = DMHCSAFast("spatial", 17, 8, (3,), 2, backend=backend)
    with pytest.raises(ValueError, match=f"backend '{backend}' cannot run this input: .*device 'meta'"):
        layer(torch.empty(2, 17, 8, device="meta"))
