#!/usr/bin/env bash
# One short run on a bare GPU machine that verifies and times everything, within 8 minutes:
#
#   benchmarks/gpu_check.sh OUT_DIR              on a machine with a CUDA GPU
#   benchmarks/gpu_check.sh --dry-run OUT_DIR    the same steps on the CPU: CUDA emulator and
#                                                Triton interpreter, tiny sizes (CI runs it)
#
# Steps, in order of value, each with its own time limit inside the overall budget; a step
# that fails or runs out of time is recorded and the script goes on:
#   env       GPU, driver, Python, torch, triton, CUDA, nvcc, commit
#   build     _C for this GPU only (TORCH_CUDA_ARCH_LIST from the device, MAX_JOBS = cores),
#             `setup.py build_ext --inplace`: no pip, no network
#   tests     every GPU test (pytest selection below, -x off, a per-test time limit), JUnit XML
#   launches  kernel launches of one forward per backend (estimated and profiled) and the
#             CUDA-graph replay of the cuda and triton backends against eager
#   bench     whole model: eager, torch.compile, torch, triton, cuda and graph:cuda/triton at
#             h36m-9/81/243, batch 1 and 64, fp32 (TF32 off, on) and bf16; CUDA-event timing
#   micro     the kernel microbenchmarks (benchmarks/test_bench_ops.py)
# OUT_DIR receives at most 8 files, each written as soon as its step ends (a run cut short
# keeps what it did): gpu_check.log (every step's output), summary.json (versions and each
# step's status, time and error), tests.xml, launches.json, bench.json, microbench.json.
# Exit: 0 every step passed, 1 a step failed or was skipped, 2 bad usage or no GPU.
#
# Environment: GPU_CHECK_BUDGET_S (default 480; 900 for --dry-run), PYTHON (default python3).
set -uo pipefail

usage() { echo "usage: $0 [--dry-run] OUT_DIR" >&2; exit 2; }
DRY_RUN=0
OUT=""
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage ;;
        -*) echo "$0: unknown option $arg" >&2; usage ;;
        *) [[ -z $OUT ]] || usage; OUT=$arg ;;
    esac
done
[[ -n $OUT ]] || usage

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$REPO:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
STEPS_PY="$REPO/benchmarks/gpu_check_steps.py"
if [[ $DRY_RUN -eq 0 ]] && ! "$PYTHON" "$STEPS_PY" has-gpu 2>/dev/null; then
    echo "$0: no CUDA GPU is visible (torch.cuda.is_available() is False); use --dry-run to rehearse on the CPU" >&2
    exit 2
fi
[[ $DRY_RUN -eq 1 ]] && export TRITON_INTERPRET=1

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.json"
rm -f "$LOG" "$SUMMARY" "$OUT/tests.xml" "$OUT/launches.json" "$OUT/bench.json" "$OUT/microbench.json"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
# 8 minutes on a GPU; the CPU rehearsal is slower (interpreter, emulator) and gets 15.
BUDGET_S=${GPU_CHECK_BUDGET_S:-$((DRY_RUN ? 900 : 480))}
START=$SECONDS
FAILED=0
ENV_JSON=""

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: run with min(LIMIT_S, what is left of the budget), output to
# the log, outcome to the summary. A step that cannot get 10 s is skipped.
step() {
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET_S - (SECONDS - START) - 5))
    if ((left < 10)); then
        say "=== step $name: SKIPPED (budget of ${BUDGET_S}s spent) ==="
        "$PYTHON" "$STEPS_PY" record "$SUMMARY" "$name" skipped 0 0 --error "budget spent"
        FAILED=1
        return 1
    fi
    ((limit > left)) && limit=$left
    say "=== step $name (limit ${limit}s): $* ==="
    local begin=$SECONDS rc status error=""
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    if ((rc == 0)); then status=ok
    elif ((rc == 124 || rc == 137)); then status=timeout; error="ran past its ${limit}s limit"
    else status=failed; error="exit code $rc (see gpu_check.log)"
    fi
    ((rc == 0)) || FAILED=1
    say "=== step $name: $status in $((SECONDS - begin))s${error:+ ($error)} ==="
    "$PYTHON" "$STEPS_PY" record "$SUMMARY" "$name" "$status" "$((SECONDS - begin))" "$limit" \
        --error "$error" ${ENV_JSON:+--env-json "$ENV_JSON"}
    return $rc
}

say "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $([[ $DRY_RUN -eq 1 ]] && echo 'DRY RUN (CPU)' || echo GPU), budget ${BUDGET_S}s, out $OUT"
# env runs in this shell (ENV_JSON is kept for the summary); the others in subprocesses.
ENV_JSON=$("$PYTHON" "$STEPS_PY" env 2>>"$LOG")
step env 30 bash -c 'echo "$1"; command -v nvidia-smi >/dev/null && nvidia-smi || true' _ "$ENV_JSON"

# build: the GPU's own architecture only; setup.py compiles, nothing is downloaded.
ARCH=$("$PYTHON" "$STEPS_PY" arch 2>>"$LOG")
CORES=$(nproc)
if [[ $DRY_RUN -eq 1 ]]; then
    # Rehearsal: the configuration setup.py resolves (its first line), without compiling.
    step build 60 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$CORES" FORCE_CUDA=1 "$PYTHON" setup.py --name
else
    step build 170 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$CORES" FORCE_CUDA=1 \
        "$PYTHON" setup.py build_ext --inplace
fi

# tests: every test that runs on a GPU. The Triton tests run there on CUDA tensors; the
# files below hold the others, picked by name. Autotuning keeps one configuration per
# kernel (many shapes are seen once); tests/triton/test_triton_configs.py forces the rest.
GPU_TEST_FILES=(tests/triton tests/test_cuda_graph.py tests/test_ops.py tests/test_fast.py tests/test_cuda_emulated.py)
GPU_TEST_NAMES="(cuda or gpu or graph or triton) and not emulated or cuda_spatial_kernel or cuda_attention_kernel or cuda_backend or cuda_and_emulated"
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -p per_test_timeout -q -rfEs)
# Rehearsal (dry run): the selection must collect; then its CPU-runnable part, with XML.
dry_run_tests() {
    "${PYTEST[@]}" "${GPU_TEST_FILES[@]}" -k "$GPU_TEST_NAMES" --collect-only &&
        "${PYTEST[@]}" tests/test_cuda_graph.py --per-test-timeout 120 --junitxml="$OUT/tests.xml"
}
if [[ $DRY_RUN -eq 1 ]]; then
    export -f dry_run_tests
    export GPU_TEST_NAMES OUT
    step tests 200 bash -c "PYTEST=(${PYTEST[*]}); GPU_TEST_FILES=(${GPU_TEST_FILES[*]}); dry_run_tests"
else
    step tests 150 env CONVFORMER_TRITON_AUTOTUNE=first "${PYTEST[@]}" "${GPU_TEST_FILES[@]}" \
        -k "$GPU_TEST_NAMES" --per-test-timeout 60 --junitxml="$OUT/tests.xml"
fi

if [[ $DRY_RUN -eq 1 ]]; then
    step launches 120 "$PYTHON" "$STEPS_PY" launches --dry-run --json "$OUT/launches.json"
else
    step launches 60 "$PYTHON" "$STEPS_PY" launches --json "$OUT/launches.json"
fi

# bench: one run per (batch, dtype, TF32), most wanted first; each merged into bench.json
# as soon as it ends.
if [[ $DRY_RUN -eq 1 ]]; then
    BENCH_RUNS=("1 float32 off")
    # (triton and cuda_emulated are left out: interpreted and emulated forwards take seconds
    # each; the launches step ran both)
    BENCH_ARGS=(--device cpu --preset h36m-9 --backends eager,compile,torch
                --compile-backend eager --warmup 1 --repeats 2 --min-sample-ms 1 --matmul-size 64)
else
    BENCH_RUNS=("1 float32 off" "1 bfloat16 default" "64 float32 off" "64 bfloat16 default"
                "1 float32 on" "64 float32 on")
    BENCH_ARGS=(--device cuda --preset h36m-9,h36m-81,h36m-243 --warmup 2 --repeats 7
                --min-sample-ms 20 --matmul-size 4096)
fi
BENCH_JSONS=()
for run in "${BENCH_RUNS[@]}"; do
    read -r batch dtype tf32 <<<"$run"
    json="$SCRATCH/bench-b$batch-$dtype-tf32$tf32.json"
    step "bench-b$batch-$dtype-tf32-$tf32" 75 "$PYTHON" -m convformer_fast.cli bench "${BENCH_ARGS[@]}" \
        --batch "$batch" --dtype "$dtype" --tf32 "$tf32" --no-progress --json "$json"
    [[ -f $json ]] && BENCH_JSONS+=("$json")
    "$PYTHON" "$STEPS_PY" merge "$OUT/bench.json" "${BENCH_JSONS[@]}"
done

if [[ $DRY_RUN -eq 1 ]]; then
    # one group of the smoke run (tests/test_benchmarks_smoke.py runs them all in CI)
    step micro 120 "${PYTEST[@]}" benchmarks/test_bench_ops.py --smoke --benchmark-only -k model \
        --benchmark-json="$OUT/microbench.json"
else
    step micro 60 "${PYTEST[@]}" benchmarks/test_bench_ops.py --benchmark-only --bench-device cuda \
        --bench-presets h36m-81,h36m-243 --bench-batches 1,64 --benchmark-json="$OUT/microbench.json"
fi

say "gpu_check: done in $((SECONDS - START))s; $([[ $FAILED -eq 0 ]] && echo 'every step passed' || echo 'some step FAILED (summary.json)')"
exit $FAILED
