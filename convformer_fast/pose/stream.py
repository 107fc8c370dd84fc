"""Real-time lifting: one 2D frame in, one 3D pose out.

:class:`StreamingLifter` turns a stream of 2D frames (a detector's output, frame by frame)
into 3D poses with the same numbers as whole-sequence inference
(:func:`~convformer_fast.pose.lifting.lift_sequence`, what ``convformer-fast infer``
computes), while doing per frame only the work a new frame brings:

* The spatial stage of the model (joint embedding and spatial blocks,
  :meth:`~convformer_fast.ConvFormer.spatial_stage`) is per frame, so each frame's
  features are computed once, when it arrives, and kept in a ring buffer of the last T
  frames. The ring is twice as long as the window and every frame is written twice
  (slots ``s`` and ``s + T``), so the last T frames in time order are always one
  contiguous slice, and no window is ever copied together.
* Only the temporal stage and head (:meth:`~convformer_fast.ConvFormer.temporal_stage`)
  run per answer, on that slice.

Which frame an answer belongs to: a centre model (the paper's) predicts the middle of its
window, so the pose of frame ``c`` needs frames up to ``c + T // 2``: ``push`` returns
frame ``pushed - 1 - delay`` with ``delay = T // 2`` frames of look-ahead (1.6 s at
T = 81 and 50 fps). A causal model (``target_frame="last"``, trained with
``convformer-fast train --target-frame last``) predicts the newest frame: no delay.

Padding, as offline inference does it: the first frame's features fill the whole ring,
which is exactly edge padding of the past (``pad="edge"``, the default), so the first
frames are answered as soon as their window's future is in; ``pad=None`` answers only
windows of T real frames. At the end of a sequence :meth:`StreamingLifter.flush` answers
the frames still waiting for their look-ahead by repeating the last frame (edge padding
of the future), so a whole stream gives the same poses as ``lift_sequence``.

Missed joints (a NaN coordinate or a confidence below ``min_confidence``) are handled as
offline inference does, from the past only: offline inference interpolates between the
detections before and after a gap and holds the last detection after it; a stream has no
"after", so a missed joint holds its last detection. A joint never seen yet in the
sequence (offline inference rejects a joint never seen at all) is placed at the joint's
mean position, a mean 2D pose fitted (shift and scale) to the joints that are present,
and flagged (:attr:`StreamingLifter.guessed_joints`).

Threads: a lifter holds one sequence's state; use one lifter per stream. Its methods take
a lock, so calls from several threads are serialised rather than interleaved, but frames
of two streams pushed into one lifter make one meaningless sequence. Lifters share
nothing (each holds its own copy of the model), so separate streams may run in separate
threads, at the cost of sharing the CPU's cores.

The ``convformer-fast infer --stream`` command (:func:`convformer_fast.pose.infer.run_stream`) plays a keypoint file
at its frame rate, or reads stdin as one JSON array per line (a detector can pipe into
it), writes poses as they come and reports per-frame latency and sustained frame rate.
"""

from __future__ import annotations

import functools
import threading
from typing import Optional, Sequence

import numpy as np
import torch

from ..fast import ConvFormerFast
from ..reference import TARGET_FRAMES, ConvFormer
from .checkpoint import unwrap_model
from .data.camera import normalize_screen_coordinates
from .data.skeleton import H36M_17, H36M_17_NAMES, flip_horizontal
from .keypoints import COCO_17_NAMES, coco_to_h36m

__all__ = ["StreamingLifter", "LAYOUTS", "PADS", "mean_pose_h36m", "latency_summary"]

#: Joint orders ``push`` accepts: the model's own, or COCO-17 (mapped to Human3.6M-17).
LAYOUTS = ("model", "coco")
#: ``pad="edge"``: repeat the first (and, on flush, the last) frame as offline inference
#: does; ``None``: answer only windows of T real frames.
PADS = ("edge", None)
# Windows per temporal batch in flush (bounded memory at T = 243: 32 x 243 x 544 floats).
_FLUSH_BATCH = 32


@functools.lru_cache(maxsize=1)
def mean_pose_h36m() -> np.ndarray:
    """``(17, 2)`` mean 2D pose in Human3.6M-17 order, pelvis at the origin: the mean over
    every frame of the bundled DeepMimic real-motion clips, in normalised screen
    coordinates (:mod:`convformer_fast.pose.data.deepmimic`; an oblique side view of a
    person about 0.6 units tall). Where a never-seen joint is placed."""
    from .data.deepmimic import load_deepmimic

    frames = np.concatenate([seq.inputs_2d for seq in load_deepmimic()]).astype(np.float64)
    pose = (frames - frames[:, H36M_17.root:H36M_17.root + 1]).mean(0)
    pose.setflags(write=False)
    return pose


def _fit_prior(prior: np.ndarray, xy: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``prior`` shifted and scaled onto the ``present`` joints of ``xy``: centroid onto
    centroid, spread onto spread (no rotation: a lone joint or a degenerate spread keeps
    the prior's scale; no joint present leaves the prior where it is)."""
    if not present.any():
        return prior.copy()
    seen, model = xy[present], prior[present]
    scale = 1.0
    if present.sum() >= 2:
        spread_prior = np.sqrt(((model - model.mean(0)) ** 2).sum())
        spread_seen = np.sqrt(((seen - seen.mean(0)) ** 2).sum())
        if spread_prior > 1e-9 and spread_seen > 1e-9:
            scale = spread_seen / spread_prior
    return (prior - model.mean(0)) * scale + seen.mean(0)


class StreamingLifter:
    """Lift a stream of 2D frames to 3D poses, one frame at a time.

    Args:
        model: a trained :class:`~convformer_fast.ConvFormer` / ``ConvFormerFast`` (a DDP
            wrapper is unwrapped). The lifter keeps its own eval-mode copy on the model's
            device and dtype, computed by ``backend``; later changes to ``model`` do not
            reach it.
        backend: the fast backend of every layer (``"auto"``: the fastest for the device).
        target: ``"centre"`` or ``"last"``: the frame the model predicts. It must be the
            model's own ``target_frame`` (a causal model predicts its last frame); None
            takes the model's. Stated by a caller that relies on it (e.g. on no delay).
        pad: ``"edge"`` (default): the first frame stands in for the frames before it,
            as offline inference pads; ``None``: answer only windows of T real frames.
        spatial_cache: keep each frame's spatial features (default). False recomputes
            the spatial stage of the whole window for every answer (the full model per
            frame), the baseline the cache is measured against.
        flip_symmetry: ``(kps_left, kps_right, joints_left, joints_right)`` to average
            with the mirrored input's prediction (flip test-time augmentation, as
            ``lift_sequence``; doubles the work), or None.
        min_confidence: with a confidence column, keypoints scored below it count as
            missed.
        layout: ``"model"`` (frames in the model's joint order) or ``"coco"`` (COCO-17,
            mapped to Human3.6M-17 as :func:`~convformer_fast.pose.keypoints.coco_to_h36m`;
            needs a 17-joint model).
        width, height: image size in pixels; given, ``push`` takes pixel coordinates and
            normalises them as offline inference does; None: normalised coordinates.
        mean_pose: ``(J, 2)`` mean 2D pose where never-seen joints are placed (fitted to
            the joints present); default :func:`mean_pose_h36m` for 17-joint models, else
            the centroid of the present joints.
    """

    def __init__(self, model, backend: str = "auto", target: Optional[str] = None, *,
                 pad: Optional[str] = "edge", spatial_cache: bool = True,
                 flip_symmetry: Optional[tuple] = None, min_confidence: float = 0.0,
                 layout: str = "model", width: Optional[float] = None, height: Optional[float] = None,
                 mean_pose=None):
        net = unwrap_model(model)
        if not isinstance(net, ConvFormer):
            raise ValueError(f"model: got {type(net).__name__}, expected a ConvFormer or ConvFormerFast")
        if target is not None and target not in TARGET_FRAMES:
            raise ValueError(f"target: got {target!r}, expected one of {list(TARGET_FRAMES)} (or None: the model's)")
        if target is not None and target != net.target_frame:
            kind = "a causal model (it predicts its window's last frame)" if net.target_frame == "last" \
                else "a centre model (it predicts its window's centre frame)"
            raise ValueError(f"target: got {target!r}, but the model was trained with target_frame="
                             f"{net.target_frame!r}, {kind}; expected target={net.target_frame!r} or a "
                             f"model trained with --target-frame {target}")
        if pad not in PADS:
            raise ValueError(f"pad: got {pad!r}, expected 'edge' or None")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: got {layout!r}, expected one of {list(LAYOUTS)}")
        if layout == "coco" and net.num_joints != 17:
            raise ValueError(f"layout: got 'coco' for a model with num_joints={net.num_joints}, expected "
                             "a 17-joint Human3.6M model (COCO-17 maps to Human3.6M-17)")
        if (width is None) != (height is None):
            raise ValueError(f"width/height: got width={width!r}, height={height!r}, expected both (pixel "
                             "input) or neither (normalised input)")
        for name, value in (("width", width), ("height", height)):
            if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name}: got {value!r}, expected a positive image size in pixels")
        if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) \
                or not np.isfinite(min_confidence):
            raise ValueError(f"min_confidence: got {min_confidence!r}, expected a finite number")
        joints = net.num_joints
        if mean_pose is None:
            prior = mean_pose_h36m() if joints == 17 else np.zeros((joints, 2))
        else:
            prior = np.asarray(mean_pose, dtype=np.float64)
            if prior.shape != (joints, 2) or not np.isfinite(prior).all():
                raise ValueError(f"mean_pose: got shape {prior.shape}{'' if np.isfinite(prior).all() else ' with NaN/inf'}"
                                 f", expected finite ({joints}, 2) normalised coordinates")
        if flip_symmetry is not None and len(flip_symmetry) != 4:
            raise ValueError(f"flip_symmetry: got {len(flip_symmetry)} entries, expected (kps_left, kps_right, "
                             "joints_left, joints_right)")

        self.model = ConvFormerFast.from_reference(net, backend=backend).eval()
        self.target = net.target_frame
        self.pad = pad
        self.spatial_cache = bool(spatial_cache)
        self.flip_symmetry = None if flip_symmetry is None else tuple(list(s) for s in flip_symmetry)
        self.min_confidence = float(min_confidence)
        self.layout = layout
        self.width, self.height = width, height
        self.mean_pose = prior
        self.input_joints = 17 if layout == "coco" else joints
        self.input_names = COCO_17_NAMES if layout == "coco" else (H36M_17_NAMES if joints == 17 else ())
        self._lock = threading.Lock()
        self._reset()

    # -- what an answer means ------------------------------------------------------------

    @property
    def window(self) -> int:
        """T, the frames one answer looks at."""
        return self.model.num_frames

    @property
    def delay(self) -> int:
        """Frames of look-ahead: ``push`` of frame n answers frame ``n - delay`` (0 for a
        causal model, ``T // 2`` for a centre model)."""
        return self.window - 1 - self.model.target_position

    @property
    def frames_pushed(self) -> int:
        """Frames accepted since the sequence started."""
        return self._pushed

    @property
    def held_joints(self) -> tuple[int, ...]:
        """Joints of the last accepted frame that were missed and hold their last detection."""
        return self._held

    @property
    def guessed_joints(self) -> tuple[int, ...]:
        """Joints of the last accepted frame never seen yet, placed at the mean pose."""
        return self._guessed

    @property
    def last_input(self) -> Optional[np.ndarray]:
        """``(J, 2)`` the model's input for the last accepted frame (normalised, mapped to
        the model's joints, missed joints filled), or None before the first frame."""
        return None if self._last_input is None else self._last_input.copy()

    # -- the stream -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the sequence: the next frame starts a new one."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._ring = None  # (views, 2T, J*d) features, or (views, 2T, J, 2) inputs without the cache
        self._slot = 0  # where the next frame goes
        self._pushed = 0
        self._last_seen = np.full((self.model.num_joints, 2), np.nan)
        self._last_input = None
        self._held, self._guessed = (), ()
        self.missed_counts = {"held": 0, "guessed": 0}  # keypoints filled in this sequence

    def push(self, keypoints_2d) -> Optional[np.ndarray]:
        """Add the next frame; return a ``(J, 3)`` float32 pose or None.

        Args:
            keypoints_2d: ``(J, 2)`` or ``(J, 3)`` (x, y, confidence) of one frame (numpy,
                torch or nested lists), in the ``layout`` joint order, pixels when the
                lifter has ``width``/``height``.

        Returns:
            The pose of frame ``frames_pushed - 1 - delay`` (root-relative camera frame,
            the training unit; as ``lift_sequence``), or None while that frame does not
            exist yet or (``pad=None``) its window is not full of real frames.

        Raises:
            ValueError: a frame of the wrong shape or with non-finite confidences; the
                lifter's state is then unchanged.
        """
        xy, held, guessed = self._prepare(keypoints_2d)  # validates; changes nothing
        with self._lock, torch.inference_mode():
            view = self._views(torch.from_numpy(xy)[None])
            entry = self.model.spatial_stage(view) if self.spatial_cache else view
            t = self.window
            if self._ring is None:  # the first frame stands in for every frame before it
                self._ring = entry.unsqueeze(1).expand(-1, 2 * t, *entry.shape[1:]).clone()
            slot = self._slot
            self._ring[:, slot] = entry
            self._ring[:, slot + t] = entry
            self._slot = (slot + 1) % t
            self._pushed += 1
            self._commit(xy, held, guessed)
            answered = self._pushed - 1 - self.delay
            if answered < 0 or (self.pad is None and self._pushed < t):
                return None
            return self._lift(self._ring[:, None, slot + 1:slot + 1 + t])[0]

    def flush(self) -> np.ndarray:
        """End the sequence: ``(K, J, 3)`` poses of the K frames still waiting for their
        look-ahead (the last ``min(delay, frames)``), their windows padded with the last
        frame as offline inference does; none with ``pad=None`` or a causal model. The
        lifter is then reset for a new sequence."""
        with self._lock, torch.inference_mode():
            try:
                joints, t, delay = self.model.num_joints, self.window, self.delay
                if self._ring is None or delay == 0 or self.pad is None:
                    return np.zeros((0, joints, 3), np.float32)
                ordered = self._ring[:, self._slot:self._slot + t]  # oldest -> newest
                future = ordered[:, -1:].expand(-1, delay, *ordered.shape[2:])
                extended = torch.cat([ordered, future], dim=1)
                first = max(1, delay + 1 - self._pushed)  # skip windows of frames before frame 0
                starts = torch.arange(first, delay + 1, device=extended.device)
                index = starts[:, None] + torch.arange(t, device=extended.device)
                poses = [self._lift(extended[:, index[i:i + _FLUSH_BATCH]])
                         for i in range(0, len(index), _FLUSH_BATCH)]
                return np.concatenate(poses)
            finally:
                self._reset()

    # -- pieces ---------------------------------------------------------------------------

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, J, 2)`` float32 numpy-born input -> ``(views, J, 2)`` in the model's dtype
        and device (the frame, and its mirror image with flip TTA)."""
        param = next(self.model.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        if self.flip_symmetry is None:
            return x
        return torch.cat([x, flip_horizontal(x, self.flip_symmetry[0], self.flip_symmetry[1])])

    def _lift(self, windows: torch.Tensor) -> np.ndarray:
        """``(views, B, T, ...)`` windows of ring entries -> ``(B, J, 3)`` float32 numpy."""
        views, batch, t = windows.shape[:3]
        if self.spatial_cache:
            features = windows.reshape(views * batch, t, -1)
        else:
            joints = self.model.num_joints
            features = self.model.spatial_stage(windows.reshape(views * batch * t, joints, 2))
            features = features.reshape(views * batch, t, -1)
        out = self.model.temporal_stage(features).reshape(views, batch, self.model.num_joints, 3)
        pred = out[0]
        if self.flip_symmetry is not None:
            pred = (pred + flip_horizontal(out[1], self.flip_symmetry[2], self.flip_symmetry[3])) / 2
        return pred.float().cpu().numpy()

    def _joint_name(self, j: int) -> str:
        return f"joint {j} ({self.input_names[j]})" if j < len(self.input_names) else f"joint {j}"

    def _prepare(self, keypoints_2d) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate one frame and turn it into the model's input ``(J, 2)`` float32 with
        missed joints filled; returns ``(input, held mask, guessed mask)``. Reads the
        lifter's state, never writes it (a rejected frame leaves no trace)."""
        expected = (f"expected ({self.input_joints}, 2) or ({self.input_joints}, 3) with confidence, "
                    f"joints in {'COCO-17' if self.layout == 'coco' else 'the model'}'s order")
        try:
            kp = np.asarray(keypoints_2d, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"keypoints_2d: got a {type(keypoints_2d).__name__} that is not a numeric "
                             f"array ({exc}); {expected}") from None
        if kp.ndim != 2 or kp.shape[0] != self.input_joints or kp.shape[1] not in (2, 3):
            raise ValueError(f"keypoints_2d: got shape {kp.shape}, {expected}")
        xy = kp[:, :2].copy()
        if kp.shape[1] == 3:
            confidence = kp[:, 2]
            bad = np.flatnonzero(~np.isfinite(confidence))
            if len(bad):
                raise ValueError(f"keypoints_2d: confidence of {self._joint_name(int(bad[0]))} is "
                                 f"{confidence[bad[0]]} ({len(bad)} joint(s) non-finite), expected a finite "
                                 "number (a missed joint has a low confidence or NaN coordinates)")
            xy[confidence < self.min_confidence] = np.nan
        xy[~np.isfinite(xy).all(-1)] = np.nan  # one bad coordinate misses the keypoint
        if self.layout == "coco":
            xy = coco_to_h36m(xy)
        if self.width is not None:
            xy = normalize_screen_coordinates(xy, w=float(self.width), h=float(self.height))
        missed = ~np.isfinite(xy).all(-1)
        held = missed & np.isfinite(self._last_seen).all(-1)
        guessed = missed & ~held
        xy[held] = self._last_seen[held]
        if guessed.any():
            xy[guessed] = _fit_prior(self.mean_pose, xy, ~guessed)[guessed]
        return xy.astype(np.float32), held, guessed

    def _commit(self, xy: np.ndarray, held: np.ndarray, guessed: np.ndarray) -> None:
        detected = ~(held | guessed)
        self._last_seen[detected] = xy[detected]
        self._last_input = xy
        self._held, self._guessed = tuple(np.flatnonzero(held).tolist()), tuple(np.flatnonzero(guessed).tolist())
        self.missed_counts["held"] += len(self._held)
        self.missed_counts["guessed"] += len(self._guessed)


def latency_summary(seconds: Sequence[float]) -> dict:
    """``{"frames", "median_ms", "p99_ms", "mean_ms", "fps"}`` of per-frame times (fps =
    1 / mean: the rate those times sustain back to back)."""
    s = np.asarray(seconds, dtype=np.float64)
    if s.size == 0:
        return {"frames": 0, "median_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"),
                "fps": float("nan")}
    return {"frames": int(s.size), "median_ms": float(np.median(s) * 1e3),
            "p99_ms": float(np.percentile(s, 99) * 1e3), "mean_ms": float(s.mean() * 1e3),
            "fps": float(1.0 / s.mean())}


# ---------------------------------------------------------------------------
# convformer-fast infer --stream
# ---------------------------------------------------------------------------
