#!/usr/bin/env python3
"""Render tests/data/chat_templates/*.jinja with transformers' own chat-template machinery and
write tests/data/chat_templates/goldens.json, which tests/unit/template/golden_test.cc checks
the C++ ChatTemplate against.

Run from the repository root on a machine with `transformers` and `tokenizers` installed:

    python3 tools/golden/make_chat_template_goldens.py

Nothing is downloaded: the tokenizer is a tiny WordLevel model built in memory; only its
bos_token / eos_token and chat_template matter, since apply_chat_template(tokenize=False) returns
the rendered text. Each case records the template name, the messages, add_generation_prompt,
bos_token, eos_token, optional extra template variables (extra_context, passed to
apply_chat_template as keyword arguments) and either the expected text or the error message
the template raised.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "chat_templates"
OUT = DATA / "goldens.json"

# bos/eos per template family: what the real tokenizer_config.json of such models names.
TOKENS = {
    "bitnet-b1.58-2b-4t": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "chatml": ("<s>", "<|im_end|>"),
    "zephyr": ("<s>", "</s>"),
    "mistral-7b-instruct-v0.1": ("<s>", "</s>"),
}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another."},
    ],
    "whitespace": [
        {"role": "system", "content": "  padded system \n"},
        {"role": "user", "content": "\n\n  leading and trailing  \t\n"},
    ],
    "unicode": [{"role": "user", "content": "Grüße, 世界! Emoji: \U0001F600 — «quotes» \u00a0nbsp"}],
    "empty_content": [{"role": "user", "content": ""}],
    "multiline": [{"role": "user", "content": "line one\nline two\n\nline four"}],
    "special_chars": [{"role": "user", "content": "Braces {{ x }} {% y %} and quotes ' \" \\ backslash"}],
    # Rejected by the Mistral template (roles must alternate) and by ones that need a user turn.
    "two_users": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ],
    "assistant_first": [{"role": "assistant", "content": "I speak first."}],
}

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
            "required": ["city"],
        },
    },
}

# Template-specific cases beyond the plain conversations: (name, template, messages, extra kwargs).
EXTRA_CASES = [
    ("fixed_date", "llama-3.2-instruct", CONVERSATIONS["system_user"], {"date_string": "26 Jul 2024"}),
    ("fixed_date_multi", "llama-3.2-instruct", CONVERSATIONS["multi_turn"], {"date_string": "01 Jan 2025"}),
    ("custom_date", "llama-3.1-instruct", CONVERSATIONS["system_user"], {"date_string": "02 Feb 2025"}),
    (
        "tools_in_user_message",
        "llama-3.1-instruct",
        [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny, 21C"},
        ],
        {"tools": [TOOL]},
    ),
    (
        "tools_in_system_message",
        "llama-3.1-instruct",
        [{"role": "user", "content": "Weather in Oslo?"}],
        {"tools": [TOOL], "tools_in_user_message": False},
    ),
    (
        "builtin_tools",
        "llama-3.1-instruct",
        [
            {"role": "user", "content": "Search the web."},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "brave_search", "arguments": {"query": "bitnet"}}}]},
            {"role": "ipython", "content": {"results": ["a", "b"]}},
        ],
        {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]},
    ),
    (
        "tools_without_user_message",
        "llama-3.1-instruct",
        [{"role": "system", "content": "Only a system turn."}],
        {"tools": [TOOL]},
    ),
    (
        "two_tool_calls_rejected",
        "llama-3.2-instruct",
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]},
        ],
        {"date_string": "26 Jul 2024"},
    ),
]

# llama-3.2's template calls strftime_now() unless date_string is given: pin it for plain cases.
PINNED = {"llama-3.2-instruct": {"date_string": "26 Jul 2024"}}


def make_tokenizer(bos, eos, template):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, bos: 1, eos: 2, "hello": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=None)
    tok.chat_template = template
    return tok


def render(tok, messages, add_generation_prompt, extra):
    kwargs = dict(extra)
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
    except Exception as e:  # jinja2 TemplateError from raise_exception, or a runtime error
        from jinja2.exceptions import TemplateError

        if isinstance(e, TemplateError) and type(e).__name__ == "TemplateError":
            return {"error": str(e)}
        return {"error_other": f"{type(e).__name__}: {e}"}
    if isinstance(text, list):  # some versions return a batch
        text = text[0]
    return {"expected": text}


def main():
    try:
        import transformers
    except ImportError:
        sys.exit("transformers is not installed; run this on the machine that has it (no network needed)")

    names = sorted(p.stem for p in DATA.glob("*.jinja"))
    missing = [n for n in names if n not in TOKENS]
    if missing:
        sys.exit(f"no bos/eos configured for {missing}; add them to TOKENS")

    cases, summary = [], {}
    for name in names:
        template = (DATA / f"{name}.jinja").read_text(encoding="utf-8")
        bos, eos = TOKENS[name]
        tok = make_tokenizer(bos, eos, template)
        jobs = [(conv, msgs, PINNED.get(name, {})) for conv, msgs in CONVERSATIONS.items()]
        jobs += [(case, msgs, extra) for case, tname, msgs, extra in EXTRA_CASES if tname == name]
        for conv, msgs, extra in jobs:
            for agp in (False, True):
                result = render(tok, msgs, agp, extra)
                if "error_other" in result:
                    # Not a template-raised error (e.g. a Python TypeError): not a behaviour we pin.
                    print(f"  skip {name}/{conv}/agp={agp}: {result['error_other']}", file=sys.stderr)
                    continue
                case = {
                    "template": name,
                    "name": f"{conv}{'+gen' if agp else ''}",
                    "messages": msgs,
                    "add_generation_prompt": agp,
                    "bos_token": bos,
                    "eos_token": eos,
                }
                if extra:
                    case["extra_context"] = extra
                case.update(result)
                cases.append(case)
                s = summary.setdefault(name, [0, 0])
                s[0 if "expected" in result else 1] += 1

    out = {
        "generator": "tools/golden/make_chat_template_goldens.py",
        "transformers_version": transformers.__version__,
        "cases": cases,
    }
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} with {len(cases)} cases (transformers {transformers.__version__})")
    for name, (ok, err) in sorted(summary.items()):
        print(f"  {name:28s} {ok:3d} rendered, {err:2d} raised")


if __name__ == "__main__":
    main()
