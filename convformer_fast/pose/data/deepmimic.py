"""Real human motion for demos and tests: DeepMimic reference motions as H36M-17 sequences.

The ``pybullet`` package (zlib licence) ships the DeepMimic reference motions, recorded
from real people by motion capture, in ``pybullet_data/data/motions/humanoid3d_*.txt``,
for the character ``pybullet_data/humanoid/humanoid.urdf``. A motion file is JSON
``{"Loop": "wrap"|"none", "Frames": [[...44 numbers...], ...]}``; each frame holds

    duration (s), root position (3), root rotation quaternion (w, x, y, z),
    chest (wxyz), neck (wxyz), right hip (wxyz), right knee (angle),
    right ankle (wxyz), right shoulder (wxyz), right elbow (angle),
    left hip (wxyz), left knee (angle), left ankle (wxyz), left shoulder (wxyz),
    left elbow (angle)

in the character's frame (y up, x forward, z to the character's right), with the URDF's
joint offsets scaled by 0.25 (pybullet's DeepMimic environment loads the URDF with
``globalScaling=0.25``; the root heights in the files match that size).

:func:`convert_motion` runs forward kinematics, maps the joints to Human3.6M-17 (nose and
head top approximated from the neck frame), resamples to 50 fps, converts to a z-up world
and projects through a pinhole camera. :func:`write_deepmimic_npz` converts a few clips
into ``convformer_fast/pose/data/motions/deepmimic_h36m.npz`` (committed, so nothing needs
pybullet at run time); regenerate it with::

    pip install pybullet
    python -m convformer_fast.pose.data.deepmimic --out convformer_fast/pose/data/motions/deepmimic_h36m.npz

and export their 2D keypoints as a ``convformer-fast infer`` input with
``python -m convformer_fast.pose.data.deepmimic --export-custom data_2d_custom_deepmimic.npz``.

:func:`load_deepmimic` reads that file as :class:`~convformer_fast.pose.data.windows.PoseSequence`
objects (normalised 2D inputs, root-relative camera-frame 3D targets in metres).
"""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np

from ...atomic import atomic_open
from .camera import Camera, normalize_screen_coordinates, quaternion_to_matrix
from .synthetic import look_at_camera, project_sequence
from .windows import PoseSequence

__all__ = [
    "ATTRIBUTION",
    "DEFAULT_CLIPS",
    "DEFAULT_PATH",
    "DEEPMIMIC_JOINTS",
    "read_urdf_offsets",
    "read_motion",
    "forward_kinematics_deepmimic",
    "convert_motion",
    "write_deepmimic_npz",
    "load_deepmimic",
    "export_custom_2d",
]

ATTRIBUTION = "DeepMimic reference motions, distributed with pybullet/Bullet3, zlib"
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "motions", "deepmimic_h36m.npz")
#: clip -> number of loop cycles to chain (looping clips are short).
DEFAULT_CLIPS = {"walk": 3, "run": 2, "jump": 1, "kick": 1, "punch": 1, "dance_a": 1}
URDF_SCALE = 0.25
FPS = 50.0

#: The character's joints in motion-file order: (name, parent, kind).
DEEPMIMIC_JOINTS: tuple[tuple[str, str, str], ...] = (
    ("chest", "root", "spherical"), ("neck", "chest", "spherical"),
    ("right_hip", "root", "spherical"), ("right_knee", "right_hip", "revolute"),
    ("right_ankle", "right_knee", "spherical"), ("right_shoulder", "chest", "spherical"),
    ("right_elbow", "right_shoulder", "revolute"), ("left_hip", "root", "spherical"),
    ("left_knee", "left_hip", "revolute"), ("left_ankle", "left_knee", "spherical"),
    ("left_shoulder", "chest", "spherical"), ("left_elbow", "left_shoulder", "revolute"),
)
_FIXED = (("right_wrist", "right_elbow"), ("left_wrist", "left_elbow"))

# H36M-17 joint -> DeepMimic joint frame whose origin it is.
_H36M_FROM_FRAME = {0: "root", 1: "right_hip", 2: "right_knee", 3: "right_ankle", 4: "left_hip",
                    5: "left_knee", 6: "left_ankle", 7: "chest", 8: "neck", 11: "left_shoulder",
                    12: "left_elbow", 13: "left_wrist", 14: "right_shoulder", 15: "right_elbow",
                    16: "right_wrist"}
# Nose and head top in the neck frame (metres; x forward, y up), after the H36M bone
# vectors thorax -> nose (44 mm forward, 101 mm up) and nose -> head (-23, 113).
_NOSE_IN_NECK = np.array([0.044, 0.101, 0.0])
_HEAD_IN_NECK = np.array([0.021, 0.214, 0.0])
# character (x forward, y up, z right) -> world (x, y, z up), a proper rotation.
_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def read_urdf_offsets(path: str, scale: float = URDF_SCALE) -> dict[str, np.ndarray]:
    """Joint origins (offset of each child frame in its parent frame) of the humanoid URDF,
    in metres after ``scale``. All joint origins of this model have zero rotation (checked)."""
    with open(path, "rb") as handle:  # the shipped file ends with a stray NUL byte
        root = ET.fromstring(handle.read().replace(b"\x00", b""))
    offsets = {}
    for joint in root.iter("joint"):
        origin = joint.find("origin")
        xyz = np.zeros(3) if origin is None else np.array([float(v) for v in origin.get("xyz", "0 0 0").split()])
        rpy = np.zeros(3) if origin is None else np.array([float(v) for v in origin.get("rpy", "0 0 0").split()])
        if np.any(np.abs(rpy) > 1e-9):
            raise ValueError(f"{path}: joint {joint.get('name')!r} has rpy {rpy}, expected 0 0 0")
        offsets[joint.get("name")] = xyz * scale
    needed = [name for name, _, _ in DEEPMIMIC_JOINTS] + [name for name, _ in _FIXED]
    missing = [n for n in needed if n not in offsets]
    if missing:
        raise ValueError(f"{path}: joints {missing} missing, expected the DeepMimic humanoid")
    return offsets


def read_motion(path: str) -> tuple[np.ndarray, bool]:
    """``(frames (N, 44) float64, loops)`` of a DeepMimic motion file."""
    with open(path) as handle:
        data = json.load(handle)
    frames = np.asarray(data["Frames"], dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != 44:
        raise ValueError(f"{path}: 'Frames' has shape {frames.shape}, expected (frames, 44) "
                         "for the DeepMimic humanoid")
    return frames, data.get("Loop", "none") == "wrap"


def _rz(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1], out[..., 2, 2] = c, -s, s, c, 1.0
    return out


def forward_kinematics_deepmimic(frames: np.ndarray, offsets: dict[str, np.ndarray]) -> dict[str, tuple]:
    """World position and rotation of every joint frame, character coordinates (y up).

    Args:
        frames: ``(N, 44)`` motion frames.
        offsets: from :func:`read_urdf_offsets`.

    Returns:
        ``name -> (position (N, 3), rotation (N, 3, 3))`` for the root, the 12 animated
        joints and the two wrists.
    """
    frames = np.asarray(frames, dtype=np.float64)
    pose = {"root": (frames[:, 1:4], quaternion_to_matrix(_unit(frames[:, 4:8])))}
    col = 8
    for name, parent, kind in DEEPMIMIC_JOINTS:
        if kind == "spherical":
            local = quaternion_to_matrix(_unit(frames[:, col:col + 4]))
            col += 4
        else:  # revolute about the joint's z axis
            local = _rz(frames[:, col])
            col += 1
        p_pos, p_rot = pose[parent]
        pose[name] = (p_pos + p_rot @ offsets[name], p_rot @ local)
    for name, parent in _FIXED:
        p_pos, p_rot = pose[parent]
        pose[name] = (p_pos + p_rot @ offsets[name], p_rot)
    return pose


def _unit(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _h36m_from_pose(pose: dict) -> np.ndarray:
    n = pose["root"][0].shape[0]
    out = np.zeros((n, 17, 3))
    for j, frame in _H36M_FROM_FRAME.items():
        out[:, j] = pose[frame][0]
    neck_pos, neck_rot = pose["neck"]
    out[:, 9] = neck_pos + neck_rot @ _NOSE_IN_NECK
    out[:, 10] = neck_pos + neck_rot @ _HEAD_IN_NECK
    return out


def _chain_cycles(frames: np.ndarray, cycles: int) -> np.ndarray:
    """Repeat a looping clip: each cycle continues from where the last one ended (the root
    advanced by the clip's horizontal displacement; the clip's last frame is the next
    cycle's first)."""
    if cycles <= 1:
        return frames
    shift = frames[-1, 1:4] - frames[0, 1:4]
    shift[1] = 0.0  # keep the height
    parts = [frames]
    for k in range(1, cycles):
        cycle = frames[1:].copy()
        cycle[:, 1:4] += k * shift
        parts.append(cycle)
    return np.concatenate(parts)


def _resample(times: np.ndarray, values: np.ndarray, fps: float) -> np.ndarray:
    new_t = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    flat = values.reshape(len(times), -1)
    out = np.stack([np.interp(new_t, times, flat[:, i]) for i in range(flat.shape[1])], -1)
    return out.reshape((len(new_t),) + values.shape[1:])


def convert_motion(frames: np.ndarray, offsets: dict, cycles: int = 1, fps: float = FPS) -> np.ndarray:
    """DeepMimic frames -> H36M-17 world positions ``(F, 17, 3)`` metres, z up, resampled
    to ``fps`` (linear interpolation of joint positions)."""
    frames = _chain_cycles(np.asarray(frames, dtype=np.float64), cycles)
    joints = _h36m_from_pose(forward_kinematics_deepmimic(frames, offsets))
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    return _resample(times, joints, fps) @ _TO_Z_UP.T


def clip_camera(world: np.ndarray, oblique_deg: float = 30.0) -> Camera:
    """A Human3.6M-like camera (1000 x 1002 px, f = 1145 px, 1.6 m high) looking at the
    clip's mean root position, from the side of its travel direction turned by
    ``oblique_deg``, far enough (at least 5 m) to keep the whole path in view."""
    root = world[:, 0, :2]
    centre = root.mean(0)
    travel = root[-1] - root[0]
    heading = np.arctan2(travel[1], travel[0]) if np.linalg.norm(travel) > 0.1 else 0.0
    a = heading + np.pi / 2 + np.deg2rad(oblique_deg)
    extent = np.linalg.norm(root - centre, axis=-1).max()
    distance = max(5.0, 2.5 * (extent + 0.5))
    eye = centre + distance * np.array([np.cos(a), np.sin(a)])
    return look_at_camera((eye[0], eye[1], 1.6), (centre[0], centre[1], 0.9), camera_id="deepmimic")


def write_deepmimic_npz(out_path: str = DEFAULT_PATH, data_dir: Optional[str] = None,
                        clips: Optional[dict] = None) -> str:
    """Convert DeepMimic clips into one small npz (see the module docstring).

    Keys: ``attribution``, ``clips`` (names), ``fps``, and per clip ``<clip>/world``
    (F, 17, 3) float32 metres z-up, ``<clip>/pixels`` (F, 17, 2) float32,
    ``<clip>/camera`` (13,) float64 = orientation wxyz (4), translation m (3), focal (2),
    centre (2), width, height.
    """
    if data_dir is None:
        try:
            import pybullet_data
        except ImportError as exc:
            raise ImportError("the converter reads pybullet's data files: pip install pybullet "
                              "(or pass data_dir=<a pybullet_data folder>)") from exc
        data_dir = pybullet_data.getDataPath()
    clips = dict(DEFAULT_CLIPS if clips is None else clips)
    offsets = read_urdf_offsets(os.path.join(data_dir, "humanoid", "humanoid.urdf"))
    arrays = {"attribution": np.array(ATTRIBUTION), "clips": np.array(list(clips)), "fps": np.array(FPS)}
    for name, cycles in clips.items():
        frames, loops = read_motion(os.path.join(data_dir, "data", "motions", f"humanoid3d_{name}.txt"))
        world = convert_motion(frames, offsets, cycles if loops else 1)
        camera = clip_camera(world)
        arrays[f"{name}/world"] = world.astype(np.float32)
        arrays[f"{name}/pixels"] = project_sequence(world, camera)
        arrays[f"{name}/camera"] = np.concatenate([
            camera.orientation, camera.translation_m, camera.focal_length, camera.center,
            [camera.res_w, camera.res_h]])
    with atomic_open(out_path) as handle:
        np.savez_compressed(handle, **arrays)
    return out_path


def _camera_from_array(values: np.ndarray) -> Camera:
    v = np.asarray(values, dtype=np.float64)
    return Camera(id="deepmimic", res_w=int(v[11]), res_h=int(v[12]), orientation=v[0:4],
                  translation_m=v[4:7], focal_length=v[7:9], center=v[9:11])


def load_deepmimic(path: str = DEFAULT_PATH, clips: Optional[Sequence[str]] = None,
                   with_pixels: bool = False):
    """The converted clips as sequences.

    Returns:
        A list of :class:`PoseSequence` (subject ``'DeepMimic'``, action ``'dm-<clip>'``,
        ``inputs_2d`` normalised, ``target_3d`` root-relative camera-frame metres,
        ``trajectory`` the camera-frame root); with ``with_pixels`` also a dict clip ->
        ``(pixels (F, 17, 2), camera)``.
    """
    from .formats import DatasetFormatError, load_npz

    content = load_npz(path, ["attribution", "clips"], "a converted DeepMimic motion file")
    names = [str(c) for c in content["clips"]]
    wanted = names if clips is None else list(clips)
    sequences, extra = [], {}
    for name in wanted:
        if f"{name}/world" not in content:
            raise DatasetFormatError(path, f"'{name}/world'", "clip missing", f"one of {names}")
        camera = _camera_from_array(content[f"{name}/camera"])
        cam = camera.world_to_camera(content[f"{name}/world"].astype(np.float64))
        pixels = content[f"{name}/pixels"]
        sequences.append(PoseSequence(
            subject="DeepMimic", action=f"dm-{name}", camera=0,
            inputs_2d=normalize_screen_coordinates(pixels, w=camera.res_w, h=camera.res_h),
            target_3d=cam - cam[:, :1], trajectory=cam[:, 0], res_w=camera.res_w, res_h=camera.res_h))
        extra[name] = (pixels, camera)
    return (sequences, extra) if with_pixels else sequences


def export_custom_2d(out_path: str, path: str = DEFAULT_PATH, clips: Optional[Sequence[str]] = None) -> str:
    """Write the clips' 2D keypoints as a VideoPose3D ``data_2d_custom_<name>.npz`` (H36M-17
    layout, pixels), a ready input for ``convformer-fast infer``."""
    from .custom import write_custom_2d

    _, extra = load_deepmimic(path, clips, with_pixels=True)
    return write_custom_2d(out_path, {name: (pixels, camera.res_w, camera.res_h)
                                      for name, (pixels, camera) in extra.items()}, layout_name="h36m")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert pybullet's DeepMimic motions to H36M-17 npz")
    parser.add_argument("--out", default=DEFAULT_PATH)
    parser.add_argument("--data-dir", default=None, help="a pybullet_data folder (default: the installed one)")
    parser.add_argument("--clips", nargs="+", default=None,
                        help=f"clip names (default {list(DEFAULT_CLIPS)}); looping clips chain cycles")
    parser.add_argument("--export-custom", default=None, metavar="NPZ",
                        help="instead of converting, write the bundled clips' 2D keypoints as a "
                             "VideoPose3D data_2d_custom npz (input for `convformer-fast infer`)")
    args = parser.parse_args(argv)
    if args.export_custom:
        path = export_custom_2d(args.export_custom, clips=args.clips)
        print(f"wrote {path}: 2D keypoints (H36M-17, pixels) of the DeepMimic clips; {ATTRIBUTION}")
        return 0
    clips = None if args.clips is None else {c: DEFAULT_CLIPS.get(c, 1) for c in args.clips}
    path = write_deepmimic_npz(args.out, args.data_dir, clips)
    print(f"wrote {path} ({os.path.getsize(path)} bytes): {ATTRIBUTION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
