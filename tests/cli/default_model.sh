#!/usr/bin/env bash
# The default model (models/*.h1b) against the PyTorch reference of its training run
# (tests/data/default_model/reference.json, made by tools/train/train_bitnet.py on the GPU machine):
#  - the tokenizer gives the reference's token ids for the held-out excerpt (same sha256);
#  - `1bit ppl` on the excerpt equals transformers' perplexity within 1%;
#  - greedy continuations of the five reference prompts equal PyTorch's first 32 tokens.
# Usage: default_model.sh 1BIT [cpu|cuda]. With cuda and no usable GPU it prints SKIPPED and exits 0.
set -euo pipefail
BIN="$1"
DEVICE="${2:-cpu}"
SRC="$(cd "$(dirname "$0")/../.." && pwd)"
MODEL="$(ls "$SRC"/models/*.h1b | head -n 1)"
REF="$SRC/tests/data/default_model/reference.json"
EXCERPT="$SRC/tests/data/default_model/valid_excerpt.txt"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT

"$BIN" verify "$MODEL"
if [ "$DEVICE" = cuda ]; then
  if ! err="$("$BIN" run -m "$MODEL" -p "The" -n 1 --temp 0 --device cuda 2>&1 >/dev/null)"; then
    case "$err" in
      *"no CUDA"*) echo "SKIPPED: $err"; exit 0 ;;
      *) echo "$err" >&2; exit 1 ;;
    esac
  fi
fi

"$BIN" tokenize -m "$MODEL" -f "$EXCERPT" > "$W/ids.json"
"$BIN" ppl -m "$MODEL" -f "$EXCERPT" --ctx 512 --json --device "$DEVICE" > "$W/ppl.json"
python3 - "$REF" "$W/ids.json" "$W/ppl.json" <<'PY'
import hashlib, json, sys
ref = json.load(open(sys.argv[1]))["valid_excerpt"]
ids = json.load(open(sys.argv[2]))
digest = hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()
ours = json.load(open(sys.argv[3]))
print(f"excerpt: {len(ids)} tokens (reference {ref['tokens']}); ppl ours {ours['ppl']:.4f}, "
      f"transformers {ref['ppl_hf']:.4f}")
if len(ids) != ref["tokens"] or ids != ref["ids"]:
    sys.exit("token ids differ from the reference tokenizer")
rel = abs(ours["ppl"] - ref["ppl_hf"]) / ref["ppl_hf"]
if ours["tokens"] != ref["tokens"] or rel > 0.01:
    sys.exit(f"perplexity differs by {rel:.2%} (limit 1%)")
PY

python3 -c 'import json,sys; [print(g["prompt"]) for g in json.load(open(sys.argv[1]))["greedy"]]' "$REF" > "$W/prompts.txt"
i=0
while IFS= read -r prompt; do
  "$BIN" run -m "$MODEL" -p "$prompt" -n 32 --temp 0 --device "$DEVICE" > "$W/out$i.txt"
  i=$((i + 1))
done < "$W/prompts.txt"
python3 - "$REF" "$W" <<'PY'
import json, sys
ref = json.load(open(sys.argv[1]))["greedy"]
bad = 0
for i, g in enumerate(ref):
    ours = open(f"{sys.argv[2]}/out{i}.txt", encoding="utf-8").read()
    if ours.endswith("\n"):  # `1bit run` ends its output with a newline
        ours = ours[:-1]
    ok = ours == g["text"]
    bad += not ok
    print(f"{'ok  ' if ok else 'DIFF'} {g['prompt']!r} -> {ours!r}")
    if not ok:
        print(f"     reference {g['text']!r}")
sys.exit(1 if bad else 0)
PY
echo "default model matches the PyTorch reference ($DEVICE)"
