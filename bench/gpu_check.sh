#!/usr/bin/env bash
# One prepared check for a GPU machine without network, under 6 minutes:
#   1. build: pip install --no-build-isolation --no-deps -e .  (both extensions)
#   2. tests: python -m pytest tests -q                         (GPU tests included)
#      with PED_FAST_EXPECT_GPU=1: a GPU backend that cannot run (an extension
#      whose CUDA runtime cannot use the driver, one not built for want of
#      nvcc, triton missing, a CPU-only torch) fails its tests with the
#      reason instead of skipping them (tests/conftest.py, gpu_test_outcome)
#   3. bench: python -m pytest bench --benchmark-only -k cuda    (the GPU cases)
# and, in OUT_DIR, device.json and summary.json (the device, versions, each
# phase's exit status and time) and build.log, tests.log, bench.log. Every
# phase runs under `timeout`; a failed or timed-out phase is recorded and the
# next one still runs. Exit status: 0 when every phase passed.
#
# Usage: bench/gpu_check.sh [OUT_DIR]   (default: $OUT, else bench/results)
# Environment:
#   PED_FAST_CUDA_ARCH      passed to the build (default: the build's own list)
#   PED_FAST_BENCH_FILTER   pytest -k expression for the benchmarks (default
#                           "cuda": every case on the GPU device or backend;
#                           set it empty to run the CPU cases as well, which
#                           does not fit in 6 minutes)
#   BUILD_TIMEOUT, TEST_TIMEOUT, BENCH_TIMEOUT   seconds (default 100, 150, 90)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench/results}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PYTHONUNBUFFERED=1
FILTER=${PED_FAST_BENCH_FILTER-cuda}
START=$(date +%s)
declare -A RC SECONDS_TAKEN

phase() {  # phase NAME TIMEOUT COMMAND...: run, log to $OUT_DIR/NAME.log, record rc and time
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  RC[$name]=$?
  SECONDS_TAKEN[$name]=$(( $(date +%s) - t0 ))
  tail -n 25 "$OUT_DIR/$name.log"
  echo "== $name: exit ${RC[$name]} after ${SECONDS_TAKEN[$name]}s"
}

export NVIDIA_SMI=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1)
echo "GPU: $NVIDIA_SMI"

phase build "${BUILD_TIMEOUT:-100}" pip install --no-build-isolation --no-deps -v -e .
grep -E "^ *ped_fast: " "$OUT_DIR/build.log" | sort -u

python -c "import ped_fast; [print(f'backend {k}: {v}') for k, v in ped_fast.available_backends().items()]"
PED_FAST_EXPECT_GPU=1 phase tests "${TEST_TIMEOUT:-150}" python -m pytest tests -q -rfEs -p no:cacheprovider

if python -c "import pytest_benchmark" 2>/dev/null; then
  # max-time 0.5 s per calibrated benchmark (default 1 s) keeps the phase short.
  phase bench "${BENCH_TIMEOUT:-90}" python -m pytest bench --benchmark-only -q -p no:cacheprovider \
    --benchmark-max-time=0.5 ${FILTER:+-k "$FILTER"} --benchmark-json="$OUT_DIR/bench_gpu.json"
else
  echo "== bench: skipped, pytest-benchmark is not installed" | tee "$OUT_DIR/bench.log"
  RC[bench]=skipped
  SECONDS_TAKEN[bench]=0
fi

python - "$OUT_DIR" "${RC[build]}" "${RC[tests]}" "${RC[bench]}" \
  "${SECONDS_TAKEN[build]}" "${SECONDS_TAKEN[tests]}" "${SECONDS_TAKEN[bench]}" "$(( $(date +%s) - START ))" <<'EOF'
import json, os, pathlib, platform, subprocess, sys

out = pathlib.Path(sys.argv[1])
rc = dict(zip(("build", "tests", "bench"), sys.argv[2:5]))
seconds = dict(zip(("build", "tests", "bench", "total"), map(int, sys.argv[5:9])))
info = {"nvidia_smi": os.environ["NVIDIA_SMI"].strip(), "python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    import ped_fast
    info["backends"] = {k: [v.available, v.reason] for k, v in ped_fast.available_backends().items()}
    from ped_fast import cuda
    if cuda._cuda is not None:
        info["ped_fast_cuda_runtime"] = cuda._cuda.runtime_version()
except Exception as error:  # the record must be written whatever broke
    info["error"] = repr(error)
try:
    info["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
except (OSError, IndexError):
    info["nvcc"] = "not found"
(out / "device.json").write_text(json.dumps(info, indent=2) + "\n")
summary = {"exit_status": rc, "seconds": seconds, "device": info.get("device_name", info["nvidia_smi"])}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
print(json.dumps(info, indent=2))
EOF

for name in build tests bench; do
  [[ ${RC[$name]} == 0 || ${RC[$name]} == skipped ]] || exit 1
done
exit 0
