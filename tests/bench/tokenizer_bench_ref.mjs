// The same measurement as tokenizer_bench.cc through @huggingface/tokenizers (JavaScript).
// usage: node tokenizer_bench_ref.mjs NPM_DIR MODEL_DIR DOCS.jsonl [PASSES]
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [npmDir, modelDir, corpus, passesArg] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(npmDir), "node_modules", "x.js"));
const { Tokenizer } = require("@huggingface/tokenizers");
const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer.json"), "utf8")),
                          JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer_config.json"), "utf8")));
const docs = fs.readFileSync(corpus, "utf8").split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, "utf8"), 0);
for (let pass = 1; pass <= Number(passesArg ?? 2); ++pass) {
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (const d of docs) tokens += tok.encode(d, { add_special_tokens: false }).ids.length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`@huggingface/tokenizers pass ${pass}: ${docs.length} docs, ${(bytes / 1e6).toFixed(2)} MB, ` +
              `${tokens} tokens, ${s.toFixed(3)} s, ${(bytes / 1e6 / s).toFixed(2)} MB/s, ` +
              `${(tokens / 1e6 / s).toFixed(3)} M tokens/s`);
}
