"""Datasets for 2D-to-3D human pose lifting.

* :mod:`.h36m` -- Human3.6M (VideoPose3D ``data_3d_h36m.npz`` /
  ``data_2d_h36m_<detector>.npz``), subjects S1, S5-S8 train, S9, S11 test.
* :mod:`.humaneva` -- HumanEva-I (15 joints).
* :mod:`.mpi3dhp` -- MPI-INF-3DHP test set (TS1-TS6).
* :mod:`.synthetic` -- a deterministic synthetic Human3.6M writer.
* :mod:`.windows` -- T-frame windows with edge padding, flip augmentation and
  flip test-time augmentation.
* :mod:`.camera`, :mod:`.skeleton` -- calibration constants, coordinate
  transforms and skeleton layouts.

Loaders return float32 numpy arrays; malformed or missing files raise
:class:`DatasetFormatError` naming the file, the key and what was expected.
"""

from .camera import (
    H36M_EXTRINSICS,
    H36M_INTRINSICS,
    HUMANEVA_EXTRINSICS,
    HUMANEVA_INTRINSICS,
    Camera,
    camera_to_world,
    h36m_camera,
    h36m_cameras,
    humaneva_camera,
    humaneva_cameras,
    image_coordinates,
    normalize_screen_coordinates,
    project_to_pixels,
    qinverse,
    qrot,
    quaternion_to_matrix,
    world_to_camera,
)
from .formats import DatasetFormatError
from .h36m import TEST_SUBJECTS, TRAIN_SUBJECTS, H36MDataset, h36m_paths, load_h36m, load_h36m_2d, load_h36m_3d
from .humaneva import (
    HUMANEVA_ACTIONS,
    HUMANEVA_TEST_SUBJECTS,
    HUMANEVA_TRAIN_SUBJECTS,
    HumanEvaDataset,
    humaneva_paths,
    load_humaneva,
)
from .mpi3dhp import MPI3DHP_TEST_SEQUENCES, MPI3DHPTestDataset, load_mpi3dhp_test
from .skeleton import (
    H36M_17,
    H36M_32,
    H36M_KEEP_JOINTS,
    HUMANEVA_15,
    MPI3DHP_17,
    Skeleton,
    bone_lengths,
    flip_horizontal,
    root_relative,
)
from .synthetic import generate_motion, write_synthetic_h36m
from .windows import (
    PoseSequence,
    PoseWindowDataset,
    TorchPoseWindowDataset,
    extract_window,
    flip_test_time_augmentation,
    window_indices,
)

__all__ = [
    "Camera", "DatasetFormatError", "H36MDataset", "H36M_17", "H36M_32", "H36M_EXTRINSICS",
    "H36M_INTRINSICS", "H36M_KEEP_JOINTS", "HUMANEVA_15", "HUMANEVA_ACTIONS",
    "HUMANEVA_EXTRINSICS", "HUMANEVA_INTRINSICS", "HUMANEVA_TEST_SUBJECTS",
    "HUMANEVA_TRAIN_SUBJECTS", "HumanEvaDataset", "MPI3DHP_17", "MPI3DHP_TEST_SEQUENCES",
    "MPI3DHPTestDataset", "PoseSequence", "PoseWindowDataset", "Skeleton", "TEST_SUBJECTS",
    "TRAIN_SUBJECTS", "TorchPoseWindowDataset", "bone_lengths", "camera_to_world",
    "extract_window", "flip_horizontal", "flip_test_time_augmentation", "generate_motion",
    "h36m_camera", "h36m_cameras", "h36m_paths", "humaneva_camera", "humaneva_cameras",
    "humaneva_paths", "image_coordinates", "load_h36m", "load_h36m_2d", "load_h36m_3d",
    "load_humaneva", "load_mpi3dhp_test", "normalize_screen_coordinates", "project_to_pixels",
    "qinverse", "qrot", "quaternion_to_matrix", "root_relative", "window_indices",
    "world_to_camera", "write_synthetic_h36m",
]
