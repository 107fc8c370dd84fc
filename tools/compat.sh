#!/usr/bin/env bash
# Build and test convformer_fast against one torch version in a fresh venv, as a user or the
# GPU machines (Python 3.12.3, torch 2.11.0, triton 3.6, no fvcore, no expecttest, no network)
# would have it:
#
#   tools/compat.sh TORCH_VERSION [PYTHON]      e.g.  tools/compat.sh 2.11.0 python3.12
#
# Steps, each timed and logged: venv + `pip install torch==TORCH_VERSION` and the test tools the
# GPU machines have (never fvcore or expecttest, whose absence is checked); a copy of this
# working tree (tracked and untracked-but-not-ignored files, so the prebuilt _C of the checkout
# is never overwritten); `FORCE_CUDA=1 python setup.py build_ext --inplace` in the copy
# (resumable); `import convformer_fast` from the copy; `convformer-fast info`; the CPU test
# suite (Triton interpreter and CUDA emulator included) with JUnit XML;
# `convformer-fast kernels --quick`.
#
# Environment:
#   COMPAT_ROOT      where venvs and source copies live (default ${TMPDIR:-/tmp}/convformer-compat);
#                    one folder per Python and torch, reused (pip and ninja skip what is done)
#   COMPAT_PIP_ARGS  extra pip arguments (default: none)
#   MAX_JOBS         compile jobs (default 2)
#   COMPAT_STEPS     which steps (default "install build import info tests kernels")
#   COMPAT_PYTEST    arguments to pytest (default "tests -q")
# Writes $COMPAT_ROOT/<name>/result.json (versions, per-step status and seconds, test counts)
# and prints it; exit 0 when every step passed, 1 otherwise, 2 on bad arguments.
set -uo pipefail

usage() { echo "usage: $0 TORCH_VERSION [PYTHON]   (e.g. $0 2.11.0 python3.12)" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 && -n "$1" && "$1" != -* ]] || usage
TORCH_VERSION=$1
PYTHON=${2:-python3}
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    { echo "$0: python interpreter '$PYTHON' does not run (pyenv: set PYENV_VERSION)" >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
NAME="py${PYVER}-torch${TORCH_VERSION}"
ROOT=${COMPAT_ROOT:-${TMPDIR:-/tmp}/convformer-compat}
DIR="$ROOT/$NAME"
VENV="$DIR/venv"
SRC="$DIR/src"
LOG="$DIR/compat.log"
STEPS=${COMPAT_STEPS:-install build import info tests kernels}
export MAX_JOBS=${MAX_JOBS:-2}
mkdir -p "$DIR"
: >"$LOG"
declare -A STATUS SECONDS_OF
FAILED=0

log() { echo "[compat $NAME] $*" | tee -a "$LOG" >&2; }

# run_step NAME TIMEOUT_S COMMAND...: runs it with a time limit, logging output and outcome.
run_step() {
    local step=$1 limit=$2; shift 2
    [[ " $STEPS " == *" $step "* ]] || return 0
    log "step $step (limit ${limit}s): $*"
    local start=$SECONDS rc
    # bash -c: the command may be one of this script's functions (exported below).
    timeout --kill-after=20 "$limit" bash -c '"$@"' _ "$@" >>"$LOG" 2>&1
    rc=$?
    SECONDS_OF[$step]=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then STATUS[$step]=ok
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then STATUS[$step]="timeout after ${limit}s"; FAILED=1
    else STATUS[$step]="failed (exit $rc)"; FAILED=1
    fi
    log "step $step: ${STATUS[$step]} in ${SECONDS_OF[$step]}s"
}

install_torch() {
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV" || return 1
    # PIP_CONFIG_FILE=/dev/null: no site pip configuration (a machine may cap torch's version).
    # pip first: a venv's bundled pip (23.2 with Python 3.12.1) takes the legacy
    # `setup.py develop` route for `pip install -e .`, which setuptools >= 80 turns into an
    # isolated build that cannot see torch; current pip builds editables through PEP 660.
    PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q -U pip || return 1
    # The test tools are those the GPU machines have; fvcore and expecttest deliberately not.
    # The [deploy] extra too (the GPU machines have onnx and onnxruntime, not openvino), since
    # tests/test_export.py needs all of it to be collected.
    PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q ${COMPAT_PIP_ARGS:-} \
        "torch==$TORCH_VERSION" "numpy>=1.24" "ninja>=1.11" "tqdm>=4.60" "matplotlib>=3.7" \
        "pytest>=8" "hypothesis>=6.100" "pytest-benchmark>=4" setuptools wheel \
        "onnx>=1.23" "onnxscript>=0.7" "onnxruntime>=1.32" "openvino>=2026.4" || return 1
    "$VENV/bin/python" - <<'EOF'
import importlib.util, sys
present = [m for m in ("fvcore", "expecttest") if importlib.util.find_spec(m)]
if present:
    sys.exit(f"{present} installed: the GPU machines have neither, remove them from this venv")
EOF
}

copy_source() {
    mkdir -p "$SRC"
    # The working tree as git sees it (tracked + untracked, not ignored), never the checkout's
    # own build products; mtimes kept, so ninja rebuilds only what changed since the last run.
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$REPO" && xargs -0 cp --parents -p -t "$SRC" 2>/dev/null)
    # Files deleted from the working tree since the last copy: drop them from the copy too.
    (cd "$SRC" && find . -path ./build -prune -o -type f -not -name '*.so' -not -path '*/__pycache__/*' \
        -not -path '*.egg-info*' -print) | while read -r f; do
        [[ -e "$REPO/$f" ]] || rm -f "$SRC/$f"
    done
}

build_copy() {
    copy_source || return 1
    # build_ext --inplace, not `pip install -e .`: an editable wheel compiles in a fresh
    # temporary folder every time, while this keeps $SRC/build, so an interrupted or repeated
    # build resumes (a full CUDA build takes 10 to 60 minutes on 2 shared cores).
    (cd "$SRC" && FORCE_CUDA=1 "$VENV/bin/python" setup.py -q build_ext --inplace)
}

# The copy is imported from its folder (PYTHONPATH), the CLI run as `python -m`.
in_src() { (cd "$SRC" && env -u TRITON_INTERPRET PYTHONPATH="$SRC" CI=true "$@"); }

import_check() {
    in_src "$VENV/bin/python" -c '
import convformer_fast as cf, torch
from convformer_fast import ops
assert cf.extension_loaded(), ops.EXTENSION_ERROR
assert ops.cuda_kernels_built(), "the CUDA kernels were not built"
print("import ok:", cf.__file__, "torch", torch.__version__, "cuda build", torch.version.cuda)'
}

export -f install_torch copy_source build_copy in_src import_check
export PYTHON TORCH_VERSION VENV SRC REPO
run_step install 1800 install_torch
run_step build 5400 build_copy
run_step import 300 import_check
run_step info 300 in_src "$VENV/bin/python" -m convformer_fast.cli info
JUNIT="$DIR/junit.xml"
# shellcheck disable=SC2086
run_step tests 5400 in_src "$VENV/bin/python" -m pytest ${COMPAT_PYTEST:-tests -q} -p no:cacheprovider \
    --junitxml="$JUNIT"
run_step kernels 1800 in_src "$VENV/bin/python" -m convformer_fast.cli kernels --quick --no-progress

export COMPAT_NAME=$NAME COMPAT_JUNIT=$JUNIT COMPAT_DIR=$DIR
STEP_LINES=""
for step in install build import info tests kernels; do
    [[ -n "${STATUS[$step]:-}" ]] && STEP_LINES+="$step	${STATUS[$step]}	${SECONDS_OF[$step]}"$'\n'
done
export STEP_LINES
"$VENV/bin/python" - <<'EOF' | tee "$DIR/result.json"
import json, os, platform, subprocess, xml.etree.ElementTree as ET
result = {"name": os.environ["COMPAT_NAME"], "python": platform.python_version(), "steps": {}}
for line in os.environ["STEP_LINES"].strip().splitlines():
    step, status, seconds = line.split("\t")
    result["steps"][step] = {"status": status, "seconds": int(seconds)}
try:
    import torch, triton
    result.update(torch=torch.__version__, torch_cuda=torch.version.cuda, triton=triton.__version__)
except Exception as error:  # noqa: BLE001 - the record says what was missing
    result["import_error"] = repr(error)
try:
    result["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
except Exception:  # noqa: BLE001
    result["nvcc"] = None
junit = os.environ["COMPAT_JUNIT"]
if os.path.exists(junit):
    suites = ET.parse(junit).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    result["tests"] = {"passed": tests - failures - errors - skipped, "failed": failures,
                       "errors": errors, "skipped": skipped,
                       "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1)}
    result["failed_tests"] = sorted(
        f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None)
print(json.dumps(result, indent=2))
EOF
log "log: $LOG"
exit $FAILED
