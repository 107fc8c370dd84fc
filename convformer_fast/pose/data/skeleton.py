"""Skeleton layouts (joint order, parents, left/right symmetry) and helpers.

Layouts defined here:

* :data:`H36M_32` -- the raw 32-joint Human3.6M motion-capture skeleton stored
  in VideoPose3D's ``data_3d_h36m.npz``.
* :data:`H36M_17` -- the 17-joint subset used for evaluation, taken at
  :data:`H36M_KEEP_JOINTS` from the 32-joint arrays (the same order as the 2D
  keypoint files). The shoulders hang from the thorax (joint 8).
* :data:`HUMANEVA_15` -- the 15-joint HumanEva-I skeleton used by VideoPose3D.
* :data:`MPI3DHP_17` -- the 17-joint MPI-INF-3DHP test-set order of the common
  preprocessed ``data_test_3dhp.npz`` (root = pelvis, joint 14).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "Skeleton",
    "H36M_32",
    "H36M_17",
    "H36M_KEEP_JOINTS",
    "H36M_17_NAMES",
    "HUMANEVA_15",
    "MPI3DHP_17",
    "bone_lengths",
    "root_relative",
    "flip_horizontal",
]


@dataclass(frozen=True)
class Skeleton:
    """A kinematic tree.

    Attributes:
        name: layout name (as in the 2D metadata ``layout_name``).
        parents: parent index of every joint, ``-1`` for the root.
        joints_left: indices of the joints on the subject's left side.
        joints_right: indices of their right-side counterparts, pairwise
            matching ``joints_left``.
        joint_names: one name per joint.
        root: index of the root joint.
    """

    name: str
    parents: tuple[int, ...]
    joints_left: tuple[int, ...]
    joints_right: tuple[int, ...]
    joint_names: tuple[str, ...] = field(default=())
    root: int = 0

    def __post_init__(self):
        n = len(self.parents)
        if self.joint_names and len(self.joint_names) != n:
            raise ValueError(f"joint_names: got {len(self.joint_names)} names, expected {n}")
        if len(self.joints_left) != len(self.joints_right):
            raise ValueError(
                f"joints_left/joints_right: got {len(self.joints_left)} and "
                f"{len(self.joints_right)} joints, expected equal lengths")
        for j, p in enumerate(self.parents):
            if p >= n or p < -1 or p == j:
                raise ValueError(f"parents[{j}]: got {p}, expected -1 or a joint index < {n}")
        if self.parents[self.root] != -1:
            raise ValueError(f"root: joint {self.root} has parent {self.parents[self.root]}, expected -1")

    @property
    def num_joints(self) -> int:
        """Number of joints ``J``."""
        return len(self.parents)

    def bones(self) -> list[tuple[int, int]]:
        """``(parent, child)`` pairs of every bone, in joint order."""
        return [(p, j) for j, p in enumerate(self.parents) if p >= 0]

    def subset(self, keep: Sequence[int], name: str, joint_names: Sequence[str] = ()) -> "Skeleton":
        """The skeleton restricted to ``keep``.

        Each kept joint's parent becomes its nearest kept ancestor; left/right
        pairs survive when both members are kept.
        """
        keep = list(keep)
        index = {old: new for new, old in enumerate(keep)}
        parents = []
        for old in keep:
            p = self.parents[old]
            while p != -1 and p not in index:
                p = self.parents[p]
            parents.append(index[p] if p != -1 else -1)
        pairs = [(index[a], index[b]) for a, b in zip(self.joints_left, self.joints_right)
                 if a in index and b in index]
        return Skeleton(name=name, parents=tuple(parents),
                        joints_left=tuple(a for a, _ in pairs),
                        joints_right=tuple(b for _, b in pairs),
                        joint_names=tuple(joint_names), root=index.get(self.root, 0))

    def nearest_kept_ancestor(self, joint: int, keep: Sequence[int]) -> int:
        """Closest ancestor of ``joint`` (or ``joint`` itself) that is in ``keep``."""
        kept = set(keep)
        j = joint
        while j != -1 and j not in kept:
            j = self.parents[j]
        if j == -1:
            raise ValueError(f"joint: {joint} has no ancestor in keep={sorted(kept)}")
        return j


#: Raw 32-joint Human3.6M skeleton (VideoPose3D ordering).
H36M_32 = Skeleton(
    name="h36m32",
    parents=(-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 12,
             16, 17, 18, 19, 20, 19, 22, 12, 24, 25, 26, 27, 28, 27, 30),
    joints_left=(6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23),
    joints_right=(1, 2, 3, 4, 5, 24, 25, 26, 27, 28, 29, 30, 31),
)

#: Indices of the 17 evaluated joints inside the 32-joint arrays.
H36M_KEEP_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)

H36M_17_NAMES: tuple[str, ...] = (
    "Pelvis", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "Spine",
    "Thorax", "Neck/Nose", "Head", "LShoulder", "LElbow", "LWrist",
    "RShoulder", "RElbow", "RWrist",
)


def _make_h36m_17() -> Skeleton:
    sub = H36M_32.subset(H36M_KEEP_JOINTS, "h36m", H36M_17_NAMES)
    parents = list(sub.parents)
    # In the mocap skeleton the shoulders hang from the upper spine through the
    # (removed) collar joints; anatomically and by convention they attach to
    # the thorax.
    parents[11] = 8
    parents[14] = 8
    return Skeleton(name="h36m", parents=tuple(parents), joints_left=sub.joints_left,
                    joints_right=sub.joints_right, joint_names=H36M_17_NAMES, root=0)


#: The 17-joint Human3.6M layout used by the models and the 2D files.
#: parents = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
#: left = (4, 5, 6, 11, 12, 13), right = (1, 2, 3, 14, 15, 16).
H36M_17 = _make_h36m_17()

#: HumanEva-I 15-joint skeleton (VideoPose3D ``humaneva15`` layout).
HUMANEVA_15 = Skeleton(
    name="humaneva15",
    parents=(-1, 0, 1, 2, 3, 1, 5, 6, 0, 8, 9, 0, 11, 12, 1),
    joints_left=(2, 3, 4, 8, 9, 10),
    joints_right=(5, 6, 7, 11, 12, 13),
    joint_names=("Pelvis", "Thorax", "LShoulder", "LElbow", "LWrist", "RShoulder",
                 "RElbow", "RWrist", "LHip", "LKnee", "LAnkle", "RHip", "RKnee",
                 "RAnkle", "Head"),
)

#: MPI-INF-3DHP test-set 17-joint order (root = pelvis, index 14).
MPI3DHP_17 = Skeleton(
    name="mpi_inf_3dhp",
    parents=(16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    joints_left=(5, 6, 7, 11, 12, 13),
    joints_right=(2, 3, 4, 8, 9, 10),
    joint_names=("HeadTop", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder",
                 "LElbow", "LWrist", "RHip", "RKnee", "RAnkle", "LHip", "LKnee",
                 "LAnkle", "Pelvis", "Spine", "Head"),
    root=14,
)


def bone_lengths(positions: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Length of every bone.

    Args:
        positions: joints ``(..., J, 3)`` (any unit).
        skeleton: the layout, with ``skeleton.num_joints == J``.

    Returns:
        ``(..., B)`` lengths in the input unit, bones in :meth:`Skeleton.bones`
        order.
    """
    positions = np.asarray(positions)
    if positions.ndim < 2 or positions.shape[-1] != 3 or positions.shape[-2] != skeleton.num_joints:
        raise ValueError(f"positions: got shape {positions.shape}, expected "
                         f"(..., {skeleton.num_joints}, 3) for skeleton {skeleton.name!r}")
    bones = skeleton.bones()
    parent = np.array([p for p, _ in bones])
    child = np.array([c for _, c in bones])
    return np.linalg.norm(positions[..., child, :] - positions[..., parent, :], axis=-1)


def root_relative(positions: np.ndarray, root: int = 0) -> np.ndarray:
    """Subtract the root joint from every joint (the root becomes zero).

    Args:
        positions: joints ``(..., J, 3)``.
        root: index of the root joint.

    Returns:
        A new array ``(..., J, 3)`` with ``out[..., root, :] == 0``.
    """
    positions = np.asarray(positions)
    return positions - positions[..., root:root + 1, :]


def flip_horizontal(x, joints_left: Sequence[int], joints_right: Sequence[int]):
    """Mirror poses left/right: negate x and swap left/right joints.

    Works for normalised 2D keypoints ``(..., J, 2)`` (x in ``[-1, 1]`` centred
    on the image) and for camera-space 3D joints ``(..., J, 3)``; the x
    coordinate is index 0 of the last axis. Applying it twice is the identity.

    Args:
        x: numpy array or torch tensor ``(..., J, C)``; not modified.
        joints_left: left-side joint indices.
        joints_right: matching right-side indices.

    Returns:
        A flipped copy of the same type.
    """
    left = list(joints_left)
    right = list(joints_right)
    if len(left) != len(right):
        raise ValueError(f"joints_left/joints_right: got {len(left)} and {len(right)} "
                         "indices, expected equal lengths")
    if hasattr(x, "clone"):  # torch.Tensor, without importing torch here
        out = x.clone()
    else:
        out = np.array(x, copy=True)
    out[..., 0] = -out[..., 0]
    if left:
        out[..., left + right, :] = out[..., right + left, :]
    return out
