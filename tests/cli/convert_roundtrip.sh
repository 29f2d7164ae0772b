#!/usr/bin/env bash
# CLI end-to-end: synth -> .h1b -> GGUF (TQ2_0, I2_S) -> .h1b keeps every code, scale and value
# (compared through `1bit info --digest`), verify catches corruption, and hostile files get a clear
# error and exit status 1 (never a crash).
set -euo pipefail
BIN="$1"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT

digests() { "$BIN" info --digest --json "$1" | python3 -c '
import json,sys
j=json.load(sys.stdin)
for t in j["tensors"]["list"]: print(t["name"], t["shape"], t["digest"])'; }

"$BIN" synth --preset tiny --seed 3 -o "$W/a.h1b"
"$BIN" verify "$W/a.h1b"
digests "$W/a.h1b" > "$W/a.txt"
[ "$(wc -l < "$W/a.txt")" -eq 46 ] || { echo "expected 46 tensors"; exit 1; }

for ty in tq2_0 i2_s; do
  "$BIN" convert "$W/a.h1b" "$W/b-$ty.gguf" --gguf-type "$ty"
  digests "$W/b-$ty.gguf" > "$W/b-$ty.txt"
  diff "$W/a.txt" "$W/b-$ty.txt"
  "$BIN" convert "$W/b-$ty.gguf" "$W/c-$ty.h1b"
  "$BIN" verify "$W/c-$ty.h1b"
  digests "$W/c-$ty.h1b" > "$W/c-$ty.txt"
  diff "$W/a.txt" "$W/c-$ty.txt"
done

# The bf16-master form goes through absmean quantization; its round trip must hold too.
"$BIN" synth --preset tiny --form bf16-master -o "$W/m.h1b"
"$BIN" convert "$W/m.h1b" "$W/m.gguf" --gguf-type i2_s
diff <(digests "$W/m.h1b") <(digests "$W/m.gguf")

# Corruption: flip one byte near the end (tensor data): verify must fail and name a tensor.
cp "$W/a.h1b" "$W/bad.h1b"
size=$(stat -c %s "$W/bad.h1b")
printf '\xff' | dd of="$W/bad.h1b" bs=1 seek=$((size - 100)) conv=notrunc status=none
if "$BIN" verify "$W/bad.h1b" > "$W/verify.txt" 2>&1; then echo "verify passed a corrupt file"; exit 1; fi
grep -q "tensor" "$W/verify.txt" || { cat "$W/verify.txt"; echo "verify did not name the tensor"; exit 1; }

# Hostile inputs: truncated files of every format, garbage, an empty file, a missing file.
expect_error() {
  set +e
  "$BIN" info "$1" > /dev/null 2> "$W/err.txt"
  rc=$?
  set -e
  if [ "$rc" -ne 1 ] || ! grep -q "error:" "$W/err.txt"; then
    echo "info $1: expected a clean error (exit 1), got exit $rc:"; cat "$W/err.txt"; exit 1
  fi
}
for f in a.h1b b-tq2_0.gguf b-i2_s.gguf; do
  for n in 0 7 64 300 5000 100000; do
    head -c "$n" "$W/$f" > "$W/trunc-$n-$f"
    expect_error "$W/trunc-$n-$f"
  done
done
head -c 4096 /dev/urandom > "$W/garbage.bin"
expect_error "$W/garbage.bin"
expect_error "$W/does-not-exist.h1b"
echo "convert round trips OK"
