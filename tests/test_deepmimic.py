"""The bundled DeepMimic real-motion clips and their converter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from convformer_fast.pose.data import H36M_17, bone_lengths
from convformer_fast.pose.data.custom import load_custom_2d
from convformer_fast.pose.data.deepmimic import (ATTRIBUTION, DEEPMIMIC_JOINTS, DEFAULT_CLIPS, DEFAULT_PATH,
                                            _camera_from_array, export_custom_2d, forward_kinematics_deepmimic,
                                            load_deepmimic, read_motion, read_urdf_offsets, write_deepmimic_npz)


def test_bundled_clips_are_rigid_projected_and_attributed():
    with np.load(DEFAULT_PATH) as npz:
        assert str(npz["attribution"]) == ATTRIBUTION
        assert list(npz["clips"]) == list(DEFAULT_CLIPS)
        cameras = {c: _camera_from_array(npz[f"{c}/camera"]) for c in DEFAULT_CLIPS}
        world = {c: npz[f"{c}/world"] for c in DEFAULT_CLIPS}
    assert os.path.getsize(DEFAULT_PATH) < 400_000
    sequences, extra = load_deepmimic(with_pixels=True)
    for seq in sequences:
        clip = seq.action[3:]
        assert seq.num_frames >= 60 and seq.inputs_2d.shape == (seq.num_frames, 17, 2)
        assert np.all(seq.target_3d[:, 0] == 0)
        lengths = bone_lengths(seq.target_3d, H36M_17)  # metres
        assert np.all(lengths.std(0) < 0.004) and 0.35 < lengths.mean(0)[1] < 0.5  # rigid; thigh ~0.42 m
        cam = cameras[clip]
        pixels = cam.project(cam.world_to_camera(world[clip].astype(np.float64)))
        np.testing.assert_allclose(extra[clip][0], pixels, atol=0.05)  # 2D = pinhole projection of 3D
        assert (pixels > 0).all() and (pixels[..., 0] < cam.res_w).all() and (pixels[..., 1] < cam.res_h).all()
        # upright: the head is above the pelvis in most frames (z up)
        assert np.mean(world[clip][:, 10, 2] > world[clip][:, 0, 2]) > 0.7


def test_export_as_custom_2d(tmp_path):
    path = export_custom_2d(tmp_path / "data_2d_custom_dm.npz", clips=["walk"])
    videos, metadata = load_custom_2d(path)
    assert metadata["layout_name"] == "h36m" and list(videos) == ["walk"]
    assert videos["walk"]["keypoints"].shape[1:] == (17, 2) and videos["walk"]["w"] == 1000


def test_forward_kinematics_of_a_hand_built_frame():
    offsets = {name: np.array([0.0, -0.1 * (i + 1), 0.0]) for i, (name, _, _) in enumerate(DEEPMIMIC_JOINTS)}
    offsets.update(right_wrist=np.array([0.0, -0.2, 0.0]), left_wrist=np.array([0.0, -0.2, 0.0]))
    frame = np.zeros((1, 44))
    frame[0, 1:4] = (1.0, 2.0, 3.0)
    frame[0, 4:8] = (np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4))  # root: 90 deg about z
    col = 8
    for name, _, kind in DEEPMIMIC_JOINTS:
        if kind == "spherical":
            frame[0, col] = 1.0
            col += 4
        else:
            col += 1
    frame[0, 8 + 4 + 4 + 4] = np.pi / 2  # right knee: 90 deg about its z
    pose = forward_kinematics_deepmimic(frame, offsets)
    # root rotation maps -y to +x: chest offset (0, -0.1, 0) lands at root + (0.1, 0, 0)
    np.testing.assert_allclose(pose["chest"][0][0], (1.1, 2.0, 3.0), atol=1e-12)
    knee = pose["right_knee"][0][0]
    np.testing.assert_allclose(knee, np.array((1.0, 2.0, 3.0)) + (0.3, 0, 0) + (0.4, 0, 0), atol=1e-12)
    # the ankle offset (0, -0.5, 0) turns by the knee's 90 deg and the root's 90 deg about z: 180 deg
    np.testing.assert_allclose(pose["right_ankle"][0][0] - knee, (0.0, 0.5, 0.0), atol=1e-12)


def test_converter_matches_pybullet_forward_kinematics_and_the_bundled_file(tmp_path):
    pybullet = pytest.importorskip("pybullet", reason="checking the converter against pybullet needs pybullet")
    import pybullet_data

    data = pybullet_data.getDataPath()
    urdf = os.path.join(data, "humanoid", "humanoid.urdf")
    frames, _ = read_motion(os.path.join(data, "data", "motions", "humanoid3d_kick.txt"))
    ours = forward_kinematics_deepmimic(frames, read_urdf_offsets(urdf))
    client = pybullet.connect(pybullet.DIRECT)
    try:
        body = pybullet.loadURDF(urdf, globalScaling=0.25, useFixedBase=True, physicsClientId=client)
        index = {pybullet.getJointInfo(body, j, physicsClientId=client)[1].decode(): j
                 for j in range(pybullet.getNumJoints(body, physicsClientId=client))}
        for i in (0, 20, 40):
            f = frames[i]
            xyzw = lambda q: [q[1], q[2], q[3], q[0]]  # noqa: E731
            pybullet.resetBasePositionAndOrientation(body, f[1:4], xyzw(f[4:8]), physicsClientId=client)
            col = 8
            for name, _, kind in DEEPMIMIC_JOINTS:
                if kind == "spherical":
                    q = f[col:col + 4] / np.linalg.norm(f[col:col + 4])
                    pybullet.resetJointStateMultiDof(body, index[name], xyzw(q), physicsClientId=client)
                    col += 4
                else:
                    pybullet.resetJointState(body, index[name], f[col], physicsClientId=client)
                    col += 1
            for name in list(index)[1:]:
                state = pybullet.getLinkState(body, index[name], computeForwardKinematics=True,
                                              physicsClientId=client)
                np.testing.assert_allclose(ours[name][0][i], state[4], atol=1e-5, err_msg=name)
    finally:
        pybullet.disconnect(client)
    regenerated = write_deepmimic_npz(str(tmp_path / "dm.npz"), clips={"kick": 1})
    with np.load(regenerated) as new, np.load(DEFAULT_PATH) as bundled:
        np.testing.assert_allclose(new["kick/world"], bundled["kick/world"], atol=1e-6)
        np.testing.assert_allclose(new["kick/pixels"], bundled["kick/pixels"], atol=1e-3)
