"""Reading the GPU tools' output: ``ptxas -v`` logs, ``cuobjdump -sass`` and ``cuobjdump -elf``.

Pure text to data; the samples in tests/test_audit.py are verbatim output of nvcc 13.0,
Triton's ptxas 12.9 and cuobjdump.
"""

from __future__ import annotations

import re
from collections import Counter


def _arch_number(text: str) -> int:
    return int(re.match(r"sm_(\d+)", text).group(1))


def parse_ptxas_log(text: str) -> dict[tuple[int, str], dict]:
    """{(arch, mangled function): resources} from ``ptxas -v`` output (nvcc -Xptxas -v or
    Triton's ptxas log). Entry functions get registers, barriers and static shared memory;
    every function ptxas lists gets its stack frame and spill bytes."""
    records: dict[tuple[int, str], dict] = {}
    arch, entry, props_for = None, None, None
    for line in text.splitlines():
        found = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if found:
            entry, arch = found.group(1), _arch_number(found.group(2))
            records.setdefault((arch, entry), {})["entry"] = True
            props_for = None
            continue
        found = re.search(r"Function properties for (\S+)", line)
        if found and arch is not None:
            props_for = found.group(1)
            records.setdefault((arch, props_for), {}).setdefault("entry", props_for == entry)
            continue
        found = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if found and props_for is not None:
            stack, stores, loads = map(int, found.groups())
            records[(arch, props_for)].update(stack_bytes=stack, spill_stores=stores, spill_loads=loads)
            continue
        found = re.search(r"Used (\d+) registers", line)
        if found and entry is not None:
            record = records[(arch, entry)]
            record["registers"] = int(found.group(1))
            barriers = re.search(r"used (\d+) barriers", line)
            record["barriers"] = int(barriers.group(1)) if barriers else 0
            smem = re.search(r"(\d+) bytes smem", line)
            record["static_smem"] = int(smem.group(1)) if smem else 0
    return records


_MMA_OPCODE = re.compile(r"^(U?[HIDQB]G?MMA|UTC\w*MMA|OMMA)")
_INPUT_TYPES = {"BF16": "bf16", "TF32": "tf32", "F16": "fp16", "E4M3": "fp8", "E5M2": "fp8",
                "S8": "int8", "U8": "int8", "S4": "int4", "U4": "int4"}


def parse_sass(text: str) -> dict[tuple[int, str], Counter]:
    """{(arch, mangled function): opcode counts} from ``cuobjdump -sass``: tensor-core MMA
    opcodes with their shape and type suffixes (``HGMMA.64x64x16.F32.BF16``), and the bare
    opcode of everything else (``FFMA``, ``LDL``, ``STL``, ...)."""
    counts: dict[tuple[int, str], Counter] = {}
    arch, function = None, None
    for line in text.splitlines():
        found = re.match(r"\s*(?:arch = |code for )(sm_\w+)", line)  # fatbin / raw cubin
        if found:
            arch = _arch_number(found.group(1))
            continue
        found = re.match(r"\s*Function : (\S+)", line)
        if found and arch is not None:
            function = found.group(1)
            counts[(arch, function)] = Counter()
            continue
        found = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.x]*)", line)
        if found and function is not None:
            opcode = found.group(1)
            counts[(arch, function)][opcode if _MMA_OPCODE.match(opcode) else opcode.split(".")[0]] += 1
    return counts


def parse_max_threads(text: str) -> dict[tuple[int, str], int]:
    """{(arch, mangled function): threads per block} declared by ``__launch_bounds__`` (or
    ``__maxnreg__``-free ``reqntid``), from ``cuobjdump -elf``."""
    found_threads: dict[tuple[int, str], int] = {}
    arch, function, attribute = None, None, None
    for line in text.splitlines():
        found = re.match(r"\s*arch = (sm_\w+)", line)
        if found:
            arch = _arch_number(found.group(1))
            continue
        found = re.match(r"^\.nv\.info\.(\S+)\s*$", line)
        if found:
            function = found.group(1)
            continue
        found = re.search(r"Attribute:\s+(EIATTR_\w+)", line)
        if found:
            attribute = found.group(1)
            continue
        found = re.search(r"Value:\s+((?:0x[0-9a-f]+\s*){3})", line)
        if found and attribute in ("EIATTR_MAX_THREADS", "EIATTR_REQNTID") and function:
            x, y, z = (int(v, 16) for v in found.group(1).split())
            found_threads[(arch, function)] = x * y * z
            attribute = None
    return found_threads


def mma_summary(counts: Counter) -> dict:
    """Tensor-core instructions of one function and the input types they multiply."""
    mma = {op: n for op, n in sorted(counts.items()) if _MMA_OPCODE.match(op)}
    types = set()
    for op in mma:
        parts = op.split(".")
        typed = [_INPUT_TYPES[p] for p in parts[1:] if p in _INPUT_TYPES]
        if typed:
            types.add(typed[-1])
        elif parts[0].startswith("D"):
            types.add("fp64")
        elif parts[0].startswith(("H", "UH")):
            types.add("fp16")  # HMMA / HGMMA without an input suffix multiply fp16
    return dict(instructions=mma, input_types=sorted(types), ffma=counts.get("FFMA", 0),
                dfma=counts.get("DFMA", 0), local_loads=counts.get("LDL", 0),
                local_stores=counts.get("STL", 0))


def mma_label(summary: dict) -> str:
    """'HGMMA bf16', 'HMMA tf32', 'FFMA' ... for tables."""
    if summary["instructions"]:
        ops = sorted({op.split(".")[0] for op in summary["instructions"]})
        return f"{'+'.join(ops)} {'+'.join(summary['input_types'])}"
    if summary["dfma"]:
        return "DFMA"
    return "FFMA" if summary["ffma"] else "-"
