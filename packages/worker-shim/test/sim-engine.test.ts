/**
 * The shim against the simulated engine over real ZMQ and HTTP, on both buses (MemoryBus, and NatsBus with
 * a real nats-server): published prefixes equal `kvgate hash` of the prompts' full blocks (tokens from the
 * engine's /tokenize), evictions become removals, a forced gap is repaired by replay, an engine restart
 * gives `cleared` then the new state, a killed shim's worker expires from the registry, and P/D requests
 * flow through a decode shim with a remote prefill.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { connectNats, decodeRegistration, encode, initHashing, MemoryBus, prefixHashes, subjects, type Bus } from '@kvgate/protocol';
import { startSimEngine, type SimEngineHandle, type SimEngineOptions } from '@kvgate/sim-engine';
import { freePort, stablePort, startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { startShim, registryKey, type ShimHandle, type ShimOptions } from '../src/index.js';
import { BusView, waitFor } from './fake-engine.js';

await initHashing();

const MODEL = 'qwen3-8b';
const B = 16;
const S = subjects('default');
let counter = 0;

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) };
}

async function tokenize(engine: SimEngineHandle, prompt: string): Promise<number[]> {
  const r = await post(`${engine.url}/tokenize`, { model: MODEL, prompt, add_special_tokens: false });
  return r.json().tokens;
}

async function complete(url: string, prompt: string, extra: Record<string, unknown> = {}) {
  const r = await post(`${url}/v1/completions`, { model: MODEL, prompt, max_tokens: 1, ...extra });
  assert.is(r.status, 200, r.text);
  return r;
}

function prompt(i: number, words = 120): string {
  return Array.from({ length: words }, (_, j) => `w${i}x${j}`).join(' ');
}

async function metric(shim: ShimHandle, name: string, label = ''): Promise<number> {
  const text = await shim.metrics.registry.getSingleMetricAsString(`kvgate_shim_${name}`);
  let total = 0;
  for (const line of text.split('\n')) if (!line.startsWith('#') && line.includes(label)) total += Number(line.trim().split(/\s+/).pop());
  return total;
}

interface Rig {
  bus: Bus;
  engine: SimEngineHandle;
  shim: ShimHandle;
  view: BusView;
  worker: string;
  close(): Promise<void>;
}

function busSuite(kind: 'memory' | 'nats') {
  const t = suite(`shim + sim-engine, ${kind} bus`);
  let nats: NatsServerHandle | undefined;
  const buses: Bus[] = [];
  const newBus = async (): Promise<Bus> => {
    const b = kind === 'memory' ? new MemoryBus() : await connectNats(nats!.url);
    buses.push(b);
    return b;
  };

  t.before(async () => {
    if (kind === 'nats') nats = await startNatsServer();
  });
  t.after(async () => {
    for (const b of buses) await b.close().catch(() => undefined);
    await nats?.stop();
  });

  async function rig(engineOpts: SimEngineOptions = {}, shimOpts: Partial<ShimOptions> = {}): Promise<Rig> {
    const bus = await newBus();
    const engine = await startSimEngine({ model: MODEL, blockSize: B, speedup: 50, ...engineOpts });
    const worker = `sim-${kind}-${++counter}`;
    const view = new BusView(bus, S.events(worker));
    const shim = await startShim(bus, {
      worker,
      model: MODEL,
      engineUrl: engine.url,
      kvEvents: engine.kvEventsEndpoint!,
      kvReplay: engine.replayEndpoint ?? undefined,
      port: 0,
      scrapeIntervalMs: 50,
      replayTimeoutMs: 2000,
      ...shimOpts,
    });
    try {
      // the SUB joins asynchronously: wait until a request's blocks show up before the test starts counting
      await waitFor(async () => {
        const p = `warm-up ${worker} ${Math.random()}`.repeat(20);
        await complete(engine.url, p);
        await shim.idle();
        return view.has(prefixHashes(MODEL, '', B, await tokenize(engine, p)));
      }, 'shim subscribed');
      // The start-up replay probe (50 ms after the SUB connects) can run late on a loaded machine, even after
      // the warm-up above: a test must not start before it has run, or it would repair a gap the test
      // makes on purpose before the gap is seen (and the gap path would go untested).
      await waitFor(async () => (await metric(shim, 'replay_probes_total')) >= 1, 'start-up replay probe done');
      await shim.idle();
    } catch (e) {
      // a rig that never became ready must not leave its shim running (its timers would hold the process open)
      await shim.stop().catch(() => undefined);
      view.close();
      await engine.close().catch(() => undefined);
      throw e;
    }
    const r: Rig = {
      bus,
      engine,
      shim,
      view,
      worker,
      async close() {
        await shim.stop();
        view.close();
        await r.engine.close(); // the restart test swaps the engine
      },
    };
    return r;
  }

  t('published prefix hashes equal kvgate hashes of the prompts\' full blocks', async () => {
    const r = await rig();
    try {
      const before = new Set(r.view.blocks);
      const shared = prompt(1, 80);
      const prompts = [shared + ' first tail words here', shared + ' second different ending', prompt(2, 50)];
      const want = new Set<bigint>();
      for (const p of prompts) {
        await complete(r.shim.url, p); // through the shim's front: plain proxying
        for (const h of prefixHashes(MODEL, '', B, await tokenize(r.engine, p))) want.add(h);
      }
      await waitFor(() => [...want].every((h) => r.view.blocks.has(h)), 'all prompt blocks');
      await r.shim.idle();
      const fresh = [...r.view.blocks].filter((h) => !before.has(h));
      // every new block is a prompt block (max_tokens 1 never completes a block of its own here, or it would chain
      // from a prompt block; either way nothing is attached to a wrong prefix)
      for (const h of fresh) assert.ok(want.has(h) || r.view.batches.some((b) => b.events.some((e) => e.t === 'stored' && e.hashes.includes(h) && e.parent !== null && want.has(e.parent))), 'unexpected block');
      assert.is(r.view.seqErrors, 0);
      assert.is(await metric(r.shim, 'unknown_parents_total'), 0);
    } finally {
      await r.close();
    }
  });

  t('eviction in the engine produces removals on the bus', async () => {
    const r = await rig({ numBlocks: 96 });
    try {
      const first = prompt(10, 40);
      await complete(r.engine.url, first);
      const firstHashes = prefixHashes(MODEL, '', B, await tokenize(r.engine, first));
      await waitFor(() => r.view.has(firstHashes), 'first prompt cached');
      for (let i = 11; i < 20; i++) await complete(r.engine.url, prompt(i, 40));
      await waitFor(() => r.view.batches.some((b) => b.events.some((e) => e.t === 'removed')), 'a removal');
      await waitFor(() => !r.view.has(firstHashes), 'first prompt evicted');
      await r.shim.idle();
      assert.ok(r.view.blocks.size <= 96, `bus view holds ${r.view.blocks.size} blocks, engine has 96`);
    } finally {
      await r.close();
    }
  });

  t('a forced gap (dropped frames) is repaired through replay', async () => {
    const r = await rig({}, { replayProbeMs: 600_000 }); // only the gap may trigger the replay here
    try {
      r.shim.dropNextFrames(2);
      const p1 = prompt(20, 60);
      const p2 = prompt(21, 60);
      const p3 = prompt(22, 60);
      for (const p of [p1, p2, p3]) await complete(r.engine.url, p);
      const want = (await Promise.all([p1, p2, p3].map((p) => tokenize(r.engine, p)))).flatMap((tk) => prefixHashes(MODEL, '', B, tk));
      await waitFor(() => r.view.has(want), 'blocks of every prompt, dropped ones included');
      assert.is(await metric(r.shim, 'test_dropped_frames_total'), 2, 'dropped frames');
      const gaps = await metric(r.shim, 'gaps_total');
      assert.ok(gaps >= 1, `the drop shows as a gap (gaps_total ${gaps})`);
      const repaired = await metric(r.shim, 'replays_total', 'complete');
      assert.ok(repaired >= 1, `a complete replay repaired it (replays_total{complete} ${repaired})`);
      assert.is(await metric(r.shim, 'replay_probes_total'), 1, 'no probe but the start-up one ran');
      assert.is(r.view.cleared, 1, 'only the start-up clear');
    } finally {
      await r.close();
    }
  });

  t('an engine restart yields cleared, then the new engine\'s state', async () => {
    const [httpPort, pubPort, replayPort] = [await stablePort(), await stablePort(), await stablePort()];
    const opts: SimEngineOptions = { port: httpPort, kvEventsEndpoint: `tcp://127.0.0.1:${pubPort}`, kvReplayEndpoint: `tcp://127.0.0.1:${replayPort}` };
    const r = await rig(opts);
    try {
      const old = prompt(30, 60);
      await complete(r.engine.url, old);
      const oldHashes = prefixHashes(MODEL, '', B, await tokenize(r.engine, old));
      await waitFor(() => r.view.has(oldHashes), 'old blocks');
      const clearedBefore = r.view.cleared;
      await r.engine.close();
      // the old engine's ports take a moment to free up
      let next: SimEngineHandle | undefined;
      await waitFor(async () => {
        try {
          next = await startSimEngine({ model: MODEL, blockSize: B, speedup: 50, ...opts });
          return true;
        } catch (e) {
          if (!/in use/i.test((e as Error).message)) throw e;
          return false;
        }
      }, 'engine restarted on the same ports');
      r.engine = next!;
      const fresh = prompt(31, 60);
      const freshHashes = prefixHashes(MODEL, '', B, await tokenize(r.engine, fresh));
      await waitFor(async () => {
        await complete(r.engine.url, fresh);
        await r.shim.idle();
        return r.view.has(freshHashes);
      }, 'new engine state');
      assert.ok(r.view.cleared > clearedBefore, 'cleared was published');
      assert.not.ok(oldHashes.some((h) => r.view.blocks.has(h)), 'old state gone');
      assert.ok((await metric(r.shim, 'engine_restarts_total')) >= 1);
    } finally {
      await r.close();
    }
  });

  t('a killed shim\'s worker expires from the registry within the TTL', async () => {
    const r = await rig({}, { registryTtlMs: 1000, heartbeatMs: 200 });
    try {
      const kv = await r.bus.kv(S.workersBucket, { ttlMs: 1000 });
      const reg = decodeRegistration((await kv.get(registryKey(r.worker)))!);
      assert.is(reg.blockSize, B, 'block size learned from vllm:cache_config_info');
      assert.is(reg.capacityBlocks, r.engine.numBlocks);
      assert.is(reg.url, r.shim.url);
      await r.shim.kill(); // the pod dies: no deregistration, no cleared
      await waitFor(async () => (await kv.get(registryKey(r.worker))) === null, 'registration expired', 15_000);
    } finally {
      await r.close();
    }
  });

  t('P/D: a decode shim runs the remote prefill named by x-prefiller-host-port, then decodes with the descriptor', async () => {
    const prefill = await startSimEngine({ model: MODEL, blockSize: B, speedup: 50, role: 'prefill' });
    const r = await rig({ role: 'decode' }, { role: 'decode' });
    try {
      const hostPort = new URL(prefill.url).host;
      const p = prompt(40, 100);
      // only a live prefill worker of the registry is a prefill target (prefill-targets.test.ts has the refusals)
      const kv = await r.bus.kv(S.workersBucket, { ttlMs: 3000 });
      const deadPort = await freePort();
      const regOf = (worker: string, url: string) => encode({ worker, model: MODEL, role: 'prefill', url, engineUrl: url, blockSize: B, capacityBlocks: 100, loras: [], ts: Date.now() });
      await kv.put(registryKey(`${r.worker}-p`), regOf(`${r.worker}-p`, prefill.url));
      await kv.put(registryKey(`${r.worker}-dead`), regOf(`${r.worker}-dead`, `http://127.0.0.1:${deadPort}`));
      await waitFor(async () => (await post(`${r.shim.url}/v1/completions`, { model: MODEL, prompt: 'x', max_tokens: 1 }, { 'x-prefiller-host-port': hostPort })).status === 200, 'prefill worker registered');
      const okBefore = await metric(r.shim, 'pd_prefills_total', 'ok');
      const res = await post(`${r.shim.url}/v1/completions`, { model: MODEL, prompt: p, max_tokens: 5 }, { 'x-prefiller-host-port': hostPort, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' });
      assert.is(res.status, 200, res.text);
      assert.is(res.headers['x-kvgate-prefill'], hostPort);
      assert.is(res.headers['x-kvgate-worker'], r.worker);
      assert.ok(res.json().choices[0].text.length > 0);
      assert.is(await metric(r.shim, 'pd_prefills_total', 'ok'), okBefore + 1);
      // streaming passthrough, P/D too
      const s = await post(`${r.shim.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: p }], max_tokens: 4, stream: true }, { 'x-prefiller-host-port': hostPort });
      assert.is(s.status, 200, s.text);
      assert.match(String(s.headers['content-type']), /text\/event-stream/);
      assert.ok(s.text.trim().endsWith('data: [DONE]'));
      // a registered prefill endpoint that is not there: the decode engine prefills locally, the request is served
      const localBefore = await metric(r.shim, 'pd_local_prefills_total', 'error');
      const bad = await post(`${r.shim.url}/v1/completions`, { model: MODEL, prompt: p }, { 'x-prefiller-host-port': `127.0.0.1:${deadPort}` });
      assert.is(bad.status, 200, bad.text);
      assert.is(bad.headers['x-kvgate-prefill'], 'local');
      assert.is(await metric(r.shim, 'pd_local_prefills_total', 'error'), localBefore + 1);
      const junk = await post(`${r.shim.url}/v1/completions`, { model: MODEL, prompt: p }, { 'x-prefiller-host-port': 'not a host' });
      assert.is(junk.status, 400);
    } finally {
      await r.close();
      await prefill.close();
    }
  });

  t('shim HTTP front: healthz, metrics, errors', async () => {
    const r = await rig();
    try {
      const h = await request(`${r.shim.url}/healthz`);
      const body = (await h.body.json()) as { status: string; worker: string };
      assert.equal([h.statusCode, body.status, body.worker], [200, 'ok', r.worker]);
      const m = await request(`${r.shim.url}/metrics`);
      const text = await m.body.text();
      for (const name of ['kvgate_shim_engine_batches_total', 'kvgate_shim_gaps_total', 'kvgate_shim_replays_total', 'kvgate_shim_unknown_parents_total', 'kvgate_shim_lag_seconds', 'kvgate_shim_map_entries', 'kvgate_shim_map_evictions_total', 'kvgate_shim_published_events_total'])
        assert.ok(text.includes(name), name);
      const nf = await request(`${r.shim.url}/nope`);
      assert.is(nf.statusCode, 404);
      assert.is(((await nf.body.json()) as { error: { kvg_code: string } }).error.kvg_code, 'KVG_NOT_FOUND');
      const badJson = await request(`${r.shim.url}/v1/completions`, { method: 'POST', body: '{', headers: { 'x-prefiller-host-port': '127.0.0.1:1' } });
      assert.is(badJson.statusCode, 400);
      await badJson.body.text();
    } finally {
      await r.close();
    }
  });

  return t;
}

busSuite('memory').run();
busSuite('nats').run();
