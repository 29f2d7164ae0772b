#!/usr/bin/env bash
# Build, check and benchmark the CUDA ternary GEMV on the GPU machine with plain nvcc.
# Usage (repo root): bash bench/cuda/run_on_device.sh   -- logs under $OUT (default /tmp/cuda-out)
set -uo pipefail
OUT=${OUT:-/tmp/cuda-out}; mkdir -p "$OUT"
ARCH="-gencode arch=compute_90a,code=sm_90a"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
nvcc --version | tail -1
nvcc -O3 -std=c++20 $ARCH -Isrc -Xptxas -v src/kernels/cuda/*.cu tests/cuda/ternary_gemv_check.cu -o /tmp/check > "$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
nvcc -O3 -std=c++20 $ARCH -Isrc src/kernels/cuda/*.cu bench/cuda/ternary_gemv_bench.cu -o /tmp/bench >> "$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
cuobjdump -sass /tmp/check > "$OUT/sass.txt" 2>&1
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | head
/tmp/check 2>&1 | tee "$OUT/check.log"; crc=${PIPESTATUS[0]}
echo "check rc=$crc"
/tmp/bench "$@" 2>&1 | tee "$OUT/bench.log"; brc=${PIPESTATUS[0]}
echo "check rc=$crc bench rc=$brc"
