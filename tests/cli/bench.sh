#!/usr/bin/env bash
# `1bit bench --json` on a synthesized tiny model: the JSON parses and every number is positive;
# --device cuda runs on a GPU, and is refused clearly without one (or in a build without CUDA).
set -euo pipefail
BIN="$1"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
"$BIN" synth --preset tiny -o "$W/tiny.h1b" > /dev/null
"$BIN" bench -m "$W/tiny.h1b" -p 32 -n 8 -r 2 -t 2 --json > "$W/bench.json"
python3 - "$W/bench.json" <<'PY'
import json, math, sys
j = json.load(open(sys.argv[1]))
def pos(x, what):
    assert isinstance(x, (int, float)) and math.isfinite(x) and x > 0, (what, x)
assert j["pp"]["n"] == 32 and j["tg"]["n"] == 8, j
for t in ("pp", "tg"):
    r = j[t]
    assert len(r["runs"]) == 2, r
    for k in ("tokens_per_s", "min", "max"):
        pos(r[k], f"{t}.{k}")
    assert r["min"] <= r["tokens_per_s"] <= r["max"], r
pos(j["bytes_per_token"], "bytes_per_token")
pos(j["membw_bytes_per_s"], "membw_bytes_per_s")
pos(j["roofline_fraction"], "roofline_fraction")
assert j["membw_buffer_bytes"] >= 1 << 30, j
assert j["threads"] == 2, j
# The tiny model's decode weights: 4 layers x 7 ternary matrices (kernel layout) + norms + LM head.
assert 500_000 < j["bytes_per_token"] < 3_000_000, j["bytes_per_token"]
print("bench", {k: j[k] for k in ("bytes_per_token", "membw_bytes_per_s", "roofline_fraction")})
PY
"$BIN" bench -m "$W/tiny.h1b" -p 16 -n 4 -r 1 --no-membw | grep -q "^tg4 "

# --kv: every KV cache type runs on the CPU; bytes per position of the tiny shape (4 layers, 4 KV
# heads of 32): K and V rows of 32 x 4 B (f32), 32 x 2 B (f16), 32 + 4 B (q8), 16 + 4 B (q4r).
for kv in f32:4096 f16:2048 q8:1152 q4r:640; do
  "$BIN" bench -m "$W/tiny.h1b" -p 16 -n 4 -r 1 -d 40 --no-membw --kv "${kv%%:*}" --json > "$W/kv.json"
  python3 - "$W/kv.json" "${kv%%:*}" "${kv##*:}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["kv"] == sys.argv[2] and j["kv_bytes_per_position"] == int(sys.argv[3]), j
assert j["tg"]["tokens_per_s"] > 0 and j["depth"] == 40, j
PY
done
# The quantized caches on the GPU: with a usable GPU they run and report their bytes per position;
# otherwise exit 1 with the missing device (never a crash).
for kv in q8 q4r; do
  set +e
  "$BIN" bench -m "$W/tiny.h1b" -p 16 -n 4 -r 1 --no-membw --device cuda --kv "$kv" > "$W/cudakv.txt" 2> "$W/err.txt"
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    grep -q "^tg4 " "$W/cudakv.txt" && grep -q "kv cache     $kv, " "$W/cudakv.txt" ||
      { echo "bench --device cuda --kv $kv ran but printed:"; cat "$W/cudakv.txt"; exit 1; }
  elif [ "$rc" -ne 1 ] || ! grep -qE "no CUDA device|has no CUDA backend" "$W/err.txt"; then
    echo "bench --device cuda --kv $kv: expected success or exit 1 with a clear error, got $rc:"; cat "$W/err.txt"; exit 1
  fi
done

set +e
"$BIN" bench -m "$W/tiny.h1b" -p 16 -n 4 -r 1 --no-membw --device cuda > "$W/cuda.txt" 2> "$W/err.txt"
rc=$?
set -e
# With a usable GPU it runs; otherwise exit 1 with the reason (no device, or a build without CUDA).
if [ "$rc" -eq 0 ]; then
  grep -q "cuda backend" "$W/cuda.txt" && grep -q "^tg4 " "$W/cuda.txt" || { echo "bench --device cuda ran but printed:"; cat "$W/cuda.txt"; exit 1; }
elif [ "$rc" -ne 1 ] || ! grep -qE "no CUDA device|has no CUDA backend" "$W/err.txt"; then
  echo "bench --device cuda: expected success or exit 1 with a clear error, got $rc:"; cat "$W/err.txt"; exit 1
fi
echo "bench OK"
