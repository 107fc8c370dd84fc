"""Tests for convformer_fast.pose.data: cameras, loaders, windows, flips, synthetic data."""

import os

import numpy as np
import pytest
import torch

from convformer_fast.pose.data import (
    H36M_17,
    H36M_KEEP_JOINTS,
    HUMANEVA_15,
    MPI3DHP_17,
    DatasetFormatError,
    H36MDataset,
    HumanEvaDataset,
    MPI3DHPTestDataset,
    PoseSequence,
    PoseWindowDataset,
    bone_lengths,
    camera_to_world,
    flip_horizontal,
    flip_test_time_augmentation,
    h36m_camera,
    humaneva_camera,
    image_coordinates,
    load_h36m,
    normalize_screen_coordinates,
    qrot,
    quaternion_to_matrix,
    window_indices,
    world_to_camera,
)
from convformer_fast.pose.data import synthetic

H36M_META = {
    "layout_name": "h36m",
    "num_joints": 17,
    "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]],
}


def _save(path, **arrays):
    np.savez_compressed(path, **arrays)
    return str(path)


def _tiny_h36m(tmp_path, frames=12, subjects=("S1", "S9")):
    """Write hand-built VideoPose3D-format files; returns paths and the raw data."""
    rng = np.random.default_rng(0)
    pos3d, pos2d = {}, {}
    for s in subjects:
        world = (rng.normal(scale=0.3, size=(frames, 32, 3)) + [0.0, 0.0, 1.0]).astype(np.float32)
        pos3d[s] = {"Walking": world, "Eating 2": world[::-1].copy()}
        pos2d[s] = {a: [rng.uniform(0, 1000, size=(frames, 17, 2)).astype(np.float32) for _ in range(4)]
                    for a in pos3d[s]}
    p3 = _save(tmp_path / "data_3d_h36m.npz", positions_3d=pos3d)
    p2 = _save(tmp_path / "data_2d_h36m_gt.npz", positions_2d=pos2d, metadata=H36M_META)
    return p3, p2, pos3d, pos2d


# ------------------------------------------------------------------ cameras

def test_qrot_matches_rotation_matrix_and_camera_round_trip():
    cam = h36m_camera("S9", 2)
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(5, 17, 3))
    np.testing.assert_allclose(qrot(np.broadcast_to(cam.orientation, (5, 17, 4)), pts),
                               pts @ quaternion_to_matrix(cam.orientation).T, atol=1e-12)
    cam_pts = world_to_camera(pts, cam.orientation, cam.translation_m)
    # (the published quaternions are unit to ~1e-8, so the inverse is exact to ~1e-7 m)
    np.testing.assert_allclose(camera_to_world(cam_pts, cam.orientation, cam.translation_m), pts, atol=1e-6)
    # distances are preserved and the camera centre maps to the origin
    np.testing.assert_allclose(np.linalg.norm(cam_pts[0, 1] - cam_pts[0, 0]),
                               np.linalg.norm(pts[0, 1] - pts[0, 0]))
    np.testing.assert_allclose(cam.world_to_camera(cam.translation_m), 0.0, atol=1e-12)
    # translation is converted from mm (published) to metres
    np.testing.assert_allclose(cam.translation_m * 1000.0,
                               [-1670.9921875, 5211.98583984375, 1528.387939453125])


def test_h36m_cameras_see_the_capture_area():
    """A person near the world origin is in front of every camera, head up in the image."""
    for subject in ("S1", "S5", "S6", "S7", "S8", "S9", "S11"):
        for c in range(4):
            cam = h36m_camera(subject, c)
            feet, head = cam.world_to_camera(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.7]]))
            assert 3.0 < feet[2] < 7.0 and 3.0 < head[2] < 7.0
            px = cam.project(np.stack([feet, head]))
            assert px[1, 1] < px[0, 1]                               # y points down
            assert np.all((px > 0) & (px < [cam.res_w, cam.res_h]))
    assert humaneva_camera("Validate/S2", 1).res_w == 640


def test_screen_normalisation_round_trip_and_values():
    px = np.array([[0.0, 0.0], [1000.0, 1002.0], [500.0, 501.0]], dtype=np.float32)
    norm = normalize_screen_coordinates(px, w=1000, h=1002)
    np.testing.assert_allclose(norm, [[-1.0, -1.002], [1.0, 1.002], [0.0, 0.0]], atol=1e-6)
    assert norm.dtype == np.float32
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1920, size=(7, 17, 2))
    np.testing.assert_allclose(image_coordinates(normalize_screen_coordinates(x, 1920, 1080), 1920, 1080),
                               x, atol=1e-9)


# ------------------------------------------------------------------ loaders

def test_h36m_loader_reads_videopose3d_files(tmp_path):
    p3, p2, pos3d, pos2d = _tiny_h36m(tmp_path)
    seqs, meta = load_h36m(p3, p2, subjects=["S9"], actions=["Eating"], cameras=[1], units="mm")
    assert meta["keypoints_symmetry"] == H36M_META["keypoints_symmetry"]
    assert len(seqs) == 1
    seq = seqs[0]
    assert (seq.subject, seq.action, seq.camera) == ("S9", "Eating 2", 1)
    assert seq.inputs_2d.dtype == np.float32 and seq.target_3d.dtype == np.float32
    assert seq.inputs_2d.shape == (12, 17, 2) and seq.target_3d.shape == (12, 17, 3)
    cam = h36m_camera("S9", 1)
    world17 = pos3d["S9"]["Eating 2"][:, list(H36M_KEEP_JOINTS)].astype(np.float64)
    cam_mm = world_to_camera(world17, cam.orientation, cam.translation_m) * 1000.0
    np.testing.assert_allclose(seq.target_3d, cam_mm - cam_mm[:, :1], atol=1e-2)
    np.testing.assert_allclose(seq.trajectory, cam_mm[:, 0], atol=1e-2)
    assert np.all(seq.target_3d[:, 0] == 0)                          # root stays zero
    np.testing.assert_allclose(seq.inputs_2d, pos2d["S9"]["Eating 2"][1] / 1000 * 2 - [1, 1000 / 1000],
                               atol=1e-6)


def test_h36m_dataset_split_and_sample_types(tmp_path):
    p3, p2, _, _ = _tiny_h36m(tmp_path, frames=10)
    train = H36MDataset(p3, p2, subjects="train", receptive_field=5, stride=3)
    test = H36MDataset(p3, p2, subjects="test", receptive_field=5, stride=1)
    assert {s.subject for s in train.sequences} == {"S1"}
    assert {s.subject for s in test.sequences} == {"S9"}
    assert len(train) == 2 * 4 * 4          # 2 actions x 4 cameras x ceil(10 / 3) targets
    assert len(test) == 2 * 4 * 10
    x, y, action, subject = train[0]
    assert x.shape == (5, 17, 2) and y.shape == (1, 17, 3)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert isinstance(action, str) and subject == "S1"
    loader = torch.utils.data.DataLoader(train.torch(), batch_size=4)
    xb, yb, actions, subjects = next(iter(loader))
    assert xb.shape == (4, 5, 17, 2) and yb.shape == (4, 1, 17, 3) and xb.dtype == torch.float32
    assert len(actions) == 4 and subjects[0] == "S1"


def test_humaneva_loader(tmp_path):
    rng = np.random.default_rng(3)
    world = rng.normal(scale=0.3, size=(9, 15, 3)) + [0, 0, 1.0]
    pos3d = {"Train/S1": {"Walk 1 chunk0": world, "Gestures 1 chunk0": world},
             "Validate/S2": {"Jog 1 chunk0": world}}
    kp = [rng.uniform(0, 640, size=(9, 15, 2)) for _ in range(3)]
    pos2d = {"Train/S1": {"Walk 1 chunk0": [kp[0], None, kp[2]], "Gestures 1 chunk0": kp},
             "Validate/S2": {"Jog 1 chunk0": kp}}
    meta = {"layout_name": "humaneva15", "num_joints": 15,
            "keypoints_symmetry": [list(HUMANEVA_15.joints_left), list(HUMANEVA_15.joints_right)]}
    p3 = _save(tmp_path / "data_3d_humaneva15.npz", positions_3d=pos3d)
    p2 = _save(tmp_path / "data_2d_humaneva15_gt.npz", positions_2d=pos2d, metadata=meta)
    train = HumanEvaDataset(p3, p2, subjects="train", receptive_field=3)
    # Gestures is not a protocol action; camera C2 of the Walk chunk is missing
    assert [(s.action, s.camera) for s in train.sequences] == [("Walk 1 chunk0", 0), ("Walk 1 chunk0", 2)]
    seq = train.sequences[1]
    cam = humaneva_camera("Train/S1", 2)
    expected = world_to_camera(world, cam.orientation, cam.translation_m)
    np.testing.assert_allclose(seq.target_3d, expected - expected[:, :1], atol=1e-5)
    np.testing.assert_allclose(seq.inputs_2d, normalize_screen_coordinates(kp[2], 640, 480), atol=1e-6)
    test = HumanEvaDataset(p3, p2, subjects="test", receptive_field=3)
    assert len(test) == 3 * 9 and test[0][3] == "Validate/S2"


def test_mpi3dhp_loader_uses_valid_frames(tmp_path):
    rng = np.random.default_rng(4)
    frames = 8
    valid = np.array([0, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    data = {
        "TS1": {"data_2d": rng.uniform(0, 2048, size=(frames, 17, 2)),
                "data_3d": rng.normal(scale=300, size=(frames, 17, 3)), "valid": valid},
        "TS5": {"data_2d": rng.uniform(0, 1920, size=(frames, 17, 2)),
                "data_3d": rng.normal(scale=300, size=(frames, 17, 3)), "valid": valid,
                "width": 1920, "height": 1080},
    }
    path = _save(tmp_path / "data_test_3dhp.npz", data=data)
    ds = MPI3DHPTestDataset(path, receptive_field=3, units="mm")
    assert len(ds) == 2 * int(valid.sum())
    seq = ds.sequences[1]
    assert seq.subject == "TS5" and (seq.res_w, seq.res_h) == (1920, 1080)
    root = MPI3DHP_17.root
    pose = data["TS5"]["data_3d"]
    np.testing.assert_allclose(seq.target_3d, pose - pose[:, root:root + 1], atol=1e-3)
    assert np.all(seq.target_3d[:, root] == 0)
    assert ds.sequences[0].res_w == 2048                           # published default size
    centres = [ds.locate(i)[1] for i in range(len(ds))]
    assert all(valid[c] for c in centres)


# ------------------------------------------------------------------- errors

def test_missing_file_and_key_errors_name_file_and_key(tmp_path):
    missing = tmp_path / "nope" / "data_3d_h36m.npz"
    p3, p2, _, _ = _tiny_h36m(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"nope.*data_3d_h36m\.npz: file not found; expected"):
        load_h36m(missing, p2)
    wrong = _save(tmp_path / "wrong.npz", something=np.zeros(3))
    with pytest.raises(DatasetFormatError, match=r"wrong\.npz, key 'positions_3d': key missing") as info:
        load_h36m(wrong, p2)
    assert info.value.key == "'positions_3d'" and info.value.path.endswith("wrong.npz")
    assert isinstance(info.value, ValueError)
    no_meta = _save(tmp_path / "no_meta.npz", positions_2d={"S1": {}})
    with pytest.raises(DatasetFormatError, match=r"no_meta\.npz, key 'metadata': key missing"):
        load_h36m(p3, no_meta)


def test_malformed_entries_errors(tmp_path):
    p3, p2, pos3d, pos2d = _tiny_h36m(tmp_path, subjects=("S1",))
    bad3d = {"S1": {"Walking": np.zeros((5, 32, 2))}}
    b3 = _save(tmp_path / "bad3d.npz", positions_3d=bad3d)
    with pytest.raises(DatasetFormatError,
                       match=r"bad3d\.npz, key positions_3d\['S1'\]\['Walking'\]: got shape \(5, 32, 2\); "
                             r"expected an array \(frames, 32 or 17, 3\)"):
        load_h36m(b3, p2)
    three_cams = {"S1": {a: v[:3] for a, v in pos2d["S1"].items()}}
    b2 = _save(tmp_path / "bad2d.npz", positions_2d=three_cams, metadata=H36M_META)
    with pytest.raises(DatasetFormatError, match=r"bad2d\.npz, key positions_2d\['S1'\]\['(Walking|Eating 2)'\]: "
                                                 r"got 3 entries; expected a list of 4 arrays"):
        load_h36m(p3, b2)
    bad_meta = dict(H36M_META, keypoints_symmetry=[[1, 2], [3]])
    b4 = _save(tmp_path / "badmeta.npz", positions_2d=pos2d, metadata=bad_meta)
    with pytest.raises(DatasetFormatError, match=r"key metadata\['keypoints_symmetry'\]"):
        load_h36m(p3, b4)
    del pos2d["S1"]["Walking"]
    b5 = _save(tmp_path / "noaction.npz", positions_2d=pos2d, metadata=H36M_META)
    with pytest.raises(DatasetFormatError, match=r"noaction\.npz, key positions_2d\['S1'\]\['Walking'\]: "
                                                 r"action missing"):
        load_h36m(p3, b5)
    with pytest.raises(DatasetFormatError, match=r"data_3d_h36m\.npz, key positions_3d\['S9'\]: subject missing"):
        load_h36m(p3, p2, subjects=["S1", "S9"])
    with pytest.raises(DatasetFormatError,
                       match=r"data_3d_h36m\.npz, key 'positions_3d': no subject of split 'test'"):
        load_h36m(p3, p2, subjects="test")
    bad3dhp = _save(tmp_path / "bad3dhp.npz", data={"TS1": {"data_2d": np.zeros((4, 17, 2)),
                                                            "valid": np.ones(4, bool)}})
    with pytest.raises(DatasetFormatError, match=r"bad3dhp\.npz, key data\['TS1'\]\['data_3d'\]: key missing"):
        MPI3DHPTestDataset(bad3dhp, receptive_field=3)


# ------------------------------------------------------------------ windows

def test_window_padding_replicates_both_edges():
    np.testing.assert_array_equal(window_indices(6, 0, 5), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(window_indices(6, 5, 5), [3, 4, 5, 5, 5])
    np.testing.assert_array_equal(window_indices(6, 2, 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(window_indices(1, 0, 3), [0, 0, 0])
    frames = 6
    inputs = np.repeat(np.arange(frames, dtype=np.float32)[:, None, None], 17, 1).repeat(2, 2)
    target = np.repeat(np.arange(frames, dtype=np.float32)[:, None, None], 17, 1).repeat(3, 2)
    seq = PoseSequence("S1", "Walking", 0, inputs, target)
    ds = PoseWindowDataset([seq], receptive_field=5, stride=2)
    assert len(ds) == 3                                              # targets 0, 2, 4
    x0, y0, _, _ = ds[0]
    np.testing.assert_array_equal(x0[:, 0, 0], [0, 0, 0, 1, 2])
    assert y0.shape == (1, 17, 3) and np.all(y0 == 0)
    x_last, y_last, _, _ = ds[-1]
    np.testing.assert_array_equal(x_last[:, 0, 0], [2, 3, 4, 5, 5])
    assert np.all(y_last == 4)
    with pytest.raises(IndexError):
        ds[3]


def test_flip_twice_is_identity_and_swaps_sides():
    rng = np.random.default_rng(5)
    left, right = H36M_17.joints_left, H36M_17.joints_right
    x = rng.normal(size=(4, 17, 3)).astype(np.float32)
    once = flip_horizontal(x, left, right)
    np.testing.assert_array_equal(once[:, 4, 0], -x[:, 1, 0])      # LHip <- mirrored RHip
    np.testing.assert_array_equal(once[:, 1, 1:], x[:, 4, 1:])
    np.testing.assert_array_equal(once[:, 0, 0], -x[:, 0, 0])      # centre joints only mirrored
    np.testing.assert_array_equal(flip_horizontal(once, left, right), x)
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(flip_horizontal(flip_horizontal(xt, left, right), left, right).numpy(), x)
    np.testing.assert_array_equal(flip_horizontal(xt, left, right).numpy(), once)


def test_flip_augmented_dataset_mirrors_second_half():
    rng = np.random.default_rng(6)
    seq = PoseSequence("S1", "Walking", 0, rng.normal(size=(4, 17, 2)), rng.normal(size=(4, 17, 3)))
    kw = dict(kps_left=H36M_17.joints_left, kps_right=H36M_17.joints_right,
              joints_left=H36M_17.joints_left, joints_right=H36M_17.joints_right)
    ds = PoseWindowDataset([seq], receptive_field=3, flip_augment=True, **kw)
    assert len(ds) == 8
    x, y, _, _ = ds[1]
    xf, yf, _, _ = ds[5]
    np.testing.assert_allclose(xf, flip_horizontal(x, H36M_17.joints_left, H36M_17.joints_right))
    np.testing.assert_allclose(yf, flip_horizontal(y, H36M_17.joints_left, H36M_17.joints_right))


def test_flip_test_time_augmentation():
    left, right = H36M_17.joints_left, H36M_17.joints_right
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(2, 5, 17, 2)).astype(np.float32))
    weights = torch.from_numpy(rng.normal(size=(2, 3)).astype(np.float32))

    def model(inp):   # depends on the absolute x sign, so it is not flip-equivariant
        return (inp[:, 2:3] @ weights) + inp[:, 2:3, :, :1].abs()

    out = flip_test_time_augmentation(model, x, left, right, left, right)
    expected = (model(x) + flip_horizontal(model(flip_horizontal(x, left, right)), left, right)) / 2
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, model(x))

    def equivariant(inp):  # lifts x, y to (x, y, 0): commutes with the flip
        return torch.cat([inp, torch.zeros_like(inp[..., :1])], -1)

    torch.testing.assert_close(flip_test_time_augmentation(equivariant, x, left, right, left, right),
                               equivariant(x))


# ---------------------------------------------------------------- synthetic

def test_synthetic_skeleton_is_rigid_and_smooth():
    for action in ("Walking", "SittingDown", "Phoning 1"):
        motion = synthetic.generate_motion(120, action, "S5", seed=3)
        lengths = bone_lengths(motion, H36M_17)                        # (F, 16) mm
        assert np.max(np.ptp(lengths, axis=0)) < 1e-6
        expected = np.linalg.norm(synthetic.subject_bone_offsets("S5", 3)[1:], axis=-1)
        np.testing.assert_allclose(lengths[0], expected, rtol=1e-9)
        assert 100 < lengths[0, 0] < 160 and 400 < lengths[0, 1] < 500   # hip, thigh in mm
        speed = np.linalg.norm(np.diff(motion, axis=0), axis=-1)       # mm per frame at 50 fps
        assert speed.max() < 120.0                                     # < 6 m/s: no jumps
        assert motion[:, [3, 6], 2].min() > 0                          # feet above the floor
        assert np.all(motion[:, 10, 2] > motion[:, 0, 2])              # head above pelvis
    walking = synthetic.generate_motion(100, "Walking", "S1", seed=0)
    waiting = synthetic.generate_motion(100, "Waiting", "S1", seed=0)
    assert np.ptp(walking[:, 0, :2], axis=0).max() > 1000                # walks about
    assert np.ptp(waiting[:, 0, :2], axis=0).max() < 500


def test_synthetic_writer_round_trip_through_real_loader(tmp_path):
    p3, p2 = synthetic.write_synthetic_h36m(tmp_path, subjects=("S1", "S9"),
                                            actions=("Walking", "Eating 2"), num_frames=40, seed=11)
    assert os.path.getsize(p3) + os.path.getsize(p2) < 500_000
    raw = np.load(p3, allow_pickle=True)["positions_3d"].item()
    assert raw["S1"]["Eating 2"].shape == (40, 32, 3) and raw["S1"]["Eating 2"].dtype == np.float32
    assert 0.5 < raw["S1"]["Walking"][:, 0, 2].mean() < 1.2             # pelvis height in metres
    meta = np.load(p2, allow_pickle=True)["metadata"].item()
    assert meta == H36M_META
    seqs, _ = load_h36m(p3, p2, subjects=None)
    assert len(seqs) == 2 * 2 * 4
    for seq in seqs:
        cam = h36m_camera(seq.subject, seq.camera)
        # the 2D keypoints are the pinhole projection of the loaded 3D joints
        cam_pos = seq.target_3d.astype(np.float64) + seq.trajectory[:, None]
        np.testing.assert_allclose(image_coordinates(seq.inputs_2d, cam.res_w, cam.res_h),
                                   cam.project(cam_pos), atol=0.05)
        assert np.abs(seq.inputs_2d).max() < 1.1                     # inside the image
    # deterministic given the seed, different for another seed
    again = synthetic.write_synthetic_h36m(tmp_path / "again", subjects=("S1", "S9"),
                                           actions=("Walking", "Eating 2"), num_frames=40, seed=11)
    other = synthetic.write_synthetic_h36m(tmp_path / "other", subjects=("S1",),
                                           actions=("Walking",), num_frames=40, seed=12)
    raw_again = np.load(again[0], allow_pickle=True)["positions_3d"].item()
    raw_other = np.load(other[0], allow_pickle=True)["positions_3d"].item()
    np.testing.assert_array_equal(raw_again["S9"]["Eating 2"], raw["S9"]["Eating 2"])
    assert not np.allclose(raw_other["S1"]["Walking"], raw["S1"]["Walking"])


def test_expand_to_32_joints_keeps_subset():
    motion = synthetic.generate_motion(3, "Walking", "S1")
    full = synthetic.expand_to_32_joints(motion)
    assert full.shape == (3, 32, 3)
    np.testing.assert_array_equal(full[:, list(H36M_KEEP_JOINTS)], motion)
    np.testing.assert_array_equal(full[:, 11], motion[:, 0])           # duplicated hip
    np.testing.assert_array_equal(full[:, 22], motion[:, 13])          # left hand <- left wrist


def test_look_at_camera_centres_target():
    cam = synthetic.look_at_camera([3.0, -4.0, 1.6], [0.2, 0.1, 0.9])
    px = cam.project(cam.world_to_camera(np.array([0.2, 0.1, 0.9])))
    np.testing.assert_allclose(px, [500.0, 501.0], atol=1e-9)
    above = cam.project(cam.world_to_camera(np.array([0.2, 0.1, 1.5])))
    assert above[1] < 501.0                                          # up in the world is up in the image
