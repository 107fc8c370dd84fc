"""GPU-less kernel audit: compile every Triton and CUDA kernel for sm_80 (A100) and sm_90
(H100) and report what the compilers say about it (``convformer-fast kernels``).

Nothing here runs on a GPU. The GPU compilers do not need one:

* Triton kernels are compiled ahead of time through their own launch path: the launch
  plans of :mod:`convformer_fast.triton.ops` (the arguments the ops really pass) are built
  from "meta" tensors for each shape and dtype, and ``kernel.warmup`` compiles them under a
  stand-in driver that names the target GPU, so Triton applies the same specialisations
  (integer arguments equal to 1 or divisible by 16, pointer alignment) as on the GPU.
  Every autotune configuration the autotuner may pick (after its own pruning) is compiled.
  ``ptxas -v`` (Triton's, through its log) gives registers, spills, barriers and static
  shared memory; Triton's metadata the dynamic shared memory; ``cuobjdump -sass`` of the
  cubin the instructions.
* CUDA kernels (``csrc/cuda/*.cu``, which include ``kernels/*.cuh``) are compiled by
  ``nvcc -Xptxas -v`` with the exact command setup.py's build uses (captured from torch's
  build extension, so flags, defines and include paths cannot drift), and every kernel
  ptxas reports is analysed: new kernels need no change here.

From those numbers: theoretical occupancy with the per-SM limits of each GPU (the model of
CUDA's ``cuda_occupancy.h``: registers allocated per warp in units of 256 from four
sub-partitions, shared memory in units of 128 bytes plus 1 KiB reserved per block, 64
warps, 32 blocks, and barriers on sm_90) and the limit that binds; whether matrix products
became tensor-core MMA (HMMA/HGMMA for fp16/bf16, never TF32 for exact fp32); and a
roofline time per kernel from the cost model of :mod:`convformer_fast.triton.bench` and the
GPU peaks of :mod:`convformer_fast.perf.roofline`, beside the eager ops it replaces.

A kernel fails the audit if it spills registers or uses local memory, needs more shared
memory per block than the target allows, cannot be resident on an SM, does not compile, or
(Triton) turns an fp16/bf16 product into anything but tensor-core MMA or an exact-fp32
product into TF32. Every ``tl.dot`` in ``convformer_fast/triton`` must state its
``input_precision``, and every Triton kernel must be reached by a launch plan.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from ...errors import UserError

# convformer_fast/, three levels up from convformer_fast/perf/audit/__init__.py.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERPRET_ENV_VAR = "TRITON_INTERPRET"


class AuditError(UserError):
    """The audit cannot run as asked (bad argument, missing tool): one line for the user."""


# ----------------------------------------------------------------------------------------
# Targets and the occupancy model
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuTarget:
    """Per-SM limits of one GPU (CUDA programming guide, compute capability tables)."""

    arch: int                    # compute capability x 10: 80, 90
    gpu: str                     # key of convformer_fast.perf.roofline.GPU_SPECS
    sms: int
    smem_per_sm: int             # bytes, largest carveout
    smem_per_block_optin: int    # bytes a block may use (dynamic + static), opted in
    max_threads_per_block: int = 1024
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256    # registers are allocated per warp in these units
    sub_partitions: int = 4      # ... from the register file of one of 4 SM sub-partitions
    smem_reserved_per_block: int = 1024  # the driver's, per resident block (sm_80 on)
    smem_alloc_unit: int = 128
    barriers_per_block_slot: int = 2     # sm_90: named barriers, counted from Hopper on

    @property
    def name(self) -> str:
        return f"sm_{self.arch}"


TARGETS: dict[int, GpuTarget] = {
    80: GpuTarget(80, "A100", sms=108, smem_per_sm=164 * 1024, smem_per_block_optin=163 * 1024),
    90: GpuTarget(90, "H100", sms=132, smem_per_sm=228 * 1024, smem_per_block_optin=227 * 1024),
}


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass
class Occupancy:
    """Theoretical occupancy of one kernel: resident blocks and warps per SM, and the
    blocks each resource allows (None: no limit from it)."""

    blocks_per_sm: int
    warps_per_sm: int
    occupancy: float                  # resident warps / max warps per SM
    limits: dict[str, int | None]
    binding: list[str]                # the limits equal to blocks_per_sm

    def describe(self) -> str:
        return f"{self.occupancy:.0%} ({self.blocks_per_sm} blk, {self.warps_per_sm} warps)"


def occupancy(target: GpuTarget, registers: int, threads: int, static_smem: int = 0,
              dynamic_smem: int = 0, barriers: int = 0) -> Occupancy:
    """Blocks of one kernel resident per SM, as CUDA's occupancy calculator computes them
    with the default shared-memory carveout and opt-in dynamic shared memory."""
    warps = -(-threads // 32)
    limits: dict[str, int | None] = {}
    # Registers: per warp, rounded up to the allocation unit; a block must fit the
    # register file (the hardware check rounds its warps up to the sub-partitions), and
    # warps are placed per sub-partition.
    regs_per_warp = _round_up(registers * 32, target.reg_alloc_unit)
    if (threads > target.max_threads_per_block or registers > target.max_regs_per_thread
            or regs_per_warp * _round_up(warps, target.sub_partitions) > target.regs_per_block):
        limits["registers"] = 0
    elif regs_per_warp == 0:
        limits["registers"] = None
    else:
        per_partition = (target.regs_per_sm // target.sub_partitions) // regs_per_warp
        limits["registers"] = per_partition * target.sub_partitions // warps
    limits["warps"] = 0 if threads > target.max_threads_per_block else target.max_warps_per_sm // warps
    limits["blocks"] = target.max_blocks_per_sm
    # Shared memory: static + dynamic + the driver's reservation, in allocation units.
    smem = _round_up(static_smem + dynamic_smem + target.smem_reserved_per_block,
                     target.smem_alloc_unit)
    fits = smem <= target.smem_per_block_optin + target.smem_reserved_per_block
    limits["shared memory"] = target.smem_per_sm // smem if fits else 0
    if target.arch >= 90 and barriers > 0:
        limits["barriers"] = target.max_blocks_per_sm * target.barriers_per_block_slot // barriers
    finite = [v for v in limits.values() if v is not None]
    blocks = min(finite)
    binding = [name for name, v in limits.items() if v == blocks]
    return Occupancy(blocks, blocks * warps, blocks * warps / target.max_warps_per_sm, limits,
                     binding)


# ----------------------------------------------------------------------------------------
# Reading the tools' output: ptxas -v logs, cuobjdump -sass, cuobjdump -elf
# ----------------------------------------------------------------------------------------


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


def row_mma_label(row: dict) -> str:
    return "no matmul" if row.get("has_dot") is False else mma_label(row["mma"])


def mma_label(summary: dict) -> str:
    """'HGMMA bf16', 'HMMA tf32', 'FFMA' ... for tables."""
    if summary["instructions"]:
        ops = sorted({op.split(".")[0] for op in summary["instructions"]})
        return f"{'+'.join(ops)} {'+'.join(summary['input_types'])}"
    if summary["dfma"]:
        return "DFMA"
    return "FFMA" if summary["ffma"] else "-"


def tensor_core_problem(dtype: str, summary: dict, has_dot: bool | None) -> str | None:
    """Why the instructions break the precision contract, or None. ``has_dot`` is whether
    the kernel has matrix products (None: unknown, as for CUDA kernels, where only a TF32
    MMA in an fp32 kernel is reported)."""
    types = set(summary["input_types"])
    if dtype == "fp32" and "tf32" in types:
        return "exact-fp32 kernel compiled to TF32 tensor-core MMA (TF32 must be opt-in)"
    if not has_dot:
        return None
    if dtype in ("bf16", "fp16") and dtype not in types:
        return f"{dtype} matrix products did not compile to tensor-core MMA ({mma_label(summary)})"
    if dtype == "tf32" and "tf32" not in types:
        return f"TF32 was allowed but the products did not use TF32 MMA ({mma_label(summary)})"
    return None


# ----------------------------------------------------------------------------------------
# Toolchain
# ----------------------------------------------------------------------------------------


def _triton_tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise AuditError(f"{name} not found at {path} (it ships with triton's NVIDIA backend)")
    return path


def _run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)


def _tool_version(cmd: Sequence[str]) -> str:
    try:
        out = _run(cmd, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return "not found"
    release = [line for line in out if "release" in line]
    return (release or out or ["?"])[-1].strip()


def toolchain() -> dict:
    """Versions of everything that shaped the numbers."""
    import triton

    from ..._toolchain import cuda_home

    home = cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    return dict(
        date=datetime.date.today().isoformat(),
        torch=torch.__version__, triton=triton.__version__,
        triton_ptxas=_tool_version([_triton_tool("ptxas"), "--version"]),
        nvcc=_tool_version([nvcc, "--version"]) if nvcc and os.path.exists(nvcc) else "not found",
        python=sys.version.split()[0],
    )


def _demangle(names: Iterable[str]) -> dict[str, str]:
    names = list(dict.fromkeys(names))
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = _run([tool], input="\n".join(names) + "\n").stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


# ----------------------------------------------------------------------------------------
# Shapes: the paper's layers
# ----------------------------------------------------------------------------------------

#: The audit's dtype tags; "tf32" is fp32 with TF32 tensor cores allowed.
DTYPE_TAGS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
              "fp64": torch.float64, "tf32": torch.float32}


def dtype_tag(dtype: torch.dtype) -> str:
    """The tag of a torch dtype (exact arithmetic: fp32, not tf32)."""
    return next(tag for tag, d in DTYPE_TAGS.items() if d == dtype)
PAPER_PRESETS = ("h36m-9", "h36m-27", "h36m-81", "h36m-243")
LAYOUTS = ("spatial", "temporal")


@dataclass(frozen=True)
class LayerShape:
    """One DMHCSA layer of a preset: x is (n, tokens, features)."""

    preset: str
    batch: int
    layout: str
    n: int
    tokens: int
    features: int
    heads: int
    kernel_sizes: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.preset}/b{self.batch}/{self.layout}"


def layer_shapes(presets: Sequence[str], batches: Sequence[int],
                 layouts: Sequence[str] = LAYOUTS) -> list[LayerShape]:
    from ...presets import preset_config

    shapes = []
    for preset in presets:
        cfg = preset_config(preset)
        t, j, d = cfg["num_frames"], cfg["num_joints"], cfg["embed_dim"]
        for batch in batches:
            for layout in layouts:
                n, tokens, features = (batch * t, j, d) if layout == "spatial" else (batch, t, j * d)
                shapes.append(LayerShape(preset, batch, layout, n, tokens, features,
                                         cfg["num_heads"], tuple(cfg["kernel_sizes"])))
    return shapes


# ----------------------------------------------------------------------------------------
# Triton: launch plans -> compile jobs -> analysis
# ----------------------------------------------------------------------------------------


class _TargetDriver:
    """Stands in for Triton's CUDA driver while compiling: it names the target GPU and
    nothing else. The device id is the arch, so each target keeps its own kernel cache."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def _compiling_for(arch: int, fresh: bool = False):
    """Triton compiles for ``sm_<arch>`` (``fresh``: not from its disk cache) and prints
    ptxas's log."""
    from triton import knobs
    from triton.runtime import driver

    previous = driver._active  # restored as it was (possibly unset), not re-created
    with _without_interpreter(), knobs.compilation.scope(), knobs.nvidia.scope():
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = fresh
        driver.set_active(_TargetDriver(arch))
        try:
            yield
        finally:
            driver._active = previous


@contextlib.contextmanager
def _without_interpreter():
    """Import the kernels compiled, not interpreted: TRITON_INTERPRET is read when they are
    defined."""
    saved = os.environ.pop(INTERPRET_ENV_VAR, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[INTERPRET_ENV_VAR] = saved


def triton_ops():
    """convformer_fast.triton.ops with compiled (not interpreted) kernels. Triton defines
    its own library functions (tl.cdiv, ...) when it is imported, so it too must have been
    imported without TRITON_INTERPRET."""
    with _without_interpreter():
        import triton.language.standard as triton_standard
        from triton.runtime.jit import JITFunction

        kernels = sys.modules.get("convformer_fast.triton.kernels")
        if not isinstance(triton_standard.cdiv, JITFunction) or (kernels is not None and kernels.INTERPRETED):
            raise AuditError(f"triton or the kernels were imported with {INTERPRET_ENV_VAR}=1 in "
                             "this process; run the audit in a fresh process without it "
                             "(convformer-fast kernels does)")
        from ...triton import ops
    return ops


def _jit_function(kernel):
    """The @triton.jit function under autotune / heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    inner = kernel
    while not isinstance(inner, JITFunction):
        inner = inner.fn
    return inner


def kernel_name(kernel) -> str:
    return _jit_function(kernel).fn.__name__


def defined_triton_kernels() -> dict[str, Any]:
    """Every public kernel (jit, autotuned or heuristics) of convformer_fast.triton.kernels."""
    from triton.runtime.jit import KernelInterface

    triton_ops()
    from ...triton import kernels

    return {name: obj for name, obj in vars(kernels).items()
            if isinstance(obj, KernelInterface) and not name.startswith("_")}


def layer_launches(shape: LayerShape, dtype_tag: str, sm_count: int) -> list:
    """The kernel launches of one layer's forward and backward (projection, attention), as
    the ops plan them, from meta tensors."""
    ops = triton_ops()
    dtype, allow_tf32 = DTYPE_TAGS[dtype_tag], dtype_tag == "tf32"
    c = shape.features if shape.layout == "spatial" else shape.tokens
    meta = dict(device="meta", dtype=dtype)
    x = torch.empty((shape.n, shape.tokens, shape.features), **meta)
    weight = torch.empty((3 * c, c, max(shape.kernel_sizes)), **meta)
    bias = torch.empty((3 * c,), **meta)
    qkv, forward = ops.qkv_projection_plan(x, weight, bias, shape.heads, shape.layout, allow_tf32)
    _, backward = ops.qkv_projection_backward_plan(qkv, x, weight, shape.heads, shape.layout,
                                                   allow_tf32, sm_count)
    (out, lse), attention = ops.attention_plan(qkv, allow_tf32)
    _, attention_bwd = ops.attention_backward_plan(out, qkv, out, lse, allow_tf32)
    return forward + backward + attention + attention_bwd


def _plain_args(args: tuple) -> tuple:
    """Tensors -> their dtype (Triton's warmup mocks them: only dtype and 16-byte pointer
    alignment, which every torch allocation has, shape the compiled code)."""
    return tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args)


def candidate_configs(kernel, args: tuple, kwargs: dict) -> list[dict]:
    """The configurations the autotuner may pick for these arguments (after its pruning,
    which sees the arguments as at a launch: tensors, here on the meta device), as launch
    keyword arguments; [{}] for a kernel without autotuning."""
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return [{}]
    kernel.nargs = dict(zip(kernel.arg_names, args))
    try:
        configs = kernel.prune_configs(dict(kwargs))
    finally:
        kernel.nargs = None
    return [c.all_kwargs() for c in configs]


@dataclass
class CompileJob:
    """All variants of one kernel and configuration for one target; compiled together so
    that Triton's in-memory cache shares identical specialisations."""

    kernel_ref: tuple[str, str]        # (module, attribute) to import in a worker
    arch: int
    config: dict
    variants: list[tuple[int, tuple, dict]]  # (variant id, plain args, kwargs)
    fresh: bool = False                # ignore Triton's disk cache (compile everything)


_ANALYSED: dict[str, dict] = {}  # compiled hash -> analysis, per process


def _resolve(ref: tuple[str, str]):
    import importlib

    with _without_interpreter():
        return getattr(importlib.import_module(ref[0]), ref[1])


def _error_text(exc: BaseException, log: str = "") -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = next((line.strip() for line in (str(exc) + "\n" + log).splitlines()
                   if "error" in line.lower() and line.strip() != first), "")
    return f"{type(exc).__name__}: {first[:300]}" + (f" | {detail[:300]}" if detail else "")


def _sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        return _run([_triton_tool("cuobjdump"), "-sass", path]).stdout


def _ptxas_again(compiled, arch: int, sass: str) -> str:
    """ptxas's log for a kernel Triton took from its disk cache (no ptxas ran): Triton's own
    last compile stage, run again with the kernel's options. Its machine code must be the
    cached kernel's instruction for instruction (only debug sections may differ), so the
    log describes exactly that binary."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", arch, 32))
    options = backend.parse_options(dict(compiled.metadata._asdict()))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        cubin = backend.make_cubin(compiled.asm["ptx"], {}, options, arch)
    if cubin != compiled.asm["cubin"] and _sass(cubin) != sass:
        raise AuditError(f"{compiled.metadata.name}: ptxas did not reproduce the cached kernel; "
                         "clear Triton's cache (~/.triton/cache) and rerun")
    return log.getvalue()


def _analyse_compiled(compiled, ptxas_log: str, arch: int) -> dict:
    name = compiled.metadata.name
    sass = _sass(compiled.asm["cubin"])
    if f"Compiling entry function '{name}'" not in ptxas_log:
        ptxas_log = _ptxas_again(compiled, arch, sass)
    records = parse_ptxas_log(ptxas_log)
    resources = next((r for (a, f), r in records.items() if f == name and r.get("entry")), None)
    if resources is None or "registers" not in resources:
        raise AuditError(f"{name}: no report of it in ptxas's log")
    counts = next((c for (a, f), c in parse_sass(sass).items() if f == name), Counter())
    ttir = compiled.asm.get("ttir", "")
    return dict(
        registers=resources["registers"], spill_stores=resources.get("spill_stores", 0),
        spill_loads=resources.get("spill_loads", 0), stack_bytes=resources.get("stack_bytes", 0),
        barriers=resources.get("barriers", 0), static_smem=resources.get("static_smem", 0),
        dynamic_smem=compiled.metadata.shared, threads=compiled.metadata.num_warps * 32,
        num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
        has_dot="tt.dot" in ttir, mma=mma_summary(counts), hash=compiled.hash,
    )


def compile_job(job: CompileJob, kernel=None) -> list[dict]:
    """Compile every variant of a job; one result per variant (analysis, or error)."""
    kernel = kernel if kernel is not None else _resolve(job.kernel_ref)
    inner = kernel.fn if hasattr(kernel, "configs") else kernel  # under the autotuner
    results = []
    with _compiling_for(job.arch, job.fresh):
        for variant_id, args, kwargs in job.variants:
            log = io.StringIO()
            try:
                start = _cpu_seconds()
                with contextlib.redirect_stdout(log):
                    compiled = inner.warmup(*args, grid=(1,), **kwargs, **job.config)
                if compiled.hash not in _ANALYSED:
                    _ANALYSED[compiled.hash] = _analyse_compiled(compiled, log.getvalue(), job.arch)
                    _ANALYSED[compiled.hash]["cpu_seconds"] = round(_cpu_seconds() - start, 2)
                results.append(dict(variant=variant_id, **_ANALYSED[compiled.hash]))
            except Exception as exc:  # a failure to compile is a finding: report it
                results.append(dict(variant=variant_id, error=_error_text(exc, log.getvalue())))
    return results


def _cpu_seconds() -> float:
    """CPU time of this process and of the tools it ran (ptxas, cuobjdump)."""
    import resource

    own, tools = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + tools.ru_utime + tools.ru_stime


def _worker_init() -> None:
    os.environ.pop(INTERPRET_ENV_VAR, None)
    triton_ops()


@dataclass
class TritonVariant:
    kernel: str
    shape: LayerShape
    dtype: str
    args: tuple
    kwargs: dict
    grid: Callable
    arg_names: list[str]


def plan_triton(shapes: Sequence[LayerShape], dtype_tags: Sequence[str], archs: Sequence[int],
                kernel_filter: Callable[[str], bool] = lambda name: True, fresh: bool = False
                ) -> tuple[list[TritonVariant], list[CompileJob], set[str]]:
    """Variants (one launch of one kernel for one shape and dtype), the compile jobs that
    cover every candidate configuration of each on each target, and the kernels launched."""
    variants: list[TritonVariant] = []
    jobs: dict[tuple, CompileJob] = {}
    launched: set[str] = set()
    for shape in shapes:
        for tag in dtype_tags:
            for arch in archs:
                for launch in layer_launches(shape, tag, TARGETS[arch].sms):
                    name = kernel_name(launch.kernel)
                    launched.add(name)
                    if not kernel_filter(name):
                        continue
                    args = _plain_args(launch.args)
                    variant_id = len(variants)
                    variants.append(TritonVariant(name, shape, tag, args, launch.kwargs,
                                                  launch.grid, _jit_function(launch.kernel).arg_names))
                    ref = (_jit_function(launch.kernel).module, name)
                    for config in candidate_configs(launch.kernel, launch.args, launch.kwargs):
                        key = (name, arch, json.dumps(config, sort_keys=True))
                        job = jobs.setdefault(key, CompileJob(ref, arch, config, [], fresh))
                        job.variants.append((variant_id, args, launch.kwargs))
    return variants, list(jobs.values()), launched


def run_jobs(jobs: Sequence[CompileJob], workers: int, progress: bool) -> list[tuple[CompileJob, list[dict]]]:
    """Compile the jobs, in ``workers`` processes (1: in this process), with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="compile job", desc="compiling", leave=False, file=sys.stderr,
               disable=None if progress else True)
    done = []
    try:
        if workers <= 1:
            for job in jobs:
                done.append((job, compile_job(job)))
                bar.update()
        else:
            import concurrent.futures as futures
            import multiprocessing

            # Longest first: the attention kernels compile slowest.
            order = sorted(jobs, key=lambda j: ("attention" not in j.kernel_ref[1], -len(j.variants)))
            with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init) as pool:
                pending = {pool.submit(compile_job, job): job for job in order}
                for future in futures.as_completed(pending):
                    done.append((pending[future], future.result()))
                    bar.update()
    finally:
        bar.close()
    return done


def _failures(row: dict, target: GpuTarget, strict_mma: bool) -> list[str]:
    if "error" in row:
        return [f"does not compile: {row['error']}"]
    problems = []
    if row["spill_stores"] or row["spill_loads"]:
        problems.append(f"spills registers ({row['spill_stores']} B stores, {row['spill_loads']} B loads)")
    elif row["stack_bytes"]:
        problems.append(f"uses {row['stack_bytes']} B of local memory per thread (stack frame)")
    smem = row["static_smem"] + (row["dynamic_smem"] or 0)
    if smem > target.smem_per_block_optin:
        problems.append(f"needs {smem} B of shared memory per block, above {target.name}'s "
                        f"{target.smem_per_block_optin} B")
    occ = row["occupancy"]
    if occ["blocks_per_sm"] == 0:
        problems.append(f"cannot be resident on an SM (limited by {', '.join(occ['binding'])})")
    mma_problem = tensor_core_problem(row["dtype"], row["mma"], row.get("has_dot") if strict_mma else None)
    if mma_problem and (strict_mma or "TF32" in mma_problem):
        problems.append(mma_problem)
    return problems


def _finish_row(row: dict, target: GpuTarget, strict_mma: bool) -> dict:
    if "error" not in row:
        row["occupancy"] = asdict(occupancy(target, row["registers"], row["threads"],
                                            row["static_smem"], row["dynamic_smem"] or 0,
                                            row["barriers"]))
    row["failures"] = _failures(row, target, strict_mma)
    return row


def collect_triton_rows(variants: Sequence[TritonVariant], results) -> list[dict]:
    """One row per distinct compiled kernel (or compile error), with the shapes using it."""
    rows: dict[tuple, dict] = {}
    for job, job_results in results:
        config = {k: v for k, v in job.config.items()}
        for result in job_results:
            variant = variants[result["variant"]]
            key = (variant.kernel, job.arch, result.get("hash") or result.get("error"),
                   json.dumps(config, sort_keys=True), variant.dtype)
            row = rows.get(key)
            if row is None:
                row = {k: v for k, v in result.items() if k != "variant"}
                row.update(source="triton", kernel=variant.kernel, arch=job.arch, dtype=variant.dtype,
                           config=config, layouts=[], shapes=[], programs={})
                rows[key] = row
            if variant.shape.layout not in row["layouts"]:
                row["layouts"].append(variant.shape.layout)
            row["shapes"].append(variant.shape.label)
            meta = {**dict(zip(variant.arg_names, variant.args)), **variant.kwargs, **config}
            row["programs"][variant.shape.label] = int(torch.Size(variant.grid(meta)).numel())
    order = {name: i for i, name in enumerate(dict.fromkeys(v.kernel for v in variants))}
    ordered = sorted(rows.values(), key=lambda r: (order[r["kernel"]], r["layouts"], r["dtype"], r["arch"],
                                                   -r.get("threads", 0), json.dumps(r["config"])))
    return [_finish_row(row, TARGETS[row["arch"]], strict_mma=True) for row in ordered]


# ----------------------------------------------------------------------------------------
# CUDA: setup.py's nvcc command -> ptxas -v, SASS, launch bounds
# ----------------------------------------------------------------------------------------

# Runs setup.py's build_ext with torch's ninja step replaced by a recorder: the nvcc
# command line of the real build, without compiling anything.
_CAPTURE_BUILD = r"""
import json, os, runpy, sys, tempfile
import torch.utils.cpp_extension as ext
class Captured(Exception):
    pass
def record(sources, objects, cflags, post_cflags, cuda_cflags, cuda_post_cflags, *args, **kwargs):
    print("@@NVCC@@" + json.dumps(dict(sources=sources, cuda_cflags=cuda_cflags,
          cuda_post_cflags=cuda_post_cflags, nvcc=ext._join_cuda_home("bin", "nvcc"))))
    raise Captured()
ext._write_ninja_file_and_compile_objects = record
tmp = tempfile.mkdtemp()
sys.argv = ["setup.py", "-q", "build_ext", "--build-temp", tmp, "--build-lib", tmp]
try:
    runpy.run_path("setup.py", run_name="__main__")
except Captured:
    pass
"""


def source_root() -> str | None:
    """The checkout this package was installed from (editable installs), or None."""
    root = os.path.dirname(PACKAGE_DIR)
    return root if os.path.exists(os.path.join(root, "setup.py")) and os.path.isdir(
        os.path.join(root, "csrc")) else None


def nvcc_build_command(root: str) -> dict:
    """{nvcc, cuda_cflags, cuda_post_cflags, sources}: how setup.py compiles CUDA sources
    (FORCE_CUDA=1), captured from torch's build extension."""
    env = dict(os.environ, FORCE_CUDA="1")
    result = _run([sys.executable, "-c", _CAPTURE_BUILD], cwd=root, env=env, timeout=600)
    line = next((l for l in result.stdout.splitlines() if l.startswith("@@NVCC@@")), None)
    if line is None:
        raise AuditError(f"could not read the nvcc command of setup.py in {root}: "
                         f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    captured = json.loads(line[len("@@NVCC@@"):])
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


DEFAULT_CUDA_THREADS = 256


def analyse_cuda_object(obj: str, ptxas_log: str, source: str) -> list[dict]:
    """Rows for every kernel of one compiled CUDA object."""
    cuobjdump = _triton_tool("cuobjdump")
    resources = parse_ptxas_log(ptxas_log)
    sass = parse_sass(_run([cuobjdump, "-sass", obj]).stdout)
    bounds = parse_max_threads(_run([cuobjdump, "-elf", obj]).stdout)
    names = _demangle(f for (_, f), r in resources.items() if r.get("entry"))
    rows = []
    for (arch, mangled), res in sorted(resources.items()):
        if not res.get("entry") and not (res.get("spill_stores") or res.get("spill_loads")):
            continue  # a device function without spills: accounted for in its callers
        demangled = names.get(mangled, _demangle([mangled])[mangled])
        threads = bounds.get((arch, mangled))
        row = dict(source="cuda", file=source, kernel=_short_name(demangled), demangled=demangled,
                   mangled=mangled, arch=arch, dtype=_cuda_dtype(demangled),
                   registers=res.get("registers", 0), spill_stores=res.get("spill_stores", 0),
                   spill_loads=res.get("spill_loads", 0), stack_bytes=res.get("stack_bytes", 0),
                   barriers=res.get("barriers", 0), static_smem=res.get("static_smem", 0),
                   dynamic_smem=None, threads=threads or DEFAULT_CUDA_THREADS,
                   threads_declared=threads is not None,
                   mma=mma_summary(sass.get((arch, mangled), Counter())), config={})
        if arch in TARGETS:
            rows.append(_finish_row(row, TARGETS[arch], strict_mma=False))
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
        running = []
        for source, cmd, _ in commands:
            while len([p for p in running if p[1].poll() is None]) >= max(1, workers):
                running[0][1].wait()
            running.append((source, subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True), cmd))
        for source, proc, cmd in running:
            log, _ = proc.communicate()
            obj = cmd[cmd.index("-o") + 1]
            if proc.returncode != 0:
                errors = [l for l in log.splitlines() if "error" in l.lower()] or log.splitlines()[-3:]
                for arch in archs:
                    rows.append(dict(source="cuda", file=source, kernel=os.path.basename(source),
                                     arch=arch, dtype="-", config={}, error=" | ".join(errors[:3])[:600],
                                     failures=[f"does not compile: {' | '.join(errors[:3])[:600]}"]))
                continue
            rows += analyse_cuda_object(obj, log, source)
    return rows, notes


# ----------------------------------------------------------------------------------------
# Static checks of the Triton sources
# ----------------------------------------------------------------------------------------


def dot_precision_issues(paths: Iterable[str] | None = None) -> list[str]:
    """Every ``tl.dot`` must say ``input_precision``: on a GPU fp32 inputs default to TF32,
    while the interpreter (our CPU tests) computes exact fp32."""
    if paths is None:
        paths = sorted(glob.glob(os.path.join(PACKAGE_DIR, "triton", "*.py")))
    issues = []
    for path in paths:
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "dot"):
                continue
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if owner_name not in ("tl", "language"):
                continue
            keywords = {k.arg for k in node.keywords}
            where = f"{os.path.relpath(path, os.path.dirname(PACKAGE_DIR))}:{node.lineno}"
            if "allow_tf32" in keywords:
                issues.append(f"{where}: tl.dot uses the deprecated allow_tf32; say input_precision")
            elif "input_precision" not in keywords:
                issues.append(f"{where}: tl.dot without input_precision (fp32 would be TF32 on a GPU)")
    return issues


# ----------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------

#: CUDA kernels (short names) that do the work of a Triton kernel of the cost model.
CUDA_KERNEL_WORK = {"qkv_projection_direct_kernel": "qkv_projection_fwd_kernel"}


def roofline_rows(shapes: Sequence[LayerShape], dtype_tags: Sequence[str],
                  archs: Sequence[int]) -> list[dict]:
    """Roofline time per kernel (executed FLOPs, minimum bytes) and per eager stage, on the
    GPUs of the targets. An ESTIMATE on paper, not a measurement."""
    from .. import roofline
    from ...triton.bench import kernel_costs

    gpus = [TARGETS[a].gpu for a in archs]
    rows = []
    for shape in shapes:
        for tag in dtype_tags:
            if tag == "tf32":
                continue  # no TF32 peak in roofline.GPU_SPECS
            dtype = DTYPE_TAGS[tag]
            costs = kernel_costs(shape.layout, shape.n, shape.tokens, shape.features, shape.heads,
                                 shape.kernel_sizes, dtype)
            base = dict(shape=shape.label, preset=shape.preset, batch=shape.batch,
                        layout=shape.layout, dtype=tag)
            for name, cost in costs["kernels"].items():
                times = {g: roofline.kernel_bound(cost["executed_flops"], cost["min_bytes"], g, dtype)
                         for g in gpus}
                also = [c for c, work in CUDA_KERNEL_WORK.items() if work == name]
                rows.append(dict(base, kind="kernel", name=name, stage=cost["stage"], also=also,
                                 gflop=cost["flops"] / 1e9, gflop_executed=cost["executed_flops"] / 1e9,
                                 mbytes=cost["min_bytes"] / 1e6,
                                 us={g: t * 1e6 for g, (t, _) in times.items()},
                                 compute_bound={g: cb for g, (_, cb) in times.items()}))
            for stage, cost in costs["eager"].items():
                times = {g: roofline.kernel_bound(cost["flops"], cost["bytes"], g, dtype) for g in gpus}
                rows.append(dict(base, kind="eager", name=f"eager {stage}", stage=stage, also=[],
                                 gflop=cost["flops"] / 1e9, gflop_executed=cost["flops"] / 1e9,
                                 mbytes=cost["bytes"] / 1e6,
                                 us={g: t * 1e6 for g, (t, _) in times.items()},
                                 compute_bound={g: cb for g, (_, cb) in times.items()}))
    return rows


# ----------------------------------------------------------------------------------------
# The audit
# ----------------------------------------------------------------------------------------


@dataclass
class AuditSettings:
    presets: Sequence[str] = PAPER_PRESETS
    batches: Sequence[int] = (1, 64)
    layouts: Sequence[str] = LAYOUTS
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16")
    archs: Sequence[int] = (80, 90)
    triton: bool = True
    cuda: bool = True
    kernels: Sequence[str] = ()          # substrings of kernel names; empty: all
    workers: int = 1
    progress: bool = True
    fresh: bool = False                  # compile everything, ignoring Triton's disk cache
    source_root: str | None = None       # checkout with setup.py and csrc/; default: ours


def run_audit(settings: AuditSettings) -> dict:
    """Compile, analyse and judge; the whole report as a JSON-able dict (``ok`` is False
    when anything fails)."""
    for arch in settings.archs:
        if arch not in TARGETS:
            raise AuditError(f"unknown target sm_{arch}; available: {', '.join(t.name for t in TARGETS.values())}")
    for tag in settings.dtypes:
        if tag not in DTYPE_TAGS:
            raise AuditError(f"unknown dtype {tag!r}; available: {', '.join(DTYPE_TAGS)}")

    def wanted(name: str) -> bool:
        return not settings.kernels or any(k in name for k in settings.kernels)

    report: dict = dict(
        title="Kernel audit: compiled and analysed here, not run on a GPU",
        toolchain=toolchain(),
        settings=dict(presets=list(settings.presets), batches=list(settings.batches),
                      layouts=list(settings.layouts), dtypes=list(settings.dtypes),
                      archs=list(settings.archs), kernels=list(settings.kernels)),
        targets={t.name: asdict(t) for a, t in TARGETS.items() if a in settings.archs},
        triton=[], cuda=[], notes=[], source_issues=[], roofline=[],
    )
    failures: list[str] = []
    shapes = layer_shapes(settings.presets, settings.batches, settings.layouts)
    if settings.triton:
        report["source_issues"] = dot_precision_issues()
        failures += [f"source: {issue}" for issue in report["source_issues"]]
        variants, jobs, launched = plan_triton(shapes, settings.dtypes, settings.archs, wanted,
                                               settings.fresh)
        for name in sorted(set(defined_triton_kernels()) - launched):
            failures.append(f"triton {name}: no launch plan reaches it, so it is not audited "
                            "(add it to a plan in convformer_fast/triton/ops.py)")
        report["triton_compiles"] = sum(len(j.variants) for j in jobs)
        report["triton"] = collect_triton_rows(variants, run_jobs(jobs, settings.workers, settings.progress))
        report["triton_compile_cpu_seconds"] = round(sum(r.get("cpu_seconds", 0) for r in report["triton"]), 1)
        report["roofline"] = roofline_rows(shapes, settings.dtypes, settings.archs)
    if settings.cuda:
        root = settings.source_root or source_root()
        if root is None:
            report["notes"].append("CUDA kernels not audited: no source checkout next to the "
                                   "installed package (pass --source-root)")
        elif not glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")):
            report["notes"].append(f"no CUDA sources in {root}/csrc/cuda")
        else:
            rows, notes = audit_cuda(root, settings.archs, settings.workers)
            report["cuda"] = [r for r in rows if wanted(r["kernel"])]
            report["notes"] += notes
    for row in report["triton"] + report["cuda"]:
        for problem in row["failures"]:
            failures.append(f"{row['source']} {row_label(row)}: {problem}")
    report["failures"] = failures
    report["ok"] = not failures
    return report


def row_label(row: dict) -> str:
    config = row.get("config") or {}
    tiles = "x".join(str(config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in config)
    extra = f" {tiles} w{config['num_warps']} s{config['num_stages']}" if "num_warps" in config else ""
    layout = f" {'+'.join(row['layouts'])}" if row.get("layouts") else ""
    return f"{row['kernel']} [sm_{row['arch']} {row['dtype']}{layout}{extra}]"


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------


def _span(values: Sequence, fmt: Callable = str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"


def _kib(n: int) -> str:
    return f"{n / 1024:.0f}" if n >= 1024 or n == 0 else f"{n / 1024:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _limits(rows: Sequence[dict]) -> str:
    counts = Counter(b for r in rows if "occupancy" in r for b in r["occupancy"]["binding"])
    return ", ".join(name for name, _ in counts.most_common(2)) or "-"


def triton_summary(rows: Sequence[dict]) -> list[list[str]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kernel"], "+".join(row["layouts"]), row["dtype"], row["arch"]), []).append(row)
    table = []
    for (kernel, layout, dtype, arch), group in groups.items():
        ok = [r for r in group if "error" not in r]
        spilling = [r for r in ok if r["spill_stores"] or r["spill_loads"] or r["stack_bytes"]]
        mma = sorted({row_mma_label(r) for r in ok})
        table.append([
            kernel, layout, dtype, f"sm_{arch}", str(len(group)),
            _span([r["registers"] for r in ok]),
            f"{len(spilling)} of {len(group)}" if spilling else "0",
            _span([r["static_smem"] + r["dynamic_smem"] for r in ok], _kib),
            _span([r["threads"] for r in ok]),
            _span([r["occupancy"]["occupancy"] for r in ok], lambda v: f"{v:.0%}"),
            _limits(ok), ", ".join(mma) or "-",
            "FAIL" if any(r["failures"] for r in group) else "ok",
        ])
    return table


SUMMARY_HEADER = ["kernel", "layout", "dtype", "arch", "cfgs", "regs", "spilling", "smem KiB",
                  "threads", "occupancy", "limited by", "MMA", ""]


def detail_rows(rows: Sequence[dict]) -> list[list[str]]:
    table = []
    for r in rows:
        if "error" in r:
            table.append([row_label(r), "-", "-", "-", "-", "-", "-", "-", "-", "does not compile"])
            continue
        occ = r["occupancy"]
        table.append([
            row_label(r), str(r["registers"]), f"{r['spill_stores']}/{r['spill_loads']}",
            str(r["stack_bytes"]), f"{r['static_smem']}+{'?' if r['dynamic_smem'] is None else r['dynamic_smem']}",
            str(r["threads"]) + ("" if r.get("threads_declared", True) else "*"),
            f"{occ['occupancy']:.0%}", ", ".join(occ["binding"]), row_mma_label(r),
            "; ".join(r["failures"]) or "ok",
        ])
    return table


DETAIL_HEADER = ["kernel [target dtype layout config]", "regs", "spill st/ld B", "stack B",
                 "smem B static+dyn", "threads", "occupancy", "limited by", "MMA", ""]


def roofline_table(rows: Sequence[dict], gpus: Sequence[str]) -> list[list[str]]:
    table = []
    for r in rows:
        table.append([r["shape"], r["dtype"], r["name"] + (f" (= {', '.join(r['also'])})" if r["also"] else ""),
                      f"{r['gflop']:.3f}", f"{r['gflop_executed']:.3f}", f"{r['mbytes']:.1f}"]
                     + [f"{r['us'][g]:.1f}{'c' if r['compute_bound'][g] else 'm'}" for g in gpus])
    return table


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    cells = lambda r: "| " + " | ".join(str(c).replace("|", "/") for c in r) + " |"  # noqa: E731
    return [cells(header), "|" + "---|" * len(header)] + [cells(r) for r in rows]


def format_markdown(report: dict) -> str:
    """The summary tables as Markdown (for READMEs), with the provenance line."""
    tc = report["toolchain"]
    st = report["settings"]
    out = [f"Compiled and analysed here, not run on a GPU: `convformer-fast kernels` on {tc['date']}, "
           f"torch {tc['torch']}, triton {tc['triton']} (its ptxas: {tc['triton_ptxas']}), "
           f"nvcc {tc['nvcc']}. Shapes: {', '.join(st['presets'])} at batch "
           f"{', '.join(map(str, st['batches']))}, {' and '.join(st['layouts'])} layers, "
           f"{', '.join(st['dtypes'])}; targets "
           + ", ".join(f"{n} ({t['gpu']})" for n, t in report["targets"].items()) + "."]
    if report["triton"]:
        out += ["", f"Triton kernels ({len(report['triton'])} distinct compiles; ranges over the "
                    "autotune configurations each kernel may pick):", ""]
        out += _markdown(SUMMARY_HEADER[:-1] + ["status"], triton_summary(report["triton"]))
    if report["cuda"]:
        out += ["", f"CUDA kernels (`csrc/cuda/*.cu` as setup.py builds them; * = no `__launch_bounds__`, "
                    f"{DEFAULT_CUDA_THREADS} threads assumed):", ""]
        out += _markdown([h or "status" for h in DETAIL_HEADER], detail_rows(report["cuda"]))
    out += ["", "Result: " + ("no failures." if report["ok"] else f"{len(report['failures'])} failure(s).")]
    return "\n".join(out) + "\n"


def format_report(report: dict, detail: bool = False, roofline: bool = True) -> str:
    tc = report["toolchain"]
    out = [report["title"],
           f"date {tc['date']}; torch {tc['torch']}, triton {tc['triton']} (ptxas {tc['triton_ptxas']}), "
           f"nvcc {tc['nvcc']}",
           (("shapes: presets {presets}, batch {batches}, layouts {layouts}; dtypes {dtypes}; "
             if report["triton"] else "") + "targets {targets}").format(
               presets=",".join(report["settings"]["presets"]),
               batches=",".join(map(str, report["settings"]["batches"])),
               layouts=",".join(report["settings"]["layouts"]),
               dtypes=",".join(report["settings"]["dtypes"]),
               targets=", ".join(f"{n} ({t['gpu']}, {t['sms']} SMs)" for n, t in report["targets"].items()))]
    if report["triton"]:
        out += ["", f"Triton kernels: every candidate autotune config, {len(report['triton'])} distinct "
                    f"compiles for {report.get('triton_compiles', 0)} (shape, dtype, config, target) launches, "
                    f"{report.get('triton_compile_cpu_seconds', 0):.0f} CPU-s"]
        out += _table(SUMMARY_HEADER, triton_summary(report["triton"]))
        if detail:
            out += ["", "Triton kernels, per compiled configuration"]
            out += _table(DETAIL_HEADER, detail_rows(report["triton"]))
    if report["cuda"]:
        out += ["", "CUDA kernels (csrc/cuda/*.cu as setup.py compiles them; * = no __launch_bounds__, "
                    f"{DEFAULT_CUDA_THREADS} threads assumed; dynamic shared memory is set at launch, '?')"]
        out += _table(DETAIL_HEADER, detail_rows(report["cuda"]))
    if roofline and report["roofline"]:
        gpus = [t["gpu"] for t in report["targets"].values()]
        out += ["", "Roofline ESTIMATE per kernel (not a measurement): max(executed FLOPs / peak, "
                    "minimum bytes / bandwidth); c = compute-bound, m = memory-bound; eager rows: "
                    "the reference ops the kernels replace"]
        out += _table(["shape", "dtype", "kernel", "GFLOP", "GFLOP exec", "min MB"] + [f"{g} us" for g in gpus],
                      roofline_table(report["roofline"], gpus))
    for note in report["notes"]:
        out.append(f"note: {note}")
    if report["failures"]:
        out += ["", f"FAILED: {len(report['failures'])} problem(s)"] + [f"  {f}" for f in report["failures"]]
    else:
        n = len(report["triton"]) + len(report["cuda"])
        out += ["", f"OK: {n} compiled kernels; no spills or local memory, shared memory within every "
                    "target, every kernel resident, tensor-core use as the dtype requires"]
    return "\n".join(out)
