#!/usr/bin/env bash
# compute-sanitizer over the CUDA kernel checkers on the GPU machine: memcheck (out-of-bounds and
# misaligned accesses, bad launches), racecheck (shared-memory hazards), synccheck (barrier misuse)
# on ops_check, and memcheck on the other checkers; the checkers run their small shape sets
# (ONEBIT_CHECK_SMALL=1, check_util.h), which reach every kernel and launch path.
#
#   here:   cmake --build build/default && bash bench/cuda/pack_devbin.sh      # -> .devbin/
#   device: bash bench/cuda/sanitize_on_device.sh                               # carry .devbin
#
# Everything goes to $OUT/sanitize.txt; the exit status is 0 only if every run was clean and passed.
set -uo pipefail
. "$(dirname "$0")/device_env.sh"
LOG="$OUT/sanitize.txt"
export ONEBIT_CHECK_SMALL=1
: > "$LOG"
san() {
  local tool="$1" bin="$2"
  echo "== compute-sanitizer --tool $tool $bin" | tee -a "$LOG"
  timeout "${SAN_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/$bin" >> "$LOG" 2>&1
  local rc=$?
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAILED|passed" "$LOG" | tail -2
  if [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc): $tool $bin" | tee -a "$LOG"
    status=1
  fi
}
for tool in memcheck racecheck synccheck; do san "$tool" test_cuda_ops_check; done
for b in test_cuda_kv_quant_check test_cuda_sample_check test_cuda_fused_gemv_check; do san memcheck "$b"; done
exit $status
