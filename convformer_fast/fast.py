"""Drop-in fast modules: same constructor arguments, parameters and state_dict keys as the
eager reference, plus ``backend=``.

They subclass the reference modules, so ``fast.load_state_dict(ref.state_dict())`` works
strictly in both directions and :func:`convert` can turn an eager module into a fast one in
place (its parameters stay the same objects, so an optimizer keeps working).
"""

from __future__ import annotations

import torch
from torch import nn

from . import _checks, functional
from .backends import AUTO, Backend, Layer, check_backend_name, resolve
from .fold import fold_qkv
from .reference import DMHCSA, ConvFormer, ConvFormerBlock


class DMHCSAFast(DMHCSA):
    """:class:`DMHCSA` computed by a fast backend (default ``"auto"``)."""

    def __init__(self, *args, backend: str = AUTO, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast(backend)

    def _init_fast(self, backend: str) -> None:
        self.backend = check_backend_name(backend)
        # (key, weight, bias, derived: {name: tensor}), replaced whole, never mutated
        self._fold_cache = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_fold_cache"] = None  # derived data: never pickled or deep-copied
        return state

    def _fold_key(self) -> tuple | None:
        # Parameter versions bump on every in-place update (optimizer steps, load_state_dict,
        # .copy_()), data pointers change on .to() / re-assignment. Inference tensors (a model
        # built or loaded inside torch.inference_mode()) have no version counter, so an
        # in-place update could not be seen: their fold is not cached (None).
        params = list(self.parameters(recurse=True))
        if any(p.is_inference() for p in params):
            return None
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)

    def folded_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded Q/K/V convolution (weight (3C, C, k_max), bias (3C,)).

        With autograd off in eval mode the fold is cached and recomputed only when a
        parameter changes; in training (or with gradients on) it is recomputed each call
        so gradients flow through it and aggregation dropout draws a fresh mask.
        """
        if not self._caches_fold():
            return fold_qkv(self.conv_groups(), self.aggregation_weights())
        key = self._fold_key()  # taken before reading the weights: a racing update misses
        if key is None:
            return fold_qkv(self.conv_groups(), self.aggregation_weights())
        cached = self._fold_cache
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        weight, bias = fold_qkv(self.conv_groups(), self.aggregation_weights())
        self._fold_cache = (key, weight, bias, {})
        return weight, bias

    def _caches_fold(self) -> bool:
        return not (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling())

    def derived_from_fold(self, name: str, weight: torch.Tensor, derive) -> torch.Tensor:
        """``derive(weight)`` for the folded ``weight`` just returned by :meth:`folded_qkv`,
        cached beside the fold (and invalidated with it) when the fold is cached. Backends
        keep weight layouts of their kernels here (e.g. the Winograd-transformed weight)."""
        cached = self._fold_cache
        if not self._caches_fold() or cached is None or cached[1] is not weight:
            return derive(weight)
        value = cached[3].get(name)
        if value is None:
            value = derive(weight)
            self._fold_cache = cached[:3] + ({**cached[3], name: value},)
        return value

    def resolve_backend(self, x: torch.Tensor, *modules: nn.Module) -> Backend:
        """The backend that computes this layer on ``x`` (its declared handoff applied);
        ``modules``: others whose parameters share the call (the block's LayerNorm)."""
        grad = torch.is_grad_enabled() and (x.requires_grad or any(
            p.requires_grad for m in (self, *modules) for p in m.parameters()))
        return resolve(self.backend, x, Layer(self.layout, self.head_dim, grad))

    def prepared_weights(self, backend: Backend, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """``backend.prepare(weight)`` for the folded ``weight`` just returned by
        :meth:`folded_qkv`, cached beside the fold."""
        return self.derived_from_fold(backend.name, weight, lambda w: backend.prepare(w, self.layout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_tokens(x, self.num_tokens, self.num_features, type(self).__name__)
        backend = self.resolve_backend(x)
        if not backend.folds:
            return DMHCSA.forward(self, x)
        weight, bias = self.folded_qkv()
        return backend.dmhcsa(x, weight, bias, self.num_heads, self.layout,
                              **self.prepared_weights(backend, weight))


class ConvFormerBlockFast(ConvFormerBlock):
    """:class:`ConvFormerBlock` whose attention is a :class:`DMHCSAFast`.

    The backend is resolved once per forward; each half of the block (paper eq. 8) is then
    one call of :mod:`convformer_fast.functional`, which a backend may fuse into one kernel
    (LayerNorm, main op, residual add) in inference.
    """

    attention_cls = DMHCSAFast

    def __init__(self, *args, backend: str = AUTO, **kwargs):
        super().__init__(*args, backend=backend, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn, norm1, norm2 = self.attn, self.norm1, self.norm2
        _checks.check_tokens(x, attn.num_tokens, attn.num_features, type(attn).__name__)
        backend = attn.resolve_backend(x, norm1)
        if not backend.folds:
            return ConvFormerBlock.forward(self, x)
        # DropPath draws its mask after the branch, in the eager order (aggregation dropout
        # in the fold first); an active one keeps the halves unfused.
        branch = self.drop_path if self.drop_path.training and self.drop_path.p > 0 else None
        weight, bias = attn.folded_qkv()
        x = functional.attention_residual(
            x, norm1.weight, norm1.bias, norm1.eps, weight, bias, attn.num_heads, attn.layout,
            backend=backend, branch=branch, prepared=attn.prepared_weights(backend, weight))
        fc1, fc2 = self.mlp[0], self.mlp[2]
        return functional.feed_forward_residual(
            x, norm2.weight, norm2.bias, norm2.eps, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
            backend=backend, branch=branch)


class ConvFormerFast(ConvFormer):
    """:class:`ConvFormer` built from fast blocks; ``backend`` applies to every layer."""

    block_cls = ConvFormerBlockFast

    def __init__(self, *args, backend: str = AUTO, **kwargs):
        super().__init__(*args, backend=backend, **kwargs)

    @property
    def backend(self) -> str:
        return next(m.backend for m in self.modules() if isinstance(m, DMHCSAFast))

    def set_backend(self, backend: str) -> "ConvFormerFast":
        """Switch every layer to ``backend``; returns self."""
        check_backend_name(backend)
        for module in self.modules():
            if isinstance(module, DMHCSAFast):
                module.backend = backend
        return self

    def freeze(self, backend: str = "torch") -> nn.Module:
        """An inference-only copy whose folded Q/K/V weights are constant buffers, computed by
        ``backend`` (``torch``: standard ops, for ONNX and other exporters; ``cpu``: this
        package's C++ ops, for AOTInductor): :func:`convformer_fast.export.freeze`."""
        from .export import freeze

        return freeze(self, backend)

    def cuda_graph(self, example_input: torch.Tensor, warmup: int = 3):
        """This model's inference forward at ``example_input``'s shape captured in a CUDA
        graph: ``graphed = model.eval().cuda_graph(x); y = graphed(x)``. A call copies its
        input in, replays every kernel launch at once and returns the captured output
        (overwritten by the next call). For batch-1 latency with the ``cuda`` and ``triton``
        backends, which are launch-bound there; see :mod:`convformer_fast.cuda_graph`."""
        from .cuda_graph import CudaGraphForward

        return CudaGraphForward(self, example_input, warmup)

    @classmethod
    def from_reference(cls, model: ConvFormer, backend: str = AUTO) -> "ConvFormerFast":
        """A fast copy of an eager ``model`` (same weights, dtype, device and mode)."""
        if not isinstance(model, ConvFormer):
            raise ValueError(f"model: got {type(model).__name__}, expected a ConvFormer")
        param = next(model.parameters())
        fast = cls(**model.config, backend=backend).to(device=param.device, dtype=param.dtype)
        fast.load_state_dict(model.state_dict(), strict=True)
        return fast.train(model.training)


_FAST_TWIN = {DMHCSA: DMHCSAFast, ConvFormerBlock: ConvFormerBlockFast, ConvFormer: ConvFormerFast}


def convert(module: nn.Module, backend: str = AUTO) -> nn.Module:
    """Turn every eager DMHCSA / ConvFormerBlock / ConvFormer inside ``module`` (itself
    included) into its fast twin, in place, and return ``module``.

    The swap changes each module's class only: parameters, buffers, hooks and optimizer
    references are untouched.
    """
    check_backend_name(backend)
    for sub in module.modules():
        twin = _FAST_TWIN.get(type(sub))
        if twin is not None:
            sub.__class__ = twin
        if isinstance(sub, DMHCSAFast):
            sub._init_fast(backend)
    return module
