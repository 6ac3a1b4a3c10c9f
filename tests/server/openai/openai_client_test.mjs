// The official `openai` npm client against a running sbserve (demo model, --chat-template
// chat_template.jinja): completions and chat, streaming and not, usage, stop, seed
// reproducibility, logprobs shapes, errors as the SDK's typed exceptions, and a client abort that
// must cancel the request and free its KV cache.
//   node openai_client_test.mjs BASE_URL PATH/TO/openai/index.mjs
import assert from 'node:assert/strict';

const [base, sdkPath] = process.argv.slice(2);
const { default: OpenAI } = await import(sdkPath);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const model = 'sbserve-demo';

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

async function metric(series) {
  const page = await (await fetch(`${base}/metrics`)).text();
  for (const line of page.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  }
  return -1;
}
async function waitMetric(series, want) {
  for (let i = 0; i < 1000; i++) {
    if ((await metric(series)) === want) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}

test('completion: text, finish_reason and usage', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, ignore_eos: true });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(r.choices[0].text.length > 0);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 8);
  assert.ok(r.usage.prompt_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 8);
});

test('completion stream: the chunks add up to the same text, then a usage chunk', async () => {
  const req = { model, prompt: 'Once upon a time', max_tokens: 12, seed: 11, temperature: 0.8, ignore_eos: true };
  const whole = await client.completions.create(req);
  const stream = await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
      continue;
    }
    text += chunk.choices[0].text;
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, 'length');
  assert.deepEqual(usage, whole.usage);
});

test('seed: same seed, same text; n choices are indexed', async () => {
  const req = { model, prompt: 'The', max_tokens: 10, seed: 1234, temperature: 1.0, n: 2, ignore_eos: true };
  const a = await client.completions.create(req);
  const b = await client.completions.create(req);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
});

test('logit_bias: +100 makes every sampled token the biased one; a bad bias is a 400 naming it', async () => {
  const piece = await fetch(`${base}/detokenize`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tokens: [300] }),
  }).then((r) => r.json());
  const r = await client.completions.create({
    model, prompt: 'The', max_tokens: 5, temperature: 1.0, ignore_eos: true, logit_bias: { 300: 100 },
  });
  assert.equal(r.choices[0].text, piece.prompt.repeat(5));
  await assert.rejects(
    client.completions.create({ model, prompt: 'The', max_tokens: 2, logit_bias: { 300: 250 } }),
    (e) => e.status === 400 && e.param === 'logit_bias',
  );
});

test('echo with logprobs scores the prompt, as evaluation harnesses ask for it', async () => {
  const prompt = 'Once upon a time there was';
  const r = await client.completions.create({ model, prompt, max_tokens: 1, echo: true, logprobs: 1, temperature: 0 });
  const c = r.choices[0];
  assert.ok(c.text.startsWith(prompt));
  const lp = c.logprobs;
  const ids = await fetch(`${base}/tokenize`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt }),
  }).then((x) => x.json());
  assert.equal(lp.tokens.length, ids.count + 1);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  // A continuation's log-likelihood: the sum over its tokens, each <= 0.
  const ll = lp.token_logprobs.slice(1, ids.count).reduce((a, b) => a + b, 0);
  assert.ok(Number.isFinite(ll) && ll < 0, `log-likelihood ${ll}`);
  lp.top_logprobs.slice(1).forEach((top, i) => assert.equal(top[lp.tokens[i + 1]], lp.token_logprobs[i + 1]));
});

test('stop: finish_reason "stop" and the stop string is not returned', async () => {
  const free = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 24, temperature: 0, ignore_eos: true });
  const text = free.choices[0].text;
  const stop = text.slice(4, 7);
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 24, temperature: 0, stop: [stop] });
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].text, text.slice(0, text.indexOf(stop)));
});

test('completion logprobs shape', async () => {
  // Seeded, so the run repeats; ignore_eos lets the end-of-text token be sampled, listed and left out of the text.
  const r = await client.completions.create({ model, prompt: 'Once', max_tokens: 4, logprobs: 2, ignore_eos: true, seed: 11 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 4);
  assert.equal(lp.token_logprobs.length, 4);
  assert.equal(lp.text_offset.length, 4);
  assert.equal(lp.top_logprobs.length, 4);
  lp.top_logprobs.forEach((top, i) => {
    assert.ok(Object.keys(top).length >= 2 && Object.keys(top).length <= 3);
    assert.equal(top[lp.tokens[i]], lp.token_logprobs[i]);
  });
  // Each token's text sits at its offset in the text, unless it is a special token the text skips.
  const text = r.choices[0].text;
  let at = 0;
  lp.tokens.forEach((tok, i) => {
    assert.equal(lp.text_offset[i], at);
    if (text.startsWith(tok, at)) at += tok.length;
    else assert.equal(tok, '<|endoftext|>');
  });
  assert.equal(at, text.length);
});

test('chat: message, usage, and the template applied', async () => {
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me a story.' }];
  const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 6, ignore_eos: true });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 6);
  // The prompt is the rendered template: its token count is /tokenize's of the same messages.
  const tok = await (await fetch(`${base}/tokenize`, { method: 'POST', body: JSON.stringify({ messages }) })).json();
  assert.equal(r.usage.prompt_tokens, tok.count);
});

test('chat stream: role first, content deltas, one finish, usage', async () => {
  const messages = [{ role: 'user', content: 'Hello' }];
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 6, stream: true, stream_options: { include_usage: true }, ignore_eos: true, seed: 5,
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const finishes = chunks.filter((c) => c.choices.length && c.choices[0].finish_reason);
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0].choices[0].finish_reason, 'length');
  const usage = chunks.at(-1).usage;
  assert.equal(usage.completion_tokens, 6);
  const content = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta.content ?? '').join('');
  const whole = await client.chat.completions.create({ model, messages, max_tokens: 6, ignore_eos: true, seed: 5 });
  assert.equal(content, whole.choices[0].message.content);
});

test('chat logprobs shape', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, logprobs: true, top_logprobs: 2, ignore_eos: true,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 3);
  for (const t of content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
    assert.equal(t.top_logprobs.length, 2);
  }
});

test('errors: the SDK raises typed errors with the field named', async () => {
  await assert.rejects(client.completions.create({ model, prompt: 'x', temperature: -1 }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, `got ${e}`);
    assert.equal(e.status, 400);
    assert.equal(e.param, 'temperature');
    assert.equal(e.type, 'invalid_request_error');
    return true;
  });
  await assert.rejects(client.completions.create({ model: 'gpt-4o', prompt: 'x' }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, `got ${e}`);
    return true;
  });
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }] }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `got ${e}`);
      assert.match(e.message, /alternate/);
      return true;
    });
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [model]);
});

test('abort: a client abort mid-stream cancels the request and frees its KV', async () => {
  const before = await metric('sbserve_request_success_total{finished_reason="cancelled"}');
  const controller = new AbortController();
  const stream = await client.completions.create(
    { model, prompt: 'Once upon a time', max_tokens: 1900, ignore_eos: true, stream: true },
    { signal: controller.signal });
  let chunks = 0;
  // The SDK ends the iteration quietly once its own signal aborted the fetch.
  try {
    for await (const chunk of stream) {
      assert.equal(typeof chunk.choices[0].text, 'string');
      if (++chunks === 3) controller.abort();
    }
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', `got ${e}`);
  }
  // Chunks already buffered are still handed out; the stream then ends, far short of 1900 tokens.
  assert.ok(chunks >= 3 && chunks < 1900, `${chunks} chunks`);
  assert.ok(await waitMetric('sbserve_request_success_total{finished_reason="cancelled"}', before + 1),
    'the request was not cancelled');
  assert.ok(await waitMetric('sbserve_kv_cache_used_blocks', 0), 'KV blocks still held');
  assert.ok(await waitMetric('sbserve_num_requests_running', 0));
});

let failed = 0;
for (const { name, fn } of tests) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${e.stack ?? e}`);
  }
}
console.log(`${tests.length - failed}/${tests.length} passed`);
process.exit(failed ? 1 : 0);
