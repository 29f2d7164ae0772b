#!/usr/bin/env bash
# A prompt longer than the context is a clear error with exit status 1 (never a crash), for
# `1bit run` and `1bit ppl`.
set -euo pipefail
BIN="$1"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
"$BIN" synth --preset tiny -o "$W/tiny.h1b" > /dev/null
head -c 3000 /dev/zero | tr '\0' 'a' > "$W/long.txt"

expect_error() {  # expect_error PATTERN CMD...
  local pat="$1"; shift
  set +e
  "$@" > "$W/out.txt" 2> "$W/err.txt"
  local rc=$?
  set -e
  if [ "$rc" -ne 1 ] || ! grep -q -- "$pat" "$W/err.txt"; then
    echo "$*: expected exit 1 and '$pat', got exit $rc:"; cat "$W/err.txt"; exit 1
  fi
  [ -s "$W/out.txt" ] && { echo "$*: wrote to stdout on error"; cat "$W/out.txt"; exit 1; }
  return 0
}
expect_error "does not fit in the context of 64 tokens" "$BIN" run -m "$W/tiny.h1b" -f "$W/long.txt" --ctx 64 -n 4
expect_error "does not fit in the context" "$BIN" run -m "$W/tiny.h1b" -f "$W/long.txt" -n 4
expect_error "exceeds the model's maximum" "$BIN" run -m "$W/tiny.h1b" -p "hi" --ctx 100000 -n 4
expect_error "needs 2049 positions but the model's context is 2048" "$BIN" ppl -m "$W/tiny.h1b" -f "$W/long.txt" --ctx 2049
echo "context errors OK"
