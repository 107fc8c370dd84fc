"""Peers of ``convformer-fast bench --peers``: the runtimes people deploy this model with,
each given the same weights, input and threads as this package's backends.

* ``compile:folded``: ``torch.compile`` of the frozen folded model
  (:func:`convformer_fast.export.freeze`), so that "vs compile" no longer mixes the fold's
  algebra with the kernels' quality (``compile``, of the unfolded eager model, stays too);
* ``ort:eager-export`` / ``ort:folded-export``: ONNX Runtime (CPU execution provider) on the
  ONNX export of the unfolded eager model and of the frozen folded one;
* ``openvino:eager-export`` / ``openvino:folded-export``: OpenVINO's CPU plugin on the same
  two files, with its fp32 precision hint (left alone, it may compute in bf16 on CPUs that
  have it) and its latency hint.

Both ONNX files have a static batch (the bench's): the best case for each runtime. Threads:
ONNX Runtime's ``intra_op_num_threads`` and OpenVINO's ``INFERENCE_NUM_THREADS`` are set to
torch's thread count; everything else is each runtime's default.

Before timing, each peer's output is compared with the eager model's (fp32:
:data:`convformer_fast.export.CHECK_TOLERANCE`); a peer that disagrees is reported with its deviation and not timed. A
peer whose package is missing is reported as "not installed".
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..reference import ConvFormer

COMPILE_FOLDED = "compile:folded"
ORT_EAGER, ORT_FOLDED = "ort:eager-export", "ort:folded-export"
OPENVINO_EAGER, OPENVINO_FOLDED = "openvino:eager-export", "openvino:folded-export"
PEERS = (COMPILE_FOLDED, OPENVINO_FOLDED, ORT_FOLDED, OPENVINO_EAGER, ORT_EAGER)
_INSTALL_HINT = "pip install 'convformer_fast[deploy]'"


@dataclass
class PeerStep:
    """A peer ready to time: ``step()`` runs one inference; ``output`` is its checked result."""

    name: str
    step: Callable[[], object]
    first_call_s: float
    max_abs_error: float
    folded: bool  # computes the folded model (its FLOPs are the folded model's)


class PeerError(RuntimeError):
    """A peer that cannot be timed here; ``not_installed`` when a package is missing."""

    def __init__(self, message: str, not_installed: bool = False):
        super().__init__(message)
        self.not_installed = not_installed


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise PeerError(f"not installed: {', '.join(missing)} ({_INSTALL_HINT})", not_installed=True)


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino_request(path: str, threads: int):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",  # never bf16 behind our back
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
    })
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    if precision != ov.Type.f32:
        raise PeerError(f"OpenVINO compiled with inference precision {precision}, expected f32")
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data

    return run


class _Exports:
    """The two ONNX files of one preset, written on first use into a temporary folder."""

    def __init__(self, reference: ConvFormer, batch: int, folder: str):
        self.reference, self.batch, self.folder, self.paths = reference, batch, folder, {}

    def path(self, folded: bool) -> str:
        if folded not in self.paths:
            _require("onnx", "onnxscript")
            from ..export import to_onnx

            path = f"{self.folder}/{'folded' if folded else 'eager'}.onnx"
            # Checked below, like every peer, by the runtime that will be timed.
            self.paths[folded] = to_onnx(self.reference, path, batch=self.batch, fold=folded, check=False).path
        return self.paths[folded]


def _build(name: str, reference: ConvFormer, exports: _Exports, threads: int, compile_backend: str):
    """(run(x numpy) -> output, folded) for the peer ``name``; raises PeerError if it cannot."""
    if name == COMPILE_FOLDED:
        from ..export import freeze

        # No torch._dynamo.reset() here: it would also drop the already compiled `compile`
        # model's code, and its recompilation would land in the timed calls.
        compiled = torch.compile(freeze(reference, backend="torch"), backend=compile_backend)

        def run_compiled(x):
            with torch.inference_mode():
                return compiled(x)

        return run_compiled, True
    runtime, _, export = name.partition(":")
    folded = export == "folded-export"
    _require("onnxruntime" if runtime == "ort" else "openvino")
    path = exports.path(folded)
    session = _ort_session(path, threads) if runtime == "ort" else _openvino_request(path, threads)
    return session, folded


def build_peers(reference: ConvFormer, x: torch.Tensor, names, compile_backend: str = "inductor",
                warmup: int = 3) -> dict[str, PeerStep | PeerError]:
    """Each peer of ``names`` built, checked against ``reference`` (eval, fp32, CPU) on ``x``
    and warmed up; a PeerError in its place when it cannot be timed."""
    threads = torch.get_num_threads()
    with torch.inference_mode():
        expected = reference(x)
    x_numpy = x.numpy()
    out: dict[str, PeerStep | PeerError] = {}
    with tempfile.TemporaryDirectory(prefix="convformer-peers-") as folder:
        exports = _Exports(reference, x.shape[0], folder)
        for name in names:
            try:
                run, folded = _build(name, reference, exports, threads, compile_backend)
                argument = x if name == COMPILE_FOLDED else x_numpy
                start = time.perf_counter()
                result = run(argument)
                first_call_s = time.perf_counter() - start
                error = _check(name, result, expected)
                for _ in range(warmup - 1):
                    run(argument)
                out[name] = PeerStep(name, lambda run=run, argument=argument: run(argument), first_call_s,
                                     error, folded)
            except PeerError as error:
                out[name] = error
            except Exception as error:  # noqa: BLE001 - reported in the table, others go on
                out[name] = PeerError(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
    return out


def _check(name: str, result, expected: torch.Tensor) -> float:
    """The largest |peer - eager|; PeerError when beyond the export's tolerance."""
    from ..export import CHECK_TOLERANCE

    actual = torch.as_tensor(np.asarray(result) if not isinstance(result, torch.Tensor) else result)
    if tuple(actual.shape) != tuple(expected.shape):
        raise PeerError(f"wrong output shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    actual = actual.to(expected.dtype)
    deviation = (actual - expected).abs()
    worst = deviation.max().item()
    rtol, atol = CHECK_TOLERANCE
    if not math.isfinite(worst) or bool((deviation > atol + rtol * expected.abs()).any()):
        raise PeerError(f"wrong output: max |{name} - eager| = {worst:.3g}, beyond rtol {rtol:g} / atol {atol:g}")
    return worst


def folded_flops(reference: ConvFormer, x: torch.Tensor) -> int:
    """FLOPs of one forward of the frozen folded model (what the folded peers compute)."""
    from ..export import freeze
    from .flops import flop_counter_flops

    frozen = freeze(reference, backend="torch")
    with torch.no_grad():
        return flop_counter_flops(lambda: frozen(x)).total


def installed() -> dict[str, str]:
    """Version of each optional package the peers use ("not installed" when missing)."""
    versions = {}
    for module in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            versions[module] = importlib.import_module(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return versions
