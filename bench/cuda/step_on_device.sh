#!/usr/bin/env bash
# The persistent decode step (ONEBIT_CUDA_STEP=1, decode_step_cuda.h) against the per-layer
# launches on the GPU machine: its test, batch-1 decode at context ~256 and ~2,100 both ways, and
# Nsight Compute's warp-state and launch statistics of one step kernel.
#
#   here:   cmake --build build/default && bash bench/cuda/pack_devbin.sh      # -> .devbin/
#   device: bash bench/cuda/step_on_device.sh                                   # carry .devbin
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
step timeout 300 "$BIN/test_engine" --gtest_filter='CudaEngine.DecodeStep*' > "$OUT/step_test.txt" 2>&1
grep -E "OK \]|FAILED|Failure" "$OUT/step_test.txt"
"$BIN/1bit" synth --preset bitnet-2b4t -o /tmp/2b.h1b > /dev/null 2>&1 || { echo "synth failed"; exit 1; }
for v in 1 0; do
  echo "#### ONEBIT_CUDA_STEP=$v"
  ONEBIT_CUDA_STEP=$v timeout 100 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n 256 -r 3 --kv f16
  ONEBIT_CUDA_STEP=$v timeout 100 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n 128 -d 2048 -r 3 --kv f16 --no-membw
done 2>&1 | tee "$OUT/step_bench.txt"
if command -v ncu > /dev/null; then
  ONEBIT_CUDA_STEP=1 timeout 200 ncu --clock-control none --section WarpStateStats --section LaunchStats \
    --metrics gpu__time_duration.sum -k regex:decode_step -c 1 \
    "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n 2 -d 256 -r 1 --no-membw --kv f16 > "$OUT/ncu_step.txt" 2>&1
  grep -E "gpu__time_duration|Warp Cycles|stalled|Registers|Stack" "$OUT/ncu_step.txt"
fi
exit $status
