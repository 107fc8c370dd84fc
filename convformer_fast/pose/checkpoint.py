"""Training checkpoints: model config + weights + optimiser + epoch, and their checks.

A checkpoint is a ``torch.save`` dict::

    {"format": 1, "kind": "convformer_fast.pose",
     "config": model.config (the constructor arguments),
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": last finished epoch (1-based), "metrics": {...}, "args": {...}}

Loading never trusts the weights blindly: the architecture fields that the weights
determine (frames, joints, width, depths, kernel sizes, MLP width) are read back from the
tensor shapes and compared with the model at hand, so a checkpoint of another
configuration fails with ``CheckpointError`` naming the field (``num_frames: checkpoint
has 27, model has 81``) instead of a dump of mismatched state_dict keys.

Nor are the bytes trusted: ``torch.load`` does not check the CRC32 that its zip container
stores per record, so a flipped bit in a tensor would load silently as a wrong weight.
Before loading, the container is read through :mod:`zipfile` (every record against its
CRC; records must be stored uncompressed, as ``torch.save`` writes them, so nothing can
inflate), and an empty, truncated, corrupted or foreign file (JSON, ``.npz``, random
bytes, a pickled whole module) fails with the file's name and what it is instead. The
pickle is read with ``weights_only=True`` (no code runs). After loading, every weight must
be a dense floating-point tensor backed by its own data (a zero-stride tensor would
declare a shape far larger than the file) with finite values, and transformer blocks
must be numbered 0, 1, 2, ... without gaps (a key ``temporal_blocks.1000000.*`` would
otherwise build a million-block model).
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import zipfile
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..atomic import atomic_open
from ..errors import UserError
from ..fast import ConvFormerFast
from ..reference import ConvFormer

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "config_from_state_dict",
    "config_differences",
    "config_problem",
    "load_model_weights",
    "model_from_checkpoint",
    "model_config",
    "unwrap_model",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "convformer_fast.pose"

class CheckpointError(UserError):
    """A checkpoint file is unreadable, malformed, or belongs to another configuration."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a ``DistributedDataParallel`` / ``DataParallel`` / compiled wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _normalise(value):
    """Lists (as stored) and tuples (as constructed) compare equal."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


def save_checkpoint(path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler=None, scaler=None, epoch: int = 0,
                    metrics: Optional[Mapping[str, Any]] = None,
                    args: Optional[Mapping[str, Any]] = None) -> str:
    """Write a checkpoint atomically (a temporary file renamed over ``path``).

    Args:
        path: destination ``.pt`` file (its folder is created).
        model: the model (a DDP wrapper is unwrapped); must have ``.config``.
        optimizer, scheduler, scaler: saved with their ``state_dict()`` when given.
        epoch: the number of finished epochs.
        metrics: e.g. the last test metrics.
        args: the training arguments (plain values), for the record.

    Returns:
        ``path``.
    """
    model = unwrap_model(model)
    if not hasattr(model, "config"):
        raise ValueError(f"model: got {type(model).__name__} without .config, expected a ConvFormer")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()}
    state = {
        "format": CHECKPOINT_FORMAT,
        "kind": CHECKPOINT_KIND,
        "config": config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "args": dict(args or {}),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    with atomic_open(path) as handle:  # a file object: torch.save names its records "archive/..."
        torch.save(state, handle)
    return os.fspath(path)


def _check_container(path: str) -> None:
    """Raise CheckpointError unless ``path`` is an intact ``torch.save`` zip archive.

    Files in the pre-1.6 (non-zip) torch format start with a pickle opcode and are left
    to ``torch.load``; they carry no checksums."""
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), expected a torch.save checkpoint")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
                    raise CheckpointError(f"{path}: a zip archive of {names[:3]}, not a torch.save "
                                          "checkpoint (it has no data.pkl; a NumPy .npz?)")
                compressed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
                if compressed:
                    raise CheckpointError(f"{path}: record {compressed[0]!r} is compressed; expected the "
                                          "uncompressed records that torch.save writes")
                corrupted = archive.testzip()
        except CheckpointError:
            raise
        except Exception as exc:  # BadZipFile, or a damaged directory that zipfile chokes on
            raise CheckpointError(f"{path}: truncated or corrupted: its zip directory is unreadable "
                                  f"({type(exc).__name__}: {exc}; the file has {size} bytes)") from exc
        if corrupted is not None:
            raise CheckpointError(f"{path}: corrupted: record {corrupted!r} fails its CRC32 check "
                                  "(the bytes changed after torch.save wrote them)")
    elif head[:1] != b"\x80":  # neither a zip archive nor a legacy pickle
        kind = " (text: JSON?)" if head.lstrip()[:1] in (b"{", b"[") else ""
        raise CheckpointError(f"{path}: not a torch checkpoint{kind}: it starts with {head!r}, "
                              "expected the zip archive that torch.save writes")


def _load_error(path: str, exc: Exception) -> CheckpointError:
    """A CheckpointError for a ``torch.load`` failure on a file that passed the container check."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"{path}: holds pickled Python objects{what} that a weights-only load refuses (e.g. a "
            "whole module saved with torch.save(model)); save model.state_dict() or use "
            "convformer_fast.pose.checkpoint.save_checkpoint")
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return CheckpointError(f"{path}: cannot be read as a torch checkpoint "
                           f"({type(exc).__name__}: {first_line})")


# Optional entries of a checkpoint dict and the type each must have.
_OPTIONAL_ENTRIES = {"epoch": int, "metrics": dict, "args": dict, "optimizer": dict,
                     "scheduler": dict, "scaler": dict}


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    A bare ``state_dict`` of a ConvFormer (no config) is accepted too: its config is
    reconstructed from the tensor shapes (``num_heads`` cannot be, and defaults to 8).

    Raises:
        CheckpointError: a missing, empty, truncated, corrupted or foreign file, or
        missing/malformed keys (the message names the file and what is wrong).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    _check_container(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # damage the container check cannot see, foreign pickles
        raise _load_error(path, exc) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a checkpoint dict "
                              "with keys 'config' and 'model'")
    if "model" not in state and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        weights = _checked_weights(path, state)
        config = config_from_state_dict(weights, path)
        config.update(num_heads=8, drop_path=0.0, agg_dropout=0.0)
        return {"format": 0, "kind": "state_dict", "config": config, "model": weights, "epoch": 0,
                "metrics": {}, "args": {}, "path": path}
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: key {key!r} missing (file has {sorted(state)}); expected "
                                  "a convformer_fast checkpoint with 'config' and 'model'")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: key 'config' holds a {type(state['config']).__name__}, "
                              "expected the model's constructor dict")
    for key, value in state["config"].items():
        if not _plain_value(value):
            raise CheckpointError(f"{path}: config field {key!r} holds a {type(value).__name__}, expected "
                                  "a number, a string or a list of numbers")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: key 'model' holds a {type(state['model']).__name__}, "
                              "expected a state_dict")
    _checked_weights(path, state["model"])
    for key, expected in _OPTIONAL_ENTRIES.items():
        if key in state and not isinstance(state[key], expected):
            raise CheckpointError(f"{path}: key {key!r} holds a {type(state[key]).__name__}, "
                                  f"expected {expected.__name__}")
    fmt = state.get("format", CHECKPOINT_FORMAT)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise CheckpointError(f"{path}: key 'format' holds {fmt!r}, expected an integer")
    if state.get("epoch", 0) < 0:
        raise CheckpointError(f"{path}: key 'epoch' holds {state['epoch']}, expected >= 0")
    if fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: key 'format' is {fmt}, expected <= {CHECKPOINT_FORMAT} "
                              "(written by a newer convformer_fast)")
    state["path"] = path
    # The stored config must describe the stored weights.
    problems = config_differences(config_from_state_dict(state["model"], path), state["config"],
                                  names=("weights", "config"))
    if problems:
        raise CheckpointError(f"{path}: the stored config does not describe the stored weights: "
                              + "; ".join(problems))
    return state


def _plain_value(value) -> bool:
    """A config value as save_checkpoint writes them: None, a bool, number or string, or a
    list of numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, (bool, int, float)) for v in value)


def _checked_weights(path: str, weights: dict) -> dict:
    """Every entry a dense, finite floating-point tensor under a string key, backed by as
    many bytes as its shape needs."""
    for key, value in weights.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: a weight is filed under {key!r}, expected parameter names")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: weight {key!r} is a {type(value).__name__}, expected a tensor")
        if value.layout != torch.strided or not value.dtype.is_floating_point:
            raise CheckpointError(f"{path}: weight {key!r} is a {value.layout} {value.dtype} tensor, "
                                  "expected a dense floating-point one")
        needed = value.numel() * value.element_size()
        if value.numel() and (not value.is_contiguous() or needed > value.untyped_storage().nbytes()):
            raise CheckpointError(f"{path}: weight {key!r} declares shape {tuple(value.shape)} with strides "
                                  f"{value.stride()} over {value.untyped_storage().nbytes()} bytes of data; "
                                  "expected a contiguous tensor holding its own values")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: weight {key!r} holds NaN or infinite values (a diverged "
                                  "training run?); expected finite weights")
        largest = value.abs().max().item() if value.numel() else 0.0
        if largest > MAX_WEIGHT_MAGNITUDE:
            raise CheckpointError(f"{path}: weight {key!r} holds a value of magnitude {largest:.3g}; "
                                  f"expected at most {MAX_WEIGHT_MAGNITUDE:.0e} (beyond that the model's "
                                  "float32 arithmetic overflows: a damaged or diverged checkpoint)")
    return weights


# A LayerNorm squares its inputs: activations beyond ~1e19 overflow float32 (3.4e38), and a
# weight of 1e15 gets there after a few layers. Trained ConvFormer weights stay below ~1e2.
MAX_WEIGHT_MAGNITUDE = 1e15


_BLOCK_KEY = re.compile(r"^(spatial|temporal)_blocks\.(\d+)\.")


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], where: str = "state_dict") -> dict:
    """The architecture fields that a ConvFormer state_dict's tensor shapes determine.

    Returns:
        ``num_frames, num_joints, embed_dim, spatial_depth, temporal_depth,
        kernel_sizes, mlp_ratio`` (``num_heads`` and the dropout rates own no tensor).
    """
    def get(key, ndim: int):
        if key not in state_dict:
            raise CheckpointError(f"{where}: weight {key!r} missing, expected a ConvFormer state_dict "
                                  f"(this one has {len(state_dict)} entries: {sorted(map(str, state_dict))[:3]}...)")
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or value.dim() != ndim or 0 in value.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{where}: weight {key!r} has shape {shape}, expected a non-empty "
                                  f"{ndim}-d tensor")
        return value

    pos = get("spatial_pos_embed", 3)
    temporal = get("temporal_pos_embed", 3)
    blocks = {"spatial": set(), "temporal": set()}
    for key in state_dict:
        match = _BLOCK_KEY.match(key) if isinstance(key, str) else None
        if match:
            blocks[match.group(1)].add(int(match.group(2)))
    for stage, numbers in blocks.items():
        if numbers != set(range(len(numbers))):
            raise CheckpointError(f"{where}: {stage} blocks numbered {sorted(numbers)[:5]}..., expected "
                                  "0, 1, 2, ... without gaps")
    depth = {stage: len(numbers) for stage, numbers in blocks.items()}
    config = dict(num_frames=int(temporal.shape[1]), num_joints=int(pos.shape[1]),
                  embed_dim=int(pos.shape[2]), spatial_depth=depth["spatial"],
                  temporal_depth=depth["temporal"])
    stage = "spatial" if depth["spatial"] else ("temporal" if depth["temporal"] else None)
    if stage is not None:
        kernels, i = [], 0
        while f"{stage}_blocks.0.attn.query_convs.{i}.weight" in state_dict:
            kernels.append(int(get(f"{stage}_blocks.0.attn.query_convs.{i}.weight", 3).shape[-1]))
            i += 1
        config["kernel_sizes"] = tuple(kernels)
        hidden = get(f"{stage}_blocks.0.mlp.0.weight", 2)
        config["mlp_ratio"] = hidden.shape[0] / hidden.shape[1]
    return config


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], names=("checkpoint", "model"),
                       fields=None) -> list[str]:
    """``["field: checkpoint has X, model has Y", ...]`` for the fields both define (or ``fields``)."""
    keys = fields if fields is not None else [k for k in a if k in b]
    out = []
    for key in keys:
        va, vb = _normalise(a.get(key)), _normalise(b.get(key))
        if key == "mlp_ratio" and va is not None and vb is not None:
            same = abs(float(va) - float(vb)) < 1e-6
        else:
            same = va == vb
        if not same:
            out.append(f"{key}: {names[0]} has {va!r}, {names[1]} has {vb!r}")
    return out


def load_model_weights(model: nn.Module, checkpoint: Mapping[str, Any]) -> nn.Module:
    """Load a checkpoint's weights into ``model`` after checking that the configs agree.

    Every architecture field is compared (``num_heads`` too, when the checkpoint stores
    it); dropout rates may differ (they are training settings).

    Raises:
        CheckpointError: naming each mismatched field.
    """
    target = unwrap_model(model)
    path = checkpoint.get("path", "checkpoint")
    fields = [k for k in target.config if k not in ("drop_path", "agg_dropout")]
    problems = config_differences(checkpoint["config"], target.config, fields=[
        f for f in fields if f in checkpoint["config"]])
    if problems:
        raise CheckpointError(f"{path}: checkpoint is for a different model configuration: "
                              + "; ".join(problems))
    expected = target.state_dict()
    wrong_shapes = [f"{key}: checkpoint has {tuple(value.shape)}, model has {tuple(expected[key].shape)}"
                    for key, value in checkpoint["model"].items()
                    if key in expected and tuple(value.shape) != tuple(expected[key].shape)]
    if wrong_shapes:  # same config, yet a tensor of another shape: a damaged or edited file
        raise CheckpointError(f"{path}: {len(wrong_shapes)} weight(s) of the wrong shape: "
                              + "; ".join(wrong_shapes[:3]))
    missing, unexpected = target.load_state_dict(checkpoint["model"], strict=False)
    if missing or unexpected:  # same config but foreign keys: name a few, not all
        parts = [f"{len(names)} {what} (e.g. {names[:2]})"
                 for names, what in ((missing, "missing from the checkpoint"),
                                     (unexpected, "unknown to the model")) if names]
        raise CheckpointError(f"{path}: weights do not fit the model: " + ", ".join(parts))
    return model


def model_from_checkpoint(checkpoint, backend: str = "auto", device="cpu") -> ConvFormerFast:
    """Build the checkpoint's model (``ConvFormerFast``, eval mode) with its weights.

    Args:
        checkpoint: a path or a dict from :func:`load_checkpoint`.
        backend: fast backend of every layer.
        device: where to put the model.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    model = ConvFormerFast(**model_config(checkpoint), backend=backend)
    load_model_weights(model, checkpoint)
    return model.to(device).eval()


#: The constructor arguments of a ConvFormer: what a checkpoint's config may hold.
CONFIG_FIELDS = tuple(p for p in inspect.signature(ConvFormer.__init__).parameters
                      if p not in ("self", "block_kwargs"))


def model_config(checkpoint: Mapping[str, Any]) -> dict:
    """A checkpoint's config as constructor arguments, checked by building the model on the
    ``meta`` device (no memory); a config that makes no model is a CheckpointError."""
    path = checkpoint.get("path", "checkpoint")
    config = dict(checkpoint["config"])
    unknown = [k for k in config if k not in CONFIG_FIELDS]
    if unknown:
        raise CheckpointError(f"{path}: config has unknown field(s) {unknown}; expected only "
                              f"{list(CONFIG_FIELDS)}")
    if "kernel_sizes" in config and isinstance(config["kernel_sizes"], (list, tuple)):
        config["kernel_sizes"] = tuple(config["kernel_sizes"])
    problem = config_problem(config)
    if problem:
        raise CheckpointError(f"{path}: config does not make a model: {problem}")
    return config


def config_problem(config: Mapping[str, Any]) -> Optional[str]:
    """Why ``ConvFormer(**config)`` would fail (its own argument checks), or None; found by
    building it on the ``meta`` device, which allocates nothing."""
    try:
        with torch.device("meta"):
            ConvFormer(**config)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None
