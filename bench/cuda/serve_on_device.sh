#!/usr/bin/env bash
# `1bit serve --device cuda` under load on the GPU machine (which has python3 but not node):
# bench/loadgen.py at 1, 8 and 64 concurrent streams on the 2B-4T shape (random weights, so the
# completions route; the end tokens are banned, every request makes --max-tokens tokens).
#   device: bash bench/cuda/serve_on_device.sh        # carry .devbin (bench/cuda/pack_devbin.sh)
set -uo pipefail
BIN="$PWD/.devbin"
OUT="${OUT:-/tmp/onebit-out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"
[ -f /tmp/2b.h1b ] || "$BIN/1bit" synth --preset bitnet-2b4t -o /tmp/2b.h1b > /dev/null 2>&1 || { echo "synth failed"; exit 1; }
for head in int8 bf16; do
  echo "#### 1bit serve --device cuda --lm-head $head --parallel 64 --ctx 1024"
  timeout 240 python3 bench/loadgen.py --cli "$BIN/1bit" --model /tmp/2b.h1b --route completions \
    --serve-args "--device cuda --lm-head $head --parallel 64 --ctx 1024 -t 4" --levels "${LEVELS:-1,8,64}" \
    --seconds "${SECONDS_PER_LEVEL:-10}" --max-tokens 32 2>&1 | tee -a "$OUT/serve.txt"
done
