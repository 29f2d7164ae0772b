#!/usr/bin/env bash
# `1bit chat` driven non-interactively on a synthesized tiny model (greedy):
#  - answers are deterministic, /reset really clears (same question -> same answer as at the start),
#  - the KV cache is kept between turns (turn 2 reuses turn 1's prompt) and gives exactly what
#    re-prefilling the whole conversation gives (--no-cache),
#  - a conversation longer than the context is reported and the chat goes on,
#  - Ctrl-C stops the answer but not the program; two Ctrl-C at the prompt quit (chat_sigint.py).
set -euo pipefail
BIN="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
"$BIN" synth --preset tiny --seed 3 -o "$W/tiny.h1b" > /dev/null
CHAT=("$BIN" chat -m "$W/tiny.h1b" --temp 0 -n 10 --ctx 512 -v)

printf 'hello there\nhow are you?\n/reset\nhello there\n/exit\nnever read\n' > "$W/in.txt"
"${CHAT[@]}" < "$W/in.txt" > "$W/out1.txt" 2> "$W/err1.txt"
"${CHAT[@]}" < "$W/in.txt" > "$W/out2.txt" 2> "$W/err2.txt"
cmp "$W/out1.txt" "$W/out2.txt" || { echo "chat is not deterministic"; exit 1; }
"${CHAT[@]}" --no-cache < "$W/in.txt" > "$W/out3.txt" 2> "$W/err3.txt"
cmp "$W/out1.txt" "$W/out3.txt" || { echo "KV reuse changed the answers"; exit 1; }
python3 - "$W" <<'PY'
import re, sys
w = sys.argv[1]
err = open(f"{w}/err1.txt").read()
turns = [tuple(map(int, m)) for m in re.findall(r"prompt (\d+) tokens, reused (\d+), prefilled (\d+)", err)]
assert len(turns) == 3, err  # /exit stopped before "never read"
(p1, r1, f1), (p2, r2, f2), (p3, r3, f3) = turns
assert r1 == 0 and f1 == p1, turns
assert p2 > p1 and r2 >= p1 and f2 == p2 - r2, turns  # turn 2 reuses at least turn 1's prompt
assert r3 == 0 and p3 == p1, turns                     # after /reset: nothing cached
assert "[conversation cleared]" in err, err
no_cache = re.findall(r"reused (\d+)", open(f"{w}/err3.txt").read())
assert no_cache == ["0", "0", "0"], no_cache
# The answers: 3 turns of 10 tokens each. Answer 3 (after /reset) must equal answer 1. The output
# is one answer per turn plus "\n"; the tokens are random bytes, so split by the known structure:
# out = a1 "\n" a2 "\n" a3 "\n" with a3 == a1.
out = open(f"{w}/out1.txt", "rb").read()
assert out.endswith(b"\n")
found = False
for i in range(1, len(out)):
    a1 = out[:i]
    if out.endswith(b"\n" + a1 + b"\n") and out.startswith(a1 + b"\n") and len(out) > 2 * len(a1) + 2:
        found = True
        break
assert found, out
print("chat turns", turns)
PY

# Too long for the context: an error on stderr, the chat goes on and answers the next line.
python3 -c 'print("word " * 200); print("hi")' > "$W/long.txt"
"$BIN" chat -m "$W/tiny.h1b" --temp 0 -n 4 --ctx 128 -v < "$W/long.txt" > "$W/out4.txt" 2> "$W/err4.txt"
grep -q "but the context is 128" "$W/err4.txt" || { cat "$W/err4.txt"; echo "no context error"; exit 1; }
[ "$(grep -c "generated" "$W/err4.txt")" -eq 1 ] || { cat "$W/err4.txt"; echo "expected one answer"; exit 1; }

# A system message changes the prompt.
printf 'hello there\n' | "${CHAT[@]}" --system "Be brief." > /dev/null 2> "$W/err5.txt"
grep -q "prompt 3[0-9] tokens\|prompt [4-9][0-9] tokens" "$W/err5.txt" || true
p_sys=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' "$W/err5.txt" | head -1)
p_plain=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' "$W/err1.txt" | head -1)
[ "$p_sys" -gt "$p_plain" ] || { echo "system message not rendered ($p_sys vs $p_plain tokens)"; exit 1; }

python3 "$HERE/chat_sigint.py" "$BIN" "$W/tiny.h1b"
echo "chat OK"
