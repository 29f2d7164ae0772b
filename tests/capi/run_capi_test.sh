#!/usr/bin/env bash
# Runs capi_test on a freshly synthesized tiny model and checks that libonebit.so exports only the
# C ABI (onebit_* symbols).
#   run_capi_test.sh 1BIT_BINARY CAPI_TEST LIBONEBIT_SO
set -euo pipefail
BIN="$1"; TEST="$2"; LIB="$3"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
"$BIN" synth --preset tiny --seed 7 -o "$W/tiny.h1b" > /dev/null
"$TEST" "$W/tiny.h1b"

if command -v nm > /dev/null; then
  nm -D --defined-only "$LIB" | awk 'NF >= 3 {print $3}' > "$W/syms.txt"
  grep -q '^onebit_generate$' "$W/syms.txt" || { echo "onebit_generate is not exported"; exit 1; }
  if grep -v '^onebit_' "$W/syms.txt" > "$W/extra.txt"; then
    echo "libonebit exports symbols outside the C ABI ($(wc -l < "$W/extra.txt")), e.g.:"; head "$W/extra.txt"; exit 1
  fi
fi
echo "C ABI OK"
