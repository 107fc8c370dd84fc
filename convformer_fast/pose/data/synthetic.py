"""Synthetic Human3.6M-layout motion, for tests and smoke runs without the dataset.

The generator drives a rigid 17-joint kinematic skeleton
(:data:`~convformer_fast.pose.data.skeleton.H36M_17` layout, bone lengths after the
Human3.6M convention) with smooth joint-angle trajectories: a few random-phase
sinusoids per joint plus a walking cycle (hip/knee/arm swing in antiphase),
blended with action-specific postures (seated for ``Sitting``/``Eating``, a
raised hand for ``Phoning``, ...). The root follows a smooth path (a circle
while walking, a slow drift otherwise) and is lifted so that the lower foot
touches the floor. Poses are in Human3.6M world coordinates (z up).

2D keypoints are pinhole projections through the real Human3.6M cameras of
each subject (:mod:`~convformer_fast.pose.data.camera`), so
:func:`write_synthetic_h36m` produces ``data_3d_h36m.npz`` and
``data_2d_h36m_gt.npz`` that the real loader
(:func:`~convformer_fast.pose.data.h36m.load_h36m`) reads unchanged. Everything is
deterministic given ``seed``.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterable, Optional, Sequence

import numpy as np

from ...atomic import atomic_open
from .camera import Camera, H36M_EXTRINSICS, h36m_cameras
from .skeleton import H36M_17, H36M_32, H36M_KEEP_JOINTS

__all__ = [
    "H36M_BONE_OFFSETS_MM",
    "SYNTHETIC_SUBJECTS",
    "SYNTHETIC_ACTIONS",
    "euler_to_matrix",
    "forward_kinematics",
    "subject_bone_offsets",
    "generate_motion",
    "expand_to_32_joints",
    "look_at_camera",
    "matrix_to_quaternion",
    "project_sequence",
    "write_synthetic_h36m",
]

#: Rest-pose offset of each joint from its parent, mm, in the body frame
#: (x = subject's left, y = forward, z = up). Lengths: hips 130, thigh 450,
#: shin 445, spine 230 + 250, neck 110, head 115, shoulders 150, upper arm
#: 280, forearm 250.
H36M_BONE_OFFSETS_MM: np.ndarray = np.array([
    [0.0, 0.0, 0.0],        # 0 pelvis (root)
    [-130.0, 0.0, 0.0],     # 1 right hip
    [0.0, 0.0, -450.0],     # 2 right knee
    [0.0, 0.0, -445.0],     # 3 right ankle
    [130.0, 0.0, 0.0],      # 4 left hip
    [0.0, 0.0, -450.0],     # 5 left knee
    [0.0, 0.0, -445.0],     # 6 left ankle
    [0.0, 0.0, 230.0],      # 7 spine
    [0.0, 0.0, 250.0],      # 8 thorax
    [0.0, 44.0, 100.8],     # 9 neck/nose (110, tilted forward)
    [0.0, -23.0, 112.7],    # 10 head (115)
    [150.0, 0.0, 0.0],      # 11 left shoulder
    [0.0, 0.0, -280.0],     # 12 left elbow
    [0.0, 0.0, -250.0],     # 13 left wrist
    [-150.0, 0.0, 0.0],     # 14 right shoulder
    [0.0, 0.0, -280.0],     # 15 right elbow
    [0.0, 0.0, -250.0],     # 16 right wrist
])

#: All Human3.6M subjects with calibrated cameras.
SYNTHETIC_SUBJECTS: tuple[str, ...] = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")

#: Default action names (real Human3.6M spellings) written per subject.
SYNTHETIC_ACTIONS: tuple[str, ...] = ("Directions", "Eating 2", "Sitting 1", "Walking")

_FLOOR_CLEARANCE_MM = 85.0  # ankle joint height above the floor

# Per-action style: walk (gait amplitude 0..1), speed (m/s), sit (0..1 seated
# posture, or 'down' for a stand-to-sit transition), gesture (arm activity),
# raise_left / raise_right (hand-to-head posture 0..1), reach (arms forward).
_STYLES: dict[str, dict] = {
    "Directions": dict(walk=0.25, speed=0.4, gesture=0.7),
    "Discussion": dict(gesture=0.9),
    "Eating": dict(sit=1.0, raise_right=0.6, gesture=0.3),
    "Greeting": dict(walk=0.2, speed=0.3, gesture=1.0, raise_right=0.5),
    "Phoning": dict(walk=0.2, speed=0.3, raise_right=1.0, gesture=0.3),
    "Photo": dict(raise_left=0.7, raise_right=0.7, gesture=0.3),
    "Posing": dict(gesture=0.6, stance=1.0),
    "Purchases": dict(walk=0.4, speed=0.6, reach=0.6, gesture=0.4),
    "Sitting": dict(sit=1.0, gesture=0.4),
    "SittingDown": dict(sit="down", gesture=0.3),
    "Smoking": dict(raise_left=0.6, gesture=0.3),
    "Waiting": dict(gesture=0.3),
    "WalkDog": dict(walk=0.8, speed=1.0, reach=0.5),
    "Walking": dict(walk=1.0, speed=1.2),
    "WalkTogether": dict(walk=0.8, speed=1.0, gesture=0.2),
}
_STYLE_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog", "WalkingTogether": "WalkTogether"}


# ---------------------------------------------------------------------------
# rotations and forward kinematics
# ---------------------------------------------------------------------------

def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rz(c) @ Ry(b) @ Rx(a)`` for angles ``(..., 3)`` = (a, b, c) radians.

    Returns:
        ``(..., 3, 3)`` float64.
    """
    angles = np.asarray(angles, dtype=np.float64)
    a, b, c = angles[..., 0], angles[..., 1], angles[..., 2]
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    one, zero = np.ones_like(a), np.zeros_like(a)
    rx = np.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(a.shape + (3, 3))
    ry = np.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(a.shape + (3, 3))
    rz = np.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).reshape(a.shape + (3, 3))
    return rz @ ry @ rx


def forward_kinematics(root_position: np.ndarray, root_rotation: np.ndarray,
                       local_rotations: np.ndarray, offsets: np.ndarray,
                       parents: Sequence[int]) -> np.ndarray:
    """Joint positions of a rotated skeleton.

    Joint ``j``'s global rotation is ``G_j = G_parent(j) @ L_j`` (``G`` of the
    root = ``root_rotation @ L_root``) and its children sit at
    ``p_child = p_j + G_j @ offsets[child]``. Bone lengths are therefore
    exactly ``|offsets[child]|`` in every frame.

    Args:
        root_position: ``(F, 3)`` root positions.
        root_rotation: ``(F, 3, 3)`` root orientations (body -> world).
        local_rotations: ``(F, J, 3, 3)`` per-joint local rotations.
        offsets: ``(J, 3)`` rest-pose offsets from the parent, same unit as
            ``root_position``.
        parents: ``J`` parent indices (a parent precedes its children).

    Returns:
        ``(F, J, 3)`` positions.
    """
    frames = root_position.shape[0]
    joints = len(parents)
    pos = np.zeros((frames, joints, 3))
    glob = np.zeros((frames, joints, 3, 3))
    for j, p in enumerate(parents):
        if p < 0:
            pos[:, j] = root_position
            glob[:, j] = root_rotation @ local_rotations[:, j]
        else:
            if p >= j:
                raise ValueError(f"parents: joint {j} has parent {p}, expected parents before children")
            pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
            glob[:, j] = glob[:, p] @ local_rotations[:, j]
    return pos


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode("utf-8")) for n in names])


def subject_bone_offsets(subject: str, seed: int = 0) -> np.ndarray:
    """Per-subject rest offsets ``(17, 3)`` mm: :data:`H36M_BONE_OFFSETS_MM`
    scaled by a body size in ``[0.93, 1.07]`` and a +-3 % per-bone
    proportion (left/right bones scaled alike). Deterministic."""
    rng = _rng(seed, "bones", subject)
    size = rng.uniform(0.93, 1.07)
    per_bone = rng.uniform(0.97, 1.03, size=17)
    for left, right in zip(H36M_17.joints_left, H36M_17.joints_right):
        per_bone[right] = per_bone[left]
    return H36M_BONE_OFFSETS_MM * (size * per_bone)[:, None]


def _style(action: str) -> dict:
    base = action.split(" ")[0]
    base = _STYLE_ALIASES.get(base, base)
    style = dict(walk=0.0, speed=0.0, sit=0.0, gesture=0.5, raise_left=0.0,
                 raise_right=0.0, reach=0.0, stance=0.0)
    style.update(_STYLES.get(base, {}))
    return style


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _random_waves(rng: np.random.Generator, t: np.ndarray, amplitude_deg: float,
                  count: int = 3) -> np.ndarray:
    """Sum of ``count`` random-phase sinusoids (0.1-0.8 Hz), radians, ``(F,)``."""
    out = np.zeros_like(t)
    for _ in range(count):
        freq = rng.uniform(0.1, 0.8)
        phase = rng.uniform(0, 2 * np.pi)
        amp = np.deg2rad(amplitude_deg) * rng.uniform(0.4, 1.0) / np.sqrt(count)
        out += amp * np.sin(2 * np.pi * freq * t + phase)
    return out


def generate_motion(num_frames: int, action: str = "Walking", subject: str = "S1",
                    seed: int = 0, fps: float = 50.0,
                    offsets: Optional[np.ndarray] = None) -> np.ndarray:
    """Generate one smooth 17-joint motion sequence in world coordinates.

    Args:
        num_frames: ``F`` (>= 1).
        action: Human3.6M action name (``'Walking'``, ``'Eating 2'``, ...); its
            base name selects the motion style (unknown names: standing with
            gestures).
        subject: subject name, selects the body proportions.
        seed: global seed; with ``subject`` and ``action`` it fully determines
            the output.
        fps: frame rate (Human3.6M: 50).
        offsets: ``(17, 3)`` rest offsets in mm (default
            :func:`subject_bone_offsets`).

    Returns:
        ``(F, 17, 3)`` float64 joint positions in mm, Human3.6M world frame
        (z up, floor at z = 0, motion around the origin).
    """
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames: got {num_frames!r}, expected a positive integer")
    if not fps > 0:
        raise ValueError(f"fps: got {fps!r}, expected a positive frame rate")
    num_frames = int(num_frames)
    offsets = subject_bone_offsets(subject, seed) if offsets is None else np.asarray(offsets, np.float64)
    if offsets.shape != (17, 3):
        raise ValueError(f"offsets: got shape {offsets.shape}, expected (17, 3) mm")
    rng = _rng(seed, "motion", subject, action)
    style = _style(action)
    t = np.arange(num_frames) / fps
    d = np.deg2rad

    # -- posture blend: seated (1) vs standing (0)
    if style["sit"] == "down":
        start = rng.uniform(0.2, 0.4) * t[-1] if num_frames > 1 else 0.0
        sit = _smoothstep((t - start) / 1.5)
    else:
        sit = np.full_like(t, float(style["sit"]))

    # -- gait cycle
    walk = style["walk"]
    speed = style["speed"] * 1000.0 * rng.uniform(0.85, 1.15)  # mm/s
    stride = 1300.0
    gait_freq = speed / stride if walk > 0 else 0.0
    phase = 2 * np.pi * gait_freq * t + rng.uniform(0, 2 * np.pi)
    # swing > 0 while the right hip is flexed forward; each knee bends most in
    # the middle of its leg's swing phase (right: phase = 0 mod 2 pi) and
    # stays nearly straight in stance.
    swing = walk * np.sin(phase)
    knee_r = walk * ((1 + np.cos(phase)) / 2) ** 2
    knee_l = walk * ((1 - np.cos(phase)) / 2) ** 2

    angles = np.zeros((num_frames, 17, 3))  # local (x flexion, y abduction, z twist)
    g = style["gesture"]
    stance = d(6.0) * style["stance"]

    # legs: flexion about x (+ forward), knee flexion bends backward (-x)
    hip_flex = d(85.0) * sit
    knee_flex = d(90.0) * sit
    angles[:, 1, 0] = hip_flex + d(25.0) * swing + _random_waves(rng, t, 4.0)
    angles[:, 4, 0] = hip_flex - d(25.0) * swing + _random_waves(rng, t, 4.0)
    angles[:, 1, 1] = stance + _random_waves(rng, t, 2.0)
    angles[:, 4, 1] = -stance + _random_waves(rng, t, 2.0)
    angles[:, 2, 0] = -np.maximum(0.0, knee_flex + d(5.0) + d(55.0) * knee_r + _random_waves(rng, t, 3.0))
    angles[:, 5, 0] = -np.maximum(0.0, knee_flex + d(5.0) + d(55.0) * knee_l + _random_waves(rng, t, 3.0))

    # pelvis sway and trunk
    angles[:, 0, 0] = d(3.0) * walk * np.sin(2 * phase) + _random_waves(rng, t, 2.0)
    angles[:, 0, 1] = d(4.0) * walk * np.sin(phase) + _random_waves(rng, t, 2.0)
    angles[:, 0, 2] = d(6.0) * walk * np.sin(phase) + _random_waves(rng, t, 3.0)
    lean = d(10.0) * sit + d(8.0) * style["reach"]
    for j, amp in ((7, 4.0), (8, 4.0)):
        angles[:, j, 0] = lean / 2 + _random_waves(rng, t, amp)
        angles[:, j, 1] = _random_waves(rng, t, amp)
        angles[:, j, 2] = -d(4.0) * walk * np.sin(phase) + _random_waves(rng, t, amp)
    angles[:, 9, 0] = _random_waves(rng, t, 8.0)
    angles[:, 9, 1] = _random_waves(rng, t, 5.0)
    angles[:, 9, 2] = _random_waves(rng, t, 12.0)

    # arms: shoulder flexion (+ forward), abduction outward is +y for the
    # right arm and -y for the left arm; elbow flexion bends forward (+x)
    gesture_rate = 0.5 + g
    for shoulder, elbow, side, raise_key, arm_swing in (
            (11, 12, -1.0, "raise_left", swing), (14, 15, 1.0, "raise_right", -swing)):
        raised = style[raise_key] * (0.75 + 0.25 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t
                                                          + rng.uniform(0, 2 * np.pi)))
        angles[:, shoulder, 0] = (d(20.0) * arm_swing + d(45.0) * raised + d(40.0) * style["reach"]
                                  + _random_waves(rng, t, 25.0 * g * gesture_rate))
        angles[:, shoulder, 1] = side * (d(8.0) + d(15.0) * raised
                                         + np.abs(_random_waves(rng, t, 20.0 * g)))
        angles[:, shoulder, 2] = _random_waves(rng, t, 10.0 * g)
        angles[:, elbow, 0] = np.maximum(0.0, d(15.0) + d(110.0) * raised + d(30.0) * style["reach"]
                                         + d(10.0) * walk * (1 + arm_swing) / 2
                                         + np.abs(_random_waves(rng, t, 35.0 * g)))

    local = euler_to_matrix(angles)

    # -- root path and heading
    if walk > 0:
        radius = 1200.0
        omega = speed / radius * rng.choice([-1.0, 1.0])
        start = rng.uniform(0, 2 * np.pi)
        theta = start + omega * t
        xy = radius * np.stack([np.cos(theta), np.sin(theta)], -1)
        heading = theta + (0.0 if omega > 0 else np.pi)  # face along the path
    else:
        centre = rng.uniform(-300.0, 300.0, size=2)
        xy = centre + np.stack([_random_waves(rng, t, 1.0) * 4000.0,
                                _random_waves(rng, t, 1.0) * 4000.0], -1)
        heading = rng.uniform(-np.pi, np.pi) + _random_waves(rng, t, 20.0)
    root_rot = euler_to_matrix(np.stack([np.zeros_like(t), np.zeros_like(t), heading], -1))

    pos = forward_kinematics(np.zeros((num_frames, 3)), root_rot, local, offsets, H36M_17.parents)
    # lift so that the lower ankle stays at the floor clearance; a soft minimum
    # (log-sum-exp, 15 mm temperature) keeps the vertical motion smooth when
    # the support switches feet
    tau = 15.0
    a, b = pos[:, 3, 2], pos[:, 6, 2]
    lowest = np.minimum(a, b) - tau * np.log1p(np.exp(-np.abs(a - b) / tau))
    pos[..., 2] += (_FLOOR_CLEARANCE_MM - lowest)[:, None]
    pos[..., :2] += xy[:, None, :]
    return pos


def expand_to_32_joints(positions_17: np.ndarray) -> np.ndarray:
    """Place 17-joint poses into the raw 32-joint Human3.6M layout.

    The 17 joints go to :data:`~convformer_fast.pose.data.skeleton.H36M_KEEP_JOINTS`;
    each of the other 15 (toes, hand and collar joints, the duplicated hip)
    copies its nearest kept ancestor, as the static joints of the real data
    sit on top of other joints.

    Args:
        positions_17: ``(..., 17, 3)``.

    Returns:
        ``(..., 32, 3)`` of the same dtype.
    """
    positions_17 = np.asarray(positions_17)
    if positions_17.shape[-2:] != (17, 3):
        raise ValueError(f"positions_17: got shape {positions_17.shape}, expected (..., 17, 3)")
    keep = list(H36M_KEEP_JOINTS)
    index = {old: new for new, old in enumerate(keep)}
    source = [index[H36M_32.nearest_kept_ancestor(j, keep)] for j in range(H36M_32.num_joints)]
    return positions_17[..., source, :].copy()


# ---------------------------------------------------------------------------
# cameras and projection
# ---------------------------------------------------------------------------

def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` (w >= 0) of a rotation matrix ``(3, 3)``."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"matrix: got shape {m.shape}, expected (3, 3)")
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def look_at_camera(position_m, target_m=(0.0, 0.0, 1.0), focal_length=(1145.0, 1145.0),
                   res_w: int = 1000, res_h: int = 1002, camera_id: str = "synthetic") -> Camera:
    """A level pinhole camera at ``position_m`` looking at ``target_m`` (world, metres, z up).

    The camera's x axis is horizontal, y points down, z towards the target;
    the principal point is the image centre. ``target_m`` projects to the
    image centre.
    """
    eye = np.asarray(position_m, dtype=np.float64)
    forward = np.asarray(target_m, dtype=np.float64) - eye
    if np.linalg.norm(forward) == 0:
        raise ValueError("target_m: got the camera position itself, expected a distinct point")
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:
        raise ValueError("target_m: got a point straight above/below the camera, expected a "
                         "viewing direction that is not vertical")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    cam_to_world = np.stack([right, down, forward], axis=1)  # columns = camera axes in world
    return Camera(id=camera_id, res_w=int(res_w), res_h=int(res_h),
                  orientation=matrix_to_quaternion(cam_to_world), translation_m=eye,
                  focal_length=np.asarray(focal_length, dtype=np.float64),
                  center=np.array([res_w / 2.0, res_h / 2.0]))


def project_sequence(positions_world_m: np.ndarray, camera: Camera) -> np.ndarray:
    """Pinhole-project world joints ``(..., J, 3)`` metres to pixels ``(..., J, 2)`` float32."""
    return camera.project(camera.world_to_camera(np.asarray(positions_world_m, np.float64))).astype(np.float32)


# ---------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------

def write_synthetic_h36m(out_dir, subjects: Iterable[str] = SYNTHETIC_SUBJECTS,
                         actions: Iterable[str] = SYNTHETIC_ACTIONS, num_frames: int = 200,
                         seed: int = 0, fps: float = 50.0) -> tuple[str, str]:
    """Write a synthetic Human3.6M in the VideoPose3D format.

    Creates ``out_dir/data_3d_h36m.npz`` (``positions_3d``: subject -> action
    -> ``(F, 32, 3)`` float32 metres, world frame) and
    ``out_dir/data_2d_h36m_gt.npz`` (``positions_2d``: subject -> action ->
    list of 4 ``(F, 17, 2)`` float32 pixel arrays projected through the
    subject's real cameras without lens distortion; ``metadata``:
    ``{'layout_name': 'h36m', 'num_joints': 17, 'keypoints_symmetry':
    [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}``). The default 7
    subjects x 4 actions x 200 frames take about 3 MB.

    Args:
        out_dir: directory (created if needed).
        subjects: Human3.6M subjects (need calibrated cameras).
        actions: real action names, e.g. ``'Walking'``, ``'Eating 2'``.
        num_frames: frames per sequence.
        seed: determines every sequence.
        fps: frame rate of the generated motion.

    Returns:
        ``(path_3d, path_2d)``.
    """
    subjects = list(subjects)
    actions = list(actions)
    for s in subjects:
        if s not in H36M_EXTRINSICS:
            raise ValueError(f"subjects: got {s!r}, expected Human3.6M subjects {list(SYNTHETIC_SUBJECTS)}")
    if not actions:
        raise ValueError("actions: got an empty list, expected at least one action name")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    positions_3d: dict = {}
    positions_2d: dict = {}
    for subject in subjects:
        cameras = h36m_cameras(subject)
        offsets = subject_bone_offsets(subject, seed)
        positions_3d[subject] = {}
        positions_2d[subject] = {}
        for action in actions:
            world_m = generate_motion(num_frames, action, subject, seed, fps, offsets) / 1000.0
            positions_3d[subject][action] = expand_to_32_joints(world_m).astype(np.float32)
            positions_2d[subject][action] = [project_sequence(world_m, cam) for cam in cameras]
    metadata = {
        "layout_name": "h36m",
        "num_joints": 17,
        "keypoints_symmetry": [list(H36M_17.joints_left), list(H36M_17.joints_right)],
    }
    path_3d = os.path.join(out_dir, "data_3d_h36m.npz")
    path_2d = os.path.join(out_dir, "data_2d_h36m_gt.npz")
    with atomic_open(path_3d) as handle:
        np.savez_compressed(handle, positions_3d=positions_3d)
    with atomic_open(path_2d) as handle:
        np.savez_compressed(handle, positions_2d=positions_2d, metadata=metadata)
    return path_3d, path_2d
