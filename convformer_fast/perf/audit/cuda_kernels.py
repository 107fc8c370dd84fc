"""The CUDA kernels: setup.py's nvcc command -> ptxas -v, SASS, launch bounds -> rows.

``csrc/cuda/*.cu`` (which include ``kernels/*.cuh``) are compiled by ``nvcc -Xptxas -v``
with the exact command setup.py's build uses (captured from torch's build extension, so
flags, defines and include paths cannot drift), and every kernel ptxas reports is analysed:
new kernels need no change here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .errors import AuditError
from .internals import CAPTURE_BUILD, CAPTURED_MARK, check_torch, triton_tool
from .parsers import mma_summary, parse_max_threads, parse_ptxas_log, parse_sass
from .rules import judge_row
from .targets import gpu_targets
from .tools import demangle, run

#: Threads per block assumed for a kernel without ``__launch_bounds__`` (marked ``*``).
DEFAULT_CUDA_THREADS = 256


def source_root() -> str | None:
    """The checkout this package was installed from (editable installs), or None."""
    import convformer_fast

    root = os.path.dirname(os.path.dirname(os.path.abspath(convformer_fast.__file__)))
    return root if os.path.exists(os.path.join(root, "setup.py")) and os.path.isdir(
        os.path.join(root, "csrc")) else None


def nvcc_build_command(root: str) -> dict:
    """{nvcc, cuda_cflags, cuda_post_cflags, sources}: how setup.py compiles CUDA sources
    (FORCE_CUDA=1), captured from torch's build extension."""
    check_torch()
    env = dict(os.environ, FORCE_CUDA="1")
    result = run([sys.executable, "-c", CAPTURE_BUILD], cwd=root, env=env, timeout=600)
    line = next((l for l in result.stdout.splitlines() if l.startswith(CAPTURED_MARK)), None)
    if line is None:
        raise AuditError(f"could not read the nvcc command of setup.py in {root}: "
                         f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    captured = json.loads(line[len(CAPTURED_MARK):])
    if captured["cuda_cflags"] is None:
        raise AuditError(f"setup.py in {root} builds no CUDA sources (no nvcc found?)")
    # torch quotes each flag for the ninja file; split them back into arguments.
    for key in ("cuda_cflags", "cuda_post_cflags"):
        captured[key] = shlex.split(" ".join(captured[key]))
    return captured


def _gencode_arch(flag: str) -> int | None:
    found = re.search(r"code=\[?sm_(\d+)", flag)
    return int(found.group(1)) if found and flag.startswith("-gencode") else None


def cuda_compile_commands(build: dict, root: str, archs: Sequence[int], out_dir: str
                          ) -> list[tuple[str, list[str], list[str]]]:
    """(source, command, notes) per CUDA source: the build's command with only the
    requested targets' -gencode flags and -Xptxas -v."""
    post = [f for f in build["cuda_post_cflags"] if _gencode_arch(f) is None or _gencode_arch(f) in archs]
    built = {_gencode_arch(f) for f in build["cuda_post_cflags"]} - {None}
    notes = []
    for arch in archs:
        if arch not in built:
            post.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
            notes.append(f"sm_{arch} is not in the build's architectures {sorted(built)}; added for the audit")
    commands = []
    for source in build["sources"]:
        if not source.endswith(".cu"):
            continue
        obj = os.path.join(out_dir, os.path.basename(source) + ".o")
        cmd = [build["nvcc"], *build["cuda_cflags"], "-c", os.path.join(root, source), "-o", obj,
               *post, "-Xptxas", "-v"]
        commands.append((source, cmd, notes))
    return commands


def _cuda_dtype(demangled: str) -> str:
    """The element type of a kernel template instance: its first template argument."""
    head = demangled.split("(")[0]
    if "<" not in head:
        return "-"
    depth, first = 0, ""
    for char in head[head.index("<") + 1:]:
        if char in ",>" and depth == 0:
            break
        depth += (char == "<") - (char == ">")
        first += char
    first = first.strip()
    return {"c10::BFloat16": "bf16", "__nv_bfloat16": "bf16", "c10::Half": "fp16", "__half": "fp16",
            "half": "fp16", "float": "fp32", "double": "fp64"}.get(first, first)


def _short_name(demangled: str) -> str:
    head = demangled.split("(")[0]
    head = re.sub(r"^.*\s", "", head.split("<")[0]) if "<" in head else re.sub(r"^.*\s", "", head)
    return head.split("::")[-1]


def analyse_cuda_object(obj: str, ptxas_log: str, source: str) -> list[dict]:
    """Rows for every kernel of one compiled CUDA object."""
    cuobjdump = triton_tool("cuobjdump")
    resources = parse_ptxas_log(ptxas_log)
    sass = parse_sass(run([cuobjdump, "-sass", obj]).stdout)
    bounds = parse_max_threads(run([cuobjdump, "-elf", obj]).stdout)
    names = demangle(f for (_, f), r in resources.items() if r.get("entry"))
    targets = gpu_targets()
    rows = []
    for (arch, mangled), res in sorted(resources.items()):
        if not res.get("entry") and not (res.get("spill_stores") or res.get("spill_loads")):
            continue  # a device function without spills: accounted for in its callers
        demangled = names.get(mangled, demangle([mangled])[mangled])
        threads = bounds.get((arch, mangled))
        row = dict(source="cuda", file=source, kernel=_short_name(demangled), demangled=demangled,
                   mangled=mangled, arch=arch, dtype=_cuda_dtype(demangled),
                   registers=res.get("registers", 0), spill_stores=res.get("spill_stores", 0),
                   spill_loads=res.get("spill_loads", 0), stack_bytes=res.get("stack_bytes", 0),
                   barriers=res.get("barriers", 0), static_smem=res.get("static_smem", 0),
                   dynamic_smem=None, threads=threads or DEFAULT_CUDA_THREADS,
                   threads_declared=threads is not None,
                   mma=mma_summary(sass.get((arch, mangled), Counter())), config={})
        if arch in targets:
            rows.append(judge_row(row, targets[arch], strict_mma=False))
    return rows


def audit_cuda(root: str, archs: Sequence[int], workers: int = 1) -> tuple[list[dict], list[str]]:
    """Compile every CUDA source as setup.py does, with -Xptxas -v; rows and notes."""
    build = nvcc_build_command(root)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        commands = cuda_compile_commands(build, root, archs, tmp)
        if not commands:
            return [], ["setup.py builds no .cu sources"]
        notes += commands[0][2]
        # Threads wait for the compilers; run() reads their output as it comes, so none
        # stalls on a full pipe.
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(lambda command: run(command[1], cwd=root), commands))
        for (source, cmd, _), result in zip(commands, results):
            log = result.stdout + result.stderr
            if result.returncode != 0:
                errors = [l for l in log.splitlines() if "error" in l.lower()] or log.splitlines()[-3:]
                for arch in archs:
                    rows.append(dict(source="cuda", file=source, kernel=os.path.basename(source),
                                     arch=arch, dtype="-", config={}, error=" | ".join(errors[:3])[:600],
                                     failures=[f"does not compile: {' | '.join(errors[:3])[:600]}"]))
                continue
            rows += analyse_cuda_object(cmd[cmd.index("-o") + 1], log, source)
    return rows, notes
