"""The GPU-less kernel audit (convformer_fast.perf.audit, `convformer-fast kernels`).

* The parsers and the occupancy model against real tool output and against CUDA's own
  occupancy calculator (cuda_occupancy.h, compiled here with g++).
* The detectors against planted problems: a Triton kernel whose tile cannot fit in
  registers, CUDA kernels with spills, a local array and TF32 MMA.
* The audit itself on the CI subset (`--quick`): every Triton kernel, every candidate
  autotune configuration, sm_80 and sm_90, and every CUDA kernel as setup.py builds it
  must compile without spills, within shared memory, with the tensor-core use the dtype
  asks for. A kernel change that starts spilling or stops compiling fails here.

Triton must be imported without TRITON_INTERPRET to compile for a GPU, and this test
process has it set (tests/conftest.py), so the compiling tests run in fresh processes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from convformer_fast.perf import audit
from convformer_fast.perf.audit import internals
from convformer_fast.toolchain import cuda_home

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = cuda_home()
NVCC = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
HAS_NVCC = bool(NVCC and os.path.exists(NVCC))
OCC_HEADER = os.path.join(CUDA_HOME or "", "include", "cuda_occupancy.h")


def _fresh_python(code: str, timeout: int = 600, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != audit.INTERPRET_ENV_VAR}
    env.update(env_vars)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------
# Parsers (samples are verbatim output of nvcc 13.0 / triton's ptxas 12.9 and cuobjdump)
# ----------------------------------------------------------------------------------------

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z12spill_kernelPfii' for 'sm_80'
ptxas info    : Function properties for _Z12spill_kernelPfii
    16384 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 16384 bytes cumulative stack size, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z9lb_kernelPfi' for 'sm_90'
ptxas info    : Function properties for _Z9lb_kernelPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem
ptxas info    : Compile time = 99.658 ms
ptxas info    : Compiling entry function 'attention_bwd_dq_kernel' for 'sm_90a'
ptxas info    : Function properties for attention_bwd_dq_kernel
    128 bytes stack frame, 124 bytes spill stores, 124 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 128 bytes cumulative stack size
"""


def test_ptxas_log_parser_reads_every_entry_per_arch():
    records = audit.parse_ptxas_log(PTXAS_LOG)
    assert records[(80, "_Z12spill_kernelPfii")] == dict(
        entry=True, stack_bytes=16384, spill_stores=0, spill_loads=0, registers=32, barriers=0,
        static_smem=0)
    assert records[(90, "_Z9lb_kernelPfi")]["static_smem"] == 1024
    assert records[(90, "_Z9lb_kernelPfi")]["barriers"] == 1
    dq = records[(90, "attention_bwd_dq_kernel")]
    assert (dq["registers"], dq["spill_stores"], dq["spill_loads"]) == (255, 124, 124)


SASS = """\
Fatbin elf code:
================
arch = sm_80
	code for sm_80
		Function : _Z11tf32_kernelPKfS0_Pf
        /*0090*/                   HMMA.1684.F32.TF32 R4, R12, R8, RZ ;   /* 0x000000080c04723c */
        /*00a0*/              @!P0 HMMA.1684.F32.TF32 R4, R14, R10, R4 ;  /* 0x0000000a0e04723c */
        /*00b0*/                   FFMA R2, R3, R4, R5 ;                  /* 0x0000000403027223 */
		Function : _Z11wmma_kernelPK6__halfS1_Pf
        /*0090*/                   HMMA.16816.F32 R4, R12, R8, RZ ;       /* 0x000000080c04723c */
	code for sm_90a
		Function : attention_fwd_kernel
        /*0a10*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ; /* 0x0 */
        /*0a20*/                   STL.64 [R1+0x8], R6 ;                   /* 0x0 */
        /*0a30*/                   LDL R6, [R1+0x8] ;                      /* 0x0 */
"""


def test_sass_parser_and_tensor_core_labels():
    counts = audit.parse_sass(SASS)
    tf32 = audit.mma_summary(counts[(80, "_Z11tf32_kernelPKfS0_Pf")])
    assert tf32["instructions"] == {"HMMA.1684.F32.TF32": 2} and tf32["input_types"] == ["tf32"]
    assert tf32["ffma"] == 1
    assert audit.mma_summary(counts[(80, "_Z11wmma_kernelPK6__halfS1_Pf")])["input_types"] == ["fp16"]
    attention = audit.mma_summary(counts[(90, "attention_fwd_kernel")])
    assert audit.mma_label(attention) == "HGMMA bf16"
    assert (attention["local_stores"], attention["local_loads"]) == (1, 1)


def test_precision_contract_of_the_instructions():
    summary = lambda *ops: audit.mma_summary(Counter(ops))  # noqa: E731
    exact = summary("FFMA", "FFMA")
    assert audit.tensor_core_problem("fp32", exact, has_dot=True) is None
    assert "TF32" in audit.tensor_core_problem("fp32", summary("HMMA.1684.F32.TF32"), has_dot=True)
    # A TF32 MMA in an fp32 CUDA kernel is reported even where matmuls are not known.
    assert "TF32" in audit.tensor_core_problem("fp32", summary("HMMA.1688.F32.TF32"), has_dot=None)
    assert audit.tensor_core_problem("tf32", summary("HGMMA.64x64x8.F32.TF32"), has_dot=True) is None
    assert "did not use TF32" in audit.tensor_core_problem("tf32", exact, has_dot=True)
    assert audit.tensor_core_problem("bf16", summary("HGMMA.64x64x16.F32.BF16"), has_dot=True) is None
    assert "did not compile to tensor-core" in audit.tensor_core_problem("bf16", exact, has_dot=True)
    assert audit.tensor_core_problem("fp16", summary("HMMA.16816.F32"), has_dot=True) is None
    assert audit.tensor_core_problem("bf16", exact, has_dot=False) is None  # no matmul at all


def test_launch_bounds_are_read_from_the_elf():
    elf = """\
arch = sm_90
.nv.info._Z9lb_kernelPfi
	<0x11>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x80 0x1 0x1 
.nv.info._Z10dyn_kernelPf
	Attribute:	EIATTR_MAXREG_COUNT
	Value:	0xff
"""
    assert audit.parse_max_threads(elf) == {(90, "_Z9lb_kernelPfi"): 128}


def test_tl_dot_without_precision_is_caught(tmp_path):
    assert audit.dot_precision_issues() == [], "every tl.dot of the package states its precision"
    bad = tmp_path / "kernels.py"
    bad.write_text("import triton.language as tl\n"
                   "def k(a, b):\n"
                   "    x = tl.dot(a, b)\n"
                   "    y = tl.dot(a, b, allow_tf32=False)\n"
                   "    return tl.dot(a, b, input_precision='ieee') + x + y\n")
    issues = audit.dot_precision_issues([str(bad)])
    assert len(issues) == 2
    assert ":3: tl.dot without input_precision" in issues[0] and "allow_tf32" in issues[1]


# ----------------------------------------------------------------------------------------
# Occupancy
# ----------------------------------------------------------------------------------------


def test_occupancy_worked_examples():
    h100, a100 = audit.TARGETS[90], audit.TARGETS[80]
    # 255 registers x 256 threads: 8 warps of 8192 registers = all 65536: one block.
    occ = audit.occupancy(h100, registers=255, threads=256, dynamic_smem=32768, barriers=1)
    assert (occ.blocks_per_sm, occ.warps_per_sm, occ.binding) == (1, 8, ["registers"])
    # 32 registers, 1024 threads: the 64-warp limit binds as much as the registers.
    occ = audit.occupancy(a100, registers=32, threads=1024)
    assert occ.blocks_per_sm == 2 and occ.occupancy == 1.0
    assert set(occ.binding) == {"registers", "warps"}
    # 100 KiB of shared memory: one block per A100 SM (164 KiB), two per H100 SM (228 KiB).
    assert audit.occupancy(a100, 32, 128, dynamic_smem=100 * 1024).binding == ["shared memory"]
    assert audit.occupancy(a100, 32, 128, dynamic_smem=100 * 1024).blocks_per_sm == 1
    assert audit.occupancy(h100, 32, 128, dynamic_smem=100 * 1024).blocks_per_sm == 2
    # Above the per-block opt-in limit (163 KiB on A100) nothing is resident.
    assert audit.occupancy(a100, 32, 128, dynamic_smem=164 * 1024).blocks_per_sm == 0
    # Tiny blocks: the 32-block limit binds.
    assert audit.occupancy(h100, 16, 32).binding == ["blocks"]


@pytest.mark.skipif(not (os.path.exists(OCC_HEADER) and shutil.which("g++")),
                    reason="needs the CUDA toolkit's cuda_occupancy.h and g++")
def test_occupancy_matches_cuda_occupancy_calculator(tmp_path):
    """Our occupancy model against NVIDIA's own calculator (the header behind
    cudaOccupancyMaxActiveBlocksPerMultiprocessor), over registers, block sizes, static
    and dynamic shared memory and barriers, for A100 and H100."""
    source = tmp_path / "occ.cpp"
    source.write_text(textwrap.dedent("""\
        #include <cstdio>
        #include <cuda_occupancy.h>
        int main() {
          int arch, regs, threads, st, dyn, bars, sms, smem_sm, smem_optin;
          while (scanf("%d %d %d %d %d %d %d %d %d", &arch, &regs, &threads, &st, &dyn, &bars,
                       &sms, &smem_sm, &smem_optin) == 9) {
            cudaOccDeviceProp p;
            p.computeMajor = arch / 10; p.computeMinor = arch % 10; p.maxThreadsPerBlock = 1024;
            p.maxThreadsPerMultiprocessor = 2048; p.regsPerBlock = 65536;
            p.regsPerMultiprocessor = 65536; p.warpSize = 32; p.sharedMemPerBlock = 49152;
            p.sharedMemPerMultiprocessor = smem_sm; p.numSms = sms;
            p.sharedMemPerBlockOptin = smem_optin; p.reservedSharedMemPerBlock = 1024;
            cudaOccFuncAttributes a;
            a.maxThreadsPerBlock = 1024; a.numRegs = regs; a.sharedSizeBytes = st;
            a.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN;
            a.maxDynamicSharedSizeBytes = dyn; a.numBlockBarriers = bars;
            cudaOccDeviceState s;
            cudaOccResult r;
            int e = cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &a, &s, threads, dyn);
            printf("%d %d %u\\n", e, r.activeBlocksPerMultiprocessor, r.limitingFactors);
          }
        }
        """))
    binary = tmp_path / "occ"
    subprocess.run(["g++", "-std=c++17", f"-I{os.path.dirname(OCC_HEADER)}", str(source), "-o",
                    str(binary)], check=True, capture_output=True)
    bits = {"warps": 1, "registers": 2, "shared memory": 4, "blocks": 8, "barriers": 16}
    cases = [(arch, regs, threads, static, dynamic, barriers)
             for arch in (80, 90)
             for regs in (16, 24, 32, 40, 56, 64, 72, 96, 128, 168, 200, 255)
             for threads in (32, 64, 96, 128, 256, 384, 512, 1024)
             for static, dynamic in ((0, 0), (1024, 0), (0, 20000), (4096, 65536), (0, 120000),
                                     (0, 170000), (0, 232448))
             for barriers in (0, 1, 3)]
    lines = "".join(f"{a} {r} {t} {s} {d} {b} {audit.TARGETS[a].sms} {audit.TARGETS[a].smem_per_sm} "
                    f"{audit.TARGETS[a].smem_per_block_optin}\n" for a, r, t, s, d, b in cases)
    out = subprocess.run([str(binary)], input=lines, capture_output=True, text=True, check=True)
    results = out.stdout.split("\n")
    assert len([r for r in results if r]) == len(cases)
    for case, line in zip(cases, results):
        error, blocks, factors = map(int, line.split())
        assert error == 0, case
        arch, regs, threads, static, dynamic, barriers = case
        ours = audit.occupancy(audit.TARGETS[arch], regs, threads, static, dynamic, barriers)
        assert ours.blocks_per_sm == blocks, (case, ours)
        if blocks:
            # The header flags the limits equal to the minimum before barriers, then the
            # barrier limit if it lowers that minimum further: compare each limit's value.
            before = {k: v for k, v in ours.limits.items() if k != "barriers" and v is not None}
            flagged = {k for k, v in before.items() if v == min(before.values())}
            if ours.limits.get("barriers") == blocks:
                flagged.add("barriers")
            assert sum(bits[b] for b in flagged) == factors, (case, ours.limits, factors)


# ----------------------------------------------------------------------------------------
# Private torch / Triton internals, and what the audit reads from _C
# ----------------------------------------------------------------------------------------


def _prune_without_nargs(self, kwargs):
    return self.configs


@pytest.mark.parametrize("owner, name, replacement, complaint", [
    ("triton.backends.nvidia.compiler.CUDABackend", "make_cubin", None, "is gone"),
    ("triton.runtime.autotuner.Autotuner", "prune_configs", _prune_without_nargs, "no longer reads self.nargs"),
])
def test_a_changed_triton_internal_is_named_in_one_line(monkeypatch, owner, name, replacement, complaint):
    import importlib

    import triton

    module, cls = owner.rsplit(".", 1)
    target = getattr(importlib.import_module(module), cls)
    monkeypatch.setattr(internals, "_checked", set())
    if replacement is None:
        monkeypatch.delattr(target, name)
    else:
        monkeypatch.setattr(target, name, replacement)
    with pytest.raises(audit.AuditError) as raised:
        internals.check_triton()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"triton {triton.__version__}: {owner}.{name} {complaint}"), message
    assert internals.CHECKED_AGAINST in message and "internals.py" in message


def test_a_changed_torch_signature_is_named_in_one_line(monkeypatch):
    internals.quiet_cuda_home_notice()
    import torch.utils.cpp_extension as cpp_extension

    def renamed(sources, objects, cflags, post_cflags, nvcc_cflags, nvcc_post_cflags, **kwargs):
        pass

    monkeypatch.setattr(internals, "_checked", set())
    monkeypatch.setattr(cpp_extension, "_write_ninja_file_and_compile_objects", renamed)
    with pytest.raises(audit.AuditError) as raised:
        internals.check_torch()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("torch ")
    assert ("_write_ninja_file_and_compile_objects takes (sources, objects, cflags, post_cflags, "
            "nvcc_cflags, nvcc_post_cflags, kwargs), not (sources, objects, cflags, post_cflags, "
            "cuda_cflags, cuda_post_cflags)") in message


def test_the_stand_in_driver_names_what_triton_asks_of_it():
    driver = internals.TargetDriver(90)
    assert (driver.get_current_target().arch, driver.get_current_device()) == (90, 90)
    assert not hasattr(driver, "get_device_interface")  # Triton's own probes still read "absent"
    with pytest.raises(audit.AuditError, match="asked the active driver for 'get_device_interface'"):
        driver.get_device_interface()


def test_only_torchs_cuda_home_notice_is_silenced():
    internals.quiet_cuda_home_notice()
    logger = logging.getLogger("torch.utils.cpp_extension")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("Error checking compiler version for %s", "c++")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["Error checking compiler version for c++"]


def test_kernels_command_stops_in_one_line_when_a_triton_internal_is_gone():
    """Before compiling anything (the selection is tiny in case it did not stop)."""
    result = _fresh_python("""
        import runpy, sys
        from triton.runtime.driver import DriverConfig
        del DriverConfig.set_active
        sys.argv = ["convformer-fast", "kernels", "--only", "triton", "--preset", "h36m-9", "--dtype", "fp32",
                    "--arch", "90", "--kernel", "attention_bwd_preprocess", "--no-progress"]
        runpy.run_module("convformer_fast.cli", run_name="__main__")
        """, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("convformer-fast kernels: error: triton "), line
    assert "triton.runtime.driver.driver.set_active is gone" in line and internals.CHECKED_AGAINST in line


def test_kernels_command_reads_shared_memory_limits_from_the_library():
    """The per-block shared memory of each target comes from _C (csrc/kernel_limits.h):
    without _C the command says so in one line (exit 2) instead of guessing."""
    from convformer_fast.ops.limits import shared_memory_per_block_optin

    optin = shared_memory_per_block_optin()
    assert {a: t.smem_per_block_optin for a, t in audit.TARGETS.items()} == {a: optin[a] for a in (80, 90)}
    result = _fresh_python("""
        import runpy, sys
        sys.argv = ["convformer-fast", "kernels", "--arch", "70"]
        runpy.run_module("convformer_fast.cli", run_name="__main__")
        """, timeout=300, CONVFORMER_FAST_DISABLE_EXTENSION="1")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("convformer-fast kernels: error: the audit reads each GPU's shared memory "
                           "per block from convformer_fast._C"), line
    assert "CONVFORMER_FAST_DISABLE_EXTENSION=1" in line


# ----------------------------------------------------------------------------------------
# Planted problems: the detectors fire on real compiler output
# ----------------------------------------------------------------------------------------


def test_triton_kernel_that_cannot_fit_its_tile_is_failed(tmp_path):
    """A 128 x 128 fp32 tile held across a reduction by one warp needs 512 values per
    thread: ptxas must spill, and the audit must say so."""
    (tmp_path / "planted_kernels.py").write_text(textwrap.dedent("""\
        import triton
        import triton.language as tl

        @triton.jit
        def hoarding_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tile = offs[:, None] * BLOCK + offs[None, :]
            x = tl.load(x_ptr + tile)
            total = tl.sum(x, axis=1)
            tl.store(y_ptr + tile, x / total[:, None])
        """))
    result = _fresh_python(f"""
        import json, sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from convformer_fast.perf import audit
        audit.triton_ops()
        import planted_kernels
        rows, again = [], []
        for arch in (80, 90):
            job = audit.CompileJob(("planted_kernels", "hoarding_kernel"), arch, dict(num_warps=1),
                                   [(0, (torch.float32, torch.float32), dict(BLOCK=128))])
            (row,) = audit.compile_job(job)
            row.update(kernel="hoarding_kernel", dtype="fp32", arch=arch, source="triton")
            rows.append(audit.judge_row(row, audit.TARGETS[arch], strict_mma=True))
            # Again from Triton's disk cache (no ptxas runs): the audit reruns Triton's
            # ptxas stage itself and must find the same numbers.
            planted_kernels.hoarding_kernel.device_caches.clear()
            audit.triton_kernels._ANALYSED.clear()
            again.append(audit.compile_job(job)[0])
        print(json.dumps([rows, again]))
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, again = json.loads(result.stdout.strip().splitlines()[-1])
    for row, cached in zip(rows, again):
        assert row["spill_stores"] > 0 and row["threads"] == 32, row
        assert any("spills registers" in f for f in row["failures"]), row["failures"]
        for key in ("registers", "spill_stores", "spill_loads", "stack_bytes", "dynamic_smem", "hash"):
            assert cached[key] == row[key], (key, cached, row)


@pytest.mark.skipif(not HAS_NVCC, reason="needs nvcc")
def test_cuda_spills_local_arrays_and_tf32_are_reported(tmp_path):
    source = tmp_path / "planted.cu"
    source.write_text(textwrap.dedent("""\
        #include <mma.h>
        using namespace nvcuda;
        // 1024 threads x 2 blocks leave 32 registers per thread: the 64 live sums spill.
        __global__ void __launch_bounds__(1024, 2) squeezed_kernel(const float* x, float* y) {
          float acc[64];
          #pragma unroll
          for (int i = 0; i < 64; ++i) acc[i] = x[threadIdx.x + i * 1024];
          #pragma unroll
          for (int r = 0; r < 8; ++r)
            #pragma unroll
            for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + r) % 64] + x[i];
          float s = 0;
          #pragma unroll
          for (int i = 0; i < 64; ++i) s += acc[i];
          y[threadIdx.x] = s;
        }
        __global__ void local_array_kernel(const float* x, float* y, int k) {
          float scratch[1024];
          for (int i = 0; i < 1024; ++i) scratch[(i * k) & 1023] = x[i];
          y[threadIdx.x] = scratch[(threadIdx.x * k) & 1023];
        }
        template <typename T>
        __global__ void tf32_kernel(const float* a, const float* b, float* c) {
          wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
          wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
          wmma::fill_fragment(fc, 0.0f);
          wmma::load_matrix_sync(fa, a, 16);
          wmma::load_matrix_sync(fb, b, 16);
          wmma::mma_sync(fc, fa, fb, fc);
          wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
        }
        template __global__ void tf32_kernel<float>(const float*, const float*, float*);
        """))
    obj = tmp_path / "planted.o"
    build = subprocess.run([NVCC, "-c", str(source), "-o", str(obj), "-O3",
                            "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                            "-Xptxas", "-v"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    rows = {(r["kernel"], r["arch"]): r for r in audit.analyse_cuda_object(str(obj), build.stdout + build.stderr,
                                                                          "planted.cu")}
    for arch in (80, 90):
        squeezed = rows[("squeezed_kernel", arch)]
        assert squeezed["spill_stores"] > 0 and squeezed["threads"] == 1024 and squeezed["threads_declared"]
        assert any("spills registers" in f for f in squeezed["failures"])
        local = rows[("local_array_kernel", arch)]
        assert local["stack_bytes"] >= 4096 and not local["threads_declared"]
        assert any("local memory" in f for f in local["failures"])
        tf32 = rows[("tf32_kernel", arch)]
        assert tf32["dtype"] == "fp32" and tf32["mma"]["input_types"] == ["tf32"]
        assert any("TF32" in f for f in tf32["failures"])


# ----------------------------------------------------------------------------------------
# The audit on the CI subset
# ----------------------------------------------------------------------------------------


def _global_kernels() -> set[str]:
    """Names of every __global__ function in the CUDA sources (what the audit must find)."""
    names = set()
    for folder, pattern in (("kernels", "*.cuh"), ("csrc/cuda", "*.cu")):
        for path in glob.glob(os.path.join(REPO_ROOT, folder, pattern)):
            text = open(path).read()
            names |= set(re.findall(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+"
                                    r"(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", text))
    return names


def test_quick_audit_passes_for_every_kernel(tmp_path):
    """`convformer-fast kernels --quick` (what CI runs): exit code 0, and the report covers
    every Triton kernel on both targets for bf16 and fp32 and every CUDA kernel."""
    report_path = tmp_path / "audit.json"
    result = _fresh_python(f"""
        import sys
        from convformer_fast.cli.app import main
        sys.exit(main(["kernels", "--quick", "--no-progress", "--json", {str(report_path)!r}]))
        """, timeout=1800)
    assert result.returncode == 0, (result.stdout[-6000:] + result.stderr[-3000:])
    report = json.loads(report_path.read_text())
    assert report["ok"] and not report["failures"]
    triton_names = {r["kernel"] for r in report["triton"]}
    assert triton_names == {
        "qkv_projection_fwd_kernel", "qkv_projection_grad_input_kernel",
        "qkv_projection_grad_weight_kernel", "attention_fwd_kernel",
        "attention_bwd_preprocess_kernel", "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel"}
    covered = {(r["kernel"], r["arch"], r["dtype"], layout) for r in report["triton"] for layout in r["layouts"]}
    for name in triton_names:
        for arch in (80, 90):
            for dtype in ("bf16", "fp32"):
                for layout in ("spatial", "temporal"):
                    assert (name, arch, dtype, layout) in covered
    for row in report["triton"]:
        assert row["spill_stores"] == row["spill_loads"] == row["stack_bytes"] == 0, row
        assert row["occupancy"]["blocks_per_sm"] >= 1
        if row["dtype"] == "fp32":
            assert "tf32" not in row["mma"]["input_types"], row
        elif row["has_dot"]:
            assert row["mma"]["input_types"] == ["bf16"], row
    assert "Roofline ESTIMATE" in result.stdout and "compiled and analysed here, not run on a GPU" in result.stdout
    assert "No CUDA runtime is found" not in result.stderr, "torch's notice is silenced"
    if HAS_NVCC:
        cuda_names = {r["kernel"] for r in report["cuda"]}
        assert cuda_names == _global_kernels(), "every __global__ kernel is audited"
        assert {r["arch"] for r in report["cuda"]} == {80, 90}
