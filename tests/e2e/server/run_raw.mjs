// Raw-socket tests of `1bit serve` (node `net`, no npm packages): malformed HTTP, invalid JSON,
// wrong types, huge bodies, slow clients (--timeout), pipelining, and CORS (--cors-origin).
//
//   node run_raw.mjs --cli PATH/TO/1bit --model MODEL.h1b
//
// Exits 1 if a check fails.
import { spawnServer, waitHealthy } from "./serve.mjs";
import net from "node:net";
import assert from "node:assert/strict";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const cli = opt("--cli");
const model = opt("--model");
if (!cli || !model) {
  console.error("usage: node run_raw.mjs --cli PATH/TO/1bit --model MODEL.h1b");
  process.exit(2);
}
const TIMEOUT_S = 1;  // the server's --timeout
const ALLOWED = "http://allowed.example";

async function startServer() {
  const s = await spawnServer(cli, ["-m", model, "--port", "0", "-t", "2", "--parallel", "2", "--timeout", String(TIMEOUT_S),
    "--cors-origin", ALLOWED, "--cors-origin", "http://also.example"]);
  await waitHealthy(s.base);
  return s;
}

let port;

// Opens a connection, writes `parts` (strings/Buffers; a number = pause that many ms), and
// collects what the server sends until it closes the connection or `waitMs` passes.
function raw(parts, { waitMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const sock = net.connect(port, "127.0.0.1");
    const chunks = [];
    let closedAt = null;
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      resolve({ text: Buffer.concat(chunks).toString("latin1"), closed: closedAt !== null, elapsed: (closedAt ?? Date.now()) - t0 });
    };
    const timer = setTimeout(done, waitMs);
    sock.on("data", (d) => chunks.push(d));
    sock.on("end", () => {
      closedAt = Date.now();
      done();
    });
    sock.on("error", (e) => {
      if (e.code === "ECONNRESET" || e.code === "EPIPE") {
        closedAt = Date.now();
        done();
      } else reject(e);
    });
    sock.on("connect", async () => {
      for (const p of parts) {
        if (typeof p === "number") await new Promise((r) => setTimeout(r, p));
        else if (!sock.destroyed) sock.write(p);
      }
    });
  });
}

// Splits a byte stream into HTTP responses: [{status, headers (lower-case keys), body}].
function responses(text) {
  const out = [];
  let rest = text;
  while (rest.length) {
    const end = rest.indexOf("\r\n\r\n");
    if (end < 0) break;
    const [statusLine, ...lines] = rest.slice(0, end).split("\r\n");
    const headers = {};
    for (const l of lines) {
      const i = l.indexOf(":");
      headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const len = Number(headers["content-length"] ?? 0);
    out.push({ status: Number(statusLine.split(" ")[1]), headers, body: rest.slice(end + 4, end + 4 + len) });
    rest = rest.slice(end + 4 + len);
  }
  return out;
}

const req = (method, path, body, extra = "") =>
  `${method} ${path} HTTP/1.1\r\nHost: x\r\n${extra}` +
  (body === undefined ? "\r\n" : `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);

function expectError(r, status, param) {
  assert.equal(r.status, status, JSON.stringify(r));
  assert.equal(r.headers["content-type"], "application/json");
  const e = JSON.parse(r.body).error;
  assert.equal(typeof e.message, "string");
  assert.ok("type" in e && "param" in e && "code" in e);
  if (param !== undefined) assert.equal(e.param, param, r.body);
  return e;
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test("malformed request line and header: 400, connection closed", async () => {
  for (const bad of ["GARBAGE\r\n\r\n", "GET /health HTTP/1.1\r\nNo colon here\r\n\r\n", "GET /health HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]) {
    const r = await raw([bad]);
    const [res] = responses(r.text);
    expectError(res, 400);
    assert.match(JSON.parse(res.body).error.message, /bad HTTP request/);
    assert.ok(r.closed, "the connection should be closed");
  }
});

test("invalid JSON, wrong types: 400 naming the field; the connection stays usable", async () => {
  const r = await raw([
    req("POST", "/v1/chat/completions", "{not json"),
    req("POST", "/v1/chat/completions", JSON.stringify({ messages: "hi" })),
    req("POST", "/v1/completions", JSON.stringify({ prompt: 5 })),
    req("POST", "/v1/completions", JSON.stringify({ prompt: "x", max_tokens: "many" })),
    req("POST", "/v1/embeddings", JSON.stringify({ input: { text: "x" } })),
    req("POST", "/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "x" }], n: 2.5 })),
    req("POST", "/v1/chat/completions", "[1, 2]"),
    req("POST", "/v1/completions", ""),
    req("GET", "/health", undefined, "Connection: close\r\n"),
  ]);
  const rs = responses(r.text);
  assert.equal(rs.length, 9, r.text);
  assert.match(expectError(rs[0], 400).message, /not valid JSON/);
  expectError(rs[1], 400, "messages");
  expectError(rs[2], 400, "prompt");
  expectError(rs[3], 400, "max_tokens");
  expectError(rs[4], 400, "input");
  expectError(rs[5], 400, "n");
  expectError(rs[6], 400);
  expectError(rs[7], 400);
  assert.equal(rs[8].status, 200);
});

test("unknown method and route: 405 / 404", async () => {
  const rs = responses((await raw([req("BREW", "/health"), req("GET", "/nope", undefined, "Connection: close\r\n")])).text);
  expectError(rs[0], 405);
  expectError(rs[1], 404);
});

test("huge body: 413 (declared length, and chunked)", async () => {
  const big = "x".repeat(2 << 20);
  let r = await raw([`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${big.length}\r\n\r\n`, big]);
  let e = expectError(responses(r.text)[0], 413);
  assert.equal(e.code, "request_too_large");
  assert.ok(r.closed);
  const chunk = "y".repeat(256 << 10);
  const parts = [`POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n`];
  for (let i = 0; i < 6; ++i) parts.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
  r = await raw(parts);
  expectError(responses(r.text)[0], 413);
});

test("slow clients get 408 after --timeout without disturbing others", async () => {
  const t0 = Date.now();
  const slow = [
    // Partial body.
    raw([`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt": "The`]),
    // Partial header.
    raw(["GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "]),
    // One byte every 200 ms: the limit is on the whole request, not between bytes.
    raw([..."GET /health HTTP/1.1\r\nHost: x\r\nX-Drip: abcdefghijklmnopqrstuvwxyz\r\n\r\n"].flatMap((c) => [c, 200])),
  ];
  // Meanwhile a normal client is served at once.
  const r = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "The river", max_tokens: 4 }),
  });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).usage.completion_tokens, 4);
  assert.ok(Date.now() - t0 < TIMEOUT_S * 1000, "the normal request waited for the slow ones");
  for (const s of await Promise.all(slow)) {
    assert.ok(s.closed, "closed");
    assert.ok(s.elapsed >= TIMEOUT_S * 1000 - 50 && s.elapsed < TIMEOUT_S * 1000 + 1500, `closed after ${s.elapsed} ms`);
    const e = expectError(responses(s.text)[0], 408);
    assert.equal(e.code, "request_timeout");
  }
});

test("an idle keep-alive connection is closed after --timeout without a reply", async () => {
  const r = await raw([req("GET", "/health")]);
  const rs = responses(r.text);
  assert.equal(rs.length, 1);
  assert.equal(rs[0].status, 200);
  assert.ok(r.closed && r.elapsed >= TIMEOUT_S * 1000 - 50 && r.elapsed < TIMEOUT_S * 1000 + 1500, `closed after ${r.elapsed} ms`);
});

test("pipelined requests are answered in order", async () => {
  const r = await raw([req("GET", "/health") + req("GET", "/v1/models") + req("POST", "/tokenize", '{"content":"a b"}', "Connection: close\r\n")]);
  const rs = responses(r.text);
  assert.deepEqual(rs.map((x) => x.status), [200, 200, 200]);
  assert.equal(JSON.parse(rs[1].body).object, "list");
  assert.ok(Array.isArray(JSON.parse(rs[2].body).tokens));
});

test("CORS: allowed origins get the headers, others none; preflight", async () => {
  const pre = (origin) =>
    raw([`OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: ${origin}\r\nAccess-Control-Request-Method: POST\r\n` +
      `Access-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n`]).then((r) => responses(r.text)[0]);
  let r = await pre(ALLOWED);
  assert.equal(r.status, 204);
  assert.equal(r.headers["access-control-allow-origin"], ALLOWED);
  assert.match(r.headers["access-control-allow-methods"], /POST/);
  assert.equal(r.headers["access-control-allow-headers"], "authorization, content-type");
  assert.equal(r.headers["vary"], "Origin");
  assert.equal((await pre("http://also.example")).headers["access-control-allow-origin"], "http://also.example");
  r = await pre("http://evil.example");
  assert.equal(r.status, 204);
  assert.ok(!Object.keys(r.headers).some((h) => h.startsWith("access-control-")), JSON.stringify(r.headers));

  const get = (origin) => fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { origin } });
  assert.equal((await get(ALLOWED)).headers.get("access-control-allow-origin"), ALLOWED);
  assert.equal((await get("http://evil.example")).headers.get("access-control-allow-origin"), null);
  assert.equal((await fetch(`http://127.0.0.1:${port}/v1/models`)).headers.get("access-control-allow-origin"), null);
  // Errors and streams carry it too.
  const err = await fetch(`http://127.0.0.1:${port}/v1/completions`, { method: "POST", headers: { origin: ALLOWED }, body: "{" });
  assert.equal(err.status, 400);
  assert.equal(err.headers.get("access-control-allow-origin"), ALLOWED);
  const st = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
    method: "POST", headers: { origin: ALLOWED, "content-type": "application/json" },
    body: JSON.stringify({ prompt: "x", max_tokens: 2, stream: true }),
  });
  assert.equal(st.headers.get("access-control-allow-origin"), ALLOWED);
  assert.ok((await st.text()).endsWith("data: [DONE]\n\n"));
});

test("/metrics counts the refused requests", async () => {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const get = (k) => Number(new RegExp(`^${k.replace(/[{}"/.]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1] ?? 0);
  assert.ok(get('onebit_requests_total{route="other",status="400"}') >= 4, text);
  assert.ok(get('onebit_requests_total{route="/v1/completions",status="413"}') >= 1, text);
  assert.ok(get('onebit_requests_total{route="/v1/completions",status="408"}') >= 1, text);
  assert.ok(get('onebit_requests_total{route="other",status="408"}') >= 1, text);
  assert.ok(get('onebit_requests_total{route="/v1/chat/completions",status="400"}') >= 3, text);
});

async function main() {
  const t0 = Date.now();
  const srv = await startServer();
  port = srv.port;
  let failed = 0;
  for (const t of tests) {
    try {
      await t.fn();
      console.log(`ok   ${t.name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${t.name}\n${e.stack ?? e}`);
    }
  }
  srv.proc.kill("SIGTERM");
  const { code, signal } = await srv.exited;
  if (code !== 0 || signal !== null) {
    failed++;
    console.log(`FAIL server exit: code ${code}, signal ${signal}`);
  }
  console.log(`${tests.length - failed} passed, ${failed} failed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (failed) {
    console.log("--- server log ---\n" + srv.log());
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
