#!/usr/bin/env node
// Load for sbserve's OpenAI HTTP API (or any OpenAI-compatible server): C concurrent clients,
// each running streaming /v1/completions back to back until R requests are done. Prints TTFT,
// ITL and TPOT percentiles and output tokens/s, for comparison with the gRPC door (`sbctl bench`).
// Node >= 18, no packages (fetch streams the SSE body).
//
//   node deploy/bench/openai_bench.mjs --url http://localhost:8000 --concurrency 64 --requests 512 \
//        --prompt-words 128 --max-tokens 128 [--model NAME] [--api-key KEY] [--json out.json]
//
// TTFT: request sent -> first chunk with text. ITL: gap between consecutive text chunks, divided
// evenly among the tokens a chunk carries (the server may coalesce tokens into one chunk when the
// client reads slowly). TPOT: per request, (last chunk - first chunk) / (tokens - 1). Token counts
// come from the usage chunk (stream_options.include_usage); ignore_eos makes every request
// generate max_tokens.
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const url = (args.url ?? 'http://localhost:8000').replace(/\/$/, '');
const concurrency = Number(args.concurrency ?? 1);
const requests = Number(args.requests ?? concurrency * 8);
const promptWords = Number(args['prompt-words'] ?? 128);
const maxTokens = Number(args['max-tokens'] ?? 128);
const model = args.model;
const headers = { 'Content-Type': 'application/json' };
if (args['api-key']) headers.Authorization = `Bearer ${args['api-key']}`;

const words = 'the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches'.split(' ');
const prompt = (i) => Array.from({ length: promptWords }, (_, k) => words[(i * 7 + k * 3) % words.length]).join(' ');

async function one(i) {
  const body = {
    prompt: prompt(i), max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  };
  if (model) body.model = model;
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const decoder = new TextDecoder();
  let buf = '';
  const chunkTimes = [];
  let tokens = 0;
  for await (const bytes of res.body) {
    const now = performance.now();
    buf += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (!event.startsWith('data: ')) continue;
      const data = event.slice(6);
      if (data === '[DONE]') continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (chunk.choices?.length && chunk.choices[0].text) chunkTimes.push(now);
    }
  }
  return { t0, chunkTimes, tokens, end: performance.now() };
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const results = [];
let next = 0;
let failures = 0;
const start = performance.now();
await Promise.all(Array.from({ length: concurrency }, async () => {
  while (next < requests) {
    const i = next++;
    try {
      results.push(await one(i));
    } catch (e) {
      failures++;
      if (failures <= 5) console.error(`request ${i}: ${e.message}`);
    }
  }
}));
const wall = (performance.now() - start) / 1000;

const ttft = [], itl = [], tpot = [];
let outTokens = 0;
for (const r of results) {
  outTokens += r.tokens;
  if (!r.chunkTimes.length) continue;
  ttft.push(r.chunkTimes[0] - r.t0);
  // Chunks beyond the first carry the rest of the tokens; spread each gap over its share.
  const perChunk = r.chunkTimes.length > 1 ? (r.tokens - 1) / (r.chunkTimes.length - 1) : 1;
  for (let k = 1; k < r.chunkTimes.length; k++) {
    const gap = r.chunkTimes[k] - r.chunkTimes[k - 1];
    for (let t = 0; t < Math.max(1, Math.round(perChunk)); t++) itl.push(gap / Math.max(1, perChunk));
  }
  if (r.tokens > 1) tpot.push((r.chunkTimes.at(-1) - r.chunkTimes[0]) / (r.tokens - 1));
}
const summary = {
  url, concurrency, requests: results.length, failures, prompt_words: promptWords, max_tokens: maxTokens,
  wall_s: wall, output_tok_per_s: outTokens / wall, requests_per_s: results.length / wall,
  ttft_ms: { p50: pct(ttft, 50), p99: pct(ttft, 99) },
  itl_ms: { p50: pct(itl, 50), p99: pct(itl, 99) },
  tpot_ms: { p50: pct(tpot, 50), p99: pct(tpot, 99) },
};
const f = (x) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');
console.log(`OpenAI HTTP bench  ${url}  c=${concurrency}  ${results.length} requests (${failures} failed)  ` +
  `prompt ${promptWords} words, ${maxTokens} output tokens`);
console.log(`  TTFT ms   p50 ${f(summary.ttft_ms.p50)}  p99 ${f(summary.ttft_ms.p99)}`);
console.log(`  ITL  ms   p50 ${f(summary.itl_ms.p50)}  p99 ${f(summary.itl_ms.p99)}`);
console.log(`  TPOT ms   p50 ${f(summary.tpot_ms.p50)}  p99 ${f(summary.tpot_ms.p99)}`);
console.log(`  output    ${f(summary.output_tok_per_s)} tok/s   ${f(summary.requests_per_s)} req/s   wall ${f(wall)} s`);
if (args.json) (await import('node:fs')).writeFileSync(args.json, JSON.stringify(summary, null, 2));
process.exit(failures ? 1 : 0);
