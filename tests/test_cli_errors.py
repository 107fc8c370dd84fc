"""The error convention of every ``convformer-fast`` command (docs/cli.md).

A user error (bad argument, number out of range, missing or damaged file, unwritable
output, unavailable backend or device) prints exactly one line
``convformer-fast <command>: error: ...`` on stderr and exits with 2, without a traceback
unless ``--debug`` or CONVFORMER_FAST_DEBUG asks for one; an internal bug keeps its
traceback and exits with 1; Ctrl-C exits with 130 (tests/test_interrupted_training.py); a
stdout closed early ends quietly with 141. Degenerate but valid inputs (one frame,
keypoints on the border, confidences equal to the threshold, ``--epochs 0``) work.

Cost: about 25 s on 2 busy cores (three subprocesses; the rest in-process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convformer_fast import ConvFormerFast
from convformer_fast.cli import app
from convformer_fast.cli.app import main
from convformer_fast.pose.checkpoint import save_checkpoint
from convformer_fast.pose.data import write_synthetic_h36m

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "h36m-9", "--embed-dim", "8", "--heads", "4", "--spatial-depth", "1",
        "--temporal-depth", "1", "--kernel-sizes", "3", "--backend", "torch", "--no-progress",
        "--no-tensorboard", "--threads", "1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of one in-process run; argparse's own exit included."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(argv, capsys, *expected: str) -> str:
    code, _, err = run_cli(argv, capsys)
    command = argv[0]
    assert code == 2, f"exit {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"convformer-fast {command}: error: "), lines[0]
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint, keypoints and a synthetic Human3.6M folder."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = ConvFormerFast(
        num_frames=9, num_joints=17, embed_dim=8, spatial_depth=1, temporal_depth=1, kernel_sizes=(3,),
        num_heads=4, backend="torch")
    checkpoint = save_checkpoint(root / "model.pt", model)
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(0, 640, (20, 17, 2)), rng.uniform(0.5, 1, (20, 17, 1))], -1)
    np.save(root / "walk.npy", keypoints.astype(np.float32))
    write_synthetic_h36m(root / "h36m", subjects=["S1", "S9"], actions=["Walking"], num_frames=20)
    return root, checkpoint


def infer_args(files, **overrides) -> list[str]:
    root, checkpoint = files
    options = {"--keypoints": str(root / "walk.npy"), "--checkpoint": str(checkpoint),
               "--out": str(root / "poses.npy"), "--width": "640", "--height": "480", "--backend": "torch"}
    options.update(overrides)
    return ["infer"] + [x for k, v in options.items() if v is not None for x in ((k,) if v == "" else (k, v))]


# ---------------------------------------------------------------------------------------
# Numbers out of range, at parse time, for every command
# ---------------------------------------------------------------------------------------

RANGE_CASES = [
    (["check", "--batch", "0"], "--batch: got '0', expected an integer >= 1"),
    (["check", "--batch", "x"], "--batch: got 'x'"),
    (["bench", "--batch", "-2"], "--batch: got '-2'"),
    (["bench", "--threads", "0"], "--threads: got '0'"),
    (["bench", "--warmup", "0"], "--warmup"),
    (["bench", "--repeats", "1.5"], "--repeats: got '1.5'"),
    (["bench", "--min-sample-ms", "nan"], "--min-sample-ms: got 'nan', expected a finite number > 0"),
    (["bench", "--matmul-size", "0"], "--matmul-size"),
    (["flops", "--batch", "0"], "--batch"),
    (["kernels", "--jobs", "0"], "--jobs: got '0'"),
    (["train", "--epochs", "-1"], "--epochs: got '-1', expected an integer >= 0"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr: got '0', expected a finite number > 0"),
    (["train", "--lr", "inf"], "--lr: got 'inf'"),
    (["train", "--lr-decay", "0"], "--lr-decay: got '0', expected a finite number in (0, 1]"),
    (["train", "--lr-decay", "1.5"], "--lr-decay"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay"),
    (["train", "--drop-path", "1"], "--drop-path: got '1', expected a finite number in [0, 1)"),
    (["train", "--agg-dropout", "-0.5"], "--agg-dropout"),
    (["train", "--kernel-sizes", "3", "4"], "--kernel-sizes: got '4', expected an odd integer >= 1"),
    (["train", "--frames", "0"], "--frames"),
    (["train", "--embed-dim", "0"], "--embed-dim"),
    (["train", "--heads", "0"], "--heads"),
    (["train", "--spatial-depth", "-1"], "--spatial-depth"),
    (["train", "--mlp-ratio", "0"], "--mlp-ratio"),
    (["train", "--stride", "0"], "--stride"),
    (["train", "--synthetic-frames", "0"], "--synthetic-frames"),
    (["train", "--max-batches", "0"], "--max-batches"),
    (["train", "--seed", "-1"], "--seed: got '-1', expected an integer in [0, 4294967295]"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--eval-stride", "0"], "--eval-stride"),
    (["train", "--eval-batch-size", "0"], "--eval-batch-size"),
    (["eval", "--checkpoint", "x.pt", "--stride", "0"], "--stride"),
    (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size"),
    (["eval", "--checkpoint", "x.pt", "--threads", "-3"], "--threads"),
    (["infer", "--keypoints", "k.npy", "--checkpoint", "c.pt", "--out", "o.npy", "--batch-size", "0"],
     "--batch-size: got '0', expected an integer >= 1"),
    (["infer", "--keypoints", "k.npy", "--checkpoint", "c.pt", "--out", "o.npy", "--fps", "0"], "--fps"),
    (["infer", "--keypoints", "k.npy", "--checkpoint", "c.pt", "--out", "o.npy", "--min-confidence", "-1"],
     "--min-confidence"),
    (["infer", "--keypoints", "k.npy", "--checkpoint", "c.pt", "--out", "o.npy", "--width", "0"], "--width"),
    (["infer", "--keypoints", "k.npy", "--checkpoint", "c.pt", "--out", "o.npy", "--height", "nan"], "--height"),
    (["infer", "--keypoints", "k.npy", "--checkpoint", "c.pt", "--out", "o.npy", "--render-frames", "0"],
     "--render-frames"),
    (["info", "--bogus"], "unrecognized arguments: --bogus"),
    (["check", "--preset", "nope"], "invalid choice: 'nope'"),
]


@pytest.mark.parametrize("argv, expected", RANGE_CASES, ids=[" ".join(a[:3]) for a, _ in RANGE_CASES])
def test_numbers_out_of_range_fail_at_parse_time(argv, expected, capsys):
    assert_user_error(argv, capsys, expected)


def test_every_numeric_option_is_range_checked():
    """No command has an ``int`` / ``float`` option left without a range."""
    unchecked = []
    parser = app.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            if action.type in (int, float):
                unchecked.append(f"{name} {action.option_strings[0]}")
    assert not unchecked, f"options without a Range type: {unchecked}"


# ---------------------------------------------------------------------------------------
# Errors found while running: files, devices, backends, outputs
# ---------------------------------------------------------------------------------------

def test_bench_flops_and_kernels_bad_values(capsys, tmp_path):
    assert_user_error(["bench", "--plot", "chart.xyz"], capsys, "--plot: got 'chart.xyz'", ".png")
    assert_user_error(["bench", "--device", "tpu"], capsys, "device 'tpu' is not available here")
    assert_user_error(["flops", "--backend", "nope"], capsys, "unknown backend 'nope'")
    assert_user_error(["kernels", "--only", "foo"], capsys, "--only: got 'foo'")
    assert_user_error(["kernels", "--batch", "0"], capsys, "--batch must be >= 1")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # an output that cannot be written fails before the work, not after it
    assert_user_error(["bench", "--json", str(blocker / "r.json")], capsys, "--json", "not a writable folder")
    assert_user_error(["flops", "--json", str(tmp_path)], capsys, "--json", "is a directory")
    assert_user_error(["kernels", "--markdown", str(blocker / "k.md")], capsys, "--markdown")


def test_train_run_time_user_errors(files, capsys, tmp_path):
    root, _ = files
    data = ["--data-dir", str(root / "h36m")]
    assert_user_error(["train", *data, *TINY, "--embed-dim", "6"], capsys,
                      "model options:", "num_heads: embed_dim = 6 is not divisible by num_heads = 4")
    assert_user_error(["train", *data, *TINY, "--resume", str(tmp_path / "missing.pt")], capsys,
                      "missing.pt: checkpoint file not found")
    assert_user_error(["train", "--data-dir", str(tmp_path / "none"), *TINY, "--out", str(tmp_path)], capsys,
                      "data_3d_h36m.npz: file not found")
    assert_user_error(["train", *data, *TINY, "--synthetic", "--keypoints", "cpn"], capsys,
                      "--keypoints: got 'cpn' with --synthetic, expected 'gt'")
    assert_user_error(["train", *data, *TINY, "--actions", "Boxing"], capsys,
                      "data_3d_h36m.npz, key 'positions_3d': no action selected by actions=['Boxing']")
    assert_user_error(["train", *data, *TINY[:-6], "--backend", "nope"], capsys, "unknown backend 'nope'")
    assert_user_error(["train", *data, *TINY, "--device", "tpu"], capsys, "--device: got 'tpu'")
    if not torch.cuda.is_available():
        assert_user_error(["train", *data, *TINY, "--device", "cuda:0"], capsys,
                          "--device: 'cuda:0' is not available here; available: auto, cpu")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(["train", *data, *TINY, "--epochs", "1", "--max-batches", "1", "--batch-size", "4",
                       "--no-eval", "--out", str(blocker / "run")], capsys, "a-file")


def test_eval_and_infer_bad_files(files, capsys, tmp_path):
    root, checkpoint = files
    damaged = tmp_path / "damaged.pt"
    data = bytearray(Path(checkpoint).read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert_user_error(["eval", "--checkpoint", str(damaged), "--data-dir", str(root / "h36m")], capsys,
                      "damaged.pt: corrupted: record")
    assert_user_error(infer_args(files, **{"--checkpoint": str(damaged)}), capsys, "damaged.pt")
    text = tmp_path / "keypoints.npy"
    text.write_text("x,y\n1,2\n")
    assert_user_error(infer_args(files, **{"--keypoints": str(text)}), capsys, "keypoints.npy: not a NumPy array")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert_user_error(infer_args(files, **{"--keypoints": str(objects)}), capsys,
                      "holds pickled Python objects (dtype object), which are not loaded")
    missed = tmp_path / "missed.npy"
    np.save(missed, np.full((5, 17, 2), np.nan))
    assert_user_error(infer_args(files, **{"--keypoints": str(missed)}), capsys,
                      "missed.npy (missed): keypoints: joint 0 (Pelvis) is missing")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 15, 2)))
    assert_user_error(infer_args(files, **{"--keypoints": str(wrong)}), capsys, "got shape (5, 15, 2)")
    complex_ = tmp_path / "complex.npy"
    np.save(complex_, np.zeros((5, 17, 2), np.complex64))
    assert_user_error(infer_args(files, **{"--keypoints": str(complex_)}), capsys, "got dtype complex64")
    assert_user_error(infer_args(files, **{"--keypoints": str(tmp_path / "none.npy")}), capsys,
                      "none.npy: file not found")
    assert_user_error(infer_args(files, **{"--out": str(tmp_path / "poses.txt")}), capsys,
                      "--out: got", "expected a .npy or .npz file")
    assert_user_error(infer_args(files, **{"--render": str(tmp_path / "anim.png")}), capsys,
                      "--render: got", ".gif or .mp4")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(infer_args(files, **{"--out": str(blocker / "poses.npy")}), capsys,
                      "--out", "poses.npy: cannot be written", "a-file is not a writable folder")


def test_a_failed_write_keeps_the_old_file(files, capsys, tmp_path, monkeypatch):
    """infer writes through the atomic writer: when writing fails half-way, the previous
    poses file is untouched and no temporary file is left."""
    out = tmp_path / "poses.npy"
    assert run_cli(infer_args(files, **{"--out": str(out)}), capsys)[0] == 0
    before = out.read_bytes()

    def fail_half_way(handle, array, *args, **kwargs):
        handle.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", fail_half_way)
    assert_user_error(infer_args(files, **{"--out": str(out)}), capsys,
                      "poses.npy: cannot be written (No space left on device)")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.npy"]


# ---------------------------------------------------------------------------------------
# --debug, internal bugs, a closed pipe
# ---------------------------------------------------------------------------------------

def test_debug_flag_and_environment_variable_add_the_traceback(files, capsys, monkeypatch, tmp_path):
    argv = infer_args(files, **{"--keypoints": str(tmp_path / "none.npy")})
    for extra, env in (([], None), (["--debug"], None), ([], "1")):
        if env:
            monkeypatch.setenv(app.DEBUG_ENV_VAR, env)
        code, _, err = run_cli(argv + extra, capsys)
        assert code == 2
        assert ("Traceback" in err) == bool(extra or env), err
        assert err.strip().splitlines()[-1].startswith("convformer-fast infer: error: ")
    code, _, err = run_cli(["--debug"] + argv, capsys)  # before the command name too
    assert code == 2 and "Traceback" in err


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(app, "cmd_info", lambda args: {}["a bug"])
    with pytest.raises(KeyError):
        main(["info"])


def _python(code: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def test_internal_bug_exits_1_with_traceback_and_user_error_exits_2_in_a_process():
    bug = _python("import sys; from convformer_fast.cli import app; app.cmd_info = lambda a: 1 / 0; "
                  "sys.exit(app.main(['info']))")
    _, err = bug.communicate(timeout=300)
    assert bug.returncode == 1 and b"Traceback" in err and b"ZeroDivisionError" in err
    user = _python("import sys; from convformer_fast.cli.app import main; "
                   "sys.exit(main(['infer', '--keypoints', 'none.npy', '--checkpoint', 'none.pt', "
                   "'--out', 'o.npy', '--normalized']))")
    _, err = user.communicate(timeout=300)
    assert user.returncode == 2 and err.decode().count("\n") == 1 and b"Traceback" not in err, err


def test_closed_stdout_ends_quietly():
    """`convformer-fast info | head -0`: the reader is gone before the output is flushed."""
    process = _python("import sys; from convformer_fast.cli.app import main; sys.exit(main(['info']))")
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert process.returncode == app.EXIT_BROKEN_PIPE, err
    assert err == b"", err


# ---------------------------------------------------------------------------------------
# Degenerate but valid inputs
# ---------------------------------------------------------------------------------------

def test_one_frame_border_keypoints_and_threshold_confidences(files, capsys, tmp_path):
    width, height = 640, 480
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, :, 0] = np.linspace(0, width, 17)  # x = 0 ... x = width: both borders
    kp[0, ::2, 1] = height
    kp[..., 2] = 0.4  # every confidence equal to --min-confidence
    one = tmp_path / "one.npy"
    np.save(one, kp)
    out = tmp_path / "one_poses.npy"
    assert run_cli(infer_args(files, **{"--keypoints": str(one), "--out": str(out),
                                        "--min-confidence": "0.4"}), capsys)[0] == 0
    poses = np.load(out)
    assert poses.shape == (1, 17, 3) and np.isfinite(poses).all()
    # the same frame as a (17, 3) array is one frame too
    np.save(one, kp[0])
    assert run_cli(infer_args(files, **{"--keypoints": str(one), "--out": str(out),
                                        "--min-confidence": "0.4"}), capsys)[0] == 0
    np.testing.assert_array_equal(np.load(out), poses)
    # a hair above the threshold: every keypoint is missed, which is an error naming a joint
    assert_user_error(infer_args(files, **{"--keypoints": str(one), "--out": str(out),
                                           "--min-confidence": "0.41"}), capsys, "is missing")


def test_video_shorter_than_the_receptive_field(files, capsys, tmp_path):
    root, _ = files
    short = tmp_path / "short.npy"
    np.save(short, np.load(root / "walk.npy")[:3])  # 3 frames, T = 9
    out = tmp_path / "short_poses.npy"
    assert run_cli(infer_args(files, **{"--keypoints": str(short), "--out": str(out)}), capsys)[0] == 0
    assert np.load(out).shape == (3, 17, 3)


def test_zero_epochs_evaluates_the_initial_model_and_writes_nothing(files, capsys, tmp_path):
    root, _ = files
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", "--data-dir", str(root / "h36m"), *TINY, "--epochs", "0",
                                 "--out", str(out)], capsys)
    assert code == 0, err
    assert "nothing to train (--epochs 0): evaluating the model as it stands; no file is written" in stdout
    assert "epoch 0  test MPJPE" in stdout and not out.exists()
