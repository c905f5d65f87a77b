/**
 * Router auth over real sockets (stub engines, MemoryBus): API keys (401 KVG_UNAUTHORIZED, OpenAI-shaped; health open unless
 * authHealth), the engine's key upstream instead of the client's, per-key rate limits (429 + Retry-After), client
 * P/D fields stripped (a listener they name receives nothing), and every upstream call signed with the cluster secret.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { ClusterVerifier, initHashing } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startRouter, type RouterHandle } from '../src/router.js';
import { register, registration, StubEngine } from './helpers.js';

await initHashing();

const bus = await createBus();
const engine = await new StubEngine('e0').listen();
await register(bus, registration('w0', engine.url));
// a listener a client would like the engine to fetch KV blocks from, or send its prompt to
let trapHits = 0;
const trap = createServer((req, res) => {
  trapHits++;
  res.end('{}');
});
await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
const trapPort = (trap.address() as AddressInfo).port;

let now = 1_000_000;
const index = { match: async () => ({ overlaps: {}, indexerSeq: 0 }) };
const router: RouterHandle = await startRouter(bus, {
  port: 0,
  index,
  recordDecisions: false,
  apiKeys: ['key-one', 'key-two'],
  engineApiKey: 'engine-secret',
  clusterSecret: 'cluster-secret',
  rateLimit: { requestsPerS: 1, requestBurst: 3 },
  rateLimitClock: () => now,
});
await router.waitForWorkers(1);

async function call(path: string, opts: { key?: string; auth?: string; body?: unknown; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...opts.headers };
  if (opts.key) headers.authorization = `Bearer ${opts.key}`;
  if (opts.auth) headers.authorization = opts.auth;
  const res = await request(`${router.url}${path}`, { method: opts.body ? 'POST' : 'GET', headers, ...(opts.body ? { body: JSON.stringify(opts.body) } : {}) });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: text.startsWith('{') ? JSON.parse(text) : text };
}
const completion = { model: 'stub-model', prompt: 'hello there', max_tokens: 2 };

test('no key, a wrong key, a non-Bearer header: 401 KVG_UNAUTHORIZED (OpenAI-shaped, vLLM numeric code); the engine sees nothing', async () => {
  const before = engine.seen.length;
  for (const opts of [{}, { key: 'key-three' }, { key: 'key-on' }, { auth: 'Basic a2V5LW9uZQ==' }, { auth: 'key-one' }]) {
    const r = await call('/v1/completions', { ...opts, body: completion });
    assert.is(r.status, 401, JSON.stringify(opts));
    assert.equal(r.json.error.kvg_code, 'KVG_UNAUTHORIZED');
    assert.equal(r.json.error.code, 401);
    assert.ok(typeof r.headers['x-request-id'] === 'string' && r.headers['x-request-id'].length > 0);
    assert.equal(r.json.error.type, 'invalid_request_error');
    assert.is(r.headers['www-authenticate'], 'Bearer');
  }
  assert.is((await call('/v1/models')).status, 401);
  assert.is((await call('/v1/route', { body: completion })).status, 401);
  assert.is(engine.seen.length, before);
});

test('health, readiness and metrics stay open', async () => {
  assert.is((await call('/healthz')).status, 200);
  assert.is((await call('/readyz')).status, 200);
  assert.is((await call('/metrics')).status, 200);
});

test('a valid key passes; upstream gets the engine key (never the client key), a valid cluster signature', async () => {
  now += 10_000;
  const r = await call('/v1/completions', { key: 'key-two', body: completion });
  assert.is(r.status, 200);
  const seen = engine.seen.at(-1)!;
  assert.is(seen.headers.authorization, 'Bearer engine-secret');
  const v = new ClusterVerifier('cluster-secret');
  const raw = Buffer.from(JSON.stringify(seen.body));
  assert.equal(v.verify('POST', seen.path, raw, seen.headers), { ok: true });
  assert.is(v.verify('POST', seen.path, raw, seen.headers).ok, false, 'the same signature again is a replay');
  assert.is(new ClusterVerifier('another').verify('POST', seen.path, raw, seen.headers).ok, false);
  assert.is((await call('/v1/models', { key: 'key-one' })).status, 200);
});

test('client kv_transfer_params and x-prefiller-host-port never go upstream; the listener they name receives nothing', async () => {
  now += 10_000;
  const r = await call('/v1/completions', {
    key: 'key-one',
    headers: { 'x-prefiller-host-port': `127.0.0.1:${trapPort}` },
    body: { ...completion, kv_transfer_params: { do_remote_prefill: true, remote_engine_id: 'x', remote_block_ids: [1], remote_host: '127.0.0.1', remote_port: trapPort } },
  });
  assert.is(r.status, 200);
  const seen = engine.seen.at(-1)!;
  assert.not.ok('kv_transfer_params' in seen.body);
  assert.is(seen.headers['x-prefiller-host-port'], undefined);
  assert.equal(seen.body.prompt, 'hello there');
  assert.ok(new ClusterVerifier('cluster-secret').verify('POST', seen.path, Buffer.from(JSON.stringify(seen.body)), seen.headers).ok, 'the stripped body is what was signed');
  assert.is(trapHits, 0);
});

test('per-key request rate: past the burst 429 KVG_RATE_LIMITED with Retry-After; another key unaffected; later again', async () => {
  now += 10_000;
  for (let i = 0; i < 3; i++) assert.is((await call('/v1/completions', { key: 'key-one', body: completion })).status, 200);
  const over = await call('/v1/completions', { key: 'key-one', body: completion });
  assert.is(over.status, 429);
  assert.is(over.json.error.kvg_code, 'KVG_RATE_LIMITED');
  assert.is(over.headers['retry-after'], '1');
  assert.is((await call('/v1/completions', { key: 'key-two', body: completion })).status, 200);
  now += 1000;
  assert.is((await call('/v1/completions', { key: 'key-one', body: completion })).status, 200);
});

test('authHealth closes /healthz, /readyz, /metrics; prompt-token rate per client address without keys; forwardClientAuth; trustClientPd', async () => {
  const b2 = await createBus();
  await register(b2, registration('w0', engine.url));
  const closed = await startRouter(b2, { port: 0, index, recordDecisions: false, apiKeys: ['k'], authHealth: true });
  const open = await startRouter(b2, { port: 0, index, recordDecisions: false, rateLimit: { tokensPerS: 10, tokenBurst: 40 }, rateLimitClock: () => now, forwardClientAuth: true, trustClientPd: true });
  try {
    await closed.waitForWorkers(1);
    await open.waitForWorkers(1);
    for (const p of ['/healthz', '/readyz', '/metrics']) {
      assert.is((await request(`${closed.url}${p}`)).statusCode, 401, p);
      assert.is((await request(`${closed.url}${p}`, { headers: { authorization: 'Bearer k' } })).statusCode, 200, p);
    }
    // no keys: the bucket is the client's address; the prompt (raw-size estimate, ~40 tokens) empties it
    const body = JSON.stringify({ ...completion, prompt: 'x'.repeat(150), kv_transfer_params: { keep: true } });
    const send = () => request(`${open.url}/v1/completions`, { method: 'POST', body, headers: { 'content-type': 'application/json', authorization: 'Bearer client-own', 'x-prefiller-host-port': 'gw:1' } });
    const first = await send();
    await first.body.text();
    assert.is(first.statusCode, 200);
    const seen = engine.seen.at(-1)!;
    assert.is(seen.headers.authorization, 'Bearer client-own', 'forwarded when told to');
    assert.equal(seen.body.kv_transfer_params, { keep: true }, 'kept with trustClientPd');
    assert.is(seen.headers['x-prefiller-host-port'], 'gw:1');
    const second = await send();
    const j = (await second.body.json()) as { error: { kvg_code: string } };
    assert.is(second.statusCode, 429);
    assert.is(j.error.kvg_code, 'KVG_RATE_LIMITED');
    assert.ok(Number(second.headers['retry-after']) >= 1);
  } finally {
    await closed.close();
    await open.close();
    await b2.close();
  }
});

test.after(async () => {
  await router.close();
  await engine.close();
  trap.close();
  await bus.close();
});

test.run();
