"""2D keypoints of your own videos in the VideoPose3D ``data_2d_custom_<name>.npz`` layout.

VideoPose3D's ``prepare_data_2d_custom.py`` writes, for detections of a set of videos:

* key ``positions_2d``: a pickled dict ``video -> {'custom': [array (frames, 17, 2)]}``
  (pixel coordinates, COCO-17 order for Detectron keypoints; a third confidence channel
  is tolerated);
* key ``metadata``: a pickled dict with ``'layout_name'`` (``'coco'``), ``'num_joints'``
  (17), ``'keypoints_symmetry'`` and ``'video_metadata'``: ``video -> {'w': width,
  'h': height}`` in pixels.

:func:`load_custom_2d` reads that file (errors name the file, the key and what was
expected); :func:`write_custom_2d` writes one, e.g. for tests and demos.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

from ...atomic import atomic_open
from .formats import DatasetFormatError, check_array, check_mapping, check_metadata, load_npz

__all__ = ["COCO_KEYPOINTS_SYMMETRY", "load_custom_2d", "write_custom_2d"]

#: Left / right keypoints of the COCO-17 layout (eyes, ears, shoulders, elbows, wrists,
#: hips, knees, ankles).
COCO_KEYPOINTS_SYMMETRY = ([1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16])

_DESC = "a VideoPose3D custom 2D keypoint file (data_2d_custom_<name>.npz)"


def load_custom_2d(path) -> tuple[dict[str, dict], dict]:
    """Read ``data_2d_custom_<name>.npz``.

    Returns:
        ``(videos, metadata)``: ``videos[name] = {'keypoints': (frames, J, 2 or 3) float32
        pixels, 'w': width, 'h': height}``, and the checked metadata dict (its
        ``layout_name`` says the joint order, usually ``'coco'``).

    Raises:
        DatasetFormatError: missing file or key, or a malformed entry.
    """
    content = load_npz(path, ["positions_2d", "metadata"], _DESC)
    metadata = check_metadata(path, content["metadata"])
    joints = metadata["num_joints"]
    sizes = metadata.get("video_metadata")
    check_mapping(path, "metadata['video_metadata']", sizes,
                  "a dict video -> {'w': width, 'h': height} in pixels")
    data = check_mapping(path, "'positions_2d'", content["positions_2d"],
                         f"a pickled dict video -> {{'custom': [array (frames, {joints}, 2)]}}")
    videos = {}
    for name, entry in data.items():
        key = f"positions_2d[{name!r}]"
        check_mapping(path, key, entry, f"a dict {{'custom': [array (frames, {joints}, 2)]}}")
        if "custom" not in entry:
            raise DatasetFormatError(path, f"{key}['custom']", f"key missing (entry has {sorted(entry)})",
                                     f"a one-element list [array (frames, {joints}, 2)]")
        arrays = entry["custom"]
        if not isinstance(arrays, (list, tuple)) or len(arrays) < 1:
            raise DatasetFormatError(path, f"{key}['custom']", f"got {type(arrays).__name__}",
                                     f"a one-element list [array (frames, {joints}, 2)]")
        kp = check_array(path, f"{key}['custom'][0]", arrays[0], ndim=3, joints=(joints,),
                         what=f"(frames, {joints}, 2) in pixels")
        if kp.shape[-1] not in (2, 3):
            raise DatasetFormatError(path, f"{key}['custom'][0]", f"got shape {kp.shape}",
                                     f"an array (frames, {joints}, 2) in pixels (or 3 with confidence)")
        if name not in sizes or not isinstance(sizes[name], Mapping) or not {"w", "h"} <= set(sizes[name]):
            raise DatasetFormatError(path, f"metadata['video_metadata'][{name!r}]", "missing or incomplete",
                                     "{'w': width, 'h': height} in pixels for every video")
        w, h = sizes[name]["w"], sizes[name]["h"]
        if not (_is_size(w) and _is_size(h)):
            raise DatasetFormatError(path, f"metadata['video_metadata'][{name!r}]", f"got w={w!r}, h={h!r}",
                                     "positive image width and height in pixels")
        with np.errstate(over="ignore"):  # beyond float32: infinite, so treated as missed
            keypoints = np.asarray(kp, dtype=np.float32)
        videos[name] = {"keypoints": keypoints, "w": int(w), "h": int(h)}
    return videos, metadata


def _is_size(value) -> bool:
    """A positive, finite image size in pixels (an int or a float; not a bool)."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_, np.timedelta64))
            and math.isfinite(float(value)) and 0 < value < 2**31)


def write_custom_2d(path, videos: Mapping[str, tuple], layout_name: str = "coco") -> str:
    """Write ``videos[name] = (keypoints (frames, 17, 2|3) pixels, width, height)`` in the
    VideoPose3D custom layout; returns ``path``."""
    if layout_name == "coco":
        symmetry = [list(s) for s in COCO_KEYPOINTS_SYMMETRY]
    elif layout_name == "h36m":
        from .skeleton import H36M_17
        symmetry = [list(H36M_17.joints_left), list(H36M_17.joints_right)]
    else:
        raise ValueError(f"layout_name: got {layout_name!r}, expected 'coco' or 'h36m'")
    positions, sizes = {}, {}
    for name, (kp, w, h) in videos.items():
        positions[name] = {"custom": [np.asarray(kp, dtype=np.float32)]}
        sizes[name] = {"w": int(w), "h": int(h)}
    metadata = {"layout_name": layout_name, "num_joints": 17, "keypoints_symmetry": symmetry,
                "video_metadata": sizes}
    with atomic_open(path) as handle:
        np.savez_compressed(handle, positions_2d=positions, metadata=metadata)
    return os.fspath(path)
