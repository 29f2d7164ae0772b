// Shared by the server's node tests: starts `1bit serve ... --port 0` and finds its port.
import { spawn } from "node:child_process";

// Spawns `cli serve ...args` and resolves, once it prints "listening on http://127.0.0.1:PORT",
// with {proc, port, base, exited, log()}: `exited` resolves with {code, signal} when it ends,
// log() returns its stderr (the last 512 KiB to 1 MiB of it: there is one line per request).
export async function spawnServer(cli, args) {
  const proc = spawn(cli, ["serve", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 20000);
    proc.stderr.on("data", (d) => {
      stderr += d;
      if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${stderr}`)));
  });
  return { proc, port, base: `http://127.0.0.1:${port}`, exited, log: () => stderr };
}

// Polls GET /health until it answers 200 (the model is loaded), for at most 10 s.
export async function waitHealthy(base) {
  for (let i = 0; i < 400; ++i) {
    const r = await fetch(`${base}/health`).catch(() => null);
    if (r?.status === 200) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`${base}/health never answered 200`);
}
