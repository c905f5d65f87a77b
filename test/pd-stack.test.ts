/**
 * P/D through the whole stack with the shim's relay closed and auth on: router → decode shim (role decode) →
 * remote prefill on the prefill engine the router chose (a registered prefill worker, found by the decode shim in
 * the registry it watches) → decode with that engine's descriptor. The router's `x-prefiller-host-port` (the
 * prefill worker's engine address) is what the decode shim accepts; a client cannot steer it (the router strips
 * the header, and the shim refuses it without the cluster signature anyway).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { MemoryBus } from '../packages/protocol/src/index.js';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startShim, type ShimHandle } from '../packages/worker-shim/src/index.js';
import { startIndexer } from '../packages/indexer/src/index.js';
import { startRouter } from '../packages/router/src/index.js';

const MODEL = 'qwen3-8b';
const SECRET = 'pd-stack-cluster-secret';
const bus = new MemoryBus();
const pEngine = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'prefill' });
const dEngine = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'decode' });
const common = { model: MODEL, port: 0, clusterSecret: SECRET } as const;
const pShim = await startShim(bus, { ...common, worker: 'stack-p0', role: 'prefill', engineUrl: pEngine.url, kvEvents: pEngine.kvEventsEndpoint! });
const dShim = await startShim(bus, { ...common, worker: 'stack-d0', role: 'decode', engineUrl: dEngine.url, kvEvents: dEngine.kvEventsEndpoint! });
const indexer = await startIndexer(bus, {});
const router = await startRouter(bus, { port: 0, index: indexer.client, recordDecisions: false, clusterSecret: SECRET, apiKeys: ['client-key'], pdMinPrefillTokens: 0 });
await router.waitForWorkers(2);

async function prefills(shim: ShimHandle, result: string): Promise<number> {
  const text = await shim.metrics.registry.getSingleMetricAsString('kvgate_shim_pd_prefills_total');
  let n = 0;
  for (const line of text.split('\n')) if (!line.startsWith('#') && line.includes(`result="${result}"`)) n += Number(line.trim().split(/\s+/).pop());
  return n;
}

test('router → decode shim → registered prefill engine → decode: served, one remote prefill', async () => {
  const prompt = Array.from({ length: 90 }, (_, i) => `s${i}`).join(' ');
  const res = await request(`${router.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer client-key', 'x-prefiller-host-port': '169.254.169.254:80' },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: 4 }),
  });
  const text = await res.body.text();
  assert.is(res.statusCode, 200, text);
  assert.ok(JSON.parse(text).choices[0].text.length > 0);
  assert.is(await prefills(dShim, 'ok'), 1);
  for (const r of ['refused_target', 'foreign_descriptor', 'error']) assert.is(await prefills(dShim, r), 0, r);
});

test('straight to the decode shim, without the router: 401 (no signature), nothing prefilled', async () => {
  const res = await request(`${dShim.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-prefiller-host-port': new URL(pEngine.url).host },
    body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 1 }),
  });
  assert.is(res.statusCode, 401);
  await res.body.text();
  assert.is(await prefills(dShim, 'ok'), 1);
});

test.after(async () => {
  await router.close();
  await dShim.stop();
  await pShim.stop();
  await indexer.close();
  await pEngine.close();
  await dEngine.close();
  await bus.close();
});

test.run();
