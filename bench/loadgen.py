#!/usr/bin/env python3
"""Load generator for `1bit serve`, Python standard library only: bench/loadgen.mjs for machines
without node (the GPU machine). Same method and the same table: at each concurrency level that
many clients send streamed requests back to back for a fixed time; it reports generated tokens/s,
time to first token (TTFT) and inter-token latency (ITL) percentiles, measured at the client.

  python3 bench/loadgen.py --cli PATH/TO/1bit [--model M] [--serve-args "--device cuda --parallel 64"]
                           [--levels 1,8,64] [--seconds 15] [--max-tokens 32] [--route chat|completions]
  python3 bench/loadgen.py --base http://127.0.0.1:8180 ...

Every request has its own prompt, temperature 0.8 with a seed, and the model's end tokens banned
with logit_bias, so each generates exactly --max-tokens tokens. TTFT: request sent -> first
content chunk; ITL: the gap between successive content chunks of a stream; tokens/s:
usage.completion_tokens summed over the requests that finished in the level / its wall time.
"""
import argparse
import http.client
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def get_json(base, path):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, (json.loads(body) if r.status == 200 else None)


def request(base, body, route):
    """One streamed request: (tokens, ttft_ms, [itl_ms]); raises on anything wrong."""
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions" if route == "chat" else "/v1/completions", json.dumps(body),
              {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    ttft, last, usage, itls = None, None, None, []
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            break
        j = json.loads(line[6:])
        if "error" in j:
            raise RuntimeError(j["error"]["message"])
        if j.get("usage"):
            usage = j["usage"]
        ch = j.get("choices") or [{}]
        if (ch[0].get("delta", {}).get("content") if route == "chat" else ch[0].get("text")):
            now = time.perf_counter()
            if ttft is None:
                ttft = (now - t0) * 1000
            else:
                itls.append((now - last) * 1000)
            last = now
    c.close()
    if usage is None:
        raise RuntimeError("no usage chunk")
    return usage["completion_tokens"], ttft, itls


def prompt_body(route, text):
    return {"messages": [{"role": "user", "content": text}]} if route == "chat" else {"prompt": text}


def level(base, clients, seconds, max_tokens, banned, route):
    lock = threading.Lock()
    st = {"tokens": 0, "requests": 0, "errors": 0, "ttfts": [], "itls": []}
    start = time.perf_counter()
    deadline = start + seconds

    def client(i):
        n = 0
        while time.perf_counter() < deadline:
            prompt = f"Client {i} of {clients}, request {n}: tell me about the old city by the river."
            body = {"max_tokens": max_tokens, "temperature": 0.8, "seed": i * 1000003 + n, "stream": True,
                    "stream_options": {"include_usage": True}, "logit_bias": banned, **prompt_body(route, prompt)}
            n += 1
            try:
                tokens, ttft, itls = request(base, body, route)
                with lock:
                    st["tokens"] += tokens
                    st["requests"] += 1
                    if ttft is not None:
                        st["ttfts"].append(ttft)
                    st["itls"] += itls
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    st["errors"] += 1
                    if st["errors"] == 1:
                        print(f"error: {e}", file=sys.stderr)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"concurrency": clients, "requests": st["requests"], "errors": st["errors"], "tokens": st["tokens"],
            "wall_s": round(wall, 2), "tokens_per_s": round(st["tokens"] / wall, 1),
            "ttft_p50_ms": round(pct(st["ttfts"], 50), 1), "ttft_p99_ms": round(pct(st["ttfts"], 99), 1),
            "itl_p50_ms": round(pct(st["itls"], 50), 2), "itl_p99_ms": round(pct(st["itls"], 99), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base")
    ap.add_argument("--cli")
    ap.add_argument("--model")
    ap.add_argument("--serve-args", default="")
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--route", choices=["chat", "completions"], default="chat")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    if not all(x >= 1 for x in levels) or a.seconds <= 0 or a.max_tokens < 1 or not (a.base or a.cli):
        ap.error("bad arguments")
    proc, base = None, a.base
    if not base:
        cmd = [a.cli, "serve", "--port", "0"] + (["-m", a.model] if a.model else []) + a.serve_args.split()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                base = f"http://127.0.0.1:{m.group(1)}"
                break
        if not base:
            sys.exit(f"server exited with {proc.wait()}")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining
    for i in range(601):
        try:
            if get_json(base, "/health")[0] == 200:
                break
        except OSError:
            pass
        if i == 600:
            sys.exit("server not healthy")
        time.sleep(0.1)
    props = get_json(base, "/props")[1]
    banned = {str(t): -100 for t in (props.get("stop_token_ids") or []) + [props.get("eos_token_id")] if t is not None}
    request(base, {"max_tokens": 4, "stream": True, "stream_options": {"include_usage": True},
                   **prompt_body(a.route, "hi")}, a.route)  # warm-up
    results = [level(base, c, a.seconds, a.max_tokens, banned, a.route) for c in levels]
    if proc:
        proc.terminate()
        proc.wait()
    print(f"model {props.get('model')}, --parallel {props.get('parallel')}, {a.route}, max_tokens {a.max_tokens}, "
          f"{a.seconds:g} s per level, {os.cpu_count()} cpus")
    print("| streams | requests | errors | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']} | {r['ttft_p50_ms']} | "
              f"{r['ttft_p99_ms']} | {r['itl_p50_ms']} | {r['itl_p99_ms']} |")


if __name__ == "__main__":
    main()
