/**
 * Priority and flow control on the HTTP edge (issue 16: "in both edges"), over real sockets: stub engines behind
 * the router, every worker reported over its busy thresholds. A sheddable objective gets 429 at once with
 * Retry-After and x-kvgate-shed; the others wait in the bounded per-priority queue and the higher priority is
 * proxied first once a worker has room; the band full → 429 queue-full; a wait past the deadline → 503
 * KVG_QUEUE_TIMEOUT; the shed counter and the queue gauge say so; the router closing → 503 KVG_SHUTTING_DOWN.
 * The queue is the one the gateway edge uses.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { createBus, initHashing, type Bus } from '@kvgate/protocol';
import { startRouter, type RouterHandle, type RouterOptions } from '../src/router.js';
import { fakeIndex, publishLoad, register, registration, StubEngine, tokens, until } from './helpers.js';

await initHashing();
let nsCounter = 0;

interface Ctx {
  bus: Bus;
  ns: string;
  engines: StubEngine[];
  router: RouterHandle;
}

async function setup(opts: RouterOptions): Promise<Ctx> {
  const bus = await createBus();
  const ns = `flow${process.pid}_${++nsCounter}`;
  const engines = await Promise.all([new StubEngine('w0').listen(), new StubEngine('w1').listen()]);
  for (const e of engines) await register(bus, registration(e.name, e.url), ns);
  fakeIndex(bus, new Map(), ns);
  const router = await startRouter(bus, { port: 0, namespace: ns, id: `fr${nsCounter}`, indexTimeoutMs: 200, registryTtlMs: 0, recordDecisions: false, ...opts });
  await router.waitForWorkers(2);
  return { bus, ns, engines, router };
}

async function teardown(c: Ctx): Promise<void> {
  await c.router.close();
  for (const e of c.engines) await e.close();
  await c.bus.close();
}

async function saturate(c: Ctx, waiting = 1000): Promise<void> {
  for (const w of ['w0', 'w1']) publishLoad(c.bus, { worker: w, waiting }, c.ns);
  await until(() => ['w0', 'w1'].every((w) => (c.router.workers.lastLoad(w)?.waiting ?? -1) === waiting));
}

async function post(c: Ctx, objective: string | undefined, marker: number, extra: Record<string, string> = {}) {
  const res = await request(`${c.router.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(objective ? { 'x-llm-d-inference-objective': objective } : {}), ...extra },
    body: JSON.stringify({ model: 'stub-model', prompt: tokens(8, marker), max_tokens: 4 }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: JSON.parse(text) as { error?: { code?: number; kvg_code?: string; param?: string | null } } };
}

async function metric(c: Ctx, name: string): Promise<{ labels: Record<string, string | number>; value: number }[]> {
  return ((await c.router.metrics.registry.getSingleMetric(name)?.get())?.values ?? []) as never;
}

const depth = async (c: Ctx) => (await metric(c, 'kvgate_router_queue_depth')).reduce((n, v) => n + v.value, 0);
const seenMarkers = (c: Ctx) => c.engines.flatMap((e) => e.seen.map((s) => (s.body.prompt as number[])[0]));

test('sheddable → 429 with Retry-After and x-kvgate-shed; queued requests served high priority first once a worker has room', async () => {
  const c = await setup({ objectives: { batch: -1, chat: 10, normal: 0 }, flow: { maxWaitMs: 20_000 } });
  try {
    await saturate(c);
    const shed = await post(c, 'batch', 100);
    assert.is(shed.status, 429);
    assert.is(shed.headers['retry-after'], '1');
    assert.is(shed.headers['x-kvgate-shed'], 'sheddable');
    assert.is(shed.json.error?.kvg_code, 'KVG_OVERLOADED');
    // two wait: the normal one first, then the chat one
    const low = post(c, 'normal', 200);
    for (let i = 0; i < 1000 && (await depth(c)) < 1; i++) await new Promise((r) => setTimeout(r, 5));
    const high = post(c, 'chat', 300);
    for (let i = 0; i < 1000 && (await depth(c)) < 2; i++) await new Promise((r) => setTimeout(r, 5));
    assert.is(await depth(c), 2);
    assert.equal(seenMarkers(c), [], 'nothing proxied while the pool is saturated');
    publishLoad(c.bus, { worker: 'w0', waiting: 0 }, c.ns);
    const [h, l] = await Promise.all([high, low]);
    assert.is(h.status, 200);
    assert.is(l.status, 200);
    const seen = seenMarkers(c);
    assert.equal(seen, [tokens(8, 300)[0], tokens(8, 200)[0]], 'the chat request (queued second) reached an engine first');
    const shedCount = (await metric(c, 'kvgate_router_shed_total')).find((v) => v.labels.edge === 'http' && v.labels.reason === 'sheddable');
    assert.is(shedCount?.value, 1);
    assert.is(await depth(c), 0);
  } finally {
    await teardown(c);
  }
});

test('the band full → 429 queue-full; a wait past the deadline → 503 KVG_QUEUE_TIMEOUT; unknown objectives are priority 0', async () => {
  const c = await setup({ objectives: { chat: 10 }, flow: { maxQueue: 1, maxWaitMs: 300 } });
  try {
    await saturate(c);
    const first = post(c, 'no-such-objective', 400); // priority 0: waits
    for (let i = 0; i < 1000 && (await depth(c)) < 1; i++) await new Promise((r) => setTimeout(r, 5));
    const full = await post(c, undefined, 500); // priority 0 too: the band holds one
    assert.is(full.status, 429);
    assert.is(full.headers['x-kvgate-shed'], 'queue-full');
    const expired = await first;
    assert.is(expired.status, 503);
    assert.is(expired.json.error?.kvg_code, 'KVG_QUEUE_TIMEOUT');
    assert.is(expired.headers['x-kvgate-shed'], 'queue-timeout');
    assert.ok(expired.headers['retry-after']);
    assert.equal(seenMarkers(c), []);
    const reasons = (await metric(c, 'kvgate_router_shed_total')).filter((v) => v.labels.edge === 'http').map((v) => `${v.labels.priority}/${v.labels.reason}=${v.value}`).sort();
    assert.equal(reasons, ['0/queue-full=1', '0/queue-timeout=1']);
    // room again: served at once
    await saturate(c, 0);
    assert.is((await post(c, 'chat', 600)).status, 200);
  } finally {
    await teardown(c);
  }
});

test('closing the router refuses a queued request with 503 KVG_SHUTTING_DOWN (not a queue timeout)', async () => {
  const c = await setup({ flow: { maxWaitMs: 20_000 } });
  let closed = false;
  try {
    await saturate(c);
    const queued = post(c, undefined, 700);
    for (let i = 0; i < 1000 && (await depth(c)) < 1; i++) await new Promise((r) => setTimeout(r, 5));
    assert.is(await depth(c), 1);
    const closing = c.router.close({ drainMs: 2000 });
    const r = await queued;
    assert.is(r.status, 503);
    assert.is(r.json.error?.kvg_code, 'KVG_SHUTTING_DOWN');
    assert.is(r.headers['x-kvgate-shed'], 'shutting-down');
    await closing;
    closed = true;
  } finally {
    if (!closed) await c.router.close();
    for (const e of c.engines) await e.close();
    await c.bus.close();
  }
});

test.run();
