#!/usr/bin/env bash
# `1bit ppl` on a synthesized tiny model: a finite perplexity, identical across runs and across
# thread counts, the window/token accounting the docs promise, and clear errors (exit 1).
set -euo pipefail
BIN="$1"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
"$BIN" synth --preset tiny --seed 5 -o "$W/tiny.h1b" > /dev/null
python3 -c '
import random
random.seed(1)
w = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
print(" ".join(random.choice(w) for _ in range(400)))' > "$W/text.txt"
N_TOK=$("$BIN" tokenize --model "$W/tiny.h1b" < "$W/text.txt" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')

"$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 100 --json -t 1 > "$W/a.json"
"$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 100 --json -t 1 > "$W/b.json"
"$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 100 --json -t 2 > "$W/c.json"
"$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 64 --json -t 2 > "$W/d.json"
python3 - "$W" "$N_TOK" <<'PY'
import json, math, sys
w, n_tok = sys.argv[1], int(sys.argv[2])
a, b, c, d = (json.load(open(f"{w}/{x}.json")) for x in "abcd")
for j in (a, d):
    assert math.isfinite(j["ppl"]) and j["ppl"] > 1.0, j
    assert abs(math.exp(j["nll"]) - j["ppl"]) <= 1e-9 * j["ppl"], j
    # The synthesized model has BOS: every file token is predicted once, in ceil(n/ctx) windows.
    assert j["bos"] is True and j["tokens"] == n_tok, (j, n_tok)
    assert j["windows"] == -(-n_tok // j["ctx"]), j
assert a["ctx"] == 100 and d["ctx"] == 64
for k in ("ppl", "nll", "tokens", "windows"):
    assert a[k] == b[k], ("run to run", k, a[k], b[k])
    assert a[k] == c[k], ("1 vs 2 threads", k, a[k], c[k])
assert a["ppl"] != d["ppl"], "different windows should give a different perplexity"
print("ppl", a["ppl"], "over", a["tokens"], "tokens")
PY
# Human output names the numbers.
"$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 100 | grep -q "^ppl "
# Quantized KV caches (--kv): the same windows, a perplexity close to the fp32 cache's.
for kv in f16 q8 q4r; do
  "$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 100 --json -t 2 --kv "$kv" > "$W/kv_$kv.json"
done
python3 - "$W" <<'PY'
import json, math, sys
w = sys.argv[1]
a = json.load(open(f"{w}/a.json"))
for kv, tol in (("f16", 1e-3), ("q8", 0.02), ("q4r", 0.1)):
    j = json.load(open(f"{w}/kv_{kv}.json"))
    assert j["tokens"] == a["tokens"] and j["windows"] == a["windows"] and j["kv"] == kv, (kv, j)
    assert math.isfinite(j["ppl"]) and abs(j["nll"] - a["nll"]) <= tol * a["nll"], (kv, j["nll"], a["nll"])
    print("ppl --kv", kv, j["ppl"], "(f32", a["ppl"], ")")
PY

expect_error() {  # expect_error PATTERN CMD...: exit status 1 and PATTERN on stderr
  local pat="$1"; shift
  set +e
  "$@" > "$W/out.txt" 2> "$W/err.txt"
  local rc=$?
  set -e
  if [ "$rc" -ne 1 ] || ! grep -q -- "$pat" "$W/err.txt"; then
    echo "$*: expected exit 1 and '$pat', got exit $rc:"; cat "$W/err.txt"; exit 1
  fi
}
expect_error "needs 4000 positions but the model's context is 2048" \
  "$BIN" ppl -m "$W/tiny.h1b" -f "$W/text.txt" --ctx 4000
expect_error "cannot open" "$BIN" ppl -m "$W/tiny.h1b" -f "$W/missing.txt"
: > "$W/empty.txt"
expect_error "too few to score" "$BIN" ppl -m "$W/tiny.h1b" -f "$W/empty.txt"
echo "ppl OK"
