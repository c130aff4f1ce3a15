#!/usr/bin/env bash
# The whole GPU check in one call: install, GPU tests, CPU/GPU byte parity and timings.
#
# usage: benchmarks/gpu_check.sh OUTDIR [--device gpu|cpu] [--width N] [--repeats N] [--ks 16,256] [--budget S] [--test-budget S]
#   OUTDIR      where the log, the pytest output and the report land (at most 4 files, no folders:
#               what a device call can bring back)
#   --device    gpu (default): the device under test is the GPU; cpu: the dry run, every step
#               rehearsed on the CPU (tests/test_gpu_check.py runs it in CI on a tiny graph)
#   --width     FaceNet width divisor (1, the default, is the full 22.8 M-value graph)
#   --repeats   timed runs per configuration after the first (best is reported; default 3; 0: the
#               first pass's times alone, marked cold)
#   --ks        codebook sizes (default 16,256; the CI rehearsal uses 16 alone, to stay short)
#   --budget    seconds for step 4 (default 240): its timed repeats and clustering-alone runs are
#               cut to fit, the parity pass never
#   --test-budget  seconds pytest may run before it is stopped (default 180; its log shows how far
#               it got). Install (~30 s) + tests + graph (~20 s) + step 4 stay under 8 minutes.
# Environment: PYTHON (default python3), GPU_CHECK_WORK (scratch folder; default a new one in /tmp),
# GPU_CHECK_WHEELS (the carried wheels' folder; default .whl/ of this tree).
#
# Steps, each timed in OUTDIR/gpu_check.log:
#   1. the carried wheels in .whl/ (benchmarks/gpu_wheels.sh downloads them) go into a target
#      folder, with no network (none there is fine: the dry run needs none);
#   2. gpucompress is built from a copy of the source (whatever setup.py builds, with the
#      environment's build tools: --no-build-isolation) and installed into another target folder;
#      the copy's package folders are then removed, so that the tests and the CLI import the
#      installed package, as a user has it;
#   3. pytest -m gpu over the test suite (the CuPy parity tests among them; tests that need
#      TensorFlow or other missing packages skip);
#      (stopped after --test-budget seconds);
#   4. benchmarks/gpu_check.py: the FaceNet-shaped graph, the CLI on the device and on the CPU in
#      fresh processes for k = 16 and 256, per tensor and global, every method; byte comparison,
#      timings, and the report DATE-NAME.{json,md} (NAME: h200 on an H200) in OUTDIR and, for
#      --device gpu, in benchmarks/results/ of this tree.
# Exit status: 0 when every step passed and every output is byte-identical, else the first failure's.
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--device gpu|cpu] [--width N] [--repeats N] [--ks 16,256] [--budget S] [--test-budget S]" >&2; exit 2; }
[ "$#" -ge 1 ] || usage
out=$1; shift
device=gpu; width=1; repeats=3; ks=16,256; budget=240; test_budget=180
while [ "$#" -gt 0 ]; do
    case $1 in
        --device) device=${2:-}; shift 2 ;;
        --width) width=${2:-}; shift 2 ;;
        --repeats) repeats=${2:-}; shift 2 ;;
        --ks) ks=${2:-}; shift 2 ;;
        --budget) budget=${2:-}; shift 2 ;;
        --test-budget) test_budget=${2:-}; shift 2 ;;
        *) usage ;;
    esac
done
case $device in gpu|cpu) ;; *) usage ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$work"
log=$out/gpu_check.log
: >"$log"
status=0
started=$(date +%s)

note() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
# step NAME COMMAND...: run it, its output to the log, and remember the first failure.
step() {
    local name=$1; shift
    local begin=$(date +%s%N)
    note "== $name"
    "$@" >>"$log" 2>&1
    local rc=$?
    local tenths=$(( ($(date +%s%N) - begin) / 100000000 ))
    note "== $name: exit $rc, $((tenths / 10)).$((tenths % 10)) s"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
    return "$rc"
}

note "gpu_check: device $device, width $width, repeats $repeats, k $ks, work $work, python $($python --version 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$log" 2>&1

# 1. Carried wheels, no network.
site=$work/site
mkdir -p "$site"
shopt -s nullglob
wheels=("${GPU_CHECK_WHEELS:-$root/.whl}"/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
    step "install ${#wheels[@]} carried wheels" "$python" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$site" "${wheels[@]}" || { note "cannot install the wheels"; exit "$status"; }
else
    note "no carried wheels in .whl/ (the dry run needs none; the device needs zstandard and constriction)"
fi

# 2. Build and install gpucompress from a copy of the source, with no network.
source_copy=$work/src
rm -rf "$source_copy" "$work/pkg"
mkdir -p "$source_copy"
tar -C "$root" --exclude=./.git --exclude=./.venv --exclude=./.whl --exclude=./.gl --exclude=./benchmarks/.cache \
    --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ --exclude=.hypothesis \
    --exclude=.pytest_cache -cf - . | tar -C "$source_copy" -xf -
step "build and install gpucompress" "$python" -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --no-cache-dir --target "$work/pkg" "$source_copy" || { note "cannot install gpucompress"; exit "$status"; }
rm -rf "$source_copy/gpucompress" "$source_copy/kernels" "$source_copy/build"
# From here on nothing runs in this tree, whose package folders a bare `python -c` would import.
cd "$work" || exit 1
export PYTHONPATH=$work/pkg:$site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=2
# Kernel caches in the scratch folder: the first run of each device fills them (the warm-up).
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$work/cupy-cache}
step "the installed package is the one imported" "$python" -c "
import sys, gpucompress, gpucompress.kernels as kernels
from gpucompress.device import gpu_available
from gpucompress.kernels import compiled
where = gpucompress.__file__
print('gpucompress', gpucompress.__version__, where, '| compiled CPU twins:', compiled.available(),
      '| GPU usable:', gpu_available())
sys.exit(0 if where.startswith('$work/pkg/') and kernels.__file__.startswith('$work/pkg/') else 1)
" || exit "$status"
if [ "$device" = gpu ]; then
    step "CuPy sees a CUDA device" "$python" -c "
from gpucompress.device import gpu_available
import cupy
print('cupy', cupy.__version__, 'runtime', cupy.cuda.runtime.runtimeGetVersion(), 'driver', cupy.cuda.runtime.driverGetVersion())
raise SystemExit(0 if gpu_available() else 1)
" || exit "$status"
fi

# 3. The GPU tests (CuPy parity among them), against the installed package.
# Only the files that hold gpu tests are collected: the others may import TensorFlow (~2 s, and
# absent on the device) just to be deselected.
gpu_files=$(cd "$source_copy" && grep -l "pytest.mark.gpu" tests/test_*.py)
(cd "$source_copy" && step "pytest -m gpu" timeout "$test_budget" "$python" -m pytest -v -m gpu -p no:cacheprovider \
    -rs --durations=15 $gpu_files)
rc=$?
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
[ "$rc" -eq 124 ] && note "pytest stopped after $test_budget s (see the log for the tests that ran)"
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|::.* (PASSED|FAILED|ERROR|SKIPPED)|passed|failed|skipped|deselected" "$log" >"$out/pytest-gpu.txt"

# 4. Parity and timings on the FaceNet-shaped graph; the report.
results=()
[ "$device" = gpu ] && results=(--results-dir "$root/benchmarks/results")
step "parity and timings (benchmarks/gpu_check.py)" "$python" "$source_copy/benchmarks/gpu_check.py" \
    --device "$device" --work "$work/run" --out "$out" --width "$width" --repeats "$repeats" --ks "$ks" --budget "$budget" "${results[@]}"

note "gpu_check: exit $status after $(( $(date +%s) - started )) s; report in $out"
[ -z "${GPU_CHECK_WORK:-}" ] && rm -rf "$work"
exit "$status"
