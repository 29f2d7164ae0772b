// Bounded load test of `1bit serve` on loopback (node only, no npm packages): N concurrent
// streaming clients (default 64) send requests back to back for a fixed time. Checks: no errors,
// every stream ends with `data: [DONE]`, usage.completion_tokens equals the tokens received (one
// logprobs entry per token), and the server's resident memory (VmRSS from /proc/PID/status) does
// not keep growing from the first half of the run to the second.
//
//   node run_load.mjs --cli PATH/TO/1bit --model MODEL.h1b [--clients 64] [--seconds 20]
import { spawnServer, waitHealthy } from "./serve.mjs";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const cli = opt("--cli");
const model = opt("--model");
const CLIENTS = Number(opt("--clients", 64));
const SECONDS = Number(opt("--seconds", 20));
if (!cli || !model) {
  console.error("usage: node run_load.mjs --cli PATH/TO/1bit --model MODEL.h1b [--clients 64] [--seconds 20]");
  process.exit(2);
}

async function startServer() {
  const s = await spawnServer(cli, ["-m", model, "--port", "0", "-t", "2", "--parallel", "4"]);
  await waitHealthy(s.base);
  return s;
}

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);

// One streamed request; throws on anything wrong. Returns the number of tokens received.
async function one(base, i, n) {
  const chat = (i + n) % 2 === 0;
  const body = {
    max_tokens: 8 + ((i * 7 + n) % 17), temperature: 0.8, seed: i * 100003 + n, stream: true,
    stream_options: { include_usage: true }, logprobs: chat ? true : 0,
    ...(chat ? { messages: [{ role: "user", content: `Client ${i} asks question ${n} about the river.` }] }
      : { prompt: `Client ${i}, request ${n}: the old city` }),
  };
  const res = await fetch(`${base}${chat ? "/v1/chat/completions" : "/v1/completions"}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text.slice(0, 300));
  assert.ok(text.endsWith("data: [DONE]\n\n"), `stream did not end with [DONE]: ${text.slice(-300)}`);
  const events = text.split("\n\n").filter((e) => e.length);
  assert.ok(events.every((e) => e.startsWith("data: ")), "not an SSE data line");
  let tokens = 0, usage = null, finish = null;
  for (const e of events.slice(0, -1)) {
    const j = JSON.parse(e.slice(6));
    assert.ok(!j.error, `error event: ${e}`);
    if (j.usage) {
      assert.equal(usage, null, "two usage chunks");
      usage = j.usage;
      continue;
    }
    const c = j.choices[0];
    const lp = c.logprobs;
    if (lp) tokens += chat ? lp.content.length : lp.tokens.length;
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.ok(usage, "no usage chunk");
  assert.ok(finish === "length" || finish === "stop", `finish_reason ${finish}`);
  assert.equal(usage.completion_tokens, tokens, "usage.completion_tokens != tokens received");
  if (finish === "length") assert.equal(tokens, body.max_tokens);
  return tokens;
}

async function main() {
  const t0 = Date.now();
  const srv = await startServer();
  const pid = srv.proc.pid;
  let requests = 0, tokens = 0;
  const errors = [];
  const start = Date.now();
  const deadline = start + SECONDS * 1000;
  const half = start + (SECONDS * 1000) / 2;
  const rss = { start: rssKiB(pid) };
  const quarter = setTimeout(() => (rss.firstHalf = rssKiB(pid)), (SECONDS * 1000) / 4);
  const threeQuarters = setTimeout(() => (rss.secondHalf = rssKiB(pid)), (SECONDS * 1000 * 3) / 4);
  let halfReqs = 0;
  const client = async (i) => {
    for (let n = 0; Date.now() < deadline; ++n) {
      try {
        const got = await one(srv.base, i, n);  // (not `tokens += await`: that reads tokens before awaiting)
        tokens += got;
        requests++;
        if (Date.now() < half) halfReqs++;
      } catch (e) {
        errors.push(`client ${i} request ${n}: ${e.message}`);
        if (errors.length > 20) return;
      }
    }
  };
  await Promise.all([...Array(CLIENTS).keys()].map(client));
  clearTimeout(quarter);
  clearTimeout(threeQuarters);
  rss.end = rssKiB(pid);
  const wall = (Date.now() - start) / 1000;
  const metrics = await (await fetch(`${srv.base}/metrics`)).text();
  srv.proc.kill("SIGTERM");
  const exit = await srv.exited;

  console.log(`${CLIENTS} clients, ${wall.toFixed(1)} s: ${requests} streams (${halfReqs} in the first half), ${tokens} tokens, ` +
    `${(tokens / wall).toFixed(0)} tokens/s`);
  console.log(`server VmRSS (MiB): start ${(rss.start / 1024).toFixed(1)}, at 1/4 ${(rss.firstHalf / 1024).toFixed(1)}, ` +
    `at 3/4 ${(rss.secondHalf / 1024).toFixed(1)}, end ${(rss.end / 1024).toFixed(1)}`);
  let failed = 0;
  const check = (name, fn) => {
    try {
      fn();
      console.log(`ok   ${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}\n${e.message}`);
    }
  };
  check("no errors; every stream ended with [DONE] and its usage matched the tokens received", () =>
    assert.deepEqual(errors.slice(0, 5), []));
  check("every client completed requests in both halves", () => {
    assert.ok(halfReqs >= CLIENTS, `${halfReqs} streams in the first half`);
    assert.ok(requests - halfReqs >= CLIENTS, `${requests - halfReqs} streams in the second half`);
  });
  check("the server counted the same tokens", () => {
    const m = /^onebit_generated_tokens_total (\d+)$/m.exec(metrics);
    assert.equal(Number(m[1]), tokens);
    assert.match(metrics, /^onebit_running_sequences 0$/m);
    assert.match(metrics, /^onebit_queue_depth 0$/m);
  });
  // Memory: allocator arenas and the KV caches settle in the first quarter; after that the
  // resident size must stay flat (a leak of even a few KiB per request would show: thousands of
  // requests run between the two readings).
  check("server memory is stable between the two halves", () => {
    const growth = rss.secondHalf - rss.firstHalf;
    assert.ok(growth < Math.max(8 * 1024, rss.firstHalf * 0.05), `VmRSS grew by ${growth} KiB`);
  });
  check("SIGTERM: exit 0", () => assert.deepEqual(exit, { code: 0, signal: null }));
  console.log(`${5 - failed} passed, ${failed} failed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (failed) {
    console.log(errors.join("\n"));
    console.log("--- server log (tail) ---\n" + srv.log().slice(-4000));
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
