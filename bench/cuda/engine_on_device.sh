#!/usr/bin/env bash
# The CUDA backend on the GPU machine, with binaries built on the development machine (which has
# nvcc and our libraries but no GPU): checks first, then `1bit bench` on the 2B-4T shape.
#
#   here:   cmake --build build/default && bash bench/cuda/pack_devbin.sh      # -> .devbin/
#   device: bash bench/cuda/engine_on_device.sh [quick]                        # carry .devbin
#
# Logs go to $OUT (the device tool brings them back). The test binaries look for test data under
# the source folder they were built in (/work/main, or $SRC_DIR for a build made in another
# worktree); a link makes that folder exist there. $DEVBIN: the packed folder (default .devbin).
set -uo pipefail
. "$(dirname "$0")/device_env.sh"

[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 120 "$BIN/test_cuda_ternary_gemv_check" > "$OUT/gemv_check.txt" 2>&1; tail -2 "$OUT/gemv_check.txt"
[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 120 "$BIN/test_cuda_ops_check" > "$OUT/ops_check.txt" 2>&1; tail -15 "$OUT/ops_check.txt"
[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 120 "$BIN/test_cuda_fused_gemv_check" > "$OUT/fused_gemv_check.txt" 2>&1; tail -8 "$OUT/fused_gemv_check.txt"
[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 150 "$BIN/test_cuda_kv_quant_check" > "$OUT/kv_quant_check.txt" 2>&1; tail -2 "$OUT/kv_quant_check.txt"
[ -z "${SKIP_KERNEL_CHECKS:-}" ] && step timeout 150 "$BIN/test_cuda_sample_check" > "$OUT/sample_check.txt" 2>&1; tail -2 "$OUT/sample_check.txt"
step timeout "${TEST_TIMEOUT:-300}" "$BIN/test_engine" --gtest_filter='CudaEngine.*:Golden.EveryGoldenCuda' \
  >> "$OUT/engine.txt" 2>&1
grep -E "^\[(golden|cuda vs cpu)\]|OK \]|FAILED|Failure|error|^==" "$OUT/engine.txt" | tail -60
step timeout 120 bash tests/cli/default_model.sh "$BIN/1bit" cuda > "$OUT/default_model.txt" 2>&1; tail -8 "$OUT/default_model.txt"
[ "${1:-}" = quick ] && exit $status

"$BIN/1bit" synth --preset bitnet-2b4t -o /tmp/2b.h1b > /dev/null 2>&1 || { echo "synth failed"; exit 1; }
# Baseline binary (optional): .devbin/base/1bit, built from an earlier commit, timed on the same card.
bins=("$BIN/1bit")
[ -x "$BIN/base/1bit" ] && bins=("$BIN/base/1bit" "$BIN/1bit")
{
  for b in "${bins[@]}"; do
    echo "#### $b"
    for head in bf16 int8; do
      timeout 150 "$b" bench --device cuda -m /tmp/2b.h1b -p 512 -n 256 -r 3 --lm-head "$head" --kv f16
    done
    timeout 150 "$b" bench --device cuda -m /tmp/2b.h1b -p 4096 -n 128 -d 2048 -r 3 --kv f16
  done
  # What each launch-level feature of the new binary is worth (same results, other launches).
  for v in ONEBIT_CUDA_PDL=0 ONEBIT_CUDA_FUSE=0 ONEBIT_CUDA_FUSED_GEMV=0; do
    echo "#### $v"
    env "$v" timeout 150 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n 256 -r 3 --kv f16 --no-membw
  done
  # Continuous batching: B sequences at context 512 decoding together (aggregate tokens/s).
  for b in "${bins[@]}"; do
    for B in ${BATCHES:-16 64 256}; do
      echo "#### $b -b $B"
      timeout 200 "$b" bench --device cuda -m /tmp/2b.h1b -p 0 -n 64 -d 512 -b "$B" -r 2 --kv f16 --lm-head int8 \
        --no-membw
      [ "$b" != "$BIN/1bit" ] && break  # the baseline runs sequences one after another: one size is enough
    done
  done
  echo "#### $BIN/1bit -b 64, bf16 head"
  timeout 200 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n 64 -d 512 -b 64 -r 2 --kv f16 --no-membw
} 2>&1 | tee "$OUT/bench.txt"
if [ -n "${NCU:-}" ] && command -v ncu > /dev/null; then
  # Per-kernel durations (ncu serializes kernels: each number is one kernel alone).
  timeout 300 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n 4 -d 256 -r 1 --no-membw --kv f16 > "$OUT/ncu.txt" 2>&1
  grep -E "^  [a-zA-Z_].*\(|gpu__time_duration.sum|Invocations" "$OUT/ncu.txt" | paste - - | \
    sed -E 's/ +/ /g' | cut -c1-220 | head -40
fi
exit $status
