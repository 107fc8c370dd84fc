"""Evaluation metrics for 3D human pose estimation.

All pose arguments are arrays of shape ``(..., J, 3)`` holding joint positions
in millimetres (any leading batch/time dimensions are allowed). Every function
accepts either ``numpy.ndarray`` or ``torch.Tensor`` inputs (a mix of the two
is converted to the tensor's dtype and device) and answers in the same kind:

* the mean metrics (:func:`mpjpe`, :func:`p_mpjpe`, :func:`mpjve`,
  :func:`pck`, :func:`auc`) return a Python ``float`` for numpy inputs and a
  0-d tensor for torch inputs (so the torch versions stay differentiable where
  the maths is);
* the ``*_per_sample`` variants keep the leading dimensions.

Protocols, as reported in the Human3.6M literature:

* Protocol I   -- :func:`mpjpe`, the mean Euclidean joint error;
* Protocol II  -- :func:`p_mpjpe`, MPJPE after a per-pose similarity
  (Procrustes) alignment of the prediction onto the ground truth;
* Protocol III -- :func:`mpjve`, the mean error of the first temporal
  differences (velocities) of the joints.

MPI-INF-3DHP reports :func:`pck` (150 mm) and :func:`auc` (PCK averaged over
the thresholds 0, 5, ..., 150 mm).

Invalid inputs raise ``ValueError`` naming the argument, what was given and
what was expected.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterable, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "H36M_ACTIONS",
    "H36M_ACTION_FULL_NAMES",
    "AUC_THRESHOLDS",
    "canonical_action",
    "joint_errors",
    "mpjpe",
    "mpjpe_per_sample",
    "procrustes_align",
    "p_mpjpe",
    "p_mpjpe_per_sample",
    "mpjve",
    "mpjve_per_sample",
    "pck",
    "pck_per_sample",
    "auc",
    "auc_per_sample",
    "per_action",
]

#: The 15 Human3.6M actions, abbreviated and in the column order of the
#: result tables of the paper (and of most of the literature).
H36M_ACTIONS: tuple[str, ...] = (
    "Dir", "Disc", "Eat", "Greet", "Phone", "Photo", "Pose", "Purch",
    "Sit", "SitD", "Smoke", "Wait", "WalkD", "Walk", "WalkT",
)

#: Full action names (as used by the dataset) for each abbreviation.
H36M_ACTION_FULL_NAMES: dict[str, str] = {
    "Dir": "Directions",
    "Disc": "Discussion",
    "Eat": "Eating",
    "Greet": "Greeting",
    "Phone": "Phoning",
    "Photo": "Photo",
    "Pose": "Posing",
    "Purch": "Purchases",
    "Sit": "Sitting",
    "SitD": "SittingDown",
    "Smoke": "Smoking",
    "Wait": "Waiting",
    "WalkD": "WalkDog",
    "Walk": "Walking",
    "WalkT": "WalkTogether",
}

#: PCK thresholds (mm) averaged by :func:`auc`: 0, 5, ..., 150.
AUC_THRESHOLDS: np.ndarray = np.linspace(0.0, 150.0, 31)

# Lower-case, separator-free spellings -> abbreviation. Covers the full names,
# the abbreviations themselves and the raw Human3.6M spellings (S1 uses
# "TakingPhoto" and "WalkingDog"; some tools write "WalkingTogether").
_ACTION_ALIASES: dict[str, str] = {}
for _short, _full in H36M_ACTION_FULL_NAMES.items():
    _ACTION_ALIASES[_short.lower()] = _short
    _ACTION_ALIASES[_full.lower()] = _short
_ACTION_ALIASES.update({
    "takingphoto": "Photo",
    "walkingdog": "WalkD",
    "walkingtogether": "WalkT",
    "phone": "Phone",
    "purchase": "Purch",
    "sittingdown": "SitD",
})
del _short, _full

# A trailing sub-action / chunk marker: "Directions 1", "Eating_2",
# "Walk 1 chunk0" (HumanEva).
_TRAILING_INDEX = re.compile(r"(?:[\s_\-]*(?:chunk)?\d+)+$", re.IGNORECASE)


# ---------------------------------------------------------------------------
# argument handling
# ---------------------------------------------------------------------------

def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _describe(x) -> str:
    shape = tuple(x.shape) if hasattr(x, "shape") else None
    return f"shape {shape}" if shape is not None else f"{type(x).__name__}"


def _to_pair(pred, target):
    """Convert ``pred``/``target`` to one backend (torch if either is a tensor).

    numpy inputs become float64 arrays; torch inputs keep their floating dtype
    (integer tensors become the default float dtype).
    """
    if _is_torch(pred) or _is_torch(target):
        ref = pred if _is_torch(pred) else target
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        pred = torch.as_tensor(pred, dtype=dtype, device=ref.device)
        target = torch.as_tensor(target, dtype=dtype, device=ref.device)
        return pred, target, True
    try:
        pred = np.asarray(pred, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pred: got {type(pred).__name__}, expected a numeric array "
                         "of shape (..., J, 3)") from exc
    try:
        target = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"target: got {type(target).__name__}, expected a numeric array "
                         "of shape (..., J, 3)") from exc
    return pred, target, False


def _check_poses(pred, target, min_ndim: int = 2):
    """Validate shapes ``(..., J, 3)`` and equality; return the converted pair."""
    pred, target, is_torch = _to_pair(pred, target)
    for name, x in (("pred", pred), ("target", target)):
        if x.ndim < min_ndim or x.shape[-1] != 3:
            lead = "..., " if min_ndim <= 2 else "..., T, "
            raise ValueError(
                f"{name}: got {_describe(x)}, expected shape ({lead}J, 3) "
                f"(at least {min_ndim} dimensions, last dimension 3 = x, y, z in mm)"
            )
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred/target: got pred {_describe(pred)} and target {_describe(target)}, "
            "expected identical shapes (..., J, 3)"
        )
    return pred, target, is_torch


def _norm(x, is_torch: bool):
    if is_torch:
        return torch.linalg.vector_norm(x, dim=-1)
    return np.linalg.norm(x, axis=-1)


def _mean(x, is_torch: bool):
    """Mean of all elements: 0-d tensor for torch, Python float for numpy."""
    if is_torch:
        return x.mean()
    return float(np.mean(x))


# ---------------------------------------------------------------------------
# Protocol I
# ---------------------------------------------------------------------------

def joint_errors(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Euclidean distance of every joint.

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground-truth joints, ``(..., J, 3)`` mm.

    Returns:
        Distances ``(..., J)`` in mm (numpy float64 or a tensor).
    """
    pred, target, is_torch = _check_poses(pred, target)
    return _norm(pred - target, is_torch)


def mpjpe_per_sample(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Protocol I per pose: mean joint error of each pose, ``(...)`` mm."""
    return joint_errors(pred, target).mean(-1)


def mpjpe(pred: ArrayLike, target: ArrayLike):
    """Protocol I: mean per-joint position error (MPJPE).

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground-truth joints, ``(..., J, 3)`` mm.

    Returns:
        The mean Euclidean error in mm over all joints and poses: a ``float``
        for numpy input, a 0-d tensor for torch input.
    """
    pred, target, is_torch = _check_poses(pred, target)
    return _mean(_norm(pred - target, is_torch), is_torch)


# ---------------------------------------------------------------------------
# Protocol II
# ---------------------------------------------------------------------------

def procrustes_align(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Align each predicted pose onto its target with a similarity transform.

    For every pose, finds the scale ``s > 0``, proper rotation ``R``
    (``det R = +1``; reflections are excluded) and translation ``t`` that
    minimise ``sum_j |s * pred_j @ R + t - target_j|^2`` (Umeyama/Kabsch via an
    SVD of the 3x3 cross-covariance). When the unconstrained optimum would be
    a reflection, the sign belonging to the smallest singular value is flipped,
    which yields the best proper rotation.

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground-truth joints, ``(..., J, 3)`` mm.

    Returns:
        The aligned prediction, ``(..., J, 3)`` mm, same backend as the input
        (numpy results are float64).
    """
    pred, target, is_torch = _check_poses(pred, target)
    mu_p = pred.mean(-2, keepdims=True) if not is_torch else pred.mean(-2, keepdim=True)
    mu_t = target.mean(-2, keepdims=True) if not is_torch else target.mean(-2, keepdim=True)
    p0 = pred - mu_p
    t0 = target - mu_t

    # Cross-covariance M = P0^T T0, shape (..., 3, 3). With M = U S Vh the
    # optimal proper rotation is R = U D Vh, D = diag(1, 1, sign det(U Vh)).
    if is_torch:
        cov = p0.transpose(-1, -2) @ t0
        u, s, vh = torch.linalg.svd(cov)
        d = torch.sign(torch.linalg.det(u @ vh))
        d = torch.where(d == 0, torch.ones_like(d), d)
        u = torch.cat([u[..., :, :2], u[..., :, 2:] * d[..., None, None]], dim=-1)
        trace = s[..., 0] + s[..., 1] + s[..., 2] * d
        var_p = (p0 * p0).sum(dim=(-2, -1))
        eps = torch.finfo(var_p.dtype).tiny
        scale = trace / torch.clamp(var_p, min=eps)
    else:
        cov = np.swapaxes(p0, -1, -2) @ t0
        u, s, vh = np.linalg.svd(cov)
        d = np.sign(np.linalg.det(u @ vh))
        d = np.where(d == 0, 1.0, d)
        u = u.copy()
        u[..., :, 2] *= d[..., None]
        trace = s[..., 0] + s[..., 1] + s[..., 2] * d
        var_p = (p0 * p0).sum(axis=(-2, -1))
        scale = trace / np.maximum(var_p, np.finfo(np.float64).tiny)
    rot = u @ vh
    return scale[..., None, None] * (p0 @ rot) + mu_t


def p_mpjpe_per_sample(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Protocol II per pose: MPJPE after Procrustes alignment, ``(...)`` mm."""
    aligned = procrustes_align(pred, target)
    pred_, target_, is_torch = _to_pair(aligned, target)
    return _norm(pred_ - target_, is_torch).mean(-1)


def p_mpjpe(pred: ArrayLike, target: ArrayLike):
    """Protocol II: MPJPE after per-pose rigid alignment with scale (P-MPJPE).

    Every pose (the last two dimensions) is aligned independently with
    :func:`procrustes_align` (rotation, translation and isotropic scale; no
    reflections), then the mean joint error is taken.

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground-truth joints, ``(..., J, 3)`` mm.

    Returns:
        Mean error in mm: a ``float`` (numpy) or a 0-d tensor (torch).
    """
    per_sample = p_mpjpe_per_sample(pred, target)
    return _mean(per_sample, _is_torch(per_sample))


# ---------------------------------------------------------------------------
# Protocol III
# ---------------------------------------------------------------------------

def mpjve_per_sample(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Protocol III per transition.

    Args:
        pred: predicted joints, ``(..., T, J, 3)`` mm with ``T >= 2`` frames
            along axis -3.
        target: ground truth of the same shape.

    Returns:
        ``(..., T - 1)``: for each pair of consecutive frames, the mean over
        joints of the Euclidean error of the velocities (mm per frame).
    """
    pred, target, is_torch = _check_poses(pred, target, min_ndim=3)
    frames = pred.shape[-3]
    if frames < 2:
        raise ValueError(
            f"pred: got {_describe(pred)} with {frames} frame(s) on axis -3, "
            "expected at least 2 frames (..., T >= 2, J, 3) to take velocities"
        )
    vel_p = pred[..., 1:, :, :] - pred[..., :-1, :, :]
    vel_t = target[..., 1:, :, :] - target[..., :-1, :, :]
    return _norm(vel_p - vel_t, is_torch).mean(-1)


def mpjve(pred: ArrayLike, target: ArrayLike):
    """Protocol III: mean per-joint velocity error (MPJVE).

    Velocities are first differences along time, the axis just before the
    joint axis (axis -3).

    Args:
        pred: predicted joints, ``(..., T, J, 3)`` mm, ``T >= 2``.
        target: ground truth of the same shape.

    Returns:
        Mean velocity error in mm/frame: ``float`` (numpy) or 0-d tensor.
    """
    per = mpjve_per_sample(pred, target)
    return _mean(per, _is_torch(per))


# ---------------------------------------------------------------------------
# PCK / AUC
# ---------------------------------------------------------------------------

def _check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold: got {threshold!r}, expected a non-negative number (mm)")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"threshold: got {threshold!r}, expected a non-negative number (mm)")
    return value


def pck_per_sample(pred: ArrayLike, target: ArrayLike, threshold: float = 150.0) -> ArrayLike:
    """Percentage of correct keypoints of each pose.

    A joint is correct when its error is strictly below ``threshold``.

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground truth of the same shape.
        threshold: distance threshold in mm (default 150).

    Returns:
        ``(...)`` percentages in ``[0, 100]``.
    """
    threshold = _check_threshold(threshold)
    err = joint_errors(pred, target)
    correct = err < threshold
    if _is_torch(err):
        return correct.to(err.dtype).mean(-1) * 100.0
    return correct.astype(np.float64).mean(-1) * 100.0


def pck(pred: ArrayLike, target: ArrayLike, threshold: float = 150.0):
    """Percentage of correct keypoints (PCK) over all joints and poses.

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground truth of the same shape.
        threshold: distance threshold in mm (default 150); a joint is correct
            when its error is ``< threshold``.

    Returns:
        Percentage in ``[0, 100]``: ``float`` (numpy) or 0-d tensor (torch).
    """
    per = pck_per_sample(pred, target, threshold)
    return _mean(per, _is_torch(per))


def auc_per_sample(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Area under the PCK curve of each pose, ``(...)`` in ``[0, 100]``.

    The mean of :func:`pck_per_sample` over :data:`AUC_THRESHOLDS`
    (``numpy.linspace(0, 150, 31)`` mm).
    """
    err = joint_errors(pred, target)
    if _is_torch(err):
        thr = torch.as_tensor(AUC_THRESHOLDS, dtype=err.dtype, device=err.device)
        correct = (err[..., None] < thr).to(err.dtype)  # (..., J, K)
        return correct.mean(dim=(-2, -1)) * 100.0
    correct = (err[..., None] < AUC_THRESHOLDS).astype(np.float64)
    return correct.mean(axis=(-2, -1)) * 100.0


def auc(pred: ArrayLike, target: ArrayLike):
    """Area under the PCK curve: mean PCK over thresholds 0, 5, ..., 150 mm.

    Args:
        pred: predicted joints, ``(..., J, 3)`` mm.
        target: ground truth of the same shape.

    Returns:
        AUC in ``[0, 100]``: ``float`` (numpy) or 0-d tensor (torch).
    """
    per = auc_per_sample(pred, target)
    return _mean(per, _is_torch(per))


# ---------------------------------------------------------------------------
# Per-action aggregation
# ---------------------------------------------------------------------------

def _base_action_name(name: str) -> str:
    """Strip sub-action / chunk suffixes: 'Directions 1' -> 'Directions'."""
    stripped = _TRAILING_INDEX.sub("", name.strip())
    return stripped if stripped else name.strip()


def canonical_action(name: str, strict: bool = True) -> str:
    """Map a Human3.6M action name to its abbreviation in :data:`H36M_ACTIONS`.

    Accepts full names (``'Directions'``), raw dataset names with a
    sub-action number (``'Directions 1'``, ``'Eating 2'``), the S1 spellings
    (``'TakingPhoto'``, ``'WalkingDog'``) and the abbreviations themselves;
    case, spaces and underscores are ignored.

    Args:
        name: the action name.
        strict: if true, an unknown name raises ``ValueError``; otherwise the
            name with its trailing sub-action/chunk index removed is returned
            (e.g. HumanEva ``'Walk 1 chunk0'`` -> ``'Walk'``, which coincides
            with the H36M abbreviation for walking).

    Returns:
        The abbreviation (e.g. ``'Dir'``) or, non-strict, the base name.
    """
    if not isinstance(name, str):
        raise ValueError(f"name: got {type(name).__name__} {name!r}, expected an action name string")
    base = _base_action_name(name)
    key = re.sub(r"[\s_\-]", "", base).lower()
    if key in _ACTION_ALIASES:
        return _ACTION_ALIASES[key]
    if strict:
        raise ValueError(
            f"name: got {name!r}, expected a Human3.6M action such as "
            f"{', '.join(H36M_ACTION_FULL_NAMES.values())} (optionally followed by a "
            "sub-action number)"
        )
    return base


def per_action(errors, actions: Iterable[str], strict: bool = False) -> "OrderedDict[str, float]":
    """Average per-sample errors per action, as in the paper tables.

    Args:
        errors: per-sample errors, any shape with ``N`` elements in total
            (numpy, torch or a sequence of numbers), e.g. the output of
            :func:`mpjpe_per_sample` flattened.
        actions: ``N`` action names, one per sample; raw Human3.6M names are
            mapped with :func:`canonical_action`.
        strict: if true, names that are not Human3.6M actions raise
            ``ValueError``; otherwise they are grouped under their base name
            (trailing sub-action/chunk index removed).

    Returns:
        An ``OrderedDict`` mapping action -> mean error over its samples, with
        the Human3.6M actions first in :data:`H36M_ACTIONS` order (only those
        present), then any other actions in order of first appearance, and a
        final ``'Average'`` entry: the unweighted mean of the per-action means.
    """
    if _is_torch(errors):
        values = errors.detach().to("cpu", torch.float64).numpy().reshape(-1)
    else:
        try:
            values = np.asarray(errors, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"errors: got {type(errors).__name__}, expected numbers") from exc
    names = list(actions)
    if len(names) != values.size:
        raise ValueError(
            f"actions: got {len(names)} names for {values.size} errors, "
            "expected one action name per error"
        )
    if values.size == 0:
        raise ValueError("errors: got 0 samples, expected at least one")

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    order: list[str] = []
    for value, raw in zip(values, names):
        key = canonical_action(raw, strict=strict)
        if key not in sums:
            sums[key] = 0.0
            counts[key] = 0
            order.append(key)
        sums[key] += float(value)
        counts[key] += 1

    known = [a for a in H36M_ACTIONS if a in sums]
    others = [a for a in order if a not in H36M_ACTION_FULL_NAMES]
    result: "OrderedDict[str, float]" = OrderedDict()
    for key in known + others:
        result[key] = sums[key] / counts[key]
    result["Average"] = float(np.mean(list(result.values())))
    return result
