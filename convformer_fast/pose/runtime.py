"""Device and CPU-thread options shared by the train, eval and infer commands."""

from __future__ import annotations

import torch


def add_runtime_arguments(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice). On a machine shared with "
                             "other jobs, 1 avoids OpenMP oversubscription, which can cost 5-10x")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def apply_threads(threads) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads: got {threads}, expected a positive count")
        torch.set_num_threads(threads)
