#!/usr/bin/env bash
# The GPU machine check, in under 8 minutes on an H100:
#   1. environment (nvidia-smi, versions)  2. build the C++ extension with the CUDA kernels
#   3. CPU+GPU tests (Triton and CUDA kernels on random odd shapes, CUDA graphs)
#   4. bench/kernels/bench_kernels_gpu.py: each kernel's time against its floor (bytes / bandwidth)
#   5. bench/gpu_engine_check.py: ceilings, fp32 parity with transformers, a Llama-3.1-8B-shaped model
#      at batch 1/16/64/256 (1k context) against transformers and the roofline, NVML energy.
#
#   bash bench/gpu_check.sh OUTDIR
#
# Every stage runs under a time limit carved from the overall budget (GPU_CHECK_TOTAL_S, 470 s), and
# a failed stage does not stop the next ones; the exit status is 1 if any failed. OUTDIR receives
# env.txt, build.log, pytest.log, kernel_bench.log, kernels.{json,md}, engine_check.{log,json,md}
# and summary.md (10 files; the device tool returns at most 8, so pack them: tar czf).
# GPU_CHECK_SKIP="tests kernel-bench" skips the stages named (a rerun that needs only the others).
# GPU_CHECK_SMOKE=1 runs steps 4 and 5 with --smoke (CPU) and builds without CUDA, to try this
# script on a machine without a GPU.
set -u -o pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash bench/gpu_check.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
export PY
TOTAL=${GPU_CHECK_TOTAL_S:-470}
START=$(date +%s)
if [ -d /tmp/site ]; then  # where a carried wheel (gguf) may be installed
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
SMOKE=${GPU_CHECK_SMOKE:-0}
if [ -d /usr/local/cuda/bin ]; then export PATH="$PATH:/usr/local/cuda/bin"; fi
if [ "$SMOKE" = 1 ]; then
  export LLMAAS_BUILD_CUDA=${LLMAAS_BUILD_CUDA:-0}
else  # the CUDA kernels must build, and their tests must run rather than skip
  export LLMAAS_BUILD_CUDA=1 LLMAAS_REQUIRE_CUDA_KERNELS=1
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_TELEMETRY=1

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( TOTAL - $(elapsed) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

ROWS=()
FAILED=0

# stage NAME LIMIT_S LOG CMD...: runs CMD under `timeout`, output to the terminal and LOG.
stage() {
  local name=$1 limit=$2 log=$3 rc t0 dt status
  shift 3
  t0=$(date +%s)
  echo
  echo "=== [$(date +%H:%M:%S) +$(elapsed)s] stage $name (limit ${limit}s) ==="
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
    echo "skipped: GPU_CHECK_SKIP names $name" | tee "$log"
    rc=126
  elif [ "$limit" -lt 10 ]; then
    echo "no time left for $name" | tee -a "$log"
    rc=125
  else
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT (${limit}s)" ;;
    125) status="SKIPPED (no time)" ;;
    126) status="SKIPPED (asked)" ;;
    *) status="FAILED (rc=$rc)" ;;
  esac
  [ "$rc" -eq 0 ] || [ "$rc" -eq 126 ] || FAILED=1
  echo "=== [$(date +%H:%M:%S) +$(elapsed)s] stage $name: $status in ${dt}s ==="
  ROWS+=("| $name | $status | ${dt} |")
}

env_report() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv
  local smi=$?
  echo "nproc: $(nproc)"
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "transformers", "triton", "tokenizers", "safetensors", "pynvml", "gguf", "numpy", "pybind11"):
    try:
        module = importlib.import_module(name)
        print(f"{name:13s} {getattr(module, '__version__', '?')}")
    except Exception as e:
        print(f"{name:13s} MISSING ({type(e).__name__}: {e})")
import torch
print("torch.cuda", torch.version.cuda, "available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  local py=$?
  [ "$smi" -eq 0 ] || [ "${GPU_CHECK_SMOKE:-0}" = 1 ] || return "$smi"
  return "$py"
}

echo "gpu_check: repo $(pwd), out $OUT, budget ${TOTAL}s, started $(date -u +%FT%TZ)"

stage environment 30 "$OUT/env.txt" bash -c "$(declare -f env_report); env_report"

stage build "$(min 120 $(( $(left) - 200 )))" "$OUT/build.log" "$PY" setup.py build_ext --inplace

TIMEOUT_FLAG=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_FLAG=(-p timeout --timeout 90)
# The tests with a GPU side (the CPU-only ones run in CI); every one runs (no -x: one run on a lent
# GPU must show all failures), a hung one is cut at 90 s.
stage tests "$(min 100 $(( $(left) - 170 )))" "$OUT/pytest.log" "$PY" -m pytest -q -rfE --durations=15 \
  --continue-on-collection-errors "${TIMEOUT_FLAG[@]}" \
  tests/kernels/test_cuda_kernels.py tests/kernels/test_cuda_graphs.py tests/kernels/test_cuda_runner.py \
  tests/kernels/test_triton_attention.py tests/kernels/test_triton_dispatch.py tests/kernels/test_triton_elementwise.py \
  tests/kernels/test_triton_moe.py \
  tests/kernels/test_cuda_gpu_check.py tests/engine/test_tiny_llama_logits.py tests/engine/test_dummy_load.py \
  tests/engine/test_energy_sampler.py -p no:cacheprovider

SMOKE_FLAG=()
[ "$SMOKE" = 1 ] && SMOKE_FLAG=(--smoke)
stage kernel-bench "$(min 50 $(( $(left) - 140 )))" "$OUT/kernel_bench.log" "$PY" bench/kernels/bench_kernels_gpu.py \
  --out "$OUT" "${SMOKE_FLAG[@]}"

ENGINE_LIMIT=$(( $(left) - 8 ))
stage engine-check "$ENGINE_LIMIT" "$OUT/engine_check.log" "$PY" bench/gpu_engine_check.py --out "$OUT" \
  --budget-s $(( ENGINE_LIMIT > 40 ? ENGINE_LIMIT - 20 : 20 )) "${SMOKE_FLAG[@]}"

{
  echo
  echo "## gpu_check summary ($(elapsed)s in all, budget ${TOTAL}s)"
  echo
  echo "| stage | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  if [ -f "$OUT/kernels.md" ]; then cat "$OUT/kernels.md"; echo; fi
  if [ -f "$OUT/engine_check.md" ]; then cat "$OUT/engine_check.md"; fi
} | tee "$OUT/summary.md"
exit "$FAILED"
