"""What fails a compiled kernel: spills or local memory, more shared memory per block than
the target allows, no block resident on an SM, no compile, or a break of the precision
contract (fp16/bf16 products on tensor cores, exact fp32 never on TF32)."""

from __future__ import annotations

from dataclasses import asdict

from .parsers import mma_label
from .targets import GpuTarget, occupancy


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


def judge_row(row: dict, target: GpuTarget, strict_mma: bool) -> dict:
    """Add the occupancy on ``target`` and the failures to one compiled kernel's row.
    ``strict_mma``: hold it to the whole precision contract (Triton, where the matrix
    products are known); otherwise only an exact-fp32 kernel on TF32 fails."""
    if "error" not in row:
        row["occupancy"] = asdict(occupancy(target, row["registers"], row["threads"],
                                            row["static_smem"], row["dynamic_smem"] or 0,
                                            row["barriers"]))
    row["failures"] = _failures(row, target, strict_mma)
    return row
