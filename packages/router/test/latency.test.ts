/**
 * The router's latency histograms (latency.ts, routing-core.ts) are observed, per worker and model: a stream gives
 * one TTFT, an ITL per later chunk and one end-to-end; a whole JSON answer an end-to-end only; every index match one
 * index-query observation. Stub engine and fake index over real sockets; counts and orderings, no timings.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { initHashing } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startRouter } from '../src/index.js';
import { fakeIndex, register, registration, StubEngine, tokens, until } from './helpers.js';
import { parsePrometheusText } from '../../worker-shim/src/prom-text.js';

await initHashing();

const bus = await createBus();
const index = fakeIndex(bus, new Map([['w1', new Set<bigint>()]]));
const stub = await new StubEngine('w1').listen();
await register(bus, registration('w1', stub.url));
const router = await startRouter(bus, { port: 0, indexTimeoutMs: 1000, registryTtlMs: 0 });
await router.waitForWorkers(1);

async function metric(name: string, labels: Record<string, string> = { worker: 'w1', model: 'stub-model' }): Promise<number> {
  const text = await (await request(`${router.url}/metrics`)).body.text();
  return parsePrometheusText(text)
    .samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

const post = (body: Record<string, unknown>) =>
  request(`${router.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stub-model', prompt: tokens(16), max_tokens: 3, ...body }) });

test('a stream: one TTFT, an ITL per later chunk, one end-to-end (TTFT before the end)', async () => {
  stub.gated = true;
  stub.chunks = 4;
  const res = await post({ stream: true });
  const body = res.body.text();
  for (let i = 1; i < stub.chunks; i++) {
    // each next event only after the router has passed the last one on: separate chunks
    await until(() => stub.open === 1, 2000, 'stream open');
    await new Promise((r) => setTimeout(r, 20));
    stub.release();
  }
  await body;
  stub.gated = false;
  assert.is(await metric('kvgate_router_ttft_seconds_count'), 1);
  // one per token after the first; the [DONE] chunk is no token
  assert.is(await metric('kvgate_router_itl_seconds_count'), stub.chunks - 1);
  assert.is(await metric('kvgate_router_e2e_seconds_count'), 1);
  assert.ok((await metric('kvgate_router_ttft_seconds_sum')) <= (await metric('kvgate_router_e2e_seconds_sum')));
  assert.ok((await metric('kvgate_router_index_query_seconds_count', { model: 'stub-model' })) >= 1);
});

test('a whole JSON answer: end-to-end only; the index query once more', async () => {
  const q0 = await metric('kvgate_router_index_query_seconds_count', { model: 'stub-model' });
  const res = await post({});
  assert.is(res.statusCode, 200);
  await res.body.text();
  assert.is(await metric('kvgate_router_e2e_seconds_count'), 2);
  assert.is(await metric('kvgate_router_ttft_seconds_count'), 1);
  assert.is(await metric('kvgate_router_index_query_seconds_count', { model: 'stub-model' }), q0 + 1);
});

test.after(async () => {
  await router.close();
  index.unsubscribe();
  await stub.close();
  await bus.close();
});

test.run();
