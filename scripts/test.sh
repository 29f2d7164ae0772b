#!/usr/bin/env bash
# Runs every test: the default build's unit/integration/e2e tests, the same tests under
# AddressSanitizer + UBSan, and each libFuzzer target for a short fixed time.
# Usage: scripts/test.sh [default|asan|fuzz ...]   (no argument: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
presets=("$@")
[ "${#presets[@]}" -gt 0 ] || presets=(default asan fuzz)
for p in "${presets[@]}"; do
  echo "=== workflow preset: $p ==="
  cmake --workflow --preset "$p"
done
