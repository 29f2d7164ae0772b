#!/usr/bin/env bash
# Batch-1 decode tok/s of .devbin/1bit under several environment settings, on the 2B-4T shape, on
# the GPU machine (carry .devbin, see engine_on_device.sh). Each setting is one line of $SETTINGS
# (default below: the block shapes of the fused decode GEMVs, ONEBIT_CUDA_FUSED_GEMV).
#   device: SETTINGS=$'ONEBIT_CUDA_FUSED_GEMV=0\nONEBIT_CUDA_FUSED_GEMV=2,2,2,2,8,5,2,4' bash bench/cuda/decode_sweep.sh
set -uo pipefail
BIN="$PWD/.devbin"
export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"
[ -f /tmp/2b.h1b ] || "$BIN/1bit" synth --preset bitnet-2b4t -o /tmp/2b.h1b > /dev/null 2>&1 || { echo "synth failed"; exit 1; }
SETTINGS="${SETTINGS:-ONEBIT_CUDA_FUSED_GEMV=1
ONEBIT_CUDA_FUSED_GEMV=0
ONEBIT_CUDA_FUSED_GEMV=2,2,2,2,8,5,2,4
ONEBIT_CUDA_FUSED_GEMV=4,5,2,5,14,10,3,6
ONEBIT_CUDA_FUSED_GEMV=4,10,4,10,16,10,4,8
ONEBIT_CUDA_FUSED_GEMV=2,5,1,5,8,10,2,6}"
while IFS= read -r s; do
  [ -z "$s" ] && continue
  for head in ${HEADS:-bf16}; do
    r=$(env $s timeout 120 "$BIN/1bit" bench --device cuda -m /tmp/2b.h1b -p 0 -n "${N:-256}" -r 3 --kv f16 --no-membw \
          --lm-head "$head" 2>&1 | grep -E "tg[0-9]+" | head -1)
    echo "$s head=$head: $r"
  done
done <<< "$SETTINGS"
