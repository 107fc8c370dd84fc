"""Video inference: shared-spatial lifting equals the plain model per window, COCO mapping,
missed detections, bad input, the custom npz layout, the CLI and --render."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import convformer_fast as cf
from convformer_fast.cli.app import main
from convformer_fast.pose.data import extract_window, flip_test_time_augmentation, write_synthetic_h36m
from convformer_fast.pose.data.custom import load_custom_2d, write_custom_2d
from convformer_fast.pose.data.skeleton import H36M_17
from convformer_fast.pose.checkpoint import save_checkpoint
from convformer_fast.pose.keypoints import COCO_17_NAMES, coco_to_h36m, fill_missing, prepare_keypoints
from convformer_fast.pose.lifting import lift_sequence

CONFIG = dict(num_frames=9, num_joints=17, embed_dim=8, num_heads=4, kernel_sizes=(3, 5),
              spatial_depth=2, temporal_depth=2)
FLIP = (list(H36M_17.joints_left), list(H36M_17.joints_right),
        list(H36M_17.joints_left), list(H36M_17.joints_right))


def _model(backend="torch", **overrides):
    torch.manual_seed(0)
    model = cf.ConvFormerFast(**{**CONFIG, **overrides}, backend=backend)
    with torch.no_grad():  # non-trivial position embeddings and frame weights
        model.temporal_pos_embed.normal_(0, 0.5)
        model.spatial_pos_embed.normal_(0, 0.5)
    return model.eval()


def _per_window(model, keypoints, centers):
    windows = np.stack([extract_window(keypoints, c, model.num_frames) for c in centers])
    with torch.no_grad():
        return model(torch.from_numpy(windows))[:, 0].numpy()


@pytest.mark.parametrize("frames, backend", [(1, "auto"), (4, "auto"), (23, "auto"), (23, "eager")])
def test_lift_sequence_equals_model_on_every_padded_window(frames, backend):
    model = _model(backend)
    kp = np.random.default_rng(frames).normal(0, 0.4, (frames, 17, 2)).astype(np.float32)
    expected = _per_window(model, kp, range(frames))
    got = lift_sequence(model, kp, batch_size=5, frame_chunk=7)  # chunking crosses batches
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # a subset of centres, e.g. strided evaluation
    centers = np.arange(0, frames, 3)
    np.testing.assert_allclose(lift_sequence(model, kp, centers), expected[centers], rtol=1e-4, atol=1e-5)


def test_lift_sequence_runs_the_spatial_part_once_per_frame():
    model = _model()
    calls = []
    model.spatial_blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    lift_sequence(model, np.zeros((40, 17, 2), np.float32), batch_size=8)
    assert sum(calls) == 40  # frames, not 40 windows x 9 frames


def test_lift_sequence_flip_matches_flip_test_time_augmentation():
    model = _model()
    kp = np.random.default_rng(1).normal(0, 0.4, (12, 17, 2)).astype(np.float32)
    windows = torch.from_numpy(np.stack([extract_window(kp, c, 9) for c in range(12)]))
    with torch.no_grad():
        expected = flip_test_time_augmentation(model, windows, *FLIP)[:, 0].numpy()
    np.testing.assert_allclose(lift_sequence(model, kp, flip_symmetry=FLIP), expected, rtol=1e-4, atol=1e-5)


def test_lift_sequence_restores_training_mode_and_rejects_bad_input():
    model = _model().train()
    lift_sequence(model, np.zeros((3, 17, 2), np.float32))
    assert model.training
    with pytest.raises(ValueError, match=r"expected \(frames, 17, 2\)"):
        lift_sequence(model, np.zeros((3, 15, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        lift_sequence(model, np.full((3, 17, 2), np.nan, np.float32))


def test_coco_to_h36m_hand_built():
    coco = np.zeros((17, 2))
    idx = {n: i for i, n in enumerate(COCO_17_NAMES)}
    coco[idx["left_hip"]], coco[idx["right_hip"]] = (10, 100), (-10, 100)
    coco[idx["left_shoulder"]], coco[idx["right_shoulder"]] = (20, 40), (-20, 40)
    coco[idx["nose"]] = (0, 25)
    for name in ("left_eye", "right_eye", "left_ear", "right_ear"):
        coco[idx[name]] = (0, 20)  # face centre 20 px above the thorax
    coco[idx["right_knee"]], coco[idx["left_wrist"]] = (-11, 150), (30, 90)
    h = coco_to_h36m(coco)
    np.testing.assert_allclose(h[0], (0, 100))       # pelvis = mid hips
    np.testing.assert_allclose(h[8], (0, 40))        # thorax = mid shoulders
    np.testing.assert_allclose(h[7], (0, 70))        # spine halfway
    np.testing.assert_allclose(h[9], (0, 25))        # nose
    np.testing.assert_allclose(h[10], (0, 40 - 1.4 * 20))  # head beyond the face centre
    np.testing.assert_allclose(h[1], (-10, 100))     # right hip
    np.testing.assert_allclose(h[2], (-11, 150))     # right knee
    np.testing.assert_allclose(h[13], (30, 90))      # left wrist
    np.testing.assert_allclose(h[11], (20, 40))      # left shoulder


def test_missed_detections_are_interpolated_over_time():
    kp = np.zeros((6, 17, 2))
    kp[:, :, 0] = np.arange(6)[:, None] * 10.0
    kp[[0, 2, 3], 5] = np.nan       # leading gap and an inner gap on joint 5
    kp[5, 7, 1] = np.nan            # trailing gap, one coordinate: the whole keypoint is missed
    filled, count = fill_missing(kp)
    assert count == 4
    np.testing.assert_allclose(filled[:, 5, 0], [10, 10, 20, 30, 40, 50])  # held, then linear
    np.testing.assert_allclose(filled[5, 7], (40, 0))  # held from the last detection
    kp[:, 3] = np.nan
    with pytest.raises(ValueError, match=r"joint 3 \(RAnkle\) is missing .* in all 6 frames"):
        fill_missing(kp)


def test_prepare_keypoints_confidence_normalisation_and_shape_errors():
    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(100, 900, (8, 17, 2)), np.ones((8, 17, 1))], -1)
    kp[3, 0, 2] = 0.1  # a low-confidence nose
    inputs, info = prepare_keypoints(kp, "coco", 1000, 1000, min_confidence=0.3)
    assert inputs.shape == (8, 17, 2) and inputs.dtype == np.float32 and info["filled"] == 1
    np.testing.assert_allclose(info["pixels"][3, 9], (kp[2, 0, :2] + kp[4, 0, :2]) / 2, rtol=1e-5)
    np.testing.assert_allclose(inputs, info["pixels"] / 1000 * 2 - 1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"got shape \(8, 15, 2\), expected \(frames, 17, 2\)"):
        prepare_keypoints(np.zeros((8, 15, 2)), "coco", 100, 100)
    with pytest.raises(ValueError, match="width/height"):
        prepare_keypoints(np.zeros((8, 17, 2)), "h36m")


def _coco_from_h36m(h36m_px):
    """COCO-17 detections standing in for a detector's output on a synthetic video."""
    c = {n: i for i, n in enumerate(COCO_17_NAMES)}
    coco = np.zeros(h36m_px.shape[:-2] + (17, 2), np.float32)
    for h, name in ((1, "right_hip"), (2, "right_knee"), (3, "right_ankle"), (4, "left_hip"),
                    (5, "left_knee"), (6, "left_ankle"), (9, "nose"), (11, "left_shoulder"),
                    (12, "left_elbow"), (13, "left_wrist"), (14, "right_shoulder"),
                    (15, "right_elbow"), (16, "right_wrist")):
        coco[..., c[name], :] = h36m_px[..., h, :]
    for name, dx in (("left_eye", 4), ("right_eye", -4), ("left_ear", 8), ("right_ear", -8)):
        coco[..., c[name], :] = h36m_px[..., 9, :] + (dx, -3)
    return coco


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    _, path_2d = write_synthetic_h36m(root / "h36m", subjects=["S9"], actions=["Walking"], num_frames=30)
    px = np.load(path_2d, allow_pickle=True)["positions_2d"].item()["S9"]["Walking"][0]
    coco = _coco_from_h36m(px)
    coco[4:6, 0] = np.nan  # two missed noses
    custom = write_custom_2d(root / "data_2d_custom_demo.npz",
                             {"walk": (coco, 1000, 1002), "short": (coco[:5], 1000, 1002)})
    checkpoint = save_checkpoint(root / "model.pt", _model())
    np.save(root / "walk.npy", coco)
    return root, custom, checkpoint


def test_custom_npz_layout_round_trip(video):
    _, custom, _ = video
    videos, metadata = load_custom_2d(custom)
    assert metadata["layout_name"] == "coco" and sorted(videos) == ["short", "walk"]
    assert videos["walk"]["keypoints"].shape == (30, 17, 2) and videos["walk"]["w"] == 1000


def test_infer_cli_writes_poses_and_renders_a_gif(video, capsys):
    from PIL import Image

    root, custom, checkpoint = video
    out, gif = root / "poses.npz", root / "walk.gif"
    assert main(["infer", "--keypoints", str(custom), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--render", str(gif), "--render-frames", "4", "--backend", "torch"]) == 0
    assert "2 missed keypoints interpolated" in capsys.readouterr().out
    poses = np.load(out)
    assert poses["walk"].shape == (30, 17, 3) and poses["short"].shape == (5, 17, 3)  # shorter than T
    assert np.all(poses["walk"][:, 0] == 0) and np.isfinite(poses["walk"]).all()
    # same frames, same model, through the plain per-window path (COCO mapping + filling + flip TTA)
    inputs, _ = prepare_keypoints(load_custom_2d(custom)[0]["short"]["keypoints"], "coco", 1000, 1002)
    model = _model()
    windows = torch.from_numpy(np.stack([extract_window(inputs, c, 9) for c in range(5)]))
    with torch.no_grad():
        expected = flip_test_time_augmentation(model, windows, *FLIP)[:, 0].numpy()
    expected[:, 0] = 0
    np.testing.assert_allclose(poses["short"], expected, rtol=1e-4, atol=1e-5)
    with Image.open(gif) as image:
        assert image.n_frames == 4 and image.size[0] > image.size[1]  # --render-frames 4, side by side


def test_infer_cli_npy_input_and_errors(video, capsys):
    root, custom, checkpoint = video
    out = root / "single.npy"

    def fails_with(argv, message):  # a user error: exit code 2 and one line naming the problem
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("convformer-fast infer: error: "), err
        assert re.search(message, err), err

    fails_with(["infer", "--keypoints", str(root / "walk.npy"), "--checkpoint", str(checkpoint), "--out", str(out)],
               "--width/--height")
    assert main(["infer", "--keypoints", str(root / "walk.npy"), "--checkpoint", str(checkpoint), "--out",
                 str(out), "--width", "1000", "--height", "1002", "--no-flip-tta", "--backend", "torch"]) == 0
    assert np.load(out).shape == (30, 17, 3)
    fails_with(["infer", "--keypoints", str(custom), "--checkpoint", str(checkpoint), "--out", str(out)],
               "need an .npz output")
    bad = root / "bad.npy"
    np.save(bad, np.zeros((10, 15, 2)))
    fails_with(["infer", "--keypoints", str(bad), "--checkpoint", str(checkpoint), "--out", str(out),
                "--normalized"], r"got shape \(10, 15, 2\), expected \(frames, 17, 2\)")
    humaneva = save_checkpoint(root / "he.pt", _model(num_joints=15))
    fails_with(["infer", "--keypoints", str(root / "walk.npy"), "--checkpoint", str(humaneva), "--out", str(out),
                "--normalized"], "num_joints=15")