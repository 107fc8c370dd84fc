"""The GPUs the audit compiles for, and the theoretical occupancy of a kernel on them.

The occupancy model is that of CUDA's ``cuda_occupancy.h`` (tests/test_audit.py checks it
against the header itself): registers allocated per warp in units of 256 from four
sub-partitions, shared memory in units of 128 bytes plus 1 KiB reserved per block, 64
warps, 32 blocks, and barriers on sm_90.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AuditError


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


#: What only the occupancy model needs to know of each GPU. The shared memory one block may
#: opt in to is not here: the CUDA kernels are sized by it, so the C++ side owns it
#: (csrc/kernel_limits.h) and :func:`gpu_targets` reads it from there.
_PER_SM = {
    80: dict(gpu="A100", sms=108, smem_per_sm=164 * 1024),
    90: dict(gpu="H100", sms=132, smem_per_sm=228 * 1024),
}

_targets: dict[int, GpuTarget] = {}


def gpu_targets() -> dict[int, GpuTarget]:
    """sm_80 (A100) and sm_90 (H100), keyed by compute capability x 10 (read once)."""
    if not _targets:
        from ...ops.limits import shared_memory_per_block_optin

        try:
            optin = shared_memory_per_block_optin()
        except RuntimeError as error:
            raise AuditError("the audit reads each GPU's shared memory per block from "
                             f"convformer_fast._C (csrc/kernel_limits.h): {error}") from None
        missing = sorted(set(_PER_SM) - set(optin))
        if missing:
            raise AuditError(f"convformer_fast._C reports the shared memory per block of "
                             f"{', '.join(f'sm_{a}' for a in sorted(optin))}, not of "
                             f"{', '.join(f'sm_{a}' for a in missing)}; rebuild it")
        _targets.update({arch: GpuTarget(arch, smem_per_block_optin=optin[arch], **spec)
                         for arch, spec in _PER_SM.items()})
    return _targets


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
