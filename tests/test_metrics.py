"""Hand-checked cases for convformer_fast.pose.metrics (Protocols I-III, PCK, AUC)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from convformer_fast.pose import metrics as M


def _rotation(axis, angle):
    """Rodrigues rotation matrix (3, 3) about ``axis`` by ``angle`` radians."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@pytest.fixture
def pose():
    """A generic (non-planar, asymmetric) 17-joint pose in mm."""
    rng = np.random.default_rng(0)
    return rng.normal(scale=300.0, size=(17, 3))


# ---------------------------------------------------------------- Protocol I

def test_mpjpe_hand_computed():
    target = np.zeros((2, 4, 3))
    pred = target + np.array([3.0, 4.0, 0.0])          # every joint 5 mm off
    pred[1, 0] = [0.0, 0.0, 13.0]                       # one joint 13 mm off
    expected = (7 * 5.0 + 13.0) / 8
    assert M.mpjpe(pred, target) == pytest.approx(expected)
    np.testing.assert_allclose(M.mpjpe_per_sample(pred, target), [5.0, (3 * 5.0 + 13.0) / 4])
    np.testing.assert_allclose(M.joint_errors(pred, target)[1], [13.0, 5.0, 5.0, 5.0])


def test_return_kinds_follow_input():
    target = np.zeros((3, 5, 3))
    pred = target + 1.0
    value = M.mpjpe(pred, target)
    assert isinstance(value, float)
    tvalue = M.mpjpe(torch.from_numpy(pred).float(), torch.from_numpy(target).float())
    assert isinstance(tvalue, torch.Tensor) and tvalue.ndim == 0
    assert tvalue.item() == pytest.approx(np.sqrt(3.0), rel=1e-6)
    # mixed numpy/torch input answers as torch
    mixed = M.p_mpjpe(torch.from_numpy(pred), target)
    assert isinstance(mixed, torch.Tensor) and mixed.ndim == 0
    assert M.mpjpe_per_sample(torch.from_numpy(pred), torch.from_numpy(target)).shape == (3,)


def test_mpjpe_torch_is_differentiable():
    target = torch.zeros(2, 4, 3)
    pred = torch.ones(2, 4, 3, requires_grad=True)
    M.mpjpe(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


# --------------------------------------------------------------- Protocol II

def test_p_mpjpe_removes_similarity_transform(pose):
    rot = _rotation([0.3, -1.0, 0.5], 1.1)
    pred = 1.7 * pose @ rot.T + np.array([250.0, -80.0, 4000.0])
    assert M.mpjpe(pred, pose) > 100.0
    assert M.p_mpjpe(pred, pose) == pytest.approx(0.0, abs=1e-6)
    aligned = M.procrustes_align(pred, pose)
    np.testing.assert_allclose(aligned, pose, atol=1e-6)


def test_p_mpjpe_torch_matches_numpy_batched(pose):
    rng = np.random.default_rng(1)
    target = pose + rng.normal(scale=50.0, size=(2, 3, 17, 3))
    pred = target + rng.normal(scale=40.0, size=target.shape)
    per_np = M.p_mpjpe_per_sample(pred, target)
    per_t = M.p_mpjpe_per_sample(torch.from_numpy(pred), torch.from_numpy(target))
    assert per_np.shape == (2, 3)
    np.testing.assert_allclose(per_t.numpy(), per_np, rtol=1e-9, atol=1e-9)
    # alignment can only reduce the error, and each pose is aligned on its own
    assert np.all(per_np <= M.mpjpe_per_sample(pred, target) + 1e-9)
    single = M.p_mpjpe(pred[1, 2], target[1, 2])
    assert single == pytest.approx(per_np[1, 2])


def test_p_mpjpe_does_not_align_away_reflections(pose):
    mirrored = pose * np.array([-1.0, 1.0, 1.0])
    error = M.p_mpjpe(mirrored, pose)
    # An alignment that allowed reflections would reach ~0 here.
    assert error > 10.0
    torch_error = M.p_mpjpe(torch.from_numpy(mirrored), torch.from_numpy(pose))
    assert torch_error.item() == pytest.approx(error, rel=1e-9)
    # The proper-rotation optimum is never worse than the identity alignment
    # of the centred, scale-matched poses.
    assert error <= M.mpjpe(mirrored - mirrored.mean(0), pose - pose.mean(0)) + 1e-9
    # The aligned pose is related to the prediction by a proper rotation.
    aligned = M.procrustes_align(mirrored, pose)
    a = aligned - aligned.mean(0)
    b = mirrored - mirrored.mean(0)
    rot, *_ = np.linalg.lstsq(b, a, rcond=None)
    rot /= np.cbrt(np.linalg.det(rot))
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)


def test_p_mpjpe_degenerate_prediction_is_finite(pose):
    collapsed = np.zeros_like(pose)
    value = M.p_mpjpe(collapsed, pose)
    assert np.isfinite(value)
    assert value == pytest.approx(M.mpjpe(np.broadcast_to(pose.mean(0), pose.shape), pose))


# -------------------------------------------------------------- Protocol III

def test_mpjve_constant_offset_is_zero():
    rng = np.random.default_rng(2)
    target = rng.normal(size=(2, 10, 17, 3)) * 100
    pred = target + np.array([30.0, -5.0, 12.0])
    assert M.mpjpe(pred, target) > 30
    assert M.mpjve(pred, target) == pytest.approx(0.0, abs=1e-9)


def test_mpjve_hand_computed():
    frames = 5
    target = np.zeros((frames, 3, 3))
    pred = np.zeros((frames, 3, 3))
    pred[:, :, 0] = 2.0 * np.arange(frames)[:, None]   # moves 2 mm/frame along x
    assert M.mpjve(pred, target) == pytest.approx(2.0)
    per = M.mpjve_per_sample(pred, target)
    assert per.shape == (frames - 1,)
    # a single jump of 6 mm of one joint (of 3) between frames 1 and 2
    pred2 = np.zeros((frames, 3, 3))
    pred2[2:, 0, 1] = 6.0
    np.testing.assert_allclose(M.mpjve_per_sample(pred2, target), [0.0, 2.0, 0.0, 0.0])
    t_val = M.mpjve(torch.from_numpy(pred), torch.from_numpy(target))
    assert isinstance(t_val, torch.Tensor) and t_val.item() == pytest.approx(2.0)


# ---------------------------------------------------------------- PCK / AUC

def test_pck_hand_built():
    target = np.zeros((5, 3))
    pred = np.zeros((5, 3))
    pred[:, 0] = [0.0, 100.0, 149.0, 151.0, 200.0]
    assert M.pck(pred, target) == pytest.approx(60.0)
    assert M.pck(pred, target, threshold=100.0) == pytest.approx(20.0)   # strict "<"
    assert M.pck(pred, target, threshold=250.0) == pytest.approx(100.0)
    assert M.pck_per_sample(pred[None], target[None]).shape == (1,)


def test_auc_hand_built():
    target = np.zeros((4, 3))
    pred = np.zeros((4, 3))
    pred[:, 2] = 75.0
    # thresholds 80, 85, ..., 150 (15 of the 31) count the joints as correct
    assert M.auc(pred, target) == pytest.approx(100.0 * 15 / 31)
    assert M.auc(pred + 1000.0, target) == pytest.approx(0.0)
    expected = np.mean([M.pck(pred, target, t) for t in np.linspace(0, 150, 31)])
    assert M.auc(pred, target) == pytest.approx(expected)
    tval = M.auc(torch.from_numpy(pred), torch.from_numpy(target))
    assert tval.item() == pytest.approx(100.0 * 15 / 31)


# --------------------------------------------------------------- bad inputs

def test_errors_name_argument_given_and_expected():
    good = np.zeros((4, 17, 3))
    with pytest.raises(ValueError, match=r"pred: got shape \(4, 17, 2\).*expected"):
        M.mpjpe(np.zeros((4, 17, 2)), good)
    with pytest.raises(ValueError, match=r"target: got shape \(4, 17, 4\)"):
        M.p_mpjpe(good, np.zeros((4, 17, 4)))
    with pytest.raises(ValueError, match=r"pred/target: got pred shape \(4, 17, 3\) and "
                                         r"target shape \(4, 16, 3\).*identical"):
        M.pck(good, np.zeros((4, 16, 3)))
    with pytest.raises(ValueError, match=r"pred: got shape \(1, 17, 3\) with 1 frame.*at least 2"):
        M.mpjve(np.zeros((1, 17, 3)), np.zeros((1, 17, 3)))
    with pytest.raises(ValueError, match=r"pred: .*expected shape \(\.\.\., T, J, 3\)"):
        M.mpjve(np.zeros((17, 3)), np.zeros((17, 3)))
    with pytest.raises(ValueError, match="threshold"):
        M.pck(good, good, threshold=-1)


# ------------------------------------------------------------------ actions

def test_canonical_action_names():
    cases = {
        "Directions 1": "Dir", "Discussion": "Disc", "Eating 2": "Eat", "Greeting": "Greet",
        "Phoning 1": "Phone", "Photo": "Photo", "TakingPhoto": "Photo", "Posing 1": "Pose",
        "Purchases": "Purch", "Sitting 2": "Sit", "SittingDown": "SitD", "Smoking": "Smoke",
        "Waiting 1": "Wait", "WalkDog": "WalkD", "WalkingDog 1": "WalkD", "Walking": "Walk",
        "WalkTogether 1": "WalkT", "walking_together": "WalkT", "SitD": "SitD",
    }
    for raw, short in cases.items():
        assert M.canonical_action(raw) == short, raw
    assert len(M.H36M_ACTIONS) == 15
    assert M.H36M_ACTIONS[0] == "Dir" and M.H36M_ACTIONS[-1] == "WalkT"
    with pytest.raises(ValueError, match="Jumping"):
        M.canonical_action("Jumping")


def test_per_action_average_is_mean_over_actions():
    errors = np.array([10.0, 20.0, 30.0, 70.0, 50.0])
    actions = ["Walking 1", "Directions", "Directions 1", "Directions", "WalkingDog"]
    result = M.per_action(errors, actions)
    assert isinstance(result, OrderedDict)
    assert list(result) == ["Dir", "WalkD", "Walk", "Average"]        # table order
    assert result["Dir"] == pytest.approx(40.0)
    assert result["WalkD"] == pytest.approx(50.0)
    assert result["Walk"] == pytest.approx(10.0)
    assert result["Average"] == pytest.approx(100.0 / 3)               # (40 + 50 + 10) / 3
    assert errors.mean() == pytest.approx(36.0)                         # not the sample mean
    from_torch = M.per_action(torch.tensor(errors), actions)
    assert from_torch == result
    with pytest.raises(ValueError, match="actions: got 2 names for 5 errors"):
        M.per_action(errors, actions[:2])
    # non-H36M names are grouped by base name unless strict
    other = M.per_action([1.0, 3.0, 5.0], ["Jog 1 chunk0", "Jog 1 chunk1", "Box 1 chunk0"])
    assert list(other) == ["Jog", "Box", "Average"] and other["Jog"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        M.per_action([1.0], ["Jog 1 chunk0"], strict=True)
