/**
 * P/D (issue 15, "Failures"): the decode worker's engine dies before the first byte → the router retries the
 * request on another decode worker, and the client never sees the failure. One prefill engine and two decode
 * engines, each behind its shim, the indexer and a router on the MemoryBus. Each decode shim reaches its engine's
 * HTTP port through a TCP relay in this test; the relay of the engine that holds the prompt is closed (the port
 * refuses connections, as a dead engine's does) while its KV events keep flowing, so the index still names it — a
 * real death also ends the event socket, and whichever the router learns first decides; this pins the case where
 * the request gets there first. Its shim probes the engine rarely, so the router still believes the worker healthy
 * and sends it the prompt it holds: the shim answers 502 before any byte, the router marks it suspect and serves the
 * request on the other decode worker.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { MemoryBus } from '../packages/protocol/src/index.js';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startShim } from '../packages/worker-shim/src/index.js';
import { startIndexer } from '../packages/indexer/src/index.js';
import { startRouter } from '../packages/router/src/index.js';

const MODEL = 'qwen3-8b';
const bus = new MemoryBus();
const pEngine = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'prefill' });
const dEngines = [
  await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'decode' }),
  await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'decode' }),
];
/** a TCP relay to `port` on loopback; close() also cuts its open connections (the engine "dies") */
async function relay(port: number): Promise<{ url: string; close(): Promise<void> }> {
  const open = new Set<Socket>();
  const server: Server = createServer((c) => {
    const up = connect(port, '127.0.0.1');
    open.add(c).add(up);
    c.pipe(up).pipe(c);
    const end = () => (c.destroy(), up.destroy(), open.delete(c), open.delete(up));
    c.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${addr.port}`,
    close: () => new Promise<void>((r) => (open.forEach((s) => s.destroy()), server.close(() => r()))),
  };
}
const relays = await Promise.all(dEngines.map((e) => relay(Number(new URL(e.url).port))));
const pShim = await startShim(bus, { model: MODEL, port: 0, worker: 'rt-p0', role: 'prefill', engineUrl: pEngine.url, kvEvents: pEngine.kvEventsEndpoint! });
// a probe period far longer than the test: the router learns of the death only from the failed request
const dShims = await Promise.all(
  dEngines.map((e, i) => startShim(bus, { model: MODEL, port: 0, worker: `rt-d${i}`, role: 'decode', engineUrl: relays[i]!.url, kvEvents: e.kvEventsEndpoint!, engineProbeMs: 600_000 })),
);
const indexer = await startIndexer(bus, {});
const router = await startRouter(bus, { port: 0, index: indexer.client, indexTimeoutMs: 2_000, recordDecisions: false, pdMinPrefillTokens: 256 });
await router.waitForWorkers(3);

const prompt = Array.from({ length: 700 }, (_, i) => `held${i}`).join(' ');
async function complete(stream = false) {
  const res = await request(`${router.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 8, stream }) });
  const text = await res.body.text();
  return { status: res.statusCode, text, worker: res.headers['x-kvgate-worker'] as string | undefined, prefill: res.headers['x-kvgate-prefill'] as string | undefined };
}
async function retries(): Promise<number> {
  let n = 0;
  for (const line of (await router.metrics.registry.metrics()).split('\n')) if (line.startsWith('kvgate_router_upstream_retries_total')) n += Number(line.trim().split(/\s+/).pop());
  return n;
}
async function overlapOf(worker: string): Promise<number> {
  const res = await request(`${router.url}/v1/route`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt }) });
  // in a P/D pool the top-level worker and overlap are the decode worker's (candidates score the prefill pool)
  const body = (await res.body.json()) as { worker: string; overlap: number };
  return body.worker === worker ? body.overlap : 0;
}

test('the decode engine holding the prompt dies: the request is retried on the other decode worker and succeeds', async () => {
  const first = await complete();
  assert.is(first.status, 200, first.text);
  const holder = first.worker!;
  assert.ok(holder === 'rt-d0' || holder === 'rt-d1', `served by ${holder}`);
  // the index learns that the holder caches the prompt, so the router will pick it again
  const deadline = Date.now() + 10_000;
  while ((await overlapOf(holder)) < 30 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.ok((await overlapOf(holder)) >= 30, `${holder} overlap ${await overlapOf(holder)}`);
  const before = await retries();
  await relays[holder === 'rt-d0' ? 0 : 1]!.close();
  const other = holder === 'rt-d0' ? 'rt-d1' : 'rt-d0';
  const again = await complete();
  assert.is(again.status, 200, again.text);
  assert.is(again.worker, other);
  assert.ok(JSON.parse(again.text).choices[0].text.length > 0, again.text);
  assert.ok((await retries()) > before, 'the router counted the retry');
  // a stream is retried the same way (nothing had reached the client), and the holder is now skipped as suspect
  const s = await complete(true);
  assert.is(s.status, 200, s.text);
  assert.is(s.worker, other);
  assert.ok(s.text.trimEnd().endsWith('data: [DONE]'), s.text.slice(-200));
});

test.after(async () => {
  await router.close();
  for (const s of dShims) await s.stop();
  await pShim.stop();
  await indexer.close();
  await pEngine.close();
  for (const r of relays) await r.close();
  for (const e of dEngines) await e.close();
  await bus.close();
});

test.run();
