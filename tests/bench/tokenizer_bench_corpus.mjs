// Builds the mixed benchmark corpus (JSON lines, one document each, <= 64 KB per document):
// about 7 MB of source code (Python's standard library when present, the npm packages'
// JavaScript, this repository's C++), then multilingual prose and chat-like text generated from
// a fixed seed until the total passes MIN_MB.
// usage: node tokenizer_bench_corpus.mjs NPM_DIR REPO_DIR OUT.jsonl [MIN_MB]
import fs from "node:fs";
import path from "node:path";

const [npmDir, repoDir, out, minMbArg] = process.argv.slice(2);
const minBytes = Number(minMbArg ?? 10) * 1e6;
const docs = [];
let total = 0;
const add = (text) => {
  for (let i = 0; i < text.length; i += 32768) {
    const d = text.slice(i, i + 32768);
    docs.push(d);
    total += Buffer.byteLength(d, "utf8");
  }
};
function walk(dir, exts, limit) {
  let used = 0;
  const stack = [dir];
  while (stack.length && used < limit) {
    const d = stack.pop();
    let entries;
    try { entries = fs.readdirSync(d, { withFileTypes: true }); } catch { continue; }
    entries.sort((a, b) => (a.name < b.name ? 1 : -1));
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && !e.name.startsWith(".") && !e.name.startsWith("build")) stack.push(p);
      else if (e.isFile() && exts.some((x) => e.name.endsWith(x)) && used < limit) {
        const text = fs.readFileSync(p, "utf8");
        if (text.includes("\ufffd") || text.length > 400000) continue;
        add(text);
        used += text.length;
      }
    }
  }
  return used;
}
const py = fs.readdirSync("/usr/lib").filter((n) => /^python3\.\d+$/.test(n)).sort().pop();
if (py) walk(path.join("/usr/lib", py), [".py"], 5e6);
walk(path.join(npmDir, "node_modules", "@lenml", "tokenizers"), [".js", ".ts"], 1.5e6);
walk(repoDir, [".cc", ".h", ".cu", ".cuh", ".md", ".txt", ".py", ".sh", ".yaml"], 1e6);

// Multilingual prose: sentences in several scripts mixed with English, numbers and emoji.
let a = 20261127;
const rand = () => { a = (a * 1103515245 + 12345) >>> 0; return a / 4294967296; };
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const sentences = [
  "The quick brown fox jumps over the lazy dog.", "Streaming responses arrive token by token.",
  "我们的模型可以处理中文、日本語、한국어。", "这是一个关于注意力机制的长句子，包含了标点符号。",
  "東京は日本の首都で、人口は約1400万人です。", "서울은 대한민국의 수도입니다.",
  "مرحبا بكم في خدمة النماذج اللغوية.", "हमारा सर्वर हिन्दी पाठ को भी समझता है।",
  "Привет, как дела? Всё хорошо, спасибо.", "Η γρήγορη καφέ αλεπού πηδά πάνω από τον σκύλο.",
  "Ça coûte 12,50 € — déjà payé à l'hôtel.", "¿Dónde está la estación? ¡Aquí!",
  "I'm sure they'll say it's fine, but we'd better check.", "Launch 🚀 at 09:30, results 📈 by 17:00 👍🏽.",
  "User: What is 2 + 2?\nAssistant: 2 + 2 = 4.\n", "    return {\"status\": \"ok\", \"count\": 42}\n",
];
while (total < minBytes) {
  let p = "";
  const n = 20 + Math.floor(rand() * 60);
  for (let i = 0; i < n; ++i) p += pick(sentences) + (rand() < 0.15 ? "\n\n" : " ");
  add(p);
}
fs.writeFileSync(out, docs.map((d) => JSON.stringify(d)).join("\n") + "\n");
console.log(`corpus: ${docs.length} documents, ${(total / 1e6).toFixed(2)} MB -> ${out}`);
