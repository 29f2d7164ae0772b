// End-to-end test of `1bit serve`: starts the server with a real model on a free port, drives it
// with the official OpenAI JavaScript client (npm `openai`, pinned in package-lock.json) and raw
// fetch requests, then stops it with SIGTERM and checks that it exits 0.
//
//   node run_e2e.mjs --cli PATH/TO/1bit --model MODEL.h1b [--modules DIR]
//
// DIR holds node_modules (default: this folder). Exits 1 on the first failed check.
import { createRequire } from "node:module";
import { spawnServer } from "./serve.mjs";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const cli = opt("--cli");
const model = opt("--model");
if (!cli || !model) {
  console.error("usage: node run_e2e.mjs --cli PATH/TO/1bit --model MODEL.h1b [--modules DIR]");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(opt("--modules", here)), "package.json"));
const openaiModule = require("openai");
const OpenAI = openaiModule.OpenAI ?? openaiModule.default ?? openaiModule;
const MODEL_ID = path.basename(model).replace(/\.[^.]*$/, "");
// KV cache block size (`--kv-block`, default 16): the prefix cache reuses whole blocks.
const KV_BLOCK = 16;
const wholeBlocks = (n) => Math.floor(n / KV_BLOCK) * KV_BLOCK;

// Starts `1bit serve --port 0 ...` and resolves with {proc, base, log()} once /health answers.
async function startServer(extra = []) {
  const defaults = extra.includes("--parallel") ? [] : ["--parallel", "4"];
  const { proc, base, exited, log } = await spawnServer(cli, ["-m", model, "--port", "0", "-t", "2", ...defaults, ...extra]);
  for (let i = 0; ; ++i) {
    try {
      const r = await fetch(`${base}/health`);
      if (r.status === 200) {
        assert.deepEqual(await r.json(), { status: "ok" });
        break;
      }
      // Still loading the model: 503 in OpenAI's error shape, with Retry-After.
      assert.equal(r.status, 503);
      assert.equal(r.headers.get("retry-after"), "1");
      assert.equal((await r.json()).error.code, "model_loading");
    } catch (e) {
      if (i > 100) throw e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, base, exited, log };
}

async function stopServer(srv) {
  srv.proc.kill("SIGTERM");
  const { code, signal } = await srv.exited;
  assert.equal(signal, null, `server died of ${signal}:\n${srv.log()}`);
  assert.equal(code, 0, `server exit status:\n${srv.log()}`);
}

const post = (base, route, body, headers = {}) =>
  fetch(`${base}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

async function expectError(resPromise, status, param) {
  const res = await resPromise;
  const body = await res.json();
  assert.equal(res.status, status, JSON.stringify(body));
  assert.equal(typeof body.error.message, "string");
  assert.ok("type" in body.error && "param" in body.error && "code" in body.error, JSON.stringify(body));
  if (status === 400) assert.equal(body.error.type, "invalid_request_error");
  if (param !== undefined) assert.equal(body.error.param, param, JSON.stringify(body));
  return body.error;
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const msgs = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "Tell me about the old city by the river." },
];

let client;
let base;
let serverLog;

test("GET /v1/models lists the model", async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [MODEL_ID]);
  assert.equal(list.data[0].object, "model");
});

let greedy;  // the non-streamed greedy answer, reused below
test("chat, non-stream, temperature 0, max_tokens -> length", async () => {
  const r = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 24 });
  assert.equal(r.object, "chat.completion");
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, MODEL_ID);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(typeof r.choices[0].message.content, "string");
  assert.ok(r.choices[0].message.content.length > 0);
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 24);
  assert.ok(r.usage.prompt_tokens > 10);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  greedy = r;
});

test("usage.prompt_tokens matches /tokenize of a completion prompt", async () => {
  const prompt = "The old city by the river";
  const t = await (await post(base, "/tokenize", { content: prompt, add_special: true })).json();
  const r = await client.completions.create({ model: MODEL_ID, prompt, temperature: 0, max_tokens: 4 });
  assert.equal(r.usage.prompt_tokens, t.tokens.length);
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 4);
});

test("chat, stream: chunks concatenate to the non-stream answer; usage chunk", async () => {
  const stream = await client.chat.completions.create({
    model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 24, stream: true, stream_options: { include_usage: true },
  });
  let text = "";
  const ids = new Set();
  const created = new Set();
  let first = true;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    ids.add(chunk.id);
    created.add(chunk.created);
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) {
      usage = chunk.usage;
      assert.equal(chunk.choices.length, 0);
      continue;
    }
    const c = chunk.choices[0];
    if (first) assert.equal(c.delta.role, "assistant");
    first = false;
    if (c.delta.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(ids.size, 1);
  assert.equal(created.size, 1);
  assert.equal(text, greedy.choices[0].message.content);
  assert.equal(finish, "length");
  // Same counts; cached_tokens differs (this request reuses the previous one's prefix).
  for (const k of ["prompt_tokens", "completion_tokens", "total_tokens"]) assert.equal(usage[k], greedy.usage[k]);
  assert.equal(usage.prompt_tokens_details.cached_tokens, wholeBlocks(usage.prompt_tokens - 1));
});

test("seed makes sampling repeatable", async () => {
  const ask = (seed) =>
    client.chat.completions
      .create({ model: MODEL_ID, messages: msgs, temperature: 1, max_tokens: 16, seed })
      .then((r) => r.choices[0].message.content);
  const a = await ask(1234);
  assert.equal(await ask(1234), a);
  const others = await Promise.all([ask(1), ask(2), ask(3)]);
  assert.ok(others.some((o) => o !== a), "different seeds should not all give the same text");
});

test("stop strings end the answer before the stop string (stream and not)", async () => {
  const full = greedy.choices[0].message.content;
  const stop = full.slice(6, 9);
  const expected = full.slice(0, full.indexOf(stop));
  const r = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 24, stop: [stop, "zzqzz"] });
  assert.equal(r.choices[0].message.content, expected);
  assert.equal(r.choices[0].finish_reason, "stop");
  const stream = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 24, stop, stream: true });
  let text = "";
  let finish = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, expected);
  assert.equal(finish, "stop");
});

test("/tokenize and /detokenize round-trip", async () => {
  const t = await (await post(base, "/tokenize", { content: "Hello there, old river." })).json();
  assert.ok(t.tokens.length > 0);
  const d = await (await post(base, "/detokenize", { tokens: t.tokens })).json();
  assert.equal(d.content, "Hello there, old river.");
  await expectError(post(base, "/detokenize", { tokens: [1 << 30] }), 400, "tokens");
});

test("errors: bad JSON, missing/mistyped fields, unsupported, unknown route/model, too long, too large", async () => {
  await expectError(post(base, "/v1/chat/completions", "{not json"), 400);
  await expectError(post(base, "/v1/chat/completions", { model: MODEL_ID }), 400, "messages");
  await expectError(post(base, "/v1/chat/completions", { messages: msgs, temperature: "hot" }), 400, "temperature");
  await expectError(post(base, "/v1/chat/completions", { messages: msgs, top_p: 7 }), 400, "top_p");
  await expectError(post(base, "/v1/chat/completions", { messages: msgs, n: 9 }), 400, "n");
  await expectError(post(base, "/v1/chat/completions", { messages: msgs, top_logprobs: 2 }), 400, "top_logprobs");
  await expectError(post(base, "/v1/completions", { prompt: "x", logprobs: 6 }), 400, "logprobs");
  await expectError(post(base, "/v1/embeddings", { input: [] }), 400, "input");
  await expectError(post(base, "/v1/embeddings", { input: [[1, 2, 1 << 30]] }), 400, "input");
  await expectError(post(base, "/v1/embeddings", { input: "x", dimensions: 3 }), 400, "dimensions");
  await expectError(post(base, "/v1/embeddings", { input: "x", model: "other" }), 404, "model");
  await expectError(post(base, "/v1/chat/completions", { messages: msgs, tools: [{ type: "function", function: { name: "f" } }] }), 400, "tools");
  await expectError(post(base, "/v1/chat/completions", { model: "gpt-4o", messages: msgs }), 404, "model");
  await expectError(fetch(`${base}/v1/nope`), 404);
  await expectError(fetch(`${base}/v1/chat/completions`), 405);
  const long = await expectError(post(base, "/v1/completions", { prompt: "the river and the city ".repeat(400) }), 400, "prompt");
  assert.match(long.message, /\d+ tokens but the context is 512 tokens/);
  await expectError(post(base, "/v1/completions", { prompt: "x".repeat(2 << 20) }), 413);
  // The OpenAI client surfaces the same errors as exceptions with the status.
  await assert.rejects(client.chat.completions.create({ model: MODEL_ID, messages: [] }), (e) => e.status === 400);
});

test("8 concurrent streams all finish with [DONE]", async () => {
  const one = async (i) => {
    const res = await post(base, "/v1/chat/completions", {
      messages: [{ role: "user", content: `Story number ${i}.` }], max_tokens: 20, temperature: 0.8, seed: i, stream: true,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /text\/event-stream/);
    const body = await res.text();
    assert.ok(body.endsWith("data: [DONE]\n\n"), body.slice(-200));
    const events = body.split("\n\n").filter((e) => e.startsWith("data: ") && e !== "data: [DONE]").map((e) => JSON.parse(e.slice(6)));
    assert.ok(["length", "stop"].includes(events.at(-1).choices[0].finish_reason));
    return events.length;
  };
  const counts = await Promise.all([...Array(8).keys()].map(one));
  assert.ok(counts.every((c) => c >= 3));
});

test("a client that disconnects mid-stream does not disturb the server", async () => {
  const ac = new AbortController();
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST", headers: { "content-type": "application/json" }, signal: ac.signal,
    // End-of-text / end-of-turn banned, so only the disconnect can end it early.
    body: JSON.stringify({ prompt: "The river", max_tokens: 400, stream: true, logit_bias: { 0: -100, 1: -100, 2: -100 } }),
  });
  const reader = res.body.getReader();
  await reader.read();
  ac.abort();
  for (let i = 0; i < 100 && !/POST \/v1\/completions 499/.test(serverLog()); ++i) await new Promise((r) => setTimeout(r, 20));
  assert.match(serverLog(), /POST \/v1\/completions 499/, "the server should log the cancelled request");
  const r = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 24 });
  assert.equal(r.choices[0].message.content, greedy.choices[0].message.content);
});

// ---- n > 1, logprobs, prefix reuse, embeddings, /props, /metrics ----

test("prefix reuse: an identical request reuses the cached prompt and gives the same text", async () => {
  // (Earlier tests may have evicted the greedy request's session: run it once more first.)
  const ask = () => client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 24 });
  const first = await ask();
  const r = await ask();
  assert.equal(first.choices[0].message.content, greedy.choices[0].message.content);
  assert.equal(r.choices[0].message.content, greedy.choices[0].message.content);
  // Whole KV blocks of the prompt, short of its last token (which is run again for its logits).
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, wholeBlocks(r.usage.prompt_tokens - 1));
  assert.ok(r.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(r.usage));
  // A follow-up turn extends the conversation: its prompt starts with the cached one.
  const turn2 = [...msgs, { role: "assistant", content: r.choices[0].message.content }, { role: "user", content: "And then?" }];
  const r2 = await client.chat.completions.create({ model: MODEL_ID, messages: turn2, temperature: 0, max_tokens: 4 });
  assert.ok(r2.usage.prompt_tokens_details.cached_tokens >= wholeBlocks(r.usage.prompt_tokens), JSON.stringify(r2.usage));
});

test("n > 1, non-stream: n choices indexed 0..n-1, usage sums completion tokens", async () => {
  const r = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 10, n: 3 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of r.choices) assert.equal(c.message.content, r.choices[0].message.content);  // greedy
  assert.equal(r.usage.completion_tokens, 30);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 30);
  const c = await client.completions.create({ model: MODEL_ID, prompt: "The river", max_tokens: 5, n: 2, seed: 5 });
  assert.deepEqual(c.choices.map((x) => x.index), [0, 1]);
  assert.equal(c.usage.completion_tokens, 10);
});

test("n > 1 with a seed: choice i uses seed + i", async () => {
  const ask = (seed, n) =>
    client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 1, max_tokens: 12, seed, n });
  const both = await ask(4242, 2);
  const [a, b] = await Promise.all([ask(4242, 1), ask(4243, 1)]);
  assert.equal(both.choices[0].message.content, a.choices[0].message.content);
  assert.equal(both.choices[1].message.content, b.choices[0].message.content);
  assert.deepEqual((await ask(4242, 2)).choices.map((c) => c.message.content), both.choices.map((c) => c.message.content));
});

test("n > 1, stream: every choice gets its role, content and finish; one usage chunk", async () => {
  const stream = await client.chat.completions.create({
    model: MODEL_ID, messages: msgs, temperature: 0.9, seed: 11, max_tokens: 8, n: 3, stream: true,
    stream_options: { include_usage: true },
  });
  const text = ["", "", ""], finish = [null, null, null], roles = [0, 0, 0];
  let usage = null;
  let usageChunks = 0;
  for await (const chunk of stream) {
    if (chunk.usage) {
      usage = chunk.usage;
      usageChunks++;
      continue;
    }
    assert.equal(chunk.choices.length, 1);
    const c = chunk.choices[0];
    if (c.delta.role) roles[c.index]++;
    text[c.index] += c.delta.content ?? "";
    if (c.finish_reason) finish[c.index] = c.finish_reason;
  }
  assert.deepEqual(roles, [1, 1, 1]);
  assert.ok(finish.every((f) => f === "length" || f === "stop"), JSON.stringify(finish));
  assert.equal(usageChunks, 1);
  const r = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0.9, seed: 11, max_tokens: 8, n: 3 });
  assert.deepEqual(text, r.choices.map((c) => c.message.content));
  assert.equal(usage.completion_tokens, r.usage.completion_tokens);
});

test("chat logprobs + top_logprobs (non-stream and stream agree)", async () => {
  const req = { model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 12, logprobs: true, top_logprobs: 5 };
  const r = await client.chat.completions.create(req);
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  assert.equal(content.map((t) => t.token).join(""), r.choices[0].message.content);
  for (const t of content) {
    assert.ok(t.logprob <= 0);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token, "utf8")]);
    assert.equal(t.top_logprobs.length, 5);
    assert.equal(t.top_logprobs[0].token, t.token);  // greedy: the chosen is the most likely
    assert.equal(t.top_logprobs[0].logprob, t.logprob);
    for (let i = 1; i < 5; ++i) assert.ok(t.top_logprobs[i].logprob <= t.top_logprobs[i - 1].logprob);
  }
  const stream = await client.chat.completions.create({ ...req, stream: true });
  const streamed = [];
  for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  assert.deepEqual(streamed, content);
  const none = await client.chat.completions.create({ model: MODEL_ID, messages: msgs, max_tokens: 2 });
  assert.equal(none.choices[0].logprobs, null);
  const noTop = await client.chat.completions.create({ ...req, top_logprobs: undefined, max_tokens: 3 });
  assert.deepEqual(noTop.choices[0].logprobs.content.map((t) => t.top_logprobs.length), [0, 0, 0]);
});

test("completions logprobs (legacy shape), stream and not", async () => {
  const req = { model: MODEL_ID, prompt: "The old city by the river", temperature: 0, max_tokens: 8, logprobs: 3 };
  const r = await client.completions.create(req);
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, r.usage.completion_tokens);
  assert.equal(lp.tokens.join(""), r.choices[0].text);
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  let off = 0;
  lp.tokens.forEach((t, i) => {
    assert.equal(lp.text_offset[i], off);
    off += Buffer.byteLength(t);
    assert.equal(Object.keys(lp.top_logprobs[i]).length <= 3, true);
    assert.equal(lp.top_logprobs[i][t], lp.token_logprobs[i]);
  });
  const stream = await client.completions.create({ ...req, stream: true });
  const tokens = [], offsets = [];
  for await (const chunk of stream) {
    const l = chunk.choices[0]?.logprobs;
    if (l) tokens.push(...l.tokens), offsets.push(...l.text_offset);
  }
  assert.deepEqual(tokens, lp.tokens);
  assert.deepEqual(offsets, lp.text_offset);
});

test("embeddings: string, strings, token ids; float and base64 agree; unit norm", async () => {
  const props = await (await fetch(`${base}/props`)).json();
  const one = await client.embeddings.create({ model: MODEL_ID, input: "The old city by the river", encoding_format: "float" });
  assert.equal(one.object, "list");
  assert.equal(one.data.length, 1);
  const v = one.data[0].embedding;
  assert.equal(v.length, props.hidden_size);
  assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-4);
  assert.ok(one.usage.prompt_tokens > 3);
  assert.equal(one.usage.total_tokens, one.usage.prompt_tokens);
  // The client asks for base64 by default and decodes it.
  const many = await client.embeddings.create({ model: MODEL_ID, input: ["Stocks fell sharply", "The old city by the river"] });
  assert.deepEqual(many.data.map((d) => d.index), [0, 1]);
  many.data[1].embedding.forEach((x, i) => assert.ok(Math.abs(x - v[i]) < 1e-6));
  const cos = many.data[0].embedding.reduce((s, x, i) => s + x * v[i], 0);
  assert.ok(cos < 0.9999, "different texts give different vectors");
  const ids = (await (await post(base, "/tokenize", { content: "The old city by the river", add_special: true })).json()).tokens;
  const byIds = await client.embeddings.create({ model: MODEL_ID, input: ids, encoding_format: "float" });
  assert.deepEqual(byIds.data[0].embedding, v);
  const nested = await client.embeddings.create({ model: MODEL_ID, input: [ids, ids.slice(0, 3)], encoding_format: "float" });
  assert.deepEqual(nested.data[0].embedding, v);
  assert.equal(nested.usage.prompt_tokens, ids.length + 3);
});

test("GET /props and /health", async () => {
  const p = await (await fetch(`${base}/props`)).json();
  assert.equal(p.model, MODEL_ID);
  assert.equal(p.n_ctx, 512);
  assert.equal(p.parallel, 4);
  assert.equal(p.max_queue, 256);
  assert.equal(p.kv_block_size, KV_BLOCK);
  assert.equal(p.kv_blocks, (4 * 512) / KV_BLOCK);
  assert.equal(p.kv_shared, true);
  assert.equal(p.max_sequence, 512);
  assert.equal(typeof p.chat_template, "string");
  assert.equal(p.bos_token, "<|begin_of_text|>");
  assert.equal(p.eos_token_id, 1);
  assert.equal(p.build.version, "0.1.0");
  assert.deepEqual(await (await fetch(`${base}/health`)).json(), { status: "ok" });
});

// Reads /metrics into {"name{labels}": value}.
async function scrape(b = base) {
  const res = await fetch(`${b}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^text\/plain; version=0\.0\.4/);
  const out = {};
  for (const line of (await res.text()).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^(\S+) (\S+)$/.exec(line);
    assert.ok(m, `bad metrics line: ${line}`);
    out[m[1]] = Number(m[2]);
  }
  return out;
}

test("GET /metrics counts requests, tokens, latencies and prefix hits", async () => {
  const before = await scrape();
  const r = await client.completions.create({ model: MODEL_ID, prompt: "Metrics prompt here", temperature: 0, max_tokens: 7 });
  const after = await scrape();
  const d = (k) => (after[k] ?? 0) - (before[k] ?? 0);
  assert.equal(d('onebit_requests_total{route="/v1/completions",status="200"}'), 1);
  assert.equal(d('onebit_requests_total{route="/metrics",status="200"}'), 1);
  assert.equal(d("onebit_generated_tokens_total"), r.usage.completion_tokens);
  assert.equal(d("onebit_prompt_tokens_total"), r.usage.prompt_tokens);
  assert.equal(d('onebit_time_to_first_token_seconds_bucket{le="+Inf"}'), 1);
  // One latency per sampled token after the first (a stop token is sampled too, not counted).
  const sampled = r.usage.completion_tokens + (r.choices[0].finish_reason === "stop" ? 1 : 0);
  assert.equal(d("onebit_inter_token_latency_seconds_count"), sampled - 1);
  assert.ok(after["onebit_prefix_cache_hit_ratio"] > 0 && after["onebit_prefix_cache_hit_ratio"] < 1);
  assert.equal(after["onebit_running_sequences"], 0);
  assert.equal(after["onebit_queue_depth"], 0);
  assert.equal(after["onebit_kv_positions_total"], 4 * 512);
  assert.ok(after['onebit_kv_positions{state="cached"}'] > 0);
  assert.equal(after["onebit_kv_blocks_total"], (4 * 512) / KV_BLOCK);
  assert.equal(after["onebit_kv_block_size"], KV_BLOCK);
  assert.equal(after['onebit_kv_blocks{state="used"}'], 0);  // nothing runs
  assert.ok(after['onebit_kv_blocks{state="cached"}'] > 0);
  assert.equal(after["onebit_kv_usage_ratio"], 0);  // used blocks / all blocks
  assert.equal(after["onebit_preemptions_total"], 0);
  assert.ok(after['onebit_requests_total{route="/v1/chat/completions",status="400"}'] >= 1);
});

test("abort mid-stream (official client): the sequence is freed at once", async () => {
  const ac = new AbortController();
  const stream = await client.completions.create(
    { model: MODEL_ID, prompt: "The river", max_tokens: 480, stream: true, logit_bias: { 0: -100, 1: -100, 2: -100 } },
    { signal: ac.signal },
  );
  let chunks = 0;
  const before = await scrape();
  for await (const _ of stream) {
    if (++chunks === 3) {
      ac.abort();
      break;
    }
  }
  let m;
  for (let i = 0; i < 100; ++i) {
    m = await scrape();
    if (m["onebit_running_sequences"] === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(m["onebit_running_sequences"], 0);
  assert.equal(m['onebit_kv_positions{state="running"}'], 0);
  assert.ok(m["onebit_generated_tokens_total"] - before["onebit_generated_tokens_total"] < 400, "generation went on after the abort");
});

async function main() {
  const t0 = Date.now();
  let failed = 0;
  const srv = await startServer();
  base = srv.base;
  serverLog = srv.log;
  client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30000 });
  for (const t of tests) {
    try {
      await t.fn();
      console.log(`ok   ${t.name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${t.name}\n${e.stack ?? e}`);
    }
  }
  await stopServer(srv);
  console.log("ok   SIGTERM: server exits 0");

  // --api-key: every route but /health needs the key.
  const keyed = await startServer(["--api-key", "sekrit"]);
  try {
    await expectError(fetch(`${keyed.base}/v1/models`), 401);
    await expectError(fetch(`${keyed.base}/v1/models`, { headers: { authorization: "Bearer wrong" } }), 401);
    await expectError(post(keyed.base, "/v1/chat/completions", { messages: msgs }), 401);
    const bad = new OpenAI({ baseURL: `${keyed.base}/v1`, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e) => e.status === 401);
    const good = new OpenAI({ baseURL: `${keyed.base}/v1`, apiKey: "sekrit", maxRetries: 0 });
    const r = await good.chat.completions.create({ model: MODEL_ID, messages: msgs, temperature: 0, max_tokens: 4 });
    assert.equal(r.usage.completion_tokens, 4);
    console.log("ok   --api-key: 401 without the key, 200 with it");
  } catch (e) {
    failed++;
    console.log(`FAIL --api-key\n${e.stack ?? e}`);
  }
  await stopServer(keyed);

  // --max-queue: with one session busy and one request waiting, the next gets 429 + Retry-After.
  const small = await startServer(["--parallel", "1", "--max-queue", "1"]);
  try {
    const long = { prompt: "The river", max_tokens: 400, stream: true, logit_bias: { 0: -100, 1: -100, 2: -100 } };
    const ac = new AbortController();
    const first = await fetch(`${small.base}/v1/completions`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(long), signal: ac.signal,
    });
    const reader = first.body.getReader();
    await reader.read();  // running: the queue is empty
    const second = fetch(`${small.base}/v1/completions`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...long, stream: false, max_tokens: 3 }),
    });
    let m;
    for (let i = 0; i < 200; ++i) {
      m = await scrape(small.base);
      if (m["onebit_queue_depth"] === 1) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(m["onebit_queue_depth"], 1);
    const res = await post(small.base, "/v1/completions", { prompt: "x", max_tokens: 2 });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "1");
    const body = await res.json();
    assert.equal(body.error.code, "rate_limit_exceeded");
    const c = new OpenAI({ baseURL: `${small.base}/v1`, apiKey: "x", maxRetries: 0 });
    await assert.rejects(c.completions.create({ model: MODEL_ID, prompt: "x", max_tokens: 2 }), (e) => e.status === 429);
    ac.abort();  // frees the session: the waiting request runs
    const r2 = await second;
    assert.equal(r2.status, 200);
    assert.equal((await r2.json()).usage.completion_tokens, 3);
    m = await scrape(small.base);
    assert.equal(m['onebit_requests_total{route="/v1/completions",status="429"}'], 2);
    console.log("ok   --max-queue: 429 with Retry-After when the queue is full");
  } catch (e) {
    failed++;
    console.log(`FAIL --max-queue\n${e.stack ?? e}`);
  }
  await stopServer(small);

  // --kv-blocks: a pool of 3 blocks (48 positions) for 2 sequences. A prompt that cannot fit is a
  // 400; sequences stop at the pool's size ("length"); two at once take turns (preemption) and
  // give the text each gives alone.
  const tiny = await startServer(["--parallel", "2", "--kv-blocks", "3"]);
  try {
    const err = await expectError(post(tiny.base, "/v1/completions", { prompt: "word ".repeat(60), max_tokens: 2 }), 400, "prompt");
    assert.equal(err.code, "context_length_exceeded");
    assert.match(err.message, /KV cache pool holds only 48 positions/);
    const c = new OpenAI({ baseURL: `${tiny.base}/v1`, apiKey: "x", maxRetries: 0 });
    const ask = (prompt) => c.completions.create({ model: MODEL_ID, prompt, temperature: 0, max_tokens: 100, logit_bias: { 0: -100, 1: -100, 2: -100 } });
    const [a1, b1] = [await ask("The river ran"), await ask("Prices of wheat")];
    for (const r of [a1, b1]) {
      assert.equal(r.choices[0].finish_reason, "length");
      assert.equal(r.usage.completion_tokens, 48 - r.usage.prompt_tokens + 1);
    }
    const [a2, b2] = await Promise.all([ask("The river ran"), ask("Prices of wheat")]);
    assert.equal(a2.choices[0].text, a1.choices[0].text);
    assert.equal(b2.choices[0].text, b1.choices[0].text);
    const m = await scrape(tiny.base);
    assert.ok(m["onebit_preemptions_total"] > 0, "the two sequences should not both fit");
    console.log("ok   --kv-blocks: refused prompts, length at the pool size, preemption keeps the text");
  } catch (e) {
    failed++;
    console.log(`FAIL --kv-blocks\n${e.stack ?? e}`);
  }
  await stopServer(tiny);

  console.log(`${tests.length + 4 - failed} passed, ${failed} failed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (failed) {
    console.log("--- server log ---\n" + srv.log());
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
