#!/usr/bin/env bash
# Copies the CUDA-enabled binaries of build/default (or of the build folder $BUILD, e.g. one in
# another worktree) stripped, and the shared libraries they need that the GPU machine lacks, into
# .devbin/ (or $DEVBIN, another ignored `.devbin*` folder of this checkout: several people can then
# pack side by side), for bench/cuda/engine_on_device.sh. With $BASE_1BIT (a 1bit built from an
# earlier commit), that one goes to $DEVBIN/base/1bit and is timed beside the new one.
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${BUILD:-build/default}"
D="${DEVBIN:-.devbin}"
case "$D" in .devbin*) ;; *) echo "DEVBIN must be a .devbin* folder (ignored by git)" >&2; exit 2 ;; esac
rm -rf "$D" && mkdir -p "$D/lib"
for b in 1bit tests/test_engine tests/test_cuda_ops_check tests/test_cuda_ternary_gemv_check tests/test_cuda_fused_gemv_check \
         tests/test_cuda_kv_quant_check tests/test_cuda_sample_check; do
  strip -o "$D/$(basename "$b")" "$B/$b"
done
for lib in libfmt.so.9 libpcre2-8.so.0 libcudart.so.13; do
  path="$(ldd "$B/tests/test_engine" | awk -v l="$lib" '$1 == l {print $3}')"
  [ -n "$path" ] && cp -L "$path" "$D/lib/"
done
if [ -n "${BASE_1BIT:-}" ]; then
  mkdir -p "$D/base"
  strip -o "$D/base/1bit" "$BASE_1BIT"
fi
du -sh "$D"
