"""Per-frame latency of streaming lifting (StreamingLifter.push), the table of docs/streaming.md.

    PYTHONPATH=. python benchmarks/stream_latency.py --threads 2 [--presets h36m-81,h36m-243]
        [--rounds 6 --frames 50] [--flip] [--json out.json]

For every preset, target frame (centre, causal) and spatial cache (on, off = the full model
on the window for every frame), a lifter is filled to steady state (a full ring), then the
configurations take turns: each round pushes ``--frames`` new frames through each of them,
so a change of machine load during the run falls on all of them alike. Every push is timed
(``time.perf_counter`` around ``push``: preprocessing, the spatial stage of the new frame,
the temporal stage and head of its window, back to numpy). Reported: median and p99 of the
per-frame times and the frame rate they sustain back to back (1 / mean), plus the machine's
load average before and after. Random weights of the preset (timing does not depend on
them); fp32; the ``cpu`` backend unless ``--backend``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
import torch

import convformer_fast as cf
from convformer_fast.perf.machine import cpu_model, git_commit
from convformer_fast.pose.data.skeleton import H36M_17
from convformer_fast.pose.stream import StreamingLifter, latency_summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="h36m-81,h36m-243")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--frames", type=int, default=50, help="frames per configuration per round")
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation (what infer does by default)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    flip = (list(H36M_17.joints_left), list(H36M_17.joints_right),
            list(H36M_17.joints_left), list(H36M_17.joints_right)) if args.flip else None

    configs = []
    for preset in args.presets.split(","):
        for target in ("centre", "last"):
            torch.manual_seed(0)
            model = cf.ConvFormer.from_preset(preset, target_frame=target).eval()
            for cache in (True, False):
                lifter = StreamingLifter(model, backend=args.backend, spatial_cache=cache, flip_symmetry=flip)
                for _ in range(model.num_frames + 3):  # a full ring, answers flowing
                    lifter.push(rng.normal(0, 0.3, (17, 2)))
                configs.append(dict(preset=preset, target=target, cache=cache, lifter=lifter, times=[]))
    load_before = os.getloadavg()
    start = time.time()
    for _ in range(args.rounds):
        for config in configs:
            frames = rng.normal(0, 0.3, (args.frames, 17, 2))
            for frame in frames:
                t0 = time.perf_counter()
                pose = config["lifter"].push(frame)
                config["times"].append(time.perf_counter() - t0)
                assert pose is not None
    load_after = os.getloadavg()
    rows = []
    for config in configs:
        stats = latency_summary(config["times"])
        rows.append(dict(preset=config["preset"], target=config["target"], spatial_cache=config["cache"],
                         delay_frames=config["lifter"].delay, **stats))
    meta = dict(date=datetime.date.today().isoformat(), cpu=cpu_model(), threads=args.threads,
                backend=args.backend, flip_tta=bool(args.flip), commit=git_commit(),
                load_before=[round(x, 1) for x in load_before], load_after=[round(x, 1) for x in load_after],
                wall_s=round(time.time() - start, 1), frames_per_config=args.rounds * args.frames)
    print(f"{meta['date']}, {meta['cpu']}, {args.threads} threads, backend {args.backend}, flip TTA "
          f"{'on' if args.flip else 'off'}, {meta['frames_per_config']} frames per row in {args.rounds} "
          f"alternating rounds; load average (1/5/15 min) before {meta['load_before']}, after "
          f"{meta['load_after']}; commit {meta['commit']}")
    print("| preset | target frame | look-ahead | spatial cache | median ms | p99 ms | fps (1/mean) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['target']} | {r['delay_frames']} frames | {'on' if r['spatial_cache'] else 'off'} "
              f"| {r['median_ms']:.1f} | {r['p99_ms']:.1f} | {r['fps']:.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
