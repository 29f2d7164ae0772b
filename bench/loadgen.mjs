#!/usr/bin/env node
// Load generator for `1bit serve`: at each concurrency level, that many clients send streamed
// requests back to back for a fixed time, and it reports generated tokens/s, time to first token
// (TTFT) and inter-token latency (ITL) percentiles, measured at the client. Node 18+ only, no npm
// packages.
//
//   node bench/loadgen.mjs --base http://127.0.0.1:8180 [--levels 1,8,64] [--seconds 15]
//                          [--max-tokens 32] [--route chat|completions] [--json]
//   node bench/loadgen.mjs --cli build/default/1bit [--model M] [--serve-args "--parallel 4 -t 2"] ...
//
// With --cli it starts `1bit serve --port 0` itself (and stops it at the end). Every request has
// its own prompt (client and request number in it, so the prefix cache reuses only the shared
// start), temperature 0.8 with a seed, and the model's end tokens banned with logit_bias so that
// each request generates exactly --max-tokens tokens. TTFT is request sent -> first content
// chunk; ITL is the gap between successive content chunks of one stream (a chunk is one token,
// except when a multi-byte character spans tokens; chunks that arrive in one socket read share
// that read's gap evenly); tokens/s is usage.completion_tokens summed
// over the requests that finished within the level, divided by the level's wall time.
import { spawn } from "node:child_process";
import os from "node:os";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const has = (name) => args.includes(name);
const levels = opt("--levels", "1,8,64").split(",").map(Number);
const seconds = Number(opt("--seconds", 15));
const maxTokens = Number(opt("--max-tokens", 32));
const route = opt("--route", "chat");
if (!levels.every((l) => l >= 1) || !(seconds > 0) || !(maxTokens >= 1) || !["chat", "completions"].includes(route)) {
  console.error("bad arguments; see the header of bench/loadgen.mjs");
  process.exit(2);
}

async function startServer() {
  const extra = opt("--serve-args", "").split(" ").filter(Boolean);
  const m = opt("--model");
  const proc = spawn(opt("--cli"), ["serve", "--port", "0", ...(m ? ["-m", m] : []), ...extra], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  const port = await new Promise((resolve, reject) => {
    proc.stderr.on("data", (d) => {
      stderr = (stderr + d).slice(-65536);
      const mm = /listening on http:\/\/[^:]+:(\d+)/.exec(stderr);
      if (mm) resolve(Number(mm[1]));
    });
    proc.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${stderr}`)));
  });
  return { proc, base: `http://127.0.0.1:${port}` };
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};

// One streamed request: {tokens, ttft, itls[]} (ms), or throws.
async function request(base, body) {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/${route === "chat" ? "chat/completions" : "completions"}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${(await res.text()).slice(0, 200)}`);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "", ttft = null, last = null, usage = null, done = false;
  const itls = [];
  while (!done) {
    const { value, done: end } = await reader.read();
    if (end) break;
    const now = performance.now();
    buf += dec.decode(value, { stream: true });
    let k = 0;  // content chunks in this read
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (ev === "data: [DONE]") {
        done = true;
        break;
      }
      const j = JSON.parse(ev.slice(6));
      if (j.error) throw new Error(j.error.message);
      if (j.usage) usage = j.usage;
      const c = j.choices?.[0];
      if (route === "chat" ? c?.delta?.content : c?.text) k++;
    }
    if (k === 0) continue;
    if (ttft === null) {
      ttft = now - t0;
      for (let x = 1; x < k; ++x) itls.push(0);
    } else {
      // Several chunks can arrive in one read when the client is slower than the server: the
      // read's gap is shared evenly among them.
      for (let x = 0; x < k; ++x) itls.push((now - last) / k);
    }
    last = now;
  }
  if (!usage) throw new Error("no usage chunk");
  return { tokens: usage.completion_tokens, ttft, itls };
}

async function level(base, clients, banned) {
  const ttfts = [], itls = [];
  let tokens = 0, requests = 0, errors = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  await Promise.all([...Array(clients).keys()].map(async (i) => {
    for (let n = 0; performance.now() < deadline; ++n) {
      const prompt = `Client ${i} of ${clients}, request ${n}: tell me about the old city by the river.`;
      const body = {
        max_tokens: maxTokens, temperature: 0.8, seed: i * 1000003 + n, stream: true, stream_options: { include_usage: true },
        logit_bias: banned, ...(route === "chat" ? { messages: [{ role: "user", content: prompt }] } : { prompt }),
      };
      try {
        const r = await request(base, body);
        tokens += r.tokens;
        requests++;
        if (r.ttft !== null) ttfts.push(r.ttft);
        itls.push(...r.itls);
      } catch (e) {
        errors++;
        if (errors === 1) console.error(`error: ${e.message}`);
      }
    }
  }));
  const wall = (performance.now() - start) / 1000;
  return {
    concurrency: clients, requests, errors, tokens, wall_s: +wall.toFixed(2), tokens_per_s: +(tokens / wall).toFixed(1),
    ttft_p50_ms: +pct(ttfts, 50).toFixed(1), ttft_p99_ms: +pct(ttfts, 99).toFixed(1),
    itl_p50_ms: +pct(itls, 50).toFixed(2), itl_p99_ms: +pct(itls, 99).toFixed(2),
  };
}

async function main() {
  let server = null;
  let base = opt("--base");
  if (!base) {
    if (!opt("--cli")) {
      console.error("give --base URL of a running server, or --cli PATH/TO/1bit to start one");
      process.exit(2);
    }
    server = await startServer();
    base = server.base;
  }
  for (let i = 0; ; ++i) {  // wait for the model to load
    const r = await fetch(`${base}/health`).catch(() => null);
    if (r?.status === 200) break;
    if (i > 600) throw new Error("server not healthy");
    await new Promise((r) => setTimeout(r, 100));
  }
  const props = await (await fetch(`${base}/props`)).json();
  const banned = {};
  for (const id of [...(props.stop_token_ids ?? []), props.eos_token_id]) if (id !== null && id !== undefined) banned[id] = -100;
  await request(base, { max_tokens: 4, stream: true, stream_options: { include_usage: true },  // warm-up
    ...(route === "chat" ? { messages: [{ role: "user", content: "hi" }] } : { prompt: "hi" }) });
  const results = [];
  for (const c of levels) results.push(await level(base, c, banned));
  if (server) server.proc.kill("SIGTERM");
  if (has("--json")) {
    console.log(JSON.stringify({ model: props.model, parallel: props.parallel, n_ctx: props.n_ctx, route, max_tokens: maxTokens,
      seconds, cpus: os.cpus().length, cpu: os.cpus()[0]?.model, results }, null, 2));
    return;
  }
  console.log(`model ${props.model}, --parallel ${props.parallel}, ${route}, max_tokens ${maxTokens}, ${seconds} s per level, ` +
    `${os.cpus().length} x ${os.cpus()[0]?.model}`);
  console.log("| streams | requests | errors | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const r of results)
    console.log(`| ${r.concurrency} | ${r.requests} | ${r.errors} | ${r.tokens_per_s} | ${r.ttft_p50_ms} | ${r.ttft_p99_ms} | ` +
      `${r.itl_p50_ms} | ${r.itl_p99_ms} |`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
