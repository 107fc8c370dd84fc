"""Streaming lifting (StreamingLifter, ``infer --stream``) equals offline inference frame by
frame; the causal model (``target_frame="last"``) trains, evaluates and infers.

Cost (2 shared cores): about 60 s, most of it the training run and the one subprocess that
pipes into ``infer --stream``; every model here is tiny (T = 9, d = 8).
"""

from __future__ import annotations

import io
import json
import re
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import convformer_fast as cf
from convformer_fast.cli.app import main
from convformer_fast.pose import StreamingLifter, lift_sequence, prepare_keypoints
from convformer_fast.pose.checkpoint import load_checkpoint, save_checkpoint
from convformer_fast.pose.data import PoseSequence, PoseWindowDataset, extract_window, window_indices
from convformer_fast.pose.data import write_synthetic_h36m
from convformer_fast.pose.data.skeleton import H36M_17
from convformer_fast.pose import train as train_module
from convformer_fast.pose.stream import mean_pose_h36m

CONFIG = dict(num_frames=9, num_joints=17, embed_dim=8, num_heads=4, kernel_sizes=(3, 5),
              spatial_depth=2, temporal_depth=2)
FLIP = (list(H36M_17.joints_left), list(H36M_17.joints_right),
        list(H36M_17.joints_left), list(H36M_17.joints_right))
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32: batch-of-one vs batched windows
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(target_frame="centre", backend="torch", **overrides):
    torch.manual_seed(0)
    model = cf.ConvFormerFast(**{**CONFIG, **overrides}, target_frame=target_frame, backend=backend)
    with torch.no_grad():  # position embeddings that make every frame of a window count
        model.temporal_pos_embed.normal_(0, 0.5)
        model.spatial_pos_embed.normal_(0, 0.5)
    return model.eval()


def _keypoints(frames, joints=17, seed=0):
    return np.random.default_rng(seed).normal(0, 0.4, (frames, joints, 2)).astype(np.float32)


def _stream(lifter, frames):
    """[(frame index, pose)] from push, then flush, checking the frame each answer belongs to."""
    out = []
    for n, frame in enumerate(frames):
        pose = lifter.push(frame)
        assert lifter.frames_pushed == n + 1
        if pose is not None:
            out.append((n - lifter.delay, pose))
    tail = lifter.flush()
    first = len(frames) - len(tail)
    out += [(first + k, pose) for k, pose in enumerate(tail)]
    return out


# -- windows of a causal model --------------------------------------------------------------

def test_causal_windows_end_with_the_target_and_pad_only_the_past():
    np.testing.assert_array_equal(window_indices(10, 5, 5, "last"), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(window_indices(10, 1, 5, "last"), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(window_indices(10, 9, 5, "centre"), [7, 8, 9, 9, 9])
    assert max(window_indices(10, 9, 243, "last")) == 9  # never a future frame
    seq = PoseSequence("S1", "Walking", 0, _keypoints(12), np.random.rand(12, 17, 3))
    data = PoseWindowDataset([seq], 5, target_frame="last")
    inputs, target, _, _ = data[3]
    np.testing.assert_array_equal(inputs, seq.inputs_2d[[0, 0, 1, 2, 3]])
    np.testing.assert_array_equal(target[0], seq.target_3d[3])
    with pytest.raises(ValueError, match=r"target_frame: got 'middle', expected one of \['centre', 'last'\]"):
        PoseWindowDataset([seq], 5, target_frame="middle")
    with pytest.raises(ValueError, match="target_frame: got 'first'"):
        cf.ConvFormer(**CONFIG, target_frame="first")


def test_forward_is_the_spatial_stage_then_the_temporal_stage():
    model = _model()
    x = torch.from_numpy(_keypoints(2 * 9).reshape(2, 9, 17, 2))
    with torch.no_grad():
        staged = model.temporal_stage(model.spatial_stage(x.reshape(18, 17, 2)).reshape(2, 9, -1))
        np.testing.assert_array_equal(model(x).numpy(), staged.numpy())


# -- StreamingLifter equals lift_sequence --------------------------------------------------

@pytest.mark.parametrize("target", ["centre", "last"])
@pytest.mark.parametrize("frames, cache, flip, backend", [
    (1, True, False, "auto"), (5, True, False, "auto"), (23, True, False, "auto"),  # shorter / longer than T
    (23, False, False, "auto"), (23, True, True, "auto"), (5, True, False, "eager")])
def test_stream_equals_offline_frame_by_frame(target, frames, cache, flip, backend):
    model = _model(target)
    kp = _keypoints(frames, seed=frames)
    flip_symmetry = FLIP if flip else None
    expected = lift_sequence(model, kp, flip_symmetry=flip_symmetry)
    lifter = StreamingLifter(model, backend=backend, spatial_cache=cache, flip_symmetry=flip_symmetry)
    answers = _stream(lifter, kp)
    assert [i for i, _ in answers] == list(range(frames))  # every frame once, in order
    for i, pose in answers:
        assert pose.shape == (17, 3) and pose.dtype == np.float32
        np.testing.assert_allclose(pose, expected[i], **TOL, err_msg=f"frame {i}")


@pytest.mark.parametrize("frames, joints, target", [(8, 17, "centre"), (8, 15, "last"), (8, 15, "centre")])
def test_stream_equals_offline_for_even_windows_and_15_joints(frames, joints, target):
    model = _model(target, num_frames=frames, num_joints=joints)  # even T: target at T // 2
    kp = _keypoints(19, joints, seed=3)
    expected = lift_sequence(model, kp)
    answers = _stream(StreamingLifter(model), kp)
    assert [i for i, _ in answers] == list(range(19))
    np.testing.assert_allclose(np.stack([p for _, p in answers]), expected, **TOL)


def test_answer_timing_delay_and_unpadded_windows():
    kp = _keypoints(14)
    centre, causal = _model("centre"), _model("last")
    assert StreamingLifter(centre).delay == 4 and StreamingLifter(causal).delay == 0
    lifter = StreamingLifter(centre)
    assert [lifter.push(f) is None for f in kp[:5]] == [True] * 4 + [False]  # frame 0 once frame 4 is in
    # pad=None: only windows of T real frames, nothing padded at either end
    expected = lift_sequence(centre, kp)
    lifter = StreamingLifter(centre, pad=None)
    answers = [lifter.push(f) for f in kp]
    assert [a is None for a in answers] == [True] * 8 + [False] * 6
    np.testing.assert_allclose(np.stack(answers[8:]), expected[4:10], **TOL)
    assert lifter.flush().shape == (0, 17, 3)
    causal_expected = lift_sequence(causal, kp)
    lifter = StreamingLifter(causal, pad=None)
    answers = [lifter.push(f) for f in kp]
    assert [a is None for a in answers] == [True] * 8 + [False] * 6
    np.testing.assert_allclose(np.stack(answers[8:]), causal_expected[8:], **TOL)


def test_spatial_stage_runs_once_per_frame_with_the_cache():
    model = _model()
    kp = _keypoints(30)
    for cache, expected_rows in ((True, 30), (False, 30 * 9)):  # without: every window, every frame
        lifter = StreamingLifter(model, spatial_cache=cache)
        rows = []
        lifter.model.spatial_blocks[0].register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
        _stream(lifter, kp)
        assert sum(rows) == expected_rows, cache


def test_reset_starts_a_new_sequence_and_flush_ends_one():
    model = _model()
    a, b = _keypoints(12, seed=1), _keypoints(12, seed=2)
    expected = lift_sequence(model, b)
    lifter = StreamingLifter(model)
    for frame in a[:7]:
        lifter.push(frame)
    lifter.reset()
    assert lifter.frames_pushed == 0
    np.testing.assert_allclose(np.stack([p for _, p in _stream(lifter, b)]), expected, **TOL)
    # flush reset it too: the same lifter lifts the next sequence from scratch
    np.testing.assert_allclose(np.stack([p for _, p in _stream(lifter, b)]), expected, **TOL)


def test_separate_lifters_in_separate_threads():
    model = _model("last")
    sequences = [_keypoints(20, seed=s) for s in range(3)]
    expected = [lift_sequence(model, kp) for kp in sequences]
    results = [None] * 3

    def run(k):
        results[k] = np.stack([p for _, p in _stream(StreamingLifter(model), sequences[k])])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, **TOL)


# -- missed joints ----------------------------------------------------------------------------

def test_missed_joints_hold_the_last_detection_as_offline_after_a_last_detection():
    model = _model("last")
    kp = _keypoints(16)
    confidence = np.ones((16, 17, 1))
    kp[10:, 5] = np.nan        # joint 5 lost for good: offline holds frame 9's value too
    confidence[12:, 7] = 0.1   # joint 7 scored low from frame 12 on
    frames = np.concatenate([kp, confidence], -1)
    offline, info = prepare_keypoints(frames, "h36m", normalized=True, min_confidence=0.5)
    assert info["filled"] == 6 + 4
    expected = lift_sequence(model, offline)
    lifter = StreamingLifter(model, min_confidence=0.5)
    got = [lifter.push(f) for f in frames]
    np.testing.assert_allclose(np.stack(got), expected, **TOL)
    np.testing.assert_array_equal(lifter.last_input[[5, 7]], offline[-1, [5, 7]])
    assert lifter.held_joints == (5, 7) and lifter.guessed_joints == ()
    assert lifter.missed_counts == {"held": 10, "guessed": 0}


def test_inner_gaps_are_filled_from_the_past_only():
    model = _model("last")
    kp = _keypoints(12)
    kp[4:7, 2] = np.nan  # offline would interpolate towards frame 7; a stream cannot see it
    past_only = kp.copy()
    past_only[4:7, 2] = kp[3, 2]
    expected = lift_sequence(model, past_only)
    np.testing.assert_allclose(np.stack([StreamingLifter(model).push(f) for f in kp[:1]]), expected[:1], **TOL)
    lifter = StreamingLifter(model)
    np.testing.assert_allclose(np.stack([lifter.push(f) for f in kp]), expected, **TOL)


def test_a_joint_never_seen_is_placed_at_the_fitted_mean_pose_and_flagged():
    model = _model("last")
    prior = mean_pose_h36m()
    assert prior.shape == (17, 2) and np.all(prior[0] == 0) and np.ptp(prior[:, 1]) > 0.3
    person = prior * 2.0 + np.array([0.3, -0.1])  # the mean pose, twice as large, shifted
    frame = person.copy()
    frame[[3, 16]] = np.nan
    lifter = StreamingLifter(model)
    lifter.push(frame)
    assert lifter.guessed_joints == (3, 16) and lifter.held_joints == ()
    np.testing.assert_allclose(lifter.last_input, person, atol=1e-5)  # fitted: shift and scale
    lifter.push(person + 0.01)  # seen now
    assert lifter.guessed_joints == ()
    gone = person.copy()
    gone[3] = np.nan
    lifter.push(gone)
    assert lifter.held_joints == (3,)  # from now on it holds its detection
    np.testing.assert_allclose(lifter.last_input[3], person[3] + 0.01, atol=1e-6)
    assert lifter.missed_counts == {"held": 1, "guessed": 2}
    # a 15-joint model has no bundled mean pose: the centroid of the joints present
    lifter = StreamingLifter(_model("last", num_joints=15))
    frame = _keypoints(1, 15)[0]
    frame[0] = np.nan
    lifter.push(frame)
    np.testing.assert_allclose(lifter.last_input[0], frame[1:].mean(0), atol=1e-6)


def test_coco_pixels_map_and_normalise_as_offline():
    model = _model("centre")
    rng = np.random.default_rng(4)
    coco = np.concatenate([rng.uniform(100, 900, (20, 17, 2)), rng.uniform(0.5, 1, (20, 17, 1))], -1)
    coco[15:, 9, 2] = 0.05  # a wrist lost at the end: both hold it
    inputs, _ = prepare_keypoints(coco, "coco", 1000, 800, min_confidence=0.3)
    expected = lift_sequence(model, inputs, flip_symmetry=FLIP)
    lifter = StreamingLifter(model, layout="coco", width=1000, height=800, min_confidence=0.3, flip_symmetry=FLIP)
    answers = _stream(lifter, coco)
    np.testing.assert_allclose(np.stack([p for _, p in answers]), expected, **TOL)


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("frame, message", [
    (np.zeros((15, 2)), r"keypoints_2d: got shape \(15, 2\), expected \(17, 2\) or \(17, 3\)"),
    (np.zeros((17, 4)), r"got shape \(17, 4\)"),
    (np.zeros(34), r"got shape \(34,\)"),
    (np.zeros((1, 17, 2)), r"got shape \(1, 17, 2\)"),
    ([["a", "b"]] * 17, "keypoints_2d: got a list that is not a numeric array"),
    (np.concatenate([np.zeros((17, 2)), np.full((17, 1), 0.9)], -1) * [1, 1, np.nan], "confidence of joint 0"),
    (np.concatenate([np.zeros((17, 2)), [[0.9]] * 16 + [[np.inf]]], -1),
     r"confidence of joint 16 \(RWrist\) is inf \(1 joint\(s\) non-finite\), expected a finite number"),
])
def test_a_rejected_frame_names_the_argument_and_leaves_the_state_unchanged(frame, message):
    model = _model("centre")
    kp = _keypoints(12)
    kp[6:, 4] = np.nan  # state worth keeping: a held joint
    expected = _stream(StreamingLifter(model), kp)
    lifter = StreamingLifter(model)
    answers = []
    for n, good in enumerate(kp):
        if n in (0, 7):
            with pytest.raises(ValueError, match=message):
                lifter.push(frame)
            assert lifter.frames_pushed == n
        pose = lifter.push(good)
        if pose is not None:
            answers.append((n - lifter.delay, pose))
    answers += [(12 - 4 + k, p) for k, p in enumerate(lifter.flush())]
    assert [i for i, _ in answers] == [i for i, _ in expected]
    np.testing.assert_array_equal(np.stack([p for _, p in answers]), np.stack([p for _, p in expected]))


def test_bad_arguments_name_the_argument():
    centre, causal = _model("centre"), _model("last")
    with pytest.raises(ValueError, match=r"target: got 'centre', but the model was trained with target_frame="
                                         r"'last', a causal model .* expected target='last'"):
        StreamingLifter(causal, target="centre")
    with pytest.raises(ValueError, match=r"target: got 'last', but .* target_frame='centre'.*--target-frame last"):
        StreamingLifter(centre, target="last")
    assert StreamingLifter(causal, target="last").delay == 0
    with pytest.raises(ValueError, match=r"target: got 'middle', expected one of"):
        StreamingLifter(centre, target="middle")
    with pytest.raises(ValueError, match="pad: got 'zero'"):
        StreamingLifter(centre, pad="zero")
    with pytest.raises(ValueError, match="layout: got 'coco' for a model with num_joints=15"):
        StreamingLifter(_model(num_joints=15), layout="coco")
    with pytest.raises(ValueError, match="width/height: got width=640, height=None"):
        StreamingLifter(centre, width=640)
    with pytest.raises(ValueError, match=r"mean_pose: got shape \(15, 2\), expected finite \(17, 2\)"):
        StreamingLifter(centre, mean_pose=np.zeros((15, 2)))
    with pytest.raises(ValueError, match="model: got Linear"):
        StreamingLifter(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend: unknown backend 'fast'"):
        StreamingLifter(centre, backend="fast")


# -- the causal model trains, evaluates and infers ---------------------------------------------

TINY = ["--preset", "h36m-9", "--embed-dim", "8", "--heads", "4", "--spatial-depth", "1",
        "--temporal-depth", "1", "--kernel-sizes", "3", "--backend", "torch", "--no-progress"]


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("h36m")
    write_synthetic_h36m(data, subjects=["S1", "S9"], actions=["Walking"], num_frames=30)
    out = tmp_path_factory.mktemp("run")
    built = []

    class Recorded(PoseWindowDataset):  # the training windows themselves must be causal
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "PoseWindowDataset", Recorded)
        assert main(["train", "--data-dir", str(data), *TINY, "--target-frame", "last", "--epochs", "1",
                     "--batch-size", "16", "--max-batches", "2", "--out", str(out)]) == 0
    assert [d.target_frame for d in built] == ["last"]
    inputs, target, _, _ = built[0][0]  # the first target frame: its window is frame 0 repeated
    assert np.all(inputs == inputs[-1:])
    return data, out


def _user_error(capsys, pattern: str, code: int) -> str:
    """The CLI's convention (docs/cli.md): exit code 2 and one line on stderr matching
    ``pattern``; returns what went to stdout."""
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and re.search(pattern, captured.err), captured.err
    return captured.out


def test_causal_training_eval_and_infer(causal_run, capsys, tmp_path):
    data, out = causal_run
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["config"]["target_frame"] == "last"
    _user_error(capsys, "target_frame: checkpoint has 'last', model has 'centre'",
                main(["train", "--data-dir", str(data), *TINY, "--target-frame", "centre", "--epochs", "2",
                "--resume", str(out / "last.pt")]))
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-dir", str(data), "--backend", "torch"]) == 0
    assert "target frame last" in capsys.readouterr().out
    # infer cuts causal windows: the plain model on past-only windows gives the same poses
    kp = _keypoints(11, seed=5)
    np.save(tmp_path / "kp.npy", kp)
    assert main(["infer", "--keypoints", str(tmp_path / "kp.npy"), "--checkpoint", str(out / "last.pt"),
                 "--out", str(tmp_path / "poses.npy"), "--normalized", "--layout", "h36m", "--no-flip-tta",
                 "--backend", "torch"]) == 0
    model = cf.ConvFormerFast(**{**checkpoint["config"], "kernel_sizes": (3,)}, backend="torch")
    model.load_state_dict(checkpoint["model"])
    windows = np.stack([extract_window(kp, c, 9, "last") for c in range(11)])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(windows))[:, 0].numpy()
    expected[:, 0] = 0
    np.testing.assert_allclose(np.load(tmp_path / "poses.npy"), expected, **TOL)


# -- infer --stream ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(7)
    coco = np.concatenate([rng.uniform(100, 900, (24, 17, 2)), rng.uniform(0.6, 1, (24, 17, 1))], -1)
    coco[20:, 3, 2] = 0.1  # a trailing gap, filled alike online and offline
    np.save(root / "walk.npy", coco)
    return root, coco, save_checkpoint(root / "centre.pt", _model("centre")), \
        save_checkpoint(root / "causal.pt", _model("last"))


def _offline(root, checkpoint, name):
    out = root / f"{name}.npy"
    assert main(["infer", "--keypoints", str(root / "walk.npy"), "--checkpoint", str(checkpoint), "--out",
                 str(out), "--width", "1000", "--height", "1000", "--min-confidence", "0.3",
                 "--backend", "torch"]) == 0
    return np.load(out)


def _read_jsonl(text):
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r["frame"] for r in rows], np.array([r["pose"] for r in rows])


@pytest.mark.parametrize("which, pacing", [("centre", ["--unpaced"]), ("causal", ["--fps", "400"])])
def test_infer_stream_from_a_file_equals_offline_infer(files, which, pacing, capsys):
    root, _, centre, causal = files
    checkpoint = centre if which == "centre" else causal
    expected = _offline(root, checkpoint, f"offline_{which}")
    capsys.readouterr()
    out = root / f"{which}.jsonl"
    assert main(["infer", "--stream", *pacing, "--keypoints", str(root / "walk.npy"), "--checkpoint",
                 str(checkpoint), "--out", str(out), "--width", "1000", "--height", "1000",
                 "--min-confidence", "0.3", "--backend", "torch"]) == 0
    frames, poses = _read_jsonl(out.read_text())
    assert frames == list(range(24))
    np.testing.assert_allclose(poses, expected, rtol=1e-4, atol=2e-5)
    report = capsys.readouterr().out
    live = 24 if which == "causal" else 20
    assert "24 frames streamed" in report and f"-> {live} poses as they came + {24 - live} at the end" in report
    assert "median" in report and "p99" in report and "sustained" in report and "fps" in report
    if which == "causal":
        return
    # .npy output and --render still work
    assert main(["infer", "--stream", "--unpaced", "--keypoints", str(root / "walk.npy"), "--checkpoint",
                 str(checkpoint), "--out", str(root / "s.npy"), "--width", "1000", "--height", "1000",
                 "--min-confidence", "0.3", "--render", str(root / "s.gif"), "--render-frames", "3",
                 "--backend", "torch"]) == 0
    np.testing.assert_allclose(np.load(root / "s.npy"), expected, rtol=1e-4, atol=1e-5)
    from PIL import Image
    with Image.open(root / "s.gif") as image:
        assert image.n_frames == 3


def test_infer_stream_from_a_pipe_answers_before_the_stream_ends(files):
    """A detector stand-in writes one line per frame; with a causal model each pose comes back
    before the next frame is written."""
    root, coco, _, causal = files
    expected = _offline(root, causal, "offline_pipe")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the command flushes, not Python
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "convformer_fast.cli", "infer", "--stream", "--keypoints", "-", "--checkpoint",
         str(causal), "--out", "-", "--width", "1000", "--height", "1000", "--min-confidence", "0.3",
         "--backend", "torch", "--threads", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    watchdog = threading.Timer(180, proc.kill)  # a pose that never comes fails the test instead of hanging it
    watchdog.start()
    try:
        rows = []
        for frame in coco:
            proc.stdin.write(json.dumps(frame.tolist()) + "\n")
            proc.stdin.flush()
            rows.append(json.loads(proc.stdout.readline()))  # blocks until the pose is out
        rest, report = proc.communicate(timeout=120)  # closes stdin: the end of the stream
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0, report
    assert rest.strip() == ""  # nothing left for the end: a causal model has no look-ahead
    assert [r["frame"] for r in rows] == list(range(24))
    np.testing.assert_allclose(np.array([r["pose"] for r in rows]), expected, rtol=1e-4, atol=2e-5)
    assert "24 frames streamed (as they came on stdin)" in report and "p99" in report


def test_infer_stream_bad_input_names_the_line(files, monkeypatch, capsys):
    root, coco, centre, causal = files
    lines = [json.dumps(f.tolist()) for f in coco[:3]]
    args = ["infer", "--stream", "--keypoints", "-", "--checkpoint", str(causal), "--out", "-",
            "--width", "1000", "--height", "1000", "--backend", "torch"]

    def run_with(stdin):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(args)

    answered = _user_error(capsys, r"stdin: the stream ended in the middle of line 4 \(got '\[\[.*' and "
                                   r"no newline\), expected whole lines",
                           run_with("\n".join(lines) + "\n" + lines[0][:40]))
    assert len(answered.splitlines()) == 3  # the frames before it were answered
    _user_error(capsys, r"stdin line 2: got '\{\"x\": 1', not JSON \(Expecting .* column 8\)", run_with(lines[0] + "\n{\"x\": 1\n"))
    _user_error(capsys, r"stdin frame 2: keypoints_2d: got a dict that is not a numeric array", run_with(lines[0] + "\n{\"x\": 1}\n"))
    _user_error(capsys, r"stdin frame 3: keypoints_2d: got shape \(16, 3\), expected \(17, 2\)", run_with(lines[0] + "\n\n" + json.dumps(coco[0, :16].tolist()) + "\n"))
    _user_error(capsys, r"stdin frame 2: keypoints_2d: confidence of joint 0 \(nose\) is nan", run_with(lines[0] + "\n" + json.dumps(np.where(np.arange(3) == 2, np.nan, coco[0]).tolist()) + "\n"))
    assert run_with(lines[0] + "\n" + lines[1]) == 0  # a last line without newline, but whole, is fine
    capsys.readouterr()
    _user_error(capsys, "--out: got 'p.npz' with --stream, expected '-'", main(args[:7] + ["p.npz"] + args[8:]))
    _user_error(capsys, r"--width/--height: got none", main(args[:8]))
    _user_error(capsys, r"--keypoints: got '-' \(stdin\) without --stream", main(args[:1] + args[2:]))
    bad = root / "bad.npy"
    np.save(bad, np.zeros((5, 15, 2)))
    _user_error(capsys, r"holds shape \(5, 15, 2\), expected \(frames, 17, 2\)",
                main(["infer", "--stream", "--keypoints", str(bad), "--checkpoint", str(causal), "--out", "-",
                "--normalized"]))
