"""Animations: the 2D input keypoints beside the lifted 3D skeleton (matplotlib).

``.gif`` is written with Pillow (a matplotlib dependency); ``.mp4`` needs an ``ffmpeg``
executable (on PATH, or from the ``imageio-ffmpeg`` package when installed).
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Optional

import numpy as np

from ..atomic import atomic_write
from ..errors import UsageError
from .data.skeleton import H36M_17, Skeleton

__all__ = ["check_writer", "render_animation"]

_LEFT, _RIGHT, _CENTRE = "#1f77b4", "#d62728", "#444444"


def _bone_colours(skeleton: Skeleton) -> list[str]:
    left, right = set(skeleton.joints_left), set(skeleton.joints_right)
    return [_LEFT if c in left else _RIGHT if c in right else _CENTRE for _, c in skeleton.bones()]


def check_writer(out_path: str) -> None:
    """Raise UsageError now, before any work, if ``out_path`` cannot be rendered here."""
    if os.path.splitext(out_path)[1].lower() == ".mp4":
        _mp4_writer(25.0)


def _mp4_writer(fps: float):
    import matplotlib
    from matplotlib import animation

    if not animation.writers.is_available("ffmpeg"):
        try:
            import imageio_ffmpeg
            matplotlib.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
        except ImportError:
            pass
    if not animation.writers.is_available("ffmpeg") and shutil.which("ffmpeg") is None:
        raise UsageError("--render: writing .mp4 needs ffmpeg (install it, or pip install imageio-ffmpeg); "
                           "a .gif needs nothing extra")
    return animation.FFMpegWriter(fps=fps, bitrate=2000)


def render_animation(out_path: str, keypoints_2d: np.ndarray, poses_3d: np.ndarray,
                     width: Optional[float] = None, height: Optional[float] = None, fps: float = 50.0,
                     skeleton: Skeleton = H36M_17, title: str = "", max_fps: float = 25.0,
                     max_frames: Optional[int] = None, size: float = 4.0, dpi: int = 80) -> str:
    """Write an animation of 2D input (left) and 3D prediction (right).

    Args:
        out_path: ``.gif`` or ``.mp4``.
        keypoints_2d: ``(F, J, 2)`` pixels (with ``width``/``height``) or normalised coordinates.
        poses_3d: ``(F, J, 3)`` root-relative camera-frame poses (x right, y down, z forward;
            drawn with up = -y and depth = z).
        width, height: image size in pixels (the 2D panel frames the person, within the image).
        fps: frame rate of the sequence; frames are skipped to stay at most ``max_fps``.
        max_frames: render at most this many (sub-sampled) frames.

    Returns:
        ``out_path``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation

    ext = os.path.splitext(out_path)[1].lower()
    if ext not in (".gif", ".mp4"):
        raise ValueError(f"out_path: got {out_path!r}, expected a .gif or .mp4 file")
    kp = np.asarray(keypoints_2d, dtype=np.float64)
    pose = np.asarray(poses_3d, dtype=np.float64)
    if kp.ndim != 3 or pose.ndim != 3 or kp.shape[0] != pose.shape[0] or kp.shape[1] != skeleton.num_joints \
            or pose.shape[1] != skeleton.num_joints or kp.shape[2] != 2 or pose.shape[2] != 3:
        raise ValueError(f"keypoints_2d/poses_3d: got {kp.shape} and {pose.shape}, expected (F, "
                         f"{skeleton.num_joints}, 2) and (F, {skeleton.num_joints}, 3)")
    step = max(1, math.ceil(fps / max_fps))
    frames = list(range(0, kp.shape[0], step))
    if max_frames is not None:
        frames = frames[:max_frames]
    bones = skeleton.bones()
    colours = _bone_colours(skeleton)

    fig = plt.figure(figsize=(2 * size, size), dpi=dpi)
    ax2 = fig.add_subplot(1, 2, 1)
    ax2.set_title("2D input")
    ax2.set_aspect("equal")
    # frame the person (the whole sequence's keypoints, padded), inside the image when known
    lo, hi = np.nanmin(kp, axis=(0, 1)), np.nanmax(kp, axis=(0, 1))
    half = 0.6 * float(np.max(hi - lo) + 1e-6)
    centre = (lo + hi) / 2
    x0, x1, y0, y1 = centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half
    if width is not None and height is not None:
        x0, x1, y0, y1 = max(x0, 0.0), min(x1, float(width)), max(y0, 0.0), min(y1, float(height))
    ax2.set_xlim(x0, x1)
    ax2.set_ylim(y1, y0)  # image y points down
    ax2.set_xticks([])
    ax2.set_yticks([])

    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.set_title("3D prediction")
    # camera frame -> drawing frame: X = x (right), Y = z (depth), Z = -y (up)
    shown = np.stack([pose[..., 0], pose[..., 2], -pose[..., 1]], -1)
    radius = float(np.max(np.abs(shown - shown[:, :1]))) * 1.05 + 1e-6
    ax3.set_xlim(-radius, radius)
    ax3.set_ylim(-radius, radius)
    ax3.set_zlim(-radius, radius)
    ax3.set_box_aspect((1, 1, 1))
    ax3.view_init(elev=12.0, azim=-75.0)
    ax3.set_xticklabels([])
    ax3.set_yticklabels([])
    ax3.set_zticklabels([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    lines2 = [ax2.plot([], [], "-o", color=c, lw=2, ms=2)[0] for c in colours]
    lines3 = [ax3.plot([], [], [], "-", color=c, lw=2)[0] for c in colours]
    label = ax2.text(0.02, 0.02, "", transform=ax2.transAxes, fontsize=8)

    def draw(f):
        for line, (p, c) in zip(lines2, bones):
            line.set_data(kp[f, [p, c], 0], kp[f, [p, c], 1])
        centred = shown[f] - shown[f, :1]
        for line, (p, c) in zip(lines3, bones):
            line.set_data_3d(centred[[p, c], 0], centred[[p, c], 1], centred[[p, c], 2])
        label.set_text(f"frame {f}")
        return lines2 + lines3 + [label]

    anim = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    render_fps = fps / step
    writer = animation.PillowWriter(fps=render_fps) if ext == ".gif" else _mp4_writer(render_fps)
    atomic_write(out_path, lambda tmp: anim.save(tmp, writer=writer, dpi=dpi))
    plt.close(fig)
    return out_path
