"""One inference forward captured in a CUDA graph and replayed: batch-1 latency without the
per-kernel launch cost.

At batch 1 a forward is launch-bound: the h36m-243 model needs tens of microseconds of
compute on an H100 but launches dozens of kernels at a few microseconds each
(docs/gpu.md counts them per backend). A CUDA graph records the launches once and replays
them with one call. What capture needs from a forward, and why it holds here:

* no host synchronisation: the fast modules read shapes, parameter versions and data
  pointers only (host metadata); the ``cuda`` and ``triton`` ops launch on the current stream
  and never read a tensor's values on the host;
* no first-time work inside the capture: Triton's autotuner benchmarks (and synchronises)
  the first time it sees a shape, cuDNN picks its algorithms, and the modules fold their
  Q/K/V weights on the first eval call; ``warmup`` calls on a side stream do all of it first;
* allocations during capture come from the graph's private memory pool (PyTorch's caching
  allocator supports that); their addresses stay fixed for every replay;
* static shapes: the graph is for ``example_input``'s shape, dtype and device only.

The folded weights are read as they were cached at capture. Changing a parameter afterwards
(an optimizer step, ``load_state_dict``, ``.to()``) makes a replay stale, so a call then
raises and asks for a new capture instead of returning outdated results.
"""

from __future__ import annotations

import torch
from torch import nn


class CudaGraphForward:
    """``model``'s inference forward at ``example_input``'s shape, captured in a CUDA graph.

    ``graphed(x)`` copies ``x`` into the captured input, replays the graph and returns the
    captured output tensor, which the next call overwrites (``.clone()`` it to keep it).
    Build it with :meth:`convformer_fast.ConvFormerFast.cuda_graph`.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, warmup: int = 3):
        _check_capturable(model, example_input, warmup)
        self.model = model
        self.static_input = example_input.detach().clone()
        side = torch.cuda.Stream(device=example_input.device)
        side.wait_stream(torch.cuda.current_stream(example_input.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):
                model(self.static_input)
        torch.cuda.current_stream(example_input.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode():
            self._key = _weights_key(model)
            try:
                with torch.cuda.graph(self.graph):
                    self.static_output = model(self.static_input)
            except RuntimeError as error:
                raise RuntimeError(f"cuda_graph: the forward could not be captured ({error}); a "
                                   "backend synchronised with the host or used an operation a "
                                   "CUDA graph cannot record") from error
        if _weights_key(model) != self._key:
            raise RuntimeError("cuda_graph: the weights changed while the forward was captured")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.static_input
        if not isinstance(x, torch.Tensor) or x.shape != s.shape or x.dtype != s.dtype or x.device != s.device:
            got = (f"{tuple(x.shape)} {x.dtype} on {x.device}" if isinstance(x, torch.Tensor)
                   else type(x).__name__)
            raise ValueError(f"x: got {got}, expected {tuple(s.shape)} {s.dtype} on {s.device} (the "
                             "captured shape; capture another graph for other shapes)")
        if _weights_key(self.model) != self._key:
            raise RuntimeError("cuda_graph: a parameter of the model changed since the capture (the "
                               "graph would replay with the old folded weights); call "
                               "model.cuda_graph(example_input) again")
        s.copy_(x)
        self.graph.replay()
        return self.static_output


def _check_capturable(model: nn.Module, example_input: torch.Tensor, warmup: int) -> None:
    if model.training:
        raise ValueError("model: is in training mode; cuda_graph captures an inference forward: call "
                         "model.eval() first")
    if not isinstance(example_input, torch.Tensor):
        raise ValueError(f"example_input: got {type(example_input).__name__}, expected a torch.Tensor")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup: got {warmup!r}, expected a positive integer (the first calls "
                         "autotune and fold the weights, which a capture cannot contain)")
    if example_input.device.type != "cuda":
        raise ValueError(f"example_input: is on {example_input.device}, expected a CUDA tensor (CUDA "
                         "graphs record GPU work)")
    devices = {p.device for p in model.parameters()}
    if devices != {example_input.device}:
        raise ValueError(f"model: its parameters are on {sorted(map(str, devices))}, expected "
                         f"{example_input.device} (the example input's device)")


def _weights_key(model: nn.Module) -> tuple:
    """Where every parameter and buffer lives and its version: a replay is valid while this
    is unchanged (the folded weights it reads were derived from these)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)
