/**
 * The live dashboard (dashboard.ts) over real sockets: the page is one self-contained document (no URL but its
 * own feed); a `ws` client gets a picture at once and then one message per 250 ms tick, the ticks' decision counts
 * add up to the requests routed (each decision in exactly one tick, at most 20 sampled per tick) and the workers
 * are listed; with API keys and authHealth the page and the feed need the key.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import WebSocket from 'ws';
import { MemoryBus } from '@kvgate/protocol';
import { startRouter } from '../src/index.js';
import { register, registration, StubEngine, tokens, until } from './helpers.js';

const bus = new MemoryBus();
const stub = await new StubEngine('w1').listen();
await register(bus, registration('w1', stub.url));
const router = await startRouter(bus, { port: 0, indexTimeoutMs: 20, registryTtlMs: 0 });
await router.waitForWorkers(1);

interface Tick {
  type: string;
  workers: { worker: string; role: string; live: boolean }[];
  decisions: { count: number; perSecond: number; sample: { worker: string; requestId: string }[] };
  cache: { tick: { prompt: number }; total: { requests: number } };
  ttft: { count: number };
}

function feed(url: string): Promise<{ ws: WebSocket; ticks: Tick[] }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const ticks: Tick[] = [];
    ws.on('message', (d) => ticks.push(JSON.parse(String(d)) as Tick));
    ws.once('open', () => resolve({ ws, ticks }));
    ws.once('error', reject);
  });
}

test('GET /dashboard: one self-contained HTML page', async () => {
  const res = await request(`${router.url}/dashboard`);
  assert.is(res.statusCode, 200);
  assert.match(String(res.headers['content-type']), /^text\/html/);
  const html = await res.body.text();
  assert.match(html, /<script>/);
  assert.ok(!/https?:\/\//.test(html), 'no external URL (works offline, no CDN)');
  assert.ok(!/<script[^>]+src=|<link[^>]+href=/.test(html), 'no script or stylesheet to fetch');
  assert.match(html, /\/dashboard\/ws/);
});

test('the feed: a picture at once, then a tick each 250 ms; decision counts add up to the requests', async () => {
  const { ws, ticks } = await feed(`${router.url.replace('http', 'ws')}/dashboard/ws`);
  try {
    await until(() => ticks.length >= 1, 2000, 'the first picture');
    assert.is(ticks[0]!.type, 'tick');
    assert.equal(ticks[0]!.workers.map((w) => [w.worker, w.role, w.live]), [['w1', 'both', true]]);
    const N = 60;
    await Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const res = await request(`${router.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stub-model', prompt: tokens(8, i * 100), max_tokens: 2, stream: i % 2 === 0 }) });
        assert.is(res.statusCode, 200);
        await res.body.text();
      }),
    );
    await until(() => ticks.reduce((a, t) => a + t.decisions.count, 0) >= N, 5000, `${N} decisions shown`);
    const at = ticks.length;
    await until(() => ticks.length >= at + 2, 3000, 'ticks keep coming');
    assert.is(ticks.reduce((a, t) => a + t.decisions.count, 0), N);
    assert.ok(ticks.every((t) => t.decisions.sample.length <= 20 && t.decisions.sample.length <= t.decisions.count));
    assert.ok(ticks.some((t) => t.decisions.sample.some((d) => d.worker === 'w1')));
    assert.is(ticks.reduce((a, t) => a + t.ttft.count, 0), N / 2, 'every stream\'s TTFT in one tick');
  } finally {
    ws.close();
  }
});

test('with API keys and authHealth: the page and the feed need the key (?key= or Authorization)', async () => {
  const b2 = new MemoryBus();
  await register(b2, registration('w1', stub.url));
  const r2 = await startRouter(b2, { port: 0, indexTimeoutMs: 20, registryTtlMs: 0, apiKeys: ['k-123'], authHealth: true });
  try {
    assert.is((await request(`${r2.url}/dashboard`)).statusCode, 401);
    const ok = await request(`${r2.url}/dashboard?key=k-123`);
    assert.is(ok.statusCode, 200);
    await ok.body.dump();
    const refused = await feed(`${r2.url.replace('http', 'ws')}/dashboard/ws`).then(
      ({ ws }) => (ws.close(), 'opened'),
      (e: Error) => e.message,
    );
    assert.match(refused, /401/);
    const { ws, ticks } = await feed(`${r2.url.replace('http', 'ws')}/dashboard/ws?key=k-123`);
    await until(() => ticks.length >= 1, 2000, 'the first picture with the key');
    ws.close();
  } finally {
    await r2.close();
    await b2.close();
  }
});

test.after(async () => {
  await router.close();
  await stub.close();
  await bus.close();
});

test.run();
