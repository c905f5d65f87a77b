/**
 * The router over real sockets, on both buses: stub engines behind it, registrations in the workers bucket,
 * a fake index. (test/e2e covers the whole stack with simulated engines, shims and the real indexer.)
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { initHashing, prefixHashes, subjects, decisionStreamConfig, decode, encode, toRouteDecision, type Bus, type EventBatch, type MatchReply, type RouteDecision } from '@kvgate/protocol';
import { startIndexer } from '@kvgate/indexer';
import { startRouter, type RouterHandle, type RouterOptions } from '../src/router.js';
import { fakeIndex, MEMORY, NATS, publishLoad, register, registration, stopNats, StubEngine, tokens, until, type BusKind, deregister } from './helpers.js';

await initHashing();
let nsCounter = 0;

interface Ctx {
  bus: Bus;
  done(): Promise<void>;
  ns: string;
  engines: StubEngine[];
  routers: RouterHandle[];
}

/** the headers the running test's clients send (its bus kind's: over NATS the routers require an API key) */
let authHeaders: Record<string, string> = {};

async function setup(kind: BusKind, n: number, routerOpts: RouterOptions = {}, routers = 1): Promise<Ctx> {
  authHeaders = kind.headers ?? {};
  const { bus, done } = await kind.make();
  const ns = `t${process.pid}_${++nsCounter}`;
  const engines = await Promise.all(Array.from({ length: n }, (_, i) => new StubEngine(`w${i}`).listen()));
  for (const e of engines) await register(bus, registration(e.name, e.url), ns);
  const rs: RouterHandle[] = [];
  for (let i = 0; i < routers; i++) {
    const r = await startRouter(bus, { port: 0, namespace: ns, id: `r${i}`, indexTimeoutMs: 200, registryTtlMs: 0, ...kind.routerAuth, ...routerOpts });
    await r.waitForWorkers(n);
    rs.push(r);
  }
  return { bus, done, ns, engines, routers: rs };
}

async function teardown(c: Ctx): Promise<void> {
  for (const r of c.routers) await r.close();
  for (const e of c.engines) await e.close();
  await c.bus.close();
  await c.done();
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await request(url, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json', ...authHeaders, ...headers } });
  const text = await res.body.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

/** The decision `requestId` was recorded under (polls the decision stream; the router records off the request path). */
async function findDecision(c: Ctx, requestId: string): Promise<RouteDecision | undefined> {
  const s = subjects(c.ns);
  const stream = await c.bus.stream(s.decisionStream, decisionStreamConfig(s));
  for (let i = 0; i < 100; i++) {
    for await (const m of stream.read()) {
      const d = toRouteDecision(decode(m.data));
      if (d.requestId === requestId) return d;
    }
    await new Promise((res) => setTimeout(res, 20));
  }
  return undefined;
}

/** Polls until `cond` holds (async conditions: index replies, HTTP answers). */
async function eventually(cond: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await cond()) return;
    await new Promise((res) => setTimeout(res, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function build(kind: BusKind) {
  const t = suite(`router over ${kind.name} bus`);

  t('routes to the worker holding the longest prefix', async () => {
    const c = await setup(kind, 3);
    const prompt = tokens(40);
    const hs = prefixHashes('stub-model', null, 4, prompt);
    const idx = fakeIndex(c.bus, new Map([['w1', new Set(hs.slice(0, 3))], ['w2', new Set(hs.slice(0, 8))]]), c.ns);
    try {
      const r = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt, max_tokens: 4 });
      assert.is(r.status, 200);
      assert.is(r.headers['x-kvgate-worker'], 'w2');
      assert.is(r.json.engine, 'w2');
      assert.is(c.engines[2]!.seen.length, 1);
      assert.equal(c.engines[2]!.seen[0]!.body.prompt, prompt, 'body forwarded unchanged');
      const route = await post(`${c.routers[0]!.url}/v1/route`, { model: 'stub-model', prompt: tokens(40, 1000) });
      assert.is(route.status, 200);
      assert.is(route.json.promptBlocks, 10);
      assert.is(route.json.candidates.length, 3);
      const pick = await post(`${c.routers[0]!.url}/v1/route`, { model: 'stub-model', prompt });
      assert.is(pick.json.worker, 'w2');
      assert.is(pick.json.candidates.find((x: any) => x.worker === 'w2').indexOverlap, 8);
      assert.is(c.engines.reduce((a, e) => a + e.seen.length, 0), 1, '/v1/route only picks');
    } finally {
      idx.unsubscribe();
      await teardown(c);
    }
  });

  t('every routed request is recorded on the decision stream, under its x-request-id', async () => {
    const c = await setup(kind, 3);
    const prompt = tokens(40, 300);
    const hs = prefixHashes('stub-model', null, 4, prompt);
    const idx = fakeIndex(c.bus, new Map([['w0', new Set(hs.slice(0, 2))], ['w1', new Set(hs.slice(0, 6))]]), c.ns);
    try {
      const r = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt, max_tokens: 2 }, { 'x-request-id': 'dbg-42' });
      assert.is(r.status, 200);
      assert.is(r.headers['x-request-id'], 'dbg-42');
      const anon = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt: tokens(8, 9000), max_tokens: 2 });
      assert.match(String(anon.headers['x-request-id']), /^[0-9a-f-]{36}$/, 'a request without an id gets one');
      const s = subjects(c.ns);
      const stream = await c.bus.stream(s.decisionStream, decisionStreamConfig(s));
      let found: RouteDecision | undefined;
      for (let i = 0; i < 50 && !found; i++) {
        for await (const m of stream.read()) {
          const d = toRouteDecision(decode(m.data));
          if (d.requestId === 'dbg-42') found = d;
        }
        if (!found) await new Promise((res) => setTimeout(res, 20));
      }
      assert.ok(found, 'decision recorded');
      assert.is(found!.chosen, 'w1');
      assert.is(found!.router, 'r0');
      assert.equal(found!.overlaps, { w0: 2, w1: 6, w2: 0 });
      assert.equal(found!.hashes, hs);
      assert.is(found!.policy, 'kv');
    } finally {
      idx.unsubscribe();
      await teardown(c);
    }
  });

  t('cache_salt: a salted prompt\'s blocks in the real indexer match the same salt only; the salt reaches the engine', async () => {
    const c = await setup(kind, 3);
    const ix = await startIndexer(c.bus, { namespace: c.ns, id: 'ix0', registryTtlMs: 0, gossipIntervalMs: 60_000 });
    try {
      await ix.whenReady();
      const prompt = tokens(40, 7000); // 10 blocks of 4
      const salted = prefixHashes('stub-model', null, 4, prompt, undefined, 'tenant-a');
      const plain = prefixHashes('stub-model', null, 4, prompt);
      // no shim: kvgate event batches straight onto the bus, as a shim would publish them
      const s = subjects(c.ns);
      const batch = (worker: string, hashes: bigint[]): EventBatch => ({ worker, seq: 1, ts: Date.now(), events: [{ t: 'stored', parent: null, hashes }] });
      c.bus.publish(s.events('w1'), encode(batch('w1', salted)));
      c.bus.publish(s.events('w2'), encode(batch('w2', plain.slice(0, 6))));
      await eventually(async () => (await ix.client.match('stub-model', null, salted)).overlaps.w1 === 10 && (await ix.client.match('stub-model', null, plain)).overlaps.w2 === 6, 'the indexer to apply both batches');
      const url = c.routers[0]!.url;
      const route = async (salt?: unknown) => {
        const r = await post(`${url}/v1/route`, { model: 'stub-model', prompt, ...(salt !== undefined ? { cache_salt: salt } : {}) });
        assert.is(r.status, 200, r.text);
        return { worker: r.json.worker as string, salted: r.json.salted === true, index: Object.fromEntries(r.json.candidates.map((x: any) => [x.worker, x.indexOverlap])), overlap: Object.fromEntries(r.json.candidates.map((x: any) => [x.worker, x.overlap])) };
      };
      const a = await route('tenant-a');
      assert.equal(a.index, { w0: 0, w1: 10, w2: 0 }, 'the salted prompt sees only the salted blocks');
      assert.is(a.worker, 'w1');
      assert.ok(a.salted);
      const u = await route();
      assert.equal(u.index, { w0: 0, w1: 0, w2: 6 }, 'the unsalted prompt is shown no hit on the salted blocks');
      assert.is(u.worker, 'w2');
      assert.not.ok(u.salted);
      assert.equal((await route('tenant-b')).index, { w0: 0, w1: 0, w2: 0 }, 'another salt matches neither');
      assert.equal((await route(null)).index, u.index, 'null is unsalted');
      // proxied: the salted request goes to the salted holder with its body (salt included) unchanged
      const body = { model: 'stub-model', prompt, cache_salt: 'tenant-a', max_tokens: 2 };
      const r = await post(`${url}/v1/completions`, body, { 'x-request-id': 'salted-1' });
      assert.is(r.status, 200);
      assert.is(r.headers['x-kvgate-worker'], 'w1');
      assert.equal(c.engines[1]!.seen[0]!.body, body);
      // the router's own prediction for w1 (it just sent the salted prompt there) is salted too
      assert.equal((await route()).overlap, { w0: 0, w1: 0, w2: 6 });
      assert.is((await route('tenant-a')).overlap.w1, 10);
      const d = await findDecision(c, 'salted-1');
      assert.ok(d, 'decision recorded');
      assert.ok(d!.salted);
      assert.equal(d!.hashes, salted);
      assert.not.match(JSON.stringify(d, (_k, v) => (typeof v === 'bigint' ? String(v) : v)), /tenant-a/, 'the salt itself is not recorded');
      // a bad salt is the client's error, on every endpoint, and reaches no engine
      const seen = c.engines.reduce((n, e) => n + e.seen.length, 0);
      for (const [path, bad] of [['/v1/completions', 42], ['/v1/route', { s: 1 }], ['/v1/completions', '']] as const) {
        const b = await post(`${url}${path}`, { model: 'stub-model', prompt, cache_salt: bad });
        assert.is(b.status, 400, `${path} ${JSON.stringify(bad)}`);
        assert.is(b.json.error.kvg_code, 'KVG_BAD_REQUEST');
        assert.match(b.json.error.message, /cache_salt/);
      }
      const chat = await post(`${url}/v1/chat/completions`, { model: 'stub-model', messages: [{ role: 'user', content: 'hi' }], cache_salt: 7 });
      assert.is(chat.status, 400);
      assert.is(chat.json.error.kvg_code, 'KVG_BAD_REQUEST');
      assert.is(c.engines.reduce((n, e) => n + e.seen.length, 0), seen);
    } finally {
      await ix.close();
      await teardown(c);
    }
  });

  t('tiers: per-tier overlaps in the index reply are weighed, shown by /v1/route and recorded', async () => {
    const c = await setup(kind, 3);
    const s = subjects(c.ns);
    // stands in for the indexer: w1 holds the whole prompt in host memory, w2 two blocks on GPU and more on disk
    const reply: MatchReply = { overlaps: { w2: 2 }, tiers: { w1: { gpu: 0, cpu: 10, disk: 10 }, w2: { gpu: 2, cpu: 2, disk: 6 } }, indexerSeq: 1 };
    const idx = c.bus.subscribe(s.indexMatch, { queue: s.indexQueue, callback: (m) => m.respond(encode(reply)) });
    const noLower = await startRouter(c.bus, { port: 0, namespace: c.ns, id: 'r-gpu-only', indexTimeoutMs: 200, registryTtlMs: 0, ...kind.routerAuth, weights: { tierWeights: { cpu: 0, disk: 0 } } });
    c.routers.push(noLower);
    await noLower.waitForWorkers(3);
    try {
      const prompt = tokens(40, 3000);
      const r = await post(`${c.routers[0]!.url}/v1/route`, { model: 'stub-model', prompt });
      assert.is(r.status, 200);
      assert.is(r.json.worker, 'w1', 'ten CPU blocks (worth 8) beat two GPU + four disk blocks (worth 3)');
      assert.equal(r.json.tiers, { w0: { gpu: 0, cpu: 0, disk: 0 }, w1: { gpu: 0, cpu: 10, disk: 10 }, w2: { gpu: 2, cpu: 2, disk: 6 } });
      assert.equal(r.json.tierWeights, { gpu: 1, cpu: 0.8, disk: 0.25 });
      const byWorker = Object.fromEntries(r.json.candidates.map((x: any) => [x.worker, x]));
      assert.is(byWorker.w1.overlap, 0);
      assert.is(byWorker.w1.cached, 8);
      assert.is(byWorker.w2.cached, 3);
      assert.equal(byWorker.w2.indexTiers, { gpu: 2, cpu: 2, disk: 6 });
      assert.is(byWorker.w0.indexTiers, undefined);
      assert.ok(byWorker.w1.score < byWorker.w0.score && byWorker.w1.score < byWorker.w2.score);
      const g = await post(`${noLower.url}/v1/route`, { model: 'stub-model', prompt });
      assert.is(g.json.worker, 'w2', 'with lower tiers worth nothing only the GPU prefix counts');
      const p = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt, max_tokens: 2 }, { 'x-request-id': 'tiered-1' });
      assert.is(p.headers['x-kvgate-worker'], 'w1');
      const d = await findDecision(c, 'tiered-1');
      assert.ok(d, 'decision recorded');
      assert.equal(d!.tiers, { w1: { gpu: 0, cpu: 10, disk: 10 }, w2: { gpu: 2, cpu: 2, disk: 6 } }, 'only workers reaching past their GPU prefix');
      assert.equal(d!.overlaps, { w0: 0, w1: 0, w2: 2 });
      assert.is(d!.salted, undefined);
    } finally {
      idx.unsubscribe();
      await teardown(c);
    }
  });

  t('a burst of identical prompts sticks to one worker before the index knows', async () => {
    const c = await setup(kind, 4);
    const idx = fakeIndex(c.bus, new Map(), c.ns);
    try {
      const prompt = tokens(64, 5000);
      const workers = new Set<string>();
      for (let i = 0; i < 6; i++) workers.add((await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt })).headers['x-kvgate-worker'] as string);
      assert.is(workers.size, 1, [...workers].join(','));
    } finally {
      idx.unsubscribe();
      await teardown(c);
    }
  });

  t('two replicas share in-flight load: a shared prefix does not pile onto its holder', async () => {
    // Every prompt is a 64-block prefix the index places on w0, then 8 distinct blocks. Responses are held open,
    // so only in-flight accounting tells a router that w0 is filling up: one router sends w0 about 5 (its
    // 64-block head start is worth five 8-block prefills plus their decode load), then spreads. Two routers that
    // do not share their in-flight load would each do that.
    const counts = async (flushMs: number) => {
      const c = await setup(kind, 4, { flushMs, weights: { uncachedWeight: 1, prefillWeight: 1, decodeWeight: 0.1 } }, 2);
      const shared = tokens(256, 90_000);
      const holds = new Map([['w0', new Set(prefixHashes('stub-model', null, 4, shared))]]);
      const idx = fakeIndex(c.bus, holds, c.ns);
      for (const e of c.engines) e.hold = true;
      const pending: Promise<unknown>[] = [];
      try {
        for (let i = 0; i < 16; i++) {
          const r = c.routers[i % 2]!;
          pending.push(post(`${r.url}/v1/completions`, { model: 'stub-model', prompt: [...shared, ...tokens(32, i * 1000)], max_tokens: 1 }));
          await until(() => c.engines.reduce((a, e) => a + e.seen.length, 0) === i + 1, 5000, 'request to land');
          await new Promise((res) => setTimeout(res, 25));
        }
        const out = c.engines.map((e) => e.seen.length);
        for (const e of c.engines) {
          e.hold = false;
          e.release();
        }
        await Promise.all(pending);
        return out;
      } finally {
        idx.unsubscribe();
        await teardown(c);
      }
    };
    const shared = await counts(5);
    const isolated = await counts(60_000); // peers never hear of each other's load
    if (process.env.KVGATE_TEST_VERBOSE) console.log(`# shared ${shared} isolated ${isolated}`);
    assert.ok(shared[0]! <= 8, `shared: ${shared}`);
    assert.ok(isolated[0]! >= shared[0]! + 2, `shared ${shared} vs isolated ${isolated}`);
  });

  t('index down: load-only routing still answers', async () => {
    const c = await setup(kind, 2, { indexTimeoutMs: 5 });
    try {
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) {
        const r = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt: tokens(16, i * 100) });
        assert.is(r.status, 200);
        seen.add(r.headers['x-kvgate-worker'] as string);
      }
      assert.ok(c.routers[0]!.stats().indexFallbacks >= 6);
      const m = await request(`${c.routers[0]!.url}/metrics`);
      assert.match(await m.body.text(), /kvgate_router_index_fallback_total\{router="r0"\} [1-9]/);
    } finally {
      await teardown(c);
    }
  });

  t('SSE arrives chunk by chunk; x-kvgate-worker on the stream', async () => {
    const c = await setup(kind, 1);
    const e = c.engines[0]!;
    e.gated = true;
    e.chunks = 3;
    try {
      const res = await request(`${c.routers[0]!.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...authHeaders },
        body: JSON.stringify({ model: 'stub-model', prompt: tokens(8), stream: true }),
      });
      assert.is(res.statusCode, 200);
      assert.is(res.headers['x-kvgate-worker'], 'w0');
      assert.match(String(res.headers['content-type']), /text\/event-stream/);
      const it = res.body[Symbol.asyncIterator]();
      let text = '';
      const next = async () => {
        const r = await it.next();
        if (!r.done) text += Buffer.from(r.value).toString();
        return r.done;
      };
      await next();
      assert.match(text, /"t0"/);
      assert.not.match(text, /"t1"/, 'second chunk not sent yet, so it cannot have arrived');
      e.release();
      while (!/"t1"/.test(text)) await next();
      assert.not.match(text, /"t2"/);
      e.release();
      while (!(await next()));
      assert.match(text, /"t2"[\s\S]*\[DONE\]/);
    } finally {
      await teardown(c);
    }
  });

  t('client disconnect cancels the upstream request and frees its load', async () => {
    const c = await setup(kind, 1);
    const e = c.engines[0]!;
    e.gated = true;
    e.chunks = 5;
    try {
      const ac = new AbortController();
      const res = await request(`${c.routers[0]!.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...authHeaders },
        body: JSON.stringify({ model: 'stub-model', prompt: tokens(8), stream: true }),
        signal: ac.signal,
      });
      const it = res.body[Symbol.asyncIterator]();
      await it.next();
      assert.ok(c.routers[0]!.inflight.local('w0').decodeBlocks > 0);
      ac.abort();
      await until(() => e.cancelled === 1, 5000, 'upstream cancel');
      await until(() => c.routers[0]!.inflight.local('w0').decodeBlocks === 0, 5000, 'load released');
    } finally {
      await teardown(c);
    }
  });

  t('OpenAI-shaped errors: bad JSON, oversized body, unknown model, no worker, unknown path', async () => {
    const c = await setup(kind, 1, { bodyLimitBytes: 1024 });
    const url = c.routers[0]!.url;
    try {
      const shape = (r: { json: any }, code: string) => {
        assert.type(r.json?.error?.message, 'string');
        assert.type(r.json.error.type, 'string');
        assert.is(r.json.error.kvg_code, code);
        assert.not.match(JSON.stringify(r.json), /at .*\.ts:\d+/, 'no stack');
      };
      const badJson = await post(`${url}/v1/completions`, '{"model": ');
      assert.is(badJson.status, 400);
      shape(badJson, 'KVG_BAD_JSON');
      const big = await post(`${url}/v1/completions`, { model: 'stub-model', prompt: 'x'.repeat(5000) });
      assert.is(big.status, 413);
      shape(big, 'KVG_BODY_TOO_LARGE');
      const unknown = await post(`${url}/v1/chat/completions`, { model: 'nope', messages: [{ role: 'user', content: 'hi' }] });
      assert.is(unknown.status, 404);
      shape(unknown, 'KVG_UNKNOWN_MODEL');
      const invalid = await post(`${url}/v1/completions`, { model: 'stub-model' });
      assert.is(invalid.status, 400);
      shape(invalid, 'KVG_BAD_REQUEST');
      const path = await request(`${url}/v2/nothing`, { headers: authHeaders });
      assert.is(path.statusCode, 404);
      shape({ json: await path.body.json() }, 'KVG_NOT_FOUND');
      // the only worker leaves the registry → no live worker
      const r = c.routers[0]!;
      await deregister(c.bus, 'w0', c.ns);
      await until(() => r.workers.all().length === 0, 5000, 'deregistration');
      await register(c.bus, registration('w1', 'http://127.0.0.1:1', { model: 'other' }), c.ns);
      await until(() => r.workers.all().length === 1, 5000, 'registration');
      const none = await post(`${url}/v1/completions`, { model: 'other', prompt: 'hi' });
      await deregister(c.bus, 'w1', c.ns);
      await until(() => r.workers.all().length === 0, 5000, 'deregistration');
      assert.is(none.status, 502, 'a registered worker whose engine is down (the only one): upstream error');
      shape(none, 'KVG_UPSTREAM');
      const gone = await post(`${url}/v1/completions`, { model: 'stub-model', prompt: 'hi' });
      assert.is(gone.status, 503, 'every worker of a known model left');
      shape(gone, 'KVG_NO_WORKER');
      const stale = r;
      const ready = await request(`${stale.url}/readyz`);
      assert.is(ready.statusCode, 503);
      await ready.body.dump();
    } finally {
      await teardown(c);
    }
  });

  t('upstream failure before the first byte retries on another worker', async () => {
    const c = await setup(kind, 2);
    try {
      await c.engines[0]!.close(); // w0 registered but its port is closed
      c.engines[1]!.status = 200;
      for (let i = 0; i < 4; i++) {
        const r = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt: tokens(8, i * 50) });
        assert.is(r.status, 200);
        assert.is(r.headers['x-kvgate-worker'], 'w1');
      }
      c.engines[1]!.status = 503;
      const r = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'stub-model', prompt: tokens(8) });
      assert.is(r.status, 502);
      assert.is(r.json.error.kvg_code, 'KVG_UPSTREAM');
      assert.ok(c.routers[0]!.stats().retries >= 1);
    } finally {
      await teardown(c);
    }
  });

  t('models, health, readiness, deregistration', async () => {
    const c = await setup(kind, 2);
    try {
      await register(c.bus, registration('w9', c.engines[0]!.url, { model: 'other', loras: ['sql-lora'] }), c.ns);
      await until(() => c.routers[0]!.workers.models().length === 3, 5000, 'registration');
      const models = (await (await request(`${c.routers[0]!.url}/v1/models`, { headers: authHeaders })).body.json()) as any;
      assert.equal(models.data.map((m: any) => m.id).sort(), ['other', 'sql-lora', 'stub-model']);
      const lora = await post(`${c.routers[0]!.url}/v1/completions`, { model: 'sql-lora', prompt: tokens(8) });
      assert.is(lora.headers['x-kvgate-worker'], 'w9');
      assert.is((await request(`${c.routers[0]!.url}/healthz`)).statusCode, 200);
      const ready = await request(`${c.routers[0]!.url}/readyz`);
      assert.is(ready.statusCode, 200);
      await ready.body.dump();
      await deregister(c.bus, 'w9', c.ns);
      await until(() => c.routers[0]!.workers.models().length === 1, 5000, 'deregistration');
    } finally {
      await teardown(c);
    }
  });

  t('P/D: prefill by overlap, decode by load; the decode shim is told the prefill engine', async () => {
    authHeaders = kind.headers ?? {};
    const { bus, done } = await kind.make();
    const ns = `t${process.pid}_${++nsCounter}`;
    const engines = await Promise.all(['p0', 'p1', 'd0'].map((n) => new StubEngine(n).listen()));
    const [p0, p1, d0] = engines as [StubEngine, StubEngine, StubEngine];
    await register(bus, registration('p0', p0.url, { role: 'prefill' }), ns);
    await register(bus, registration('p1', p1.url, { role: 'prefill', engineUrl: 'http://10.1.2.3:8100' }), ns);
    await register(bus, registration('d0', d0.url, { role: 'decode' }), ns);
    const prompt = tokens(32);
    const idx = fakeIndex(bus, new Map([['p1', new Set(prefixHashes('stub-model', null, 4, prompt))]]), ns);
    const r = await startRouter(bus, { port: 0, namespace: ns, indexTimeoutMs: 200, registryTtlMs: 0, pdMinPrefillTokens: 0, ...kind.routerAuth });
    try {
      await r.waitForWorkers(3);
      const res = await post(`${r.url}/v1/completions`, { model: 'stub-model', prompt });
      assert.is(res.status, 200);
      assert.is(res.headers['x-kvgate-worker'], 'd0');
      assert.is(res.headers['x-kvgate-prefill'], 'p1');
      assert.is(d0.seen[0]!.headers['x-prefiller-host-port'], '10.1.2.3:8100');
    } finally {
      idx.unsubscribe();
      await r.close();
      for (const e of engines) await e.close();
      await bus.close();
      await done();
    }
  });

  return t;
}

build(MEMORY).run();
const nats = build(NATS);
nats.after(stopNats);
nats.run();
