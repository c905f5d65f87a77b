/**
 * The router through faults, over real sockets: a nats-server killed and restarted under load, a registry watch
 * that breaks, a registration lapsing on a live bus, engines that refuse connections or answer 5xx (passive
 * health: suspect, back-off, probe, shared with a peer router), and load reports saying `healthy: false`.
 * Upstream hits are counted at the stub engines; nothing here asserts on speed.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { encode, initHashing, prefixHashes, subjects, type Bus, type KvConfig, type KvStore, type KvWatcher, type KvEntry } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startRouter, type RouterHandle, type RouterOptions } from '../src/router.js';
import { fakeIndex, MEMORY, NATS, publishLoad, register, registration, stopNats, StubEngine, tokens, until, type BusKind } from './helpers.js';
import { startNatsServer, stablePort } from '../../../test/harness/nats-server.js';

await initHashing();
let nsCounter = 0;
const nsName = () => `f${process.pid}_${++nsCounter}`;

/** the headers the running test's clients send (over NATS the routers require an API key: auth on, issue 13) */
let authHeaders: Record<string, string> = {};

async function post(url: string, body: unknown) {
  const res = await request(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...authHeaders } });
  const text = await res.body.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, json };
}

async function metricsText(r: RouterHandle): Promise<string> {
  return (await request(`${r.url}/metrics`)).body.text();
}

async function readyz(r: RouterHandle): Promise<{ status: number; json: any }> {
  const res = await request(`${r.url}/readyz`);
  return { status: res.statusCode, json: await res.body.json() };
}

const loadWithHealth = (bus: Bus, worker: string, healthy: boolean | undefined, ns: string) =>
  publishLoad(bus, { worker, ...(healthy === undefined ? {} : { healthy }) } as Parameters<typeof publishLoad>[1], ns);

/** A stub engine that can stop listening (connections refused) and listen again on the same port. */
class Flaky {
  readonly engine: StubEngine;
  readonly port: number;
  constructor(engine: StubEngine, port: number) {
    this.engine = engine;
    this.port = port;
  }
  static async make(name: string): Promise<Flaky> {
    const port = await stablePort();
    return new Flaky(new StubEngine(name), port);
  }
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  async up(): Promise<void> {
    await this.engine.listenOn(this.port);
  }
  async down(): Promise<void> {
    await this.engine.close();
  }
  async close(): Promise<void> {
    await this.engine.close().catch(() => undefined);
  }
}

// ---- a nats-server killed and restarted while requests flow -----------------------------------------------------
const outage = suite('router through a nats-server kill and restart');

outage('keeps answering 200 through the outage (by load while the index is away), keeps its workers, resumes the index after', async () => {
  // auth on (issue 13): nats-server requires a password, the router an API key, and signs upstream calls
  const nats = await startNatsServer({ auth: 'password' });
  authHeaders = NATS.headers!;
  const ns = nsName();
  const s = subjects(ns);
  const ttlMs = 1000;
  const shimBus = await createBus({ nats: nats.url, ...nats.auth });
  const routerBus = await createBus({ nats: nats.url, ...nats.auth });
  const engines = await Promise.all(['w0', 'w1'].map((n) => new StubEngine(n).listen()));
  const prompt = tokens(40, 7000);
  const idx = fakeIndex(shimBus, new Map([['w0', new Set(prefixHashes('stub-model', null, 4, prompt))]]), ns);
  // two fake shims: re-put the registration and report load, as worker-shim does (puts fail while NATS is down)
  const kv = await shimBus.kv(s.workersBucket, { ttlMs });
  const beat = () => {
    for (const e of engines) {
      kv.put(e.name, encode(registration(e.name, e.url))).catch(() => undefined);
      loadWithHealth(shimBus, e.name, true, ns);
    }
  };
  beat();
  const shimTimer = setInterval(beat, 250);
  const r = await startRouter(routerBus, { port: 0, namespace: ns, id: 'r-outage', indexTimeoutMs: 200, registryTtlMs: ttlMs, ...NATS.routerAuth });
  const statuses: { status: number; phase: string; code?: string }[] = [];
  let phase = 'before';
  let stop = false;
  const load = (async () => {
    for (let i = 0; !stop; i++) {
      const res = await post(`${r.url}/v1/completions`, { model: 'stub-model', prompt: i % 2 === 0 ? prompt : tokens(40, 100 * i), max_tokens: 2 });
      statuses.push({ status: res.status, phase, ...(res.json?.error?.kvg_code ? { code: res.json.error.kvg_code } : {}) });
      await new Promise((res) => setTimeout(res, 20));
    }
  })();
  try {
    await r.waitForWorkers(2);
    await until(() => statuses.filter((x) => x.phase === 'before').length >= 10, 10_000, 'requests before the outage');
    const routed = await post(`${r.url}/v1/route`, { model: 'stub-model', prompt });
    assert.ok(routed.json.indexAnswered, 'the index answers before the outage');
    assert.is(routed.json.worker, 'w0');
    const fallbacksBefore = r.stats().indexFallbacks;

    await nats.kill();
    phase = 'outage';
    // the watcher's own clock lapses both registrations (nothing can re-put them): held, not dropped
    await until(() => r.registryHold.held().length === 2, 10_000, 'both registrations lapsed');
    await until(() => !r.registryHold.busUp(), 10_000, 'the router notices the silence');
    const during = await readyz(r);
    assert.is(during.status, 200, 'still ready: the last-known view serves');
    assert.is(during.json.liveWorkers, 2);
    assert.is(during.json.busUp, false);
    assert.equal([...during.json.heldWorkers].sort(), ['w0', 'w1']);
    // longer than TTL + the hold's confirmation: a router that dropped lapsed workers would answer 503 by now
    const outageStart = statuses.length;
    await until(() => statuses.length >= outageStart + 15 && r.registryHold.silentMs() > ttlMs + r.registryHold.confirmMs, 30_000, 'requests during the outage');
    assert.is(r.workers.all().length, 2, 'no worker dropped during the outage');
    assert.ok(r.stats().indexFallbacks > fallbacksBefore, 'routed by load while the index could not answer');
    const outageRoute = await post(`${r.url}/v1/route`, { model: 'stub-model', prompt });
    assert.is(outageRoute.status, 200);
    assert.is(outageRoute.json.indexAnswered, false);

    await nats.start();
    phase = 'after';
    await until(() => r.registryHold.busUp() && r.registryHold.held().length === 0, 20_000, 'registrations renewed after the restart');
    for (let i = 0; ; i++) {
      const again = await post(`${r.url}/v1/route`, { model: 'stub-model', prompt });
      if (again.json?.indexAnswered) {
        assert.is(again.json.worker, 'w0', 'the index routes by cache again');
        break;
      }
      if (i > 500) assert.unreachable('the index never answered again');
      await new Promise((res) => setTimeout(res, 20));
    }
    const afterStart = statuses.length;
    await until(() => statuses.length >= afterStart + 10, 10_000, 'requests after the restart');
    stop = true;
    await load;
    const bad = statuses.filter((x) => x.status !== 200);
    assert.equal(bad, [], 'every request answered 200');
    assert.ok(statuses.filter((x) => x.phase === 'outage').length >= 15, 'requests flowed during the outage');
    assert.ok(engines.every((e) => e.seen.length > 0));
    assert.is(r.workers.all().length, 2);
  } finally {
    stop = true;
    await load.catch(() => undefined);
    clearInterval(shimTimer);
    idx.unsubscribe();
    await r.close();
    for (const e of engines) await e.close();
    await routerBus.close();
    await shimBus.close();
    await nats.stop();
  }
});

outage.run();

// ---- the registry watch breaks; a registration lapses on a live bus ---------------------------------------------
/** A MemoryBus whose workers-bucket watches can be broken from the test (they throw, as a watch whose consumer died). */
async function breakableBus(): Promise<{ bus: Bus; watches: () => number; breakWatch: () => void }> {
  const inner = await createBus();
  const live: Array<() => void> = [];
  let watches = 0;
  const wrapKv = (kv: KvStore): KvStore => ({
    bucket: kv.bucket,
    put: (k, v) => kv.put(k, v),
    get: (k) => kv.get(k),
    delete: (k) => kv.delete(k),
    keys: () => kv.keys(),
    watch(opts?: { newOnly?: boolean }): KvWatcher {
      watches++;
      const w = kv.watch(opts);
      let fail!: (e: Error) => void;
      const broken = new Promise<never>((_, rej) => (fail = rej));
      broken.catch(() => undefined);
      live.push(() => {
        fail(new Error('watch consumer lost (test)'));
        w.stop();
      });
      return {
        stop: () => w.stop(),
        async *[Symbol.asyncIterator](): AsyncGenerator<KvEntry> {
          const it = w[Symbol.asyncIterator]();
          for (;;) {
            const r = await Promise.race([it.next(), broken]);
            if (r.done) return;
            yield r.value;
          }
        },
      };
    },
  });
  const bus: Bus = {
    kind: inner.kind,
    publish: (s, d) => inner.publish(s, d),
    subscribe: (s, o) => inner.subscribe(s, o),
    request: (s, d, o) => inner.request(s, d, o),
    stream: (n, c) => inner.stream(n, c),
    kv: async (b: string, c?: KvConfig) => {
      const kv = await inner.kv(b, c);
      return b.endsWith('_workers') ? wrapKv(kv) : kv;
    },
    flush: () => inner.flush(),
    close: () => inner.close(),
  };
  return { bus, watches: () => watches, breakWatch: () => live.splice(0).forEach((f) => f()) };
}

const registry = suite('router registry: watch breaks and lapses');
registry.before.each(() => {
  authHeaders = {};
});

registry('a registry watch that breaks drops no worker; the router watches again and sees later changes', async () => {
  const { bus, watches, breakWatch } = await breakableBus();
  const ns = nsName();
  const engines = await Promise.all(['w0', 'w1', 'w2'].map((n) => new StubEngine(n).listen()));
  for (const e of engines.slice(0, 2)) await register(bus, registration(e.name, e.url), ns);
  const r = await startRouter(bus, { port: 0, namespace: ns, id: 'r-watch', indexTimeoutMs: 50, registryTtlMs: 0 });
  try {
    await r.waitForWorkers(2);
    assert.is(watches(), 1);
    breakWatch();
    for (let i = 0; i < 6; i++) {
      const res = await post(`${r.url}/v1/completions`, { model: 'stub-model', prompt: tokens(8, i * 10), max_tokens: 1 });
      assert.is(res.status, 200);
    }
    assert.equal(r.workers.all().map((w) => w.worker).sort(), ['w0', 'w1'], 'both kept through the break');
    await until(() => watches() === 2, 10_000, 'a new watch');
    await register(bus, registration('w2', engines[2]!.url), ns);
    await until(() => r.workers.all().length === 3, 5000, 'a registration after the break is seen');
    assert.equal(r.registryHold.held(), []);
    // broken again, twice: still nothing lost
    breakWatch();
    await until(() => watches() === 3, 10_000, 'watched again');
    breakWatch();
    await until(() => watches() === 4, 10_000, 'and again');
    assert.is(r.workers.all().length, 3);
    const kv = await bus.kv(subjects(ns).workersBucket, { ttlMs: 0 });
    await kv.delete('w1');
    await until(() => r.workers.all().length === 2, 5000, 'a deregistration after the breaks drops the worker at once');
    assert.not.ok(r.workers.isLive('w1'));
  } finally {
    await r.close();
    for (const e of engines) await e.close();
    await bus.close();
  }
});

registry('a registration that lapses while the bus is alive still drops its worker (after the hold confirms it)', async () => {
  const bus = await createBus();
  const ns = nsName();
  const ttlMs = 400;
  const engines = await Promise.all(['w0', 'w1'].map((n) => new StubEngine(n).listen()));
  const kv = await bus.kv(subjects(ns).workersBucket, { ttlMs });
  const keep = setInterval(() => void kv.put('w1', encode(registration('w1', engines[1]!.url))).catch(() => undefined), 100);
  await kv.put('w0', encode(registration('w0', engines[0]!.url)));
  await kv.put('w1', encode(registration('w1', engines[1]!.url)));
  const r = await startRouter(bus, { port: 0, namespace: ns, id: 'r-lapse', indexTimeoutMs: 50, registryTtlMs: ttlMs });
  try {
    await r.waitForWorkers(2);
    // w0's shim is gone: nothing re-puts it
    await until(() => r.registryHold.isHeld('w0'), 5000, 'w0 lapsed');
    assert.ok(r.workers.isLive('w0'), 'held, not dropped yet');
    await until(() => !r.workers.isLive('w0'), 15_000, 'w0 dropped');
    assert.ok(r.registryHold.busUp());
    assert.ok(r.workers.isLive('w1'), 'w1 kept by its re-puts');
    const res = await post(`${r.url}/v1/completions`, { model: 'stub-model', prompt: tokens(8), max_tokens: 1 });
    assert.is(res.headers['x-kvgate-worker'], 'w1');
  } finally {
    clearInterval(keep);
    await r.close();
    for (const e of engines) await e.close();
    await bus.close();
  }
});

registry.run();

// ---- passive health -------------------------------------------------------------------------------------------------
function health(kind: BusKind) {
  const t = suite(`router passive health over ${kind.name} bus`);

  async function rig(routerOpts: RouterOptions = {}, routers = 1) {
    authHeaders = kind.headers ?? {};
    const { bus, done } = await kind.make();
    const ns = nsName();
    const flaky = await Flaky.make('w0');
    await flaky.up();
    const good = await new StubEngine('w1').listen();
    await register(bus, registration('w0', flaky.url), ns);
    await register(bus, registration('w1', good.url), ns);
    // the index says w0 holds every prompt asked (a fresh one each time: the router's own prediction of where it
    // sent a prompt, inflight.ts, never ties another worker with w0)
    const prompts = Array.from({ length: 64 }, (_, k) => tokens(40, 500 + 1000 * k));
    const idx = fakeIndex(bus, new Map([['w0', new Set(prompts.flatMap((p) => prefixHashes('stub-model', null, 4, p)))]]), ns);
    let asked = 0;
    const rs: RouterHandle[] = [];
    for (let i = 0; i < routers; i++) {
      const r = await startRouter(bus, { port: 0, namespace: ns, id: `r${i}`, indexTimeoutMs: 500, registryTtlMs: 0, ...kind.routerAuth, ...routerOpts });
      await r.waitForWorkers(2);
      rs.push(r);
    }
    const ask = (r: RouterHandle = rs[0]!) => post(`${r.url}/v1/completions`, { model: 'stub-model', prompt: prompts[asked++ % prompts.length], max_tokens: 2 });
    return {
      bus,
      ns,
      flaky,
      good,
      routers: rs,
      ask,
      async close() {
        idx.unsubscribe();
        for (const r of rs) await r.close();
        await flaky.close();
        await good.close();
        await bus.close();
        await done();
      },
    };
  }

  t('a worker refusing connections is suspect after one failure; the next requests go to the other first; it comes back after the back-off', async () => {
    const c = await rig({ suspectBackoffMs: 1500 });
    const r = c.routers[0]!;
    try {
      const first = await c.ask();
      assert.is(first.headers['x-kvgate-worker'], 'w0', 'the holder, while healthy');
      await c.flaky.down();
      const failed = await c.ask();
      assert.is(failed.status, 200, 'retried on the other worker');
      assert.is(failed.headers['x-kvgate-worker'], 'w1');
      assert.is(r.stats().retries, 1);
      assert.ok(r.health.isSuspect('w0'));
      assert.is(r.health.backoffMs('w0'), 1500);
      assert.match(await metricsText(r), /kvgate_router_worker_suspect\{worker="w0",router="r0"\} 1/);
      assert.match(await metricsText(r), /kvgate_router_upstream_retries_total\{reason="connect",router="r0"\} 1/);
      const hitsBefore = c.good.seen.length;
      for (let i = 0; i < 5; i++) {
        const res = await c.ask();
        assert.is(res.status, 200);
        assert.is(res.headers['x-kvgate-worker'], 'w1');
      }
      assert.is(r.stats().retries, 1, 'no request tried w0 first during its back-off');
      assert.is(c.good.seen.length, hitsBefore + 5, 'each went straight to w1');
      // the back-off runs out while w0 is still down: the next request is the probe; it fails; back-off doubles
      await until(() => r.health.usable('w0'), 10_000, 'back-off over');
      const probe = await c.ask();
      assert.is(probe.status, 200);
      assert.is(probe.headers['x-kvgate-worker'], 'w1');
      assert.is(r.stats().retries, 2, 'the probe went to w0 and failed over');
      assert.is(r.health.backoffMs('w0'), 3000, 'doubled');
      // w0 is back; after its back-off it gets the next request (it holds the prompt) and is cleared
      await c.flaky.up();
      await until(() => r.health.usable('w0'), 15_000, 'back-off over again');
      const back = await c.ask();
      assert.is(back.status, 200);
      assert.is(back.headers['x-kvgate-worker'], 'w0', 'back in rotation');
      assert.not.ok(r.health.isSuspect('w0'));
      assert.match(await metricsText(r), /kvgate_router_worker_suspect\{worker="w0",router="r0"\} 0/);
      assert.is(r.stats().retries, 2);
      const ready = await readyz(r);
      assert.equal(ready.json.suspectWorkers, []);
    } finally {
      await c.close();
    }
  });

  t('a 5xx makes the worker suspect (counted at the engine); a peer router hears of it and skips the worker too', async () => {
    const c = await rig({ suspectBackoffMs: 60_000 }, 2);
    const [r0, r1] = c.routers as [RouterHandle, RouterHandle];
    try {
      c.flaky.engine.status = 503;
      const res = await c.ask(r0);
      assert.is(res.status, 200);
      assert.is(res.headers['x-kvgate-worker'], 'w1');
      assert.is(c.flaky.engine.seen.length, 1, 'one hit on the failing engine');
      assert.match(await metricsText(r0), /kvgate_router_upstream_retries_total\{reason="status",router="r0"\} 1/);
      await until(() => r1.health.isSuspect('w0'), 5000, 'the peer heard');
      assert.match(await metricsText(r1), /kvgate_router_worker_suspect\{worker="w0",router="r1"\} 1/);
      for (let i = 0; i < 4; i++) {
        for (const r of [r0, r1]) {
          const x = await c.ask(r);
          assert.is(x.status, 200);
          assert.is(x.headers['x-kvgate-worker'], 'w1');
        }
      }
      assert.is(c.flaky.engine.seen.length, 1, 'neither router sent w0 anything more');
      assert.is(r1.stats().retries, 0, 'the peer never tried it');
      // a worker answering 5xx everywhere: every engine tried once, then the upstream error
      c.good.status = 500;
      const all = await c.ask(r0);
      assert.is(all.status, 502);
      assert.is(all.json.error.kvg_code, 'KVG_UPSTREAM');
    } finally {
      await c.close();
    }
  });

  t('a load report with healthy:false takes the worker out of picks until it reports healthy again', async () => {
    const c = await rig();
    const r = c.routers[0]!;
    try {
      loadWithHealth(c.bus, 'w0', false, c.ns);
      await until(() => r.health.isUnhealthy('w0'), 5000, 'report seen');
      for (let i = 0; i < 4; i++) {
        const res = await c.ask();
        assert.is(res.status, 200);
        assert.is(res.headers['x-kvgate-worker'], 'w1');
      }
      assert.is(c.flaky.engine.seen.length, 0, 'w0 never picked, though it holds the prompt');
      assert.is(r.stats().retries, 0);
      assert.equal((await readyz(r)).json.unhealthyWorkers, ['w0']);
      assert.match(await metricsText(r), /kvgate_router_worker_unhealthy\{worker="w0",router="r0"\} 1/);
      const pick = await post(`${r.url}/v1/route`, { model: 'stub-model', prompt: tokens(40, 500 + 1000 * 63) });
      assert.is(pick.json.worker, 'w1');
      // every engine reported down, yet they answer (a report can be wrong): tried as a last resort, not a 503
      loadWithHealth(c.bus, 'w1', false, c.ns);
      await until(() => r.health.isUnhealthy('w1'), 5000, 'report seen');
      const lastResort = await c.ask();
      assert.is(lastResort.status, 200);
      assert.is(lastResort.headers['x-kvgate-worker'], 'w0', 'by overlap, as ever');
      loadWithHealth(c.bus, 'w0', true, c.ns);
      loadWithHealth(c.bus, 'w1', undefined, c.ns);
      await until(() => !r.health.isUnhealthy('w0') && !r.health.isUnhealthy('w1'), 5000, 'reports seen');
      const back = await c.ask();
      assert.is(back.headers['x-kvgate-worker'], 'w0', 'back: the holder again');
      assert.match(await metricsText(r), /kvgate_router_worker_unhealthy\{worker="w0",router="r0"\} 0/);
    } finally {
      await c.close();
    }
  });

  t('retries go through the pool until a worker answers: refused, then 503, then 200', async () => {
    authHeaders = kind.headers ?? {};
    const { bus, done } = await kind.make();
    const ns = nsName();
    const dead = await Flaky.make('a');
    const sick = await new StubEngine('b').listen();
    sick.status = 503;
    const ok = await new StubEngine('c').listen();
    await register(bus, registration('a', dead.url), ns);
    await register(bus, registration('b', sick.url), ns);
    await register(bus, registration('c', ok.url), ns);
    const prompt = tokens(40, 900);
    const hs = prefixHashes('stub-model', null, 4, prompt);
    const idx = fakeIndex(bus, new Map([['a', new Set(hs)], ['b', new Set(hs.slice(0, 5))]]), ns);
    const r = await startRouter(bus, { port: 0, namespace: ns, id: 'r-pool', indexTimeoutMs: 500, registryTtlMs: 0, ...kind.routerAuth });
    try {
      await r.waitForWorkers(3);
      const res = await post(`${r.url}/v1/completions`, { model: 'stub-model', prompt, max_tokens: 1 });
      assert.is(res.status, 200);
      assert.is(res.headers['x-kvgate-worker'], 'c');
      assert.is(sick.seen.length, 1);
      assert.is(r.stats().retries, 2);
      const m = await metricsText(r);
      assert.match(m, /kvgate_router_upstream_retries_total\{reason="connect",router="r-pool"\} 1/);
      assert.match(m, /kvgate_router_upstream_retries_total\{reason="status",router="r-pool"\} 1/);
      assert.equal(r.health.suspects().sort(), ['a', 'b']);
    } finally {
      idx.unsubscribe();
      await r.close();
      await dead.close();
      await sick.close();
      await ok.close();
      await bus.close();
      await done();
    }
  });

  return t;
}

health(MEMORY).run();
const overNats = health(NATS);
overNats.after(stopNats);
overNats.run();
