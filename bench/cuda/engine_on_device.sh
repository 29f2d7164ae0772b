#!/usr/bin/env bash
# The CUDA backend on the GPU machine, with binaries built on the development machine (which has
# nvcc and our libraries but no GPU): checks first, then `1bit bench` on the 2B-4T shape.
#
#   here:   cmake --build build/default && bash bench/cuda/pack_devbin.sh      # -> .devbin/
#   device: bash bench/cuda/engine_on_device.sh [quick]                        # carry .devbin
#
# Logs go to $OUT (the device tool brings them back). The test binaries look for test data under
# the source folder they were built in (/work/main); a link makes that folder exist there.
set -uo pipefail
BIN="$PWD/.devbin"
OUT="${OUT:-/tmp/onebit-out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"
if [ "$PWD" != /work/main ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
step() { echo "== $*"; "$@" || { echo "FAILED ($?): $*"; status=1; }; }

[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 120 "$BIN/test_cuda_ternary_gemv_check" > "$OUT/gemv_check.txt" 2>&1; tail -2 "$OUT/gemv_check.txt"
[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 120 "$BIN/test_cuda_ops_check" > "$OUT/ops_check.txt" 2>&1; tail -15 "$OUT/ops_check.txt"
for t in CudaEngine.BatchedPrefillEqualsStepByStep CudaEngine.GraphReplayEqualsEagerLaunches \
         CudaEngine.DefaultModelMatchesCpu CudaEngine.BadInputIsAnErrorAndLeavesTheSessionUsable Golden.EveryGoldenCuda; do
  step timeout "${TEST_TIMEOUT:-120}" "$BIN/test_engine" --gtest_filter="$t" >> "$OUT/engine.txt" 2>&1
done
grep -E "^\[(golden|cuda vs cpu)\]|OK \]|FAILED|Failure|error|^==" "$OUT/engine.txt" | tail -60
step timeout 120 bash tests/cli/default_model.sh "$BIN/1bit" cuda > "$OUT/default_model.txt" 2>&1; tail -8 "$OUT/default_model.txt"
[ "${1:-}" = quick ] && exit $status

"$BIN/1bit" synth --preset bitnet-2b4t -o /tmp/2b.h1b > /dev/null 2>&1 || { echo "synth failed"; exit 1; }
{
  for head in bf16 int8; do
    timeout 150 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 512 -n 256 -r 3 --lm-head "$head" --kv f16
  done
  timeout 150 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 4096 -n 128 -d 2048 -r 3 --kv f16
} 2>&1 | tee "$OUT/bench.txt"
exit $status
