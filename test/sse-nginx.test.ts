/**
 * SSE behind a real nginx with its defaults (bench/peers.ts `plain`: a bare `proxy_pass`, so HTTP/1.0 upstream and
 * `proxy_buffering on`; nginx then passes a proxied body on a 4 KiB buffer at a time): the router's and the shim front's streams carry
 * `X-Accel-Buffering: no` and `Cache-Control: no-cache`, so nginx passes each event on as it comes.
 *
 *   lock-step   a stub engine writes event i+1 only after the client behind nginx has received event i: through
 *               the router and through the shim front every step completes; straight to the stub (which sends no
 *               X-Accel-Buffering, as engines do not) the first event never reaches the client while the stream
 *               is open: nginx holds it in its buffer. That is the same proxy failing without the header.
 *   pace        the sim engine streams 40 tokens at ~15 ms a token: behind nginx → router they arrive in about as
 *               many reads as there are events (spread at the engine's pace); behind nginx → engine in a few bursts.
 *               (Counts of arrivals, not times: the machine is shared.)
 * nginx comes from the Debian package (nginx-light, installed with apt-get when missing, bench/peers.ts); a machine
 * where it cannot be had skips the suite with a note.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { initHashing, MemoryBus } from '@kvgate/protocol';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startRouter, type RouterHandle } from '../packages/router/src/index.js';
import { HttpFront } from '../packages/worker-shim/src/http.js';
import { createMetrics } from '../packages/worker-shim/src/metrics.js';
import { register, registration, StubEngine, tokens, until } from '../packages/router/test/helpers.js';
import { startPeer, type Peer } from '../bench/peers.js';

await initHashing();

interface Arrivals {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** events per read, in order */
  reads: number[];
  events: string[];
  done: Promise<void>;
}

/** POST a streaming completion and collect the events as they arrive, one entry in `reads` per body chunk read */
async function stream(url: string, body: Record<string, unknown>): Promise<Arrivals> {
  const res = await request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ stream: true, ...body }) });
  const out: Arrivals = { status: res.statusCode, headers: res.headers, reads: [], events: [], done: Promise.resolve() };
  let buf = '';
  const done = (async () => {
    for await (const chunk of res.body) {
      buf += (chunk as Buffer).toString('utf8');
      let n = 0;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        out.events.push(buf.slice(0, i).replace(/^data: /, ''));
        buf = buf.slice(i + 2);
        n++;
      }
      if (n > 0) out.reads.push(n);
    }
  })();
  done.catch(() => undefined); // awaited by the test; a stream cut after a failed assertion must not crash the suite
  out.done = done;
  return out;
}

const progress = (m: string) => console.log(`[sse-nginx] ${m}`);

const bus = new MemoryBus();
const stub = await new StubEngine('stub').listen();
stub.gated = true;
stub.chunks = 8;
await register(bus, registration('w-stub', stub.url));
const router = await startRouter(bus, { port: 0, indexTimeoutMs: 50, registryTtlMs: 0 });
await router.waitForWorkers(1);
const shim = new HttpFront({ worker: 'w-shim', role: 'both', engineUrl: stub.url, maxBodyBytes: 1 << 20, metrics: createMetrics('w-shim'), health: () => ({ ok: true }) });
const shimUrl = await shim.listen(0, '127.0.0.1');

const peers: Peer[] = [];
let skipped: string | undefined;
async function nginxIn(front: string): Promise<string> {
  const p = await startPeer('nginx', [front], progress, { plain: true });
  if ('skipped' in p) throw new Error(p.skipped);
  peers.push(p);
  return p.url;
}
let viaRouter = '', viaShim = '', direct = '';
try {
  viaRouter = await nginxIn(router.url);
  viaShim = await nginxIn(shimUrl);
  direct = await nginxIn(stub.url);
} catch (e) {
  skipped = (e as Error).message;
  console.log(`[sse-nginx] SKIP: nginx not available: ${skipped}`);
}

/** the stub writes its first event at once and each next one at release(): release only after the client has the last */
async function lockStep(url: string) {
  const s = await stream(url, { model: 'stub-model', prompt: tokens(8), max_tokens: 8 });
  assert.is(s.status, 200);
  for (let i = 1; i <= stub.chunks; i++) {
    await until(() => s.events.length >= i, 5000, `event ${i} of ${stub.chunks} through ${url} (nginx held it: buffered)`);
    stub.release();
  }
  await s.done;
  return s;
}

/** the router's (or shim front's) own response headers, straight (nginx consumes X-Accel-* and does not pass it on) */
async function ownHeaders(url: string) {
  const s = await stream(url, { model: 'stub-model', prompt: tokens(8), max_tokens: 8 });
  while (stub.open > 0 || s.events.at(-1) !== '[DONE]') {
    stub.release();
    await new Promise((r) => setTimeout(r, 5));
  }
  await s.done;
  return s.headers;
}

test('router: SSE headers on its stream; behind nginx every event passes before the next is written', async () => {
  if (skipped) return;
  const h = await ownHeaders(router.url);
  assert.is(h['x-accel-buffering'], 'no');
  assert.is(h['cache-control'], 'no-cache');
  const s = await lockStep(viaRouter);
  assert.is(s.events.length, stub.chunks + 1); // + [DONE]
  assert.is(s.events.at(-1), '[DONE]');
});

test('shim front: the same', async () => {
  if (skipped) return;
  const h = await ownHeaders(shimUrl);
  assert.is(h['x-accel-buffering'], 'no');
  assert.is(h['cache-control'], 'no-cache');
  const s = await lockStep(viaShim);
  assert.is(s.events.length, stub.chunks + 1);
});

test('without the header (nginx straight to the stub engine): nothing reaches the client while the stream is open', async () => {
  if (skipped) return;
  let got: Arrivals | undefined;
  const pending = stream(direct, { model: 'stub-model', prompt: tokens(8), max_tokens: 8 }).then((a) => (got = a));
  pending.catch(() => undefined);
  // the stub wrote its head and first event at once; give nginx ample time to pass them (it will not: buffering)
  await until(() => stub.open === 1, 5000, 'the stub stream open');
  await new Promise((r) => setTimeout(r, 500));
  assert.is(got, undefined, 'nginx passed the response on before its buffer filled or the stream ended: buffering off?');
  while (stub.open > 0) {
    stub.release();
    await new Promise((r) => setTimeout(r, 5));
  }
  const s = await pending;
  await s.done;
  assert.is(s.headers['x-accel-buffering'], undefined);
  assert.is(s.events.length, stub.chunks + 1);
  assert.ok(s.reads.length <= 2, `${s.reads.length} reads: ${s.reads.join('/')}`);
});

test('sim engine pace: through nginx → router the events arrive one by one; nginx → engine in bursts', async () => {
  if (skipped) return;
  const engine = await startSimEngine({ model: 'sim-model', blockSize: 16, numBlocks: 512, speedup: 1, timing: { decodeR: 15 }, kvEventsEndpoint: null, kvReplayEndpoint: null });
  const b2 = new MemoryBus();
  let r2: RouterHandle | undefined;
  try {
    await register(b2, registration('w-sim', engine.url, { model: 'sim-model', blockSize: 16 }));
    r2 = await startRouter(b2, { port: 0, indexTimeoutMs: 50, registryTtlMs: 0 });
    await r2.waitForWorkers(1);
    const viaR = await nginxIn(r2.url);
    const viaE = await nginxIn(engine.url);
    const N = 40;
    const body = { model: 'sim-model', prompt: tokens(32, 100), max_tokens: N, ignore_eos: true };
    const a = await stream(viaR, body);
    await a.done;
    const b = await stream(viaE, body);
    await b.done;
    console.log(`[sse-nginx] ${N} tokens at ~15 ms: nginx → router ${a.reads.length} reads (max ${Math.max(...a.reads)} events in one); nginx → engine ${b.reads.length} reads (${b.reads.join('/')})`);
    assert.is(a.events.at(-1), '[DONE]');
    assert.is(a.events.length, b.events.length);
    assert.ok(a.reads.length >= N / 2, `through the router: ${a.reads.length} reads for ${a.events.length} events (${a.reads.join('/')})`);
    assert.ok(b.reads.length <= N / 4, `straight to the engine: ${b.reads.length} reads (${b.reads.join('/')}): not buffered?`);
  } finally {
    await r2?.close();
    await engine.close();
    await b2.close();
  }
});

test.after(async () => {
  for (const p of peers) await p.stop();
  await router.close();
  await shim.close();
  await stub.close();
  await bus.close();
});

test.run();
