// End-to-end test of `1bit serve`: starts the server with a real model on a free port, drives it
// with the official OpenAI JavaScript client (npm `openai`, pinned in package-lock.json) and raw
// fetch requests, then stops it with SIGTERM and checks that it exits 0.
//
//   node run_e2e.mjs --cli PATH/TO/1bit --model MODEL.h1b [--modules DIR]
//
// DIR holds node_modules (default: this folder). Exits 1 on the first failed check.
import { createRequire } from "node:module";
import { spawn } from "node:child_process";
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

// Starts `1bit serve --port 0 ...` and resolves with {proc, base, log()} once /health answers.
async function startServer(extra = []) {
  const proc = spawn(cli, ["serve", "-m", model, "--port", "0", "--parallel", "4", "-t", "2", ...extra], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 20000);
    proc.stderr.on("data", (d) => {
      stderr += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${stderr}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; ++i) {
    try {
      const r = await fetch(`${base}/health`);
      if (r.status === 200) {
        assert.deepEqual(await r.json(), { status: "ok" });
        break;
      }
    } catch (e) {
      if (i > 100) throw e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, base, exited, log: () => stderr };
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
  assert.deepEqual(usage, greedy.usage);
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
  const n = await expectError(post(base, "/v1/chat/completions", { messages: msgs, n: 2 }), 400, "n");
  assert.match(n.message, /not supported/);
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

  console.log(`${tests.length + 2 - failed} passed, ${failed} failed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (failed) {
    console.log("--- server log ---\n" + srv.log());
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
