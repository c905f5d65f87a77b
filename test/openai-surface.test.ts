/**
 * The OpenAI surface as vLLM's users meet it (issue 17), driven by the official `openai` npm SDK against a real
 * stack (sim engine ← shim front, cluster signatures on ← router with an API key, MemoryBus):
 *   errors   vLLM's body shape {error:{message,type,param,code:<status>}} with kvgate's KVG_* under kvg_code; the
 *            SDK's APIError exposes .status, .code (the number), .param; the router's own errors carry x-request-id
 *   refused  max_tokens / max_completion_tokens 0 and non-numeric sampling fields: 400 at the router, nothing sent
 *   models   /v1/models entries carry max_model_len from the registry (the shim read it off the engine's
 *            /v1/models); GET /v1/models/{id} (models.retrieve) answers the same card, 404 param "model" otherwise
 *   engine   POST /tokenize and /detokenize reach an engine of the model's pool through its shim front;
 *            GET /health is 200 with an empty body while an engine is live
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import OpenAI from 'openai';
import { request } from 'undici';
import { initHashing } from '@kvgate/protocol';
import { startStack, type Stack } from '../packages/workload/src/stack.js';

await initHashing();

const MODEL = 'surface-model';
const KEY = 'surface-key-9c1e';
const MAX_LEN = 2048;
const stack: Stack = await startStack({
  engines: 1,
  routers: 1,
  model: MODEL,
  apiKeys: [KEY],
  clusterSecret: 'surface-cluster-secret',
  shimFronts: true,
  engine: { speedup: 50, numBlocks: 512, blockSize: 16, maxModelLen: MAX_LEN },
  router: { indexTimeoutMs: 2000 },
});
const router = stack.routers[0]!;
const client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: KEY, maxRetries: 0 });
const engineCount = () => stack.engines.length;

async function raw(path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await request(`${router.url}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: text.startsWith('{') ? JSON.parse(text) : undefined };
}

/** the SDK's error for a call that must fail */
async function sdkError(call: () => Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  try {
    await call();
  } catch (e) {
    assert.instance(e, OpenAI.APIError, String(e));
    return e as InstanceType<typeof OpenAI.APIError>;
  }
  throw new Error('the call succeeded');
}

test('the SDK works: a completion and a chat completion through the router', async () => {
  const c = await client.completions.create({ model: MODEL, prompt: 'hello there', max_tokens: 3 });
  assert.ok(c.choices.length === 1 && typeof c.choices[0]!.text === 'string');
  const chat = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  assert.is(chat.choices[0]!.message.role, 'assistant');
});

test('max_tokens 0 / max_completion_tokens 0: 400 at the router in vLLM\'s shape, param names the field, x-request-id set', async () => {
  const e = await sdkError(() => client.completions.create({ model: MODEL, prompt: 'hello', max_tokens: 0 }));
  assert.is(e.status, 400);
  assert.is(e.code, 400 as unknown as string); // vLLM's numeric code (the SDK types it as a string)
  assert.is(e.param, 'max_tokens');
  assert.match(e.message, /max_tokens must be at least 1, got 0/);
  const body = e.error as { kvg_code?: string; type?: string };
  assert.is(body.kvg_code, 'KVG_BAD_REQUEST');
  assert.is(body.type, 'invalid_request_error');
  assert.ok((e.headers?.get('x-request-id') ?? '').length > 0, 'x-request-id on the router\'s own error');
  const chat = await sdkError(() => client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 0 }));
  assert.is(chat.status, 400);
  assert.is(chat.param, 'max_completion_tokens');
});

test('the client\'s x-request-id comes back on the router\'s error; without one the router makes one per request', async () => {
  const mine = await raw('/v1/completions', { model: MODEL, prompt: 'x', max_tokens: 0 }, { 'x-request-id': 'req-abc-123' });
  assert.is(mine.status, 400);
  assert.is(mine.headers['x-request-id'], 'req-abc-123');
  assert.equal(mine.json, { error: { message: 'max_tokens must be at least 1, got 0', type: 'invalid_request_error', param: 'max_tokens', code: 400, kvg_code: 'KVG_BAD_REQUEST' } });
  const a = await raw('/v1/completions', { model: MODEL, prompt: 'x', max_tokens: 0 });
  const b = await raw('/v1/completions', { model: MODEL, prompt: 'x', max_tokens: 0 });
  assert.ok(typeof a.headers['x-request-id'] === 'string' && a.headers['x-request-id'] !== b.headers['x-request-id']);
  // a 404 of the router (no route) and an unknown model carry it too
  const nf = await raw('/v1/nope');
  assert.is(nf.status, 404);
  assert.ok(typeof nf.headers['x-request-id'] === 'string');
  const unknown = await sdkError(() => client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 }));
  assert.is(unknown.status, 404);
  assert.is(unknown.param, 'model');
  assert.is((unknown.error as { kvg_code?: string }).kvg_code, 'KVG_UNKNOWN_MODEL');
  // a missing API key: 401 in the same shape
  const noKey = await sdkError(() => new OpenAI({ baseURL: `${router.url}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list());
  assert.is(noKey.status, 401);
  assert.is(noKey.code, 401 as unknown as string);
  assert.is((noKey.error as { kvg_code?: string }).kvg_code, 'KVG_UNAUTHORIZED');
  assert.ok((noKey.headers?.get('x-request-id') ?? '').length > 0);
});

test('non-numeric sampling fields: 400 with param naming the field; null is accepted', async () => {
  const bad: Array<[string, unknown]> = [
    ['temperature', 'hot'],
    ['top_p', '0.9'],
    ['top_k', 1.5],
    ['min_p', true],
    ['presence_penalty', {}],
    ['frequency_penalty', []],
    ['repetition_penalty', 'x'],
    ['seed', 'abc'],
    ['n', '2'],
  ];
  for (const [field, value] of bad) {
    const r = await raw('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, [field]: value });
    assert.is(r.status, 400, `${field}=${JSON.stringify(value)}: ${r.text}`);
    assert.is(r.json.error.param, field);
    assert.is(r.json.error.code, 400);
    assert.is(r.json.error.kvg_code, 'KVG_BAD_REQUEST');
  }
  const e = await sdkError(() => client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 2, temperature: 'warm' as unknown as number }));
  assert.is(e.param, 'temperature');
  const ok = await raw('/v1/completions', { model: MODEL, prompt: 'x', max_tokens: 2, temperature: null, top_p: 0.5, seed: 7, n: 1 });
  assert.is(ok.status, 200, ok.text);
});

test('/v1/models carries max_model_len from the registry; models.retrieve answers the card, 404 param "model" for another id', async () => {
  const list = await client.models.list();
  const card = list.data.find((m) => m.id === MODEL) as (OpenAI.Models.Model & { max_model_len?: number | null }) | undefined;
  assert.ok(card, JSON.stringify(list.data));
  assert.is(card.max_model_len, MAX_LEN);
  const one = (await client.models.retrieve(MODEL)) as OpenAI.Models.Model & { max_model_len?: number | null };
  assert.is(one.id, MODEL);
  assert.is(one.object, 'model');
  assert.is(one.max_model_len, MAX_LEN);
  const nf = await sdkError(() => client.models.retrieve('org/absent-model'));
  assert.is(nf.status, 404);
  assert.is(nf.param, 'model');
  assert.match(nf.message, /org\/absent-model/);
});

test('POST /tokenize and /detokenize reach the engine (through its shim front, signed); GET /health 200 empty', async () => {
  assert.is(engineCount(), 1);
  const t = await raw('/tokenize', { model: MODEL, prompt: 'hello world, tokenize me' });
  assert.is(t.status, 200, t.text);
  assert.ok(Array.isArray(t.json.tokens) && t.json.tokens.length > 0);
  assert.is(t.json.count, t.json.tokens.length);
  assert.is(t.json.max_model_len, MAX_LEN);
  assert.ok(typeof t.headers['x-kvgate-worker'] === 'string');
  // without a model: the only one served
  const t2 = await raw('/tokenize', { prompt: 'hello world, tokenize me' });
  assert.equal(t2.json.tokens, t.json.tokens);
  const d = await raw('/detokenize', { model: MODEL, tokens: t.json.tokens });
  assert.is(d.status, 200, d.text);
  assert.type(d.json.prompt, 'string');
  // the engine's own error passes through as the engine wrote it (vLLM's shape)
  const bad = await raw('/detokenize', { model: MODEL, tokens: 'nope' });
  assert.is(bad.status, 400, bad.text);
  assert.is(bad.json.error.code, 400);
  // an unknown model is the router's 404
  const nf = await raw('/tokenize', { model: 'no-such-model', prompt: 'x' });
  assert.is(nf.status, 404);
  assert.is(nf.json.error.param, 'model');
  // /tokenize needs the API key like /v1
  const noKey = await raw('/tokenize', { model: MODEL, prompt: 'x' }, { authorization: 'Bearer wrong' });
  assert.is(noKey.status, 401);
  const h = await request(`${router.url}/health`);
  assert.is(h.statusCode, 200);
  assert.is(await h.body.text(), '');
});

test.after(async () => {
  await stack.close();
});

test.run();
