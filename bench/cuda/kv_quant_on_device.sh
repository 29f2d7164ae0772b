#!/usr/bin/env bash
# The quantized KV caches (--kv q8, --kv q4r) of the CUDA backend on the GPU machine, with binaries
# built on the development machine and packed by bench/cuda/pack_devbin.sh (which includes
# test_cuda_kv_quant_check): the kernel checks, the CudaEngine tests, the default model's
# perplexity with each KV type, then `1bit bench` on the 2B-4T shape with each KV type, same card.
#
#   device: DEVBIN=.devbin SRC_DIR=/work/main bash bench/cuda/kv_quant_on_device.sh [nobench]
#
# Logs go to $OUT. SRC_DIR: the source folder the test binaries were built in (they read test
# data there); a link makes it exist.
set -uo pipefail
. "$(dirname "$0")/device_env.sh"

step timeout 150 "$BIN/test_cuda_kv_quant_check" > "$OUT/kv_quant_check.txt" 2>&1; tail -12 "$OUT/kv_quant_check.txt"
step timeout 150 "$BIN/test_cuda_ops_check" > "$OUT/ops_check.txt" 2>&1; tail -12 "$OUT/ops_check.txt"
step timeout "${TEST_TIMEOUT:-300}" "$BIN/test_engine" --gtest_filter='CudaEngine.*:Golden.EveryGoldenCuda' \
  > "$OUT/engine.txt" 2>&1
grep -E "^\[(cuda|golden)|OK \]|FAILED|Failure|Expected|Which is|actual|error" "$OUT/engine.txt" | tail -50
for kv in f32 f16 q8 q4r; do
  echo "== ppl --device cuda --kv $kv"
  timeout 120 "$BIN/1bit" ppl --device cuda -m models/1bit-brown-26m.h1b -f tests/data/default_model/valid_excerpt.txt \
    --ctx 512 --kv "$kv" 2>&1 | tail -3
done | tee "$OUT/ppl.txt"
[ "${1:-}" = nobench ] && exit $status

"$BIN/1bit" synth --preset bitnet-2b4t -o /tmp/2b.h1b > /dev/null 2>&1 || { echo "synth failed"; exit 1; }
{
  for kv in f16 q8 q4r; do
    echo "#### --kv $kv -p 4096 -n 128 -d 2048"
    timeout 150 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 4096 -n 128 -d 2048 -r 3 --kv "$kv"
  done
  for kv in f16 q8 q4r; do
    echo "#### --kv $kv -p 512 -n 256"
    timeout 150 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 512 -n 256 -r 3 --kv "$kv" --no-membw
  done
} 2>&1 | tee "$OUT/bench.txt"
exit $status
