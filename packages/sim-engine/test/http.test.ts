/** The OpenAI/vLLM HTTP surface over real sockets. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request as rawRequest } from 'node:http';
import { startSimEngine, type SimEngineHandle } from '@kvgate/sim-engine';
import { post, readSse, tokens, metricValue, sleep } from './helpers.js';

let e: SimEngineHandle;

test.before(async () => {
  e = await startSimEngine({ speedup: 2, numBlocks: 4096, maxModelLen: 16384, kvEventsEndpoint: null, hashSeed: 'http' });
});
test.after(async () => {
  await e.close();
});

test('a repeated prompt reports cached tokens and a lower TTFT than the first', async () => {
  const prompt = tokens(8000, 11);
  const ttftSum = () => metricValue(e.url, 'vllm:time_to_first_token_seconds_sum');
  const s0 = await ttftSum();
  const first = await readSse(e.url + '/v1/completions', { prompt, max_tokens: 2, stream: true, stream_options: { include_usage: true } });
  const s1 = await ttftSum();
  const second = await readSse(e.url + '/v1/completions', { prompt, max_tokens: 2, stream: true, stream_options: { include_usage: true } });
  const s2 = await ttftSum();
  const usage = (r: { data: string[] }) => JSON.parse(r.data[r.data.length - 2]!).usage;
  assert.is(usage(first).prompt_tokens_details.cached_tokens, 0);
  assert.is(usage(second).prompt_tokens_details.cached_tokens, Math.floor(7999 / 16) * 16);
  assert.is(usage(second).prompt_tokens, 8000);
  // simulated TTFT (engine metric) and wall-clock TTFT both drop
  assert.ok(s2 - s1 < (s1 - s0) / 2, `simulated TTFT ${s2 - s1} s vs ${s1 - s0} s`);
  assert.ok(second.firstTokenMs < first.firstTokenMs, `wall TTFT ${second.firstTokenMs} ms vs ${first.firstTokenMs} ms`);
  assert.ok((await metricValue(e.url, 'vllm:prefix_cache_hits_total')) >= 7984);
});

test("onRequestDone: a tagged request's TTFT, gaps and e2e on the engine's clock, not billed for this host's lag", async () => {
  const done: [string, number, number, number[]][] = [];
  const fast = await startSimEngine({ speedup: 50, numBlocks: 4096, maxModelLen: 16384, kvEventsEndpoint: null, onRequestDone: (id, ttft, e2e, gaps) => void done.push([id, ttft, e2e, gaps]) });
  try {
    const t0 = performance.now();
    const tagged = post(fast.url + '/v1/completions', { prompt: tokens(2000, 5), max_tokens: 4 }, { 'x-request-id': 'lag-free-1' });
    await sleep(5);
    // the event loop (engine included) blocked for 100 ms of wall time = 5,000 ms of modelled time
    const until = performance.now() + 100;
    while (performance.now() < until);
    const r = await tagged;
    const clientModelledMs = (performance.now() - t0) * 50;
    assert.is(r.status, 200, r.text);
    const untagged = await post(fast.url + '/v1/completions', { prompt: tokens(300, 6), max_tokens: 2 });
    assert.is(untagged.status, 200);
    assert.is(done.length, 1, JSON.stringify(done));
    const [id, ttft, e2e, gaps] = done[0]!;
    assert.is(id, 'lag-free-1');
    assert.ok(ttft > 0 && e2e >= ttft, `ttft ${ttft} e2e ${e2e}`);
    // 4 tokens: 3 gaps, which add up to the time after the first token
    assert.is(gaps.length, 3);
    assert.ok(gaps.every((g) => g > 0), JSON.stringify(gaps));
    assert.ok(Math.abs(gaps.reduce((a, g) => a + g, 0) - (e2e - ttft)) < 1e-6, `${gaps} vs ${e2e - ttft}`);
    assert.ok(clientModelledMs >= 5000, `client saw ${clientModelledMs} modelled ms`);
    assert.ok(e2e < 2000, `the engine billed ${e2e} ms for a 2000-token prefill and 4 tokens`);
  } finally {
    await fast.close();
  }
});

test('completions: JSON response in vLLM shape, text prompt tokenized with the real tokenizer', async () => {
  const r = await post(e.url + '/v1/completions', { model: 'qwen3-8b', prompt: 'Hello world, this is a test.', max_tokens: 5 });
  assert.is(r.status, 200);
  const j = r.json;
  assert.match(j.id, /^cmpl-/);
  assert.is(j.object, 'text_completion');
  assert.is(j.model, 'qwen3-8b');
  assert.is(j.choices.length, 1);
  assert.is(j.choices[0].finish_reason, 'length');
  assert.type(j.choices[0].text, 'string');
  assert.ok(j.choices[0].text.length > 0);
  assert.equal(Object.keys(j.usage).sort(), ['completion_tokens', 'prompt_tokens', 'prompt_tokens_details', 'total_tokens']);
  assert.is(j.usage.prompt_tokens, 8, 'Qwen3 tokenizes the sentence to 8 tokens');
  assert.is(j.usage.completion_tokens, 5);
  assert.is(j.usage.total_tokens, 13);
  assert.is(j.kv_transfer_params, null);
  const tok = await post(e.url + '/tokenize', { prompt: 'Hello world, this is a test.' });
  assert.equal(tok.json.tokens, [9707, 1879, 11, 419, 374, 264, 1273, 13]);
  assert.is(tok.json.count, 8);
  assert.is(tok.json.max_model_len, 16384);
});

test('SSE streaming: completion and chat chunks end with [DONE], usage last when asked', async () => {
  const c = await readSse(e.url + '/v1/completions', { prompt: tokens(40, 2), max_tokens: 4, stream: true, stream_options: { include_usage: true } });
  assert.is(c.status, 200);
  assert.is(c.data[c.data.length - 1], '[DONE]');
  const chunks = c.data.slice(0, -1).map((d) => JSON.parse(d));
  const textChunks = chunks.filter((x) => x.choices.length > 0);
  assert.is(textChunks.length, 4);
  for (const x of chunks) {
    assert.is(x.object, 'text_completion');
    assert.match(x.id, /^cmpl-/);
  }
  assert.equal(textChunks.map((x) => x.choices[0].finish_reason), [null, null, null, 'length']);
  const last = chunks[chunks.length - 1];
  assert.equal(last.choices, []);
  assert.is(last.usage.completion_tokens, 4);
  assert.is(last.usage.prompt_tokens, 40);

  const chat = await readSse(e.url + '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi there' }], max_tokens: 3, stream: true });
  assert.is(chat.data[chat.data.length - 1], '[DONE]');
  const cc = chat.data.slice(0, -1).map((d) => JSON.parse(d));
  assert.is(cc[0].object, 'chat.completion.chunk');
  assert.equal(cc[0].choices[0].delta, { role: 'assistant', content: '' });
  assert.is(cc.length, 4, 'role chunk + 3 content chunks, no usage chunk without include_usage');
  assert.is(cc[3].choices[0].finish_reason, 'length');
  assert.ok(cc.every((x) => x.usage === undefined));
});

test('chat: non-streaming response and /tokenize of messages agree on the prompt', async () => {
  const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'what is a KV cache?' }] }];
  const r = await post(e.url + '/v1/chat/completions', { messages, max_tokens: 3 });
  assert.is(r.status, 200);
  assert.is(r.json.object, 'chat.completion');
  assert.match(r.json.id, /^chatcmpl-/);
  assert.is(r.json.choices[0].message.role, 'assistant');
  assert.type(r.json.choices[0].message.content, 'string');
  const t = await post(e.url + '/tokenize', { messages });
  assert.is(t.json.count, r.json.usage.prompt_tokens);
  assert.is(t.json.tokens[0], 151644, 'starts with <|im_start|>');
  const d = await post(e.url + '/detokenize', { tokens: t.json.tokens });
  assert.ok(d.json.prompt.startsWith('<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhat is a KV cache?'));
  assert.ok(d.json.prompt.endsWith('<|im_start|>assistant\n'));
});

test('models, health, metrics names', async () => {
  const m = (await (await fetch(e.url + '/v1/models')).json()) as any;
  assert.is(m.object, 'list');
  assert.is(m.data[0].id, 'qwen3-8b');
  assert.is(m.data[0].max_model_len, 16384);
  assert.is((await fetch(e.url + '/health')).status, 200);
  const text = await (await fetch(e.url + '/metrics')).text();
  for (const name of ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:prefix_cache_queries_total', 'vllm:prefix_cache_hits_total', 'vllm:time_to_first_token_seconds_bucket']) {
    assert.ok(text.includes(`${name}{`) && text.includes('model_name="qwen3-8b"'), `metric ${name}`);
  }
  assert.ok(/vllm:cache_config_info\{[^}]*block_size="16"[^}]*num_gpu_blocks="4096"/.test(text), 'cache_config_info labels');
});

test('bad input answers OpenAI-shaped errors and the engine keeps serving', async () => {
  const shape = (r: { json: any }, code: string) => {
    assert.type(r.json.error.message, 'string');
    assert.type(r.json.error.type, 'string');
    assert.is(r.json.error.kvg_code, code);
    // vLLM's ErrorInfo: the numeric status as code, param present (null when no field is at fault)
    assert.is(typeof r.json.error.code, 'number');
    assert.ok('param' in r.json.error);
    assert.not.ok(JSON.stringify(r.json).includes('    at '), 'no stack trace');
  };
  let r = await post(e.url + '/v1/completions', '{"prompt": ');
  assert.is(r.status, 400);
  shape(r, 'KVG_BAD_JSON');
  r = await post(e.url + '/v1/completions', '[1,2]');
  assert.is(r.status, 400);
  shape(r, 'KVG_BAD_REQUEST'); // valid JSON, wrong shape: the same code at every kvgate edge
  r = await post(e.url + '/v1/completions', { max_tokens: 3 });
  assert.is(r.status, 400);
  shape(r, 'KVG_BAD_REQUEST');
  assert.match(r.json.error.message, /prompt/);
  r = await post(e.url + '/v1/chat/completions', { messages: [{ content: 'no role' }] });
  assert.is(r.status, 400);
  shape(r, 'KVG_BAD_REQUEST');
  r = await post(e.url + '/v1/completions', { model: 'gpt-4', prompt: 'x' });
  assert.is(r.status, 404);
  shape(r, 'KVG_UNKNOWN_MODEL');
  assert.equal([r.json.error.type, r.json.error.code, r.json.error.param], ['NotFoundError', 404, 'model']); // vLLM's _check_model
  r = await post(e.url + '/v1/completions', { prompt: 'x', max_tokens: -1 });
  assert.is(r.status, 400);
  assert.equal([r.json.error.type, r.json.error.code, r.json.error.param], ['BadRequestError', 400, 'max_tokens']);
  r = await post(e.url + '/v1/completions', { prompt: [1, 2, 9_999_999] });
  assert.is(r.status, 400);
  assert.match(r.json.error.message, /out of vocabulary/);
  r = await post(e.url + '/v1/completions', { prompt: tokens(16380, 5), max_tokens: 10 });
  assert.is(r.status, 400);
  assert.match(r.json.error.message, /maximum context length is 16384 tokens/);
  assert.is(r.json.error.param, 'max_tokens');
  r = await post(e.url + '/v1/completions', { prompt: 'word '.repeat(200_000) });
  assert.is(r.status, 400, 'text far beyond the context is refused before tokenizing');
  assert.match(r.json.error.message, /maximum context length/);
  r = await post(e.url + '/v1/completions', { prompt: 'x'.repeat(17 * 1024 * 1024) });
  assert.is(r.status, 413);
  shape(r, 'KVG_BODY_TOO_LARGE');
  r = await post(e.url + '/v1/nope', {});
  assert.is(r.status, 404);
  shape(r, 'KVG_NOT_FOUND');
  const g = await fetch(e.url + '/v1/completions');
  assert.is(g.status, 404);
  r = await post(e.url + '/v1/completions', { prompt: 'still alive?', max_tokens: 2 });
  assert.is(r.status, 200);
});

test('a client that disconnects mid-stream frees its blocks', async () => {
  const url = new URL(e.url + '/v1/completions');
  await new Promise<void>((resolve, reject) => {
    const req = rawRequest({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', () => {});
    req.once('error', reject);
    req.end(JSON.stringify({ prompt: tokens(500, 77), max_tokens: 5000, stream: true }));
  });
  for (let i = 0; i < 200 && (e.stats().running > 0 || e.stats().freeBlocks < e.numBlocks); i++) await sleep(10);
  assert.is(e.stats().running, 0);
  assert.is(e.stats().freeBlocks, e.numBlocks);
});

test.run();
