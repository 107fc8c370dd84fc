"""2D keypoints from detectors: COCO-17 -> Human3.6M-17, missed detections, normalisation.

Missed detections: a keypoint that is NaN (or whose confidence is below
``min_confidence``) is **interpolated linearly over time** from the same joint's nearest
detected frames before and after; before the first / after the last detection the nearest
detected value is held. A joint that is never detected in the whole sequence cannot be
interpolated and is rejected with an :class:`~convformer_fast.errors.InputError` (a
``ValueError``) naming the joint; so is anything else that makes keypoints unusable
(shape, dtype, coordinates that overflow float32 after normalisation).

Edges that are valid input: one frame (a ``(17, C)`` array counts as one frame), fewer
frames than the model's receptive field (windows are edge-padded), keypoints exactly on the
image border (``x = 0`` or ``x = width``: normalised to -1 and 1, nothing is clipped), and
confidences equal to ``min_confidence`` (a keypoint is missed only when its confidence is
*below* the threshold, or NaN).
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from ..errors import InputError
from .data.camera import normalize_screen_coordinates
from .data.skeleton import H36M_17_NAMES

__all__ = [
    "COCO_17_NAMES",
    "coco_to_h36m",
    "fill_missing",
    "prepare_keypoints",
]

COCO_17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
_C = {name: i for i, name in enumerate(COCO_17_NAMES)}

# H36M joints that are COCO joints; the others are built in coco_to_h36m.
_DIRECT = {1: "right_hip", 2: "right_knee", 3: "right_ankle", 4: "left_hip", 5: "left_knee",
           6: "left_ankle", 9: "nose", 11: "left_shoulder", 12: "left_elbow", 13: "left_wrist",
           14: "right_shoulder", 15: "right_elbow", 16: "right_wrist"}
# H36M "Head" sits near the top of the head: from the thorax, about 1.4 times as far as the
# centre of the eyes and ears (H36M: thorax -> nose ~110 mm, nose -> head ~115 mm).
HEAD_FROM_FACE = 1.4


def coco_to_h36m(keypoints: np.ndarray) -> np.ndarray:
    """Map COCO-17 keypoints ``(..., 17, C)`` to the Human3.6M-17 layout ``(..., 17, C)``.

    Pelvis = mid-hips, thorax = mid-shoulders, spine = midway between them, neck/nose = the
    nose, head = thorax + 1.4 x (centre of eyes and ears - thorax) (NaN-aware over the
    four face points). Extra channels (a confidence) are mapped the same way (a derived
    joint gets the mean of its sources).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim < 2 or kp.shape[-2] != 17:
        raise InputError(f"keypoints: got shape {kp.shape}, expected (..., 17, C) COCO-17 keypoints")
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, a missed keypoint
        return _coco_to_h36m(kp)


def _coco_to_h36m(kp: np.ndarray) -> np.ndarray:
    out = np.empty_like(kp)
    for h36m, coco in _DIRECT.items():
        out[..., h36m, :] = kp[..., _C[coco], :]
    pelvis = (kp[..., _C["left_hip"], :] + kp[..., _C["right_hip"], :]) / 2
    thorax = (kp[..., _C["left_shoulder"], :] + kp[..., _C["right_shoulder"], :]) / 2
    face = kp[..., [_C["left_eye"], _C["right_eye"], _C["left_ear"], _C["right_ear"]], :]
    with warnings.catch_warnings():  # all four face points missed: NaN, filled later
        warnings.simplefilter("ignore", RuntimeWarning)
        face_centre = np.nanmean(face, axis=-2)
    out[..., 0, :] = pelvis
    out[..., 7, :] = (pelvis + thorax) / 2
    out[..., 8, :] = thorax
    out[..., 10, :] = thorax + HEAD_FROM_FACE * (face_centre - thorax)
    return out


def fill_missing(keypoints: np.ndarray, joint_names=H36M_17_NAMES) -> tuple[np.ndarray, int]:
    """Interpolate missing (NaN) keypoints over time.

    Args:
        keypoints: ``(F, J, 2)``; a keypoint is missing when either coordinate is not finite.
        joint_names: for the error message.

    Returns:
        ``(filled copy, number of filled keypoints)``.

    Raises:
        InputError: a joint missing in every frame.
    """
    kp = np.array(keypoints, dtype=np.float64, copy=True)
    valid = np.isfinite(kp).all(-1)  # (F, J)
    if valid.all():
        return kp, 0
    frames = np.arange(kp.shape[0])
    for j in range(kp.shape[1]):
        ok = valid[:, j]
        if ok.all():
            continue
        if not ok.any():
            name = joint_names[j] if j < len(joint_names) else str(j)
            raise InputError(f"keypoints: joint {j} ({name}) is missing (NaN or below the confidence "
                             f"threshold) in all {kp.shape[0]} frames; expected at least one detection "
                             "per joint to interpolate from")
        for c in range(kp.shape[2]):
            kp[~ok, j, c] = np.interp(frames[~ok], frames[ok], kp[ok, j, c])
    return kp, int((~valid).sum())


def prepare_keypoints(keypoints, layout: str = "coco", width: Optional[float] = None,
                      height: Optional[float] = None, normalized: bool = False,
                      min_confidence: float = 0.0) -> tuple[np.ndarray, dict]:
    """Detector output -> model input.

    Args:
        keypoints: ``(F, 17, 2)`` or ``(F, 17, 3)`` (x, y, confidence); pixels unless
            ``normalized``.
        layout: ``'coco'`` (COCO-17, mapped to H36M-17) or ``'h36m'`` (already H36M-17).
        width, height: image size in pixels (needed unless ``normalized``).
        normalized: the coordinates are already normalised screen coordinates.
        min_confidence: with a confidence channel, keypoints scored below it count as missed.

    Returns:
        ``(inputs (F, 17, 2) float32 normalised H36M-17, info)`` where ``info`` has
        ``filled`` (interpolated keypoints) and ``pixels`` (the H36M-17 pixel keypoints
        after filling, or None when ``normalized``).
    """
    kp = np.asarray(keypoints)
    if kp.dtype.kind not in "fiu":
        raise InputError(f"keypoints: got dtype {kp.dtype}, expected real numbers (float or int)")
    with np.errstate(invalid="ignore", over="ignore"):
        kp = kp.astype(np.float64)
    if kp.ndim == 2 and kp.shape[-1] in (2, 3):
        kp = kp[None]  # a single frame
    if kp.ndim != 3 or kp.shape[1] != 17 or kp.shape[2] not in (2, 3):
        raise InputError(f"keypoints: got shape {kp.shape}, expected (frames, 17, 2) or (frames, 17, 3) "
                         f"with confidence, joints in {layout!r} order (COCO-17 or H36M-17)")
    if kp.shape[0] < 1:
        raise InputError("keypoints: got 0 frames, expected at least one")
    if layout not in ("coco", "h36m"):
        raise InputError(f"layout: got {layout!r}, expected 'coco' or 'h36m'")
    xy = kp[..., :2].copy()
    if kp.shape[2] == 3:
        conf = kp[..., 2]
        xy[~(conf >= min_confidence)] = np.nan  # NaN confidence counts as missed too
    if layout == "coco":
        xy = coco_to_h36m(xy)
    xy, filled = fill_missing(xy, H36M_17_NAMES)
    if normalized:
        return _finite_float32(xy, "normalised coordinates"), {"filled": filled, "pixels": None}
    if width is None or height is None:
        raise InputError("width/height: got none, expected the image size in pixels to normalise "
                         "pixel keypoints (or pass normalized=True)")
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        raise InputError(f"width/height: got {width!r} x {height!r}, expected a positive image size in pixels")
    inputs = normalize_screen_coordinates(xy, w=float(width), h=float(height))
    return _finite_float32(inputs, "normalised coordinates"), {
        "filled": filled, "pixels": _finite_float32(xy, "pixel coordinates")}


def _finite_float32(values: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(np.float32)
    if not np.isfinite(out).all():
        frame = int(np.argwhere(~np.isfinite(out))[0][0])
        raise InputError(f"keypoints: {what} overflow float32 (first in frame {frame}); expected "
                         "coordinates within the image (or normalised ones with --normalized)")
    return out
