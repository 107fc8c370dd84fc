"""Video inference: ``convformer-fast infer --keypoints 2d.npy --checkpoint best.pt --out poses.npy``.

Input keypoints, either

* ``.npy``: ``(frames, 17, 2)`` or ``(frames, 17, 3)`` (x, y, confidence) of one video, in
  pixels (give ``--width``/``--height``) or normalised (``--normalized``); COCO-17 order
  (what 2D detectors give; mapped to Human3.6M-17) unless ``--layout h36m``; or
* ``data_2d_custom_<name>.npz`` in the VideoPose3D layout (``positions_2d[video]['custom']``
  and per-video ``w``/``h`` in the metadata); the metadata's ``layout_name`` says COCO or
  H36M. ``--video`` picks videos (default: all).

Missed detections (NaN, or confidence below ``--min-confidence``; a confidence equal to
it counts as detected) are interpolated over time (:mod:`convformer_fast.pose.keypoints`);
a joint never detected is rejected. Any length works, one frame included: every frame gets
its own edge-padded T-frame window, windows are batched, and the spatial ConvFormer runs
once per frame (:mod:`convformer_fast.pose.lifting`). Keypoints on the image border are
used as they are. The ``.npy`` input is read without unpickling anything.

Streaming (``--stream``, real time, :mod:`convformer_fast.pose.stream`): the frames are
lifted one by one as they arrive, from the file played at ``--fps`` (``--unpaced``: back to
back) or from stdin with ``--keypoints -`` (one JSON array ``[[x, y], ...]`` or ``[[x, y,
confidence], ...]`` per line, so a detector can pipe into it). Poses are written as they
come (``--out -``: JSON lines ``{"frame": i, "pose": [[x, y, z], ...]}`` on stdout;
``.jsonl``: the same into a file; ``.npy``: at the end), with per-frame latency (median,
p99) and sustained frames per second reported at the end. Missed keypoints hold their last
detection (a stream has no future to interpolate from); a joint not seen yet is placed at
the mean pose. A centre model answers frame ``i`` when frame ``i + T // 2`` arrives (the
last ``T // 2`` frames at the end of the stream); a causal model (``train --target-frame
last``) answers each frame at once. The poses equal the offline ones.

Output: ``(frames, 17, 3)`` float32 root-relative camera-frame poses in metres (the root
joint is 0), Human3.6M-17 order; ``.npy`` for one video, ``.npz`` (one key per video)
for several. ``--render out.gif`` / ``out.mp4`` animates the 2D input beside the 3D
skeleton (the first selected video).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Iterable, Iterator, Optional

import numpy as np

from .data.formats import read_npy
from .data.skeleton import H36M_17
from .keypoints import prepare_keypoints
from .stream import StreamingLifter, latency_summary
from ..atomic import atomic_open, check_writable, make_folder
from ..cli.args import (NON_NEGATIVE, POSITIVE, POSITIVE_INT, UsageError, add_runtime_arguments,
                        check_backend, resolve_device, set_threads)
from ..errors import InputError

__all__ = ["add_arguments", "read_keypoint_files", "load_videos", "run", "run_stream"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keypoints", required=True, help="2D keypoints: .npy (frames, 17, 2|3) or a "
                        "VideoPose3D data_2d_custom_<name>.npz; - (stdin) with --stream")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `convformer-fast train`")
    parser.add_argument("--out", required=True, help="poses.npy (one video) or poses.npz (several); with "
                        "--stream: - (stdout), poses.jsonl or poses.npy")
    parser.add_argument("--video", nargs="+", default=None, help="videos of a custom .npz (default: all)")
    parser.add_argument("--layout", choices=("auto", "coco", "h36m"), default="auto",
                        help="joint order of the input (auto: the .npz metadata, COCO for .npy)")
    parser.add_argument("--width", type=POSITIVE, default=None, help="image width in pixels (.npy input)")
    parser.add_argument("--height", type=POSITIVE, default=None, help="image height in pixels (.npy input)")
    parser.add_argument("--normalized", action="store_true", help="the .npy holds normalised coordinates")
    parser.add_argument("--min-confidence", type=NON_NEGATIVE, default=0.0,
                        help="keypoints with a lower confidence count as missed and are interpolated "
                             "(equal counts as detected)")
    parser.add_argument("--no-flip-tta", action="store_true", help="disable flip test-time augmentation")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=1024, help="windows per batch")
    parser.add_argument("--backend", default="auto")
    add_runtime_arguments(parser)
    parser.add_argument("--render", default=None, help="also write an animation: out.gif or out.mp4")
    parser.add_argument("--fps", type=POSITIVE, default=50.0,
                        help="frame rate of the video (for --render, and the rate --stream plays a file at)")
    parser.add_argument("--render-frames", type=POSITIVE_INT, default=None, help="render at most this many frames")
    stream = parser.add_argument_group("streaming (real time, see convformer_fast.pose.stream)")
    stream.add_argument("--stream", action="store_true",
                        help="lift frame by frame as frames arrive: --keypoints file.npy|.npz is played at "
                             "--fps, --keypoints - reads stdin (one JSON array [[x, y(, conf)], ...] per line); "
                             "poses are written as they come (--out - for JSON lines on stdout, .jsonl, "
                             "or .npy at the end); reports per-frame latency and sustained fps")
    stream.add_argument("--unpaced", action="store_true",
                        help="with --stream, play the file back to back instead of at --fps (throughput)")


def read_keypoint_files(args) -> list[dict]:
    """The selected videos as read: ``[{'name', 'keypoints' (F, 17, 2|3) as in the file,
    'layout' ('coco'/'h36m'), 'w', 'h', 'normalized'}]`` (nothing filled or normalised)."""
    path = args.keypoints
    if path.endswith(".npz"):
        from .data.custom import load_custom_2d
        videos, metadata = load_custom_2d(path)
        layout = metadata["layout_name"] if args.layout == "auto" else args.layout
        if layout not in ("coco", "h36m"):
            raise InputError(f"{path}: metadata layout_name is {layout!r}, expected 'coco' or 'h36m' "
                             "(or pass --layout)")
        names = args.video or list(videos)
        unknown = [n for n in names if n not in videos]
        if unknown:
            raise UsageError(f"--video: {unknown} not in {path}, expected some of {sorted(videos)}")
        return [dict(name=n, keypoints=videos[n]["keypoints"], layout=layout, w=videos[n]["w"],
                     h=videos[n]["h"], normalized=False) for n in names]
    if not args.normalized and (args.width is None or args.height is None):
        raise UsageError("--width/--height: got none, expected the image size in pixels for .npy "
                         "pixel keypoints (or pass --normalized)")
    array = read_npy(path, "2D keypoints (frames, 17, 2 or 3) as a NumPy .npy array")
    layout = "coco" if args.layout == "auto" else args.layout
    name = os.path.splitext(os.path.basename(path))[0]
    return [dict(name=name, keypoints=array, layout=layout, w=args.width, h=args.height,
                 normalized=args.normalized)]


def load_videos(args) -> list[dict]:
    """``[{'name', 'inputs' (F, 17, 2) normalised, 'pixels' or None, 'w', 'h', 'filled'}]``."""
    out = []
    for video in read_keypoint_files(args):
        name, w, h = video["name"], video["w"], video["h"]
        try:
            inputs, info = prepare_keypoints(video["keypoints"], video["layout"], w, h, video["normalized"],
                                             args.min_confidence)
        except InputError as exc:
            raise InputError(f"{args.keypoints} ({name}): {exc}") from None
        out.append(dict(name=name, inputs=inputs, pixels=info["pixels"], w=w, h=h, filled=info["filled"]))
    return out


def run(args) -> int:
    from .checkpoint import model_from_checkpoint
    from .evaluate import h36m_flip_symmetry
    from .lifting import lift_sequence

    set_threads(args.threads)
    if args.stream:
        return run_stream(args)
    if args.keypoints == "-":
        raise UsageError("--keypoints: got '-' (stdin) without --stream, expected a file (or add --stream)")
    if not (args.out.endswith(".npy") or args.out.endswith(".npz")):
        raise UsageError(f"--out: got {args.out!r}, expected a .npy or .npz file")
    if args.render and os.path.splitext(args.render)[1].lower() not in (".gif", ".mp4"):
        raise UsageError(f"--render: got {args.render!r}, expected a .gif or .mp4 file")
    if args.render:
        from .render import check_writer
        check_writer(args.render)
    check_writable(args.out, "--out")
    check_writable(args.render, "--render")
    device = resolve_device(args.device)
    if args.backend != "auto":
        check_backend(args.backend, device.type)
    videos = load_videos(args)
    if args.out.endswith(".npy") and len(videos) > 1:
        raise UsageError(f"--out: {len(videos)} videos ({[v['name'] for v in videos]}) need an .npz output "
                         "(or pick one with --video)")
    model = model_from_checkpoint(args.checkpoint, backend=args.backend, device=device)
    if model.num_joints != H36M_17.num_joints:
        raise UsageError(f"--checkpoint: model has num_joints={model.num_joints}, expected a "
                         f"{H36M_17.num_joints}-joint Human3.6M model for video keypoints")
    flip = None if args.no_flip_tta else h36m_flip_symmetry()
    results = {}
    for video in videos:
        poses = lift_sequence(model, video["inputs"], batch_size=args.batch_size, flip_symmetry=flip)
        poses[:, H36M_17.root] = 0.0
        results[video["name"]] = poses
        note = f", {video['filled']} missed keypoints interpolated" if video["filled"] else ""
        print(f"{video['name']}: {len(poses)} frames -> 3D (T={model.num_frames}, target frame "
              f"{model.target_frame}{note})")
    with atomic_open(args.out) as handle:
        if args.out.endswith(".npy"):
            np.save(handle, next(iter(results.values())))
        else:
            np.savez_compressed(handle, **results)
    print(f"wrote {args.out}: root-relative camera-frame poses in metres, Human3.6M-17 order")
    if args.render:
        from .render import render_animation
        video = videos[0]
        shown = video["pixels"] if video["pixels"] is not None else video["inputs"]
        render_animation(args.render, shown, results[video["name"]], width=video["w"] if video["pixels"] is not None
                         else None, height=video["h"] if video["pixels"] is not None else None,
                         fps=args.fps, title=video["name"], max_frames=args.render_frames)
        print(f"wrote {args.render}")
    return 0


# ------------------------------------------------------------------------ --stream


def json_lines(stream, name: str = "stdin") -> Iterator[tuple[int, object, float]]:
    """``(line number, parsed frame, arrival time)`` for each non-blank line of ``stream``,
    one JSON array per line; a line cut off by the end of the stream is an error."""
    for number, line in enumerate(stream, 1):
        arrival = time.perf_counter()
        text = line.strip()
        if not text:
            continue
        try:
            frame = json.loads(text)
        except json.JSONDecodeError as exc:
            shown = text if len(text) <= 60 else text[:57] + "..."
            if not line.endswith("\n"):
                raise InputError(f"--keypoints {name}: the stream ended in the middle of line {number} "
                                 f"(got {shown!r} and no newline), expected whole lines, one JSON array "
                                 "[[x, y(, confidence)], ...] per frame") from None
            raise InputError(f"--keypoints {name} line {number}: got {shown!r}, not JSON ({exc.msg} at "
                             f"column {exc.colno}); expected one JSON array [[x, y(, confidence)], ...] per "
                             "line") from None
        yield number, frame, arrival


def played(frames: np.ndarray, fps: Optional[float]) -> Iterator[tuple[int, np.ndarray, float]]:
    """``(frame number, frame, arrival time)``: a file's frames arriving at ``fps`` (a
    frame's arrival is when it is due, so a lifter that falls behind sees its queue in the
    latency), or back to back with ``fps=None``."""
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        if fps is None:
            yield i + 1, frame, time.perf_counter()
            continue
        due = start + i / fps
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        yield i + 1, frame, due


class _PoseWriter:
    """Poses as they come: JSON lines (``-``: stdout, ``.jsonl``) written and flushed per
    pose; ``.npy`` gathered and written at the end (through a temporary file)."""

    def __init__(self, out: str, root: int):
        self.out, self.root, self.poses = out, root, []
        self.handle = None
        if out == "-":
            self.handle = sys.stdout
        elif out.endswith(".jsonl"):
            # written as poses come, so not atomic: a reader may follow the file live
            make_folder(os.path.dirname(os.path.abspath(out)), "--out: cannot create the folder")
            self.handle = open(out, "w")

    def write(self, frame: int, pose: np.ndarray) -> None:
        pose = pose.copy()
        pose[self.root] = 0.0  # root-relative, as offline inference writes it
        self.poses.append(pose)
        if self.handle is not None:
            self.handle.write(json.dumps({"frame": frame, "pose": np.round(pose.astype(np.float64), 6).tolist()}) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None and self.handle is not sys.stdout:
            self.handle.close()
        if self.out.endswith(".npy"):
            joints = self.poses[0].shape[0] if self.poses else 17
            poses = np.stack(self.poses) if self.poses else np.zeros((0, joints, 3), np.float32)
            with atomic_open(self.out) as handle:
                np.save(handle, poses)


def stream_poses(lifter: StreamingLifter, frames: Iterable[tuple[int, object, float]], writer: _PoseWriter,
                 source: str) -> dict:
    """Push every frame, write every answer; returns the timings (seconds) and counts."""
    latencies, computes, ends = [], [], []
    pushed = 0
    warned = False
    for number, frame, arrival in frames:
        start = time.perf_counter()
        try:
            pose = lifter.push(frame)
        except ValueError as exc:
            raise InputError(f"{source} frame {number}: {exc}") from None
        if pose is not None:
            writer.write(pushed - lifter.delay, pose)
        end = time.perf_counter()
        ends.append(end)
        pushed += 1
        computes.append(end - start)
        if pose is not None:
            latencies.append(end - arrival)
        if lifter.guessed_joints and not warned:
            warned = True
            print(f"warning: {source} frame {number}: joint(s) {list(lifter.guessed_joints)} not seen yet in "
                  "this stream, placed at the mean pose until detected", file=sys.stderr)
    missed = dict(lifter.missed_counts)
    tail = lifter.flush()
    for k, pose in enumerate(tail):
        writer.write(pushed - len(tail) + k, pose)
    return {"pushed": pushed, "answered_live": len(latencies), "answered_at_end": len(tail), "missed": missed,
            "latency": latency_summary(latencies), "compute": latency_summary(computes),
            # frames per second from the first pose written to the last: what the stream sustained
            "sustained_fps": (pushed - 1) / (ends[-1] - ends[0]) if pushed >= 2 and ends[-1] > ends[0] else float("nan")}


def run_stream(args) -> int:
    """``convformer-fast infer --stream``: see :mod:`convformer_fast.pose.infer`."""
    from ..cli.args import UsageError, check_backend, resolve_device
    from .checkpoint import model_from_checkpoint
    from .evaluate import h36m_flip_symmetry

    out = args.out
    if not (out == "-" or out.endswith(".jsonl") or out.endswith(".npy")):
        raise UsageError(f"--out: got {out!r} with --stream, expected '-' (JSON lines on stdout), a .jsonl "
                         "file (JSON lines, written as poses come) or a .npy file (written at the end)")
    if not args.fps > 0:
        raise UsageError(f"--fps: got {args.fps}, expected a positive frame rate")
    check_writable(None if out == "-" else out, "--out")
    check_writable(args.render, "--render")
    if args.keypoints == "-":
        layout = "coco" if args.layout == "auto" else args.layout
        if not args.normalized and (args.width is None or args.height is None):
            raise UsageError("--width/--height: got none, expected the image size in pixels of the keypoints "
                             "on stdin (or pass --normalized)")
        name, width, height = "stdin", args.width, args.height
        normalized = args.normalized
        frames = json_lines(sys.stdin)
        pixels_known = not normalized
    else:
        videos = read_keypoint_files(args)
        if len(videos) > 1:
            raise UsageError(f"--video: {args.keypoints} holds {len(videos)} videos "
                             f"({[v['name'] for v in videos]}); --stream plays one, pick it with --video")
        video = videos[0]
        name, layout = video["name"], video["layout"]
        shape = np.shape(video["keypoints"])
        if len(shape) != 3 or shape[1:] not in ((17, 2), (17, 3)):
            raise UsageError(f"--keypoints: {args.keypoints} ({name}) holds shape {shape}, expected (frames, 17, 2) "
                             "or (frames, 17, 3) with confidence")
        width, height, normalized = video["w"], video["h"], video["normalized"]
        frames = played(video["keypoints"], None if args.unpaced else args.fps)
        pixels_known = not normalized
    device = resolve_device(args.device)
    backend = check_backend(args.backend, device.type)  # "auto" resolved, for the report
    model = model_from_checkpoint(args.checkpoint, backend=args.backend, device=device)
    if model.num_joints != H36M_17.num_joints:
        raise UsageError(f"--checkpoint: model has num_joints={model.num_joints}, expected a "
                         f"{H36M_17.num_joints}-joint Human3.6M model for video keypoints")
    lifter = StreamingLifter(model, backend=args.backend,
                             flip_symmetry=None if args.no_flip_tta else h36m_flip_symmetry(),
                             min_confidence=args.min_confidence, layout="coco" if layout == "coco" else "model",
                             width=None if normalized else width, height=None if normalized else height)
    report = sys.stderr if out == "-" else sys.stdout
    inputs = []
    if args.render:  # keep what the model saw, for the animation
        frames = _recording(frames, lifter, inputs)
    writer = _PoseWriter(out, H36M_17.root)
    try:
        result = stream_poses(lifter, frames, writer, f"--keypoints {name}")
    finally:
        writer.close()
    _print_report(result, model, lifter, name, backend, args, report)
    if args.render:
        from .data.camera import image_coordinates
        from .render import render_animation

        shown = np.stack(inputs) if inputs else np.zeros((0, 17, 2))
        if pixels_known:
            shown = image_coordinates(shown, w=float(width), h=float(height))
        render_animation(args.render, shown, np.stack(writer.poses) if writer.poses else np.zeros((0, 17, 3)),
                         width=width if pixels_known else None, height=height if pixels_known else None,
                         fps=args.fps, title=name, max_frames=args.render_frames)
        print(f"wrote {args.render}", file=report)
    return 0


def _recording(frames, lifter: StreamingLifter, inputs: list):
    """Pass frames through, keeping the model input of each accepted one."""
    for item in frames:
        yield item
        inputs.append(lifter.last_input)


def _print_report(result: dict, model, lifter: StreamingLifter, name: str, backend: str, args, handle) -> None:
    delay = lifter.delay
    lat, comp = result["latency"], result["compute"]
    if args.keypoints == "-":
        pace = "as they came on stdin"
    else:
        pace = "back to back (--unpaced)" if args.unpaced else f"paced at {args.fps:g} fps"
    print(f"{name}: {result['pushed']} frames streamed ({pace}) -> {result['answered_live']} poses as they came"
          f" + {result['answered_at_end']} at the end of the stream (T={model.num_frames}, target frame "
          f"{model.target_frame}: {delay} frames of look-ahead = {delay / args.fps * 1e3:.0f} ms at "
          f"{args.fps:g} fps; backend {backend}, flip TTA {'off' if args.no_flip_tta else 'on'})",
          file=handle)
    if result["pushed"]:
        sustained = result["sustained_fps"]
        print(f"latency per frame (arrival -> pose written): median {lat['median_ms']:.1f} ms, p99 "
              f"{lat['p99_ms']:.1f} ms; compute per frame: median {comp['median_ms']:.1f} ms, p99 "
              f"{comp['p99_ms']:.1f} ms; sustained {sustained:.1f} fps (compute alone: {comp['fps']:.1f} fps)",
              file=handle)
    missed = result["missed"]
    if missed["held"] or missed["guessed"]:
        print(f"missed keypoints: {missed['held']} held from their last detection, {missed['guessed']} never "
              "seen before placed at the mean pose", file=handle)
    if args.out != "-":
        print(f"wrote {args.out}: root-relative camera-frame poses in metres, Human3.6M-17 order", file=handle)
