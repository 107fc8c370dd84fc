"""The machine a measurement ran on: CPU model, cores this process may use, versions, commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def git_commit() -> str:
    """Short commit of the checkout this package runs from ("" outside one), marked when the
    working tree has uncommitted changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:  # read-only git queries
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, cwd=here).stdout.strip()
        if commit and subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True,
                                     timeout=5, cwd=here).returncode:
            commit += " + uncommitted changes"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit


def machine_info(threads: int) -> dict:
    return dict(
        cpu=cpu_model(), cores_available=available_cores(), threads=threads,
        torch=torch.__version__, python=platform.python_version(),
        capability=torch.backends.cpu.get_cpu_capability(), commit=git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
