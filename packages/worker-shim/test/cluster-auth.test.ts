/**
 * The shim's front with a cluster secret: its proxy routes answer 401 KVG_UNAUTHORIZED to a call without a
 * signature, with a bad or an expired one, or one sent again (the engine receives none of them); a signed call is
 * proxied; /healthz and /metrics stay open.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { initHashing, MemoryBus, signRequest } from '@kvgate/protocol';
import { startShim } from '../src/index.js';
import { freePort } from '../../../test/harness/nats-server.js';

await initHashing();

let engineCalls = 0;
const engine = createServer((req, res) => {
  if (req.url === '/health') return void res.end();
  if (req.url === '/metrics') return void res.end('vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n');
  if (req.method === 'POST' && req.url?.startsWith('/v1/')) engineCalls++;
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'x', choices: [{ index: 0, text: 'ok' }], authorization: req.headers.authorization ?? null }));
  });
});
await new Promise<void>((r) => engine.listen(0, '127.0.0.1', r));
const engineUrl = `http://127.0.0.1:${(engine.address() as AddressInfo).port}`;
const bus = new MemoryBus();
const shim = await startShim(bus, { worker: 'w-auth', model: 'm', engineUrl, kvEvents: `tcp://127.0.0.1:${await freePort()}`, port: 0, clusterSecret: 'the-secret' });

const body = Buffer.from(JSON.stringify({ model: 'm', prompt: 'hi', max_tokens: 1 }));
async function post(headers: Record<string, string>, b: Buffer = body) {
  const res = await request(`${shim.url}/v1/completions`, { method: 'POST', body: b, headers: { 'content-type': 'application/json', ...headers } });
  return { status: res.statusCode, json: (await res.body.json()) as any };
}

test('without a signature, with a bad one, an expired one, or for another body: 401 KVG_UNAUTHORIZED, the engine sees nothing', async () => {
  const cases: Record<string, string>[] = [
    {},
    signRequest('wrong-secret', 'POST', '/v1/completions', body),
    signRequest('the-secret', 'POST', '/v1/completions', body, Date.now() - 120_000),
    signRequest('the-secret', 'POST', '/v1/chat/completions', body),
    signRequest('the-secret', 'POST', '/v1/completions', Buffer.from('{"model":"m","prompt":"other"}')),
  ];
  for (const h of cases) {
    const r = await post(h);
    assert.is(r.status, 401, JSON.stringify(h));
    assert.is(r.json.error.kvg_code, 'KVG_UNAUTHORIZED');
    assert.match(r.json.error.message, /cluster signature refused/);
  }
  assert.is(engineCalls, 0);
});

test('a signed call is proxied (the router key passed on); the same signature again is refused', async () => {
  const h = { ...signRequest('the-secret', 'POST', '/v1/completions', body), authorization: 'Bearer engine-key' };
  const ok = await post(h);
  assert.is(ok.status, 200);
  assert.is(ok.json.authorization, 'Bearer engine-key');
  assert.is(engineCalls, 1);
  const replay = await post(h);
  assert.is(replay.status, 401);
  assert.match(replay.json.error.message, /replay/);
  assert.is(engineCalls, 1);
});

test('/healthz and /metrics need no signature', async () => {
  assert.is((await request(`${shim.url}/healthz`)).statusCode, 200);
  assert.is((await request(`${shim.url}/metrics`)).statusCode, 200);
});

test.after(async () => {
  await shim.stop();
  engine.closeAllConnections();
  engine.close();
  await bus.close();
});

test.run();
