/**
 * Index shards across processes end to end (issue 18) over a real nats-server: six simulated engines behind their
 * shims (KV events through ZMQ → shim → the durable stream), 2 shards × 2 replicas of `kvgate indexer --shard i/2`
 * as child processes (CLI), an unsharded indexer as the reference, and routers asking over NATS:
 *   (a) each shard replica holds exactly its workers (shardOf), with the reference's block counts and seqs, and was
 *       delivered only their batches (the subject filter on the event stream: no foreign batch skipped);
 *   (b) a router with --index-shards 2 routes every prompt as a router on the unsharded index does (worker, overlap,
 *       every candidate's index overlap);
 *   (c) SIGKILL of one replica of a shard changes nothing (no shard miss either);
 *   (d) both replicas of a shard hung (SIGSTOP: the budget runs out, 500 ms) and then gone (SIGKILL: no responders):
 *       only that shard's workers lose their overlap (0, routed by load), the other shard's still match,
 *       kvgate_router_index_shard_misses_total{shard} moves, the decision is not a fallback;
 *   (e) one replica restarted (its snapshot + replay of what it missed): its workers' overlaps return, traffic sent
 *       while the shard was down included, and the stream was never trimmed;
 *   (f) resharding 2 → 3 (no subject filter for N = 3: each shard reads and skips the others' batches);
 *   (g) a fresh shard-1 replica gets ready while the stream's last message is a shard-0 worker's (its end is the last
 *       message its filter matches), with only its workers.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { createBus, initHashing, subjects, type Bus } from '../packages/protocol/src/index.js';
import { shardOf, startIndexer, type RunningIndexer } from '../packages/indexer/src/index.js';
import { startSimEngine, type SimEngineHandle } from '../packages/sim-engine/src/index.js';
import { startShim, type ShimHandle } from '../packages/worker-shim/src/index.js';
import { startRouter, type RouterHandle } from '../packages/router/src/index.js';
import { judgeIndexers, readIndexers } from '../packages/cli/src/commands/doctor-indexers.js';
import { freePort, startNatsServer, type NatsServerHandle } from './harness/nats-server.js';
import { metricSum } from './harness/metrics.js';

const BIN = new URL('../bin/kvgate.js', import.meta.url).pathname;
const MODEL = 'qwen3-8b';
const BS = 16;
const WORKERS = ['sim-0', 'sim-1', 'sim-2', 'sim-3', 'sim-4', 'sim-5'];
const OWNED = [0, 1].map((i) => WORKERS.filter((w) => shardOf(w, 2) === i));

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  // a condition that throws (an HTTP port not listening yet) is not met yet
  while (!(await Promise.resolve().then(cond).catch(() => false))) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out (${timeoutMs} ms) waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const metric = metricSum;

/** one `kvgate indexer --shard i/2` process */
class ShardProc {
  child: ChildProcess | null = null;
  out = '';
  port = 0;
  constructor(readonly id: string, readonly shard: number, readonly nats: string, readonly ns: string, readonly dir: string) {}
  async start(): Promise<void> {
    await this.kill(); // never two processes for one replica (a failed earlier step may have left it running)
    this.port = await freePort();
    this.out = '';
    const child = spawn(process.execPath, [BIN, 'indexer', '--port', String(this.port), '--nats', this.nats, '--namespace', this.ns, '--id', this.id,
      '--shard', `${this.shard}/2`, '--snapshot-dir', this.dir, '--snapshot-ms', '500', '--gossip-ms', '200'], {
      env: { ...process.env, KVGATE_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d) => (this.out += d));
    child.stderr!.on('data', (d) => (this.out += d));
    this.child = child;
    children.push(child);
  }
  async ready(timeoutMs = 60_000): Promise<void> {
    let exited = false;
    await waitFor(async () => {
      exited = this.child?.exitCode !== null;
      return exited || (await fetch(`http://127.0.0.1:${this.port}/readyz`)).status === 200;
    }, timeoutMs, `${this.id} ready`);
    if (exited) throw new Error(`indexer ${this.id} exited: ${this.out.slice(-2000)}`);
  }
  async get(path: string): Promise<any> {
    const res = await fetch(`http://127.0.0.1:${this.port}${path}`);
    return path === '/metrics' ? res.text() : res.json();
  }
  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig);
  }
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }
}

/** every indexer process started, killed after the suite whatever happened */
const children: ChildProcess[] = [];
let nats: NatsServerHandle;
const ns = `shards${randomBytes(3).toString('hex')}`;
const snapDir = mkdtempSync(join(tmpdir(), 'kvgate-shards-e2e-'));
const buses: Bus[] = [];
const engines: SimEngineHandle[] = [];
const shims: ShimHandle[] = [];
const procs: ShardProc[] = [];
let reference: RunningIndexer;
/** on the unsharded reference index; on the 2 shards (2000 ms budget); on the 2 shards with a 500 ms budget */
let rU: RouterHandle, rS: RouterHandle, rT: RouterHandle;

async function bus(): Promise<Bus> {
  const b = await createBus({ nats: nats.url });
  buses.push(b);
  return b;
}

/** family f's prompt: 8 blocks of tokens no other family shares, then `extra` blocks */
const family = (f: number, blocks = 8) => Array.from({ length: blocks * BS }, (_, i) => 1000 + f * 10_000 + i);

/** send a prompt straight to an engine (not through a router): the engine caches it, its shim publishes the events */
async function warm(engine: number, prompt: number[]): Promise<void> {
  const res = await request(`${engines[engine]!.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 1 }) });
  await res.body.text();
  assert.is(res.statusCode, 200);
}

interface RouteAnswer {
  worker: string;
  overlap: number;
  indexAnswered: boolean;
  candidates: { worker: string; overlap: number; indexOverlap: number }[];
}
async function route(r: RouterHandle, prompt: number[]): Promise<RouteAnswer> {
  const res = await request(`${r.url}/v1/route`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt }) });
  const body = (await res.body.json()) as RouteAnswer;
  assert.is(res.statusCode, 200, JSON.stringify(body));
  return body;
}
/** what is compared between routers: the choice and every candidate's overlaps */
const choice = (a: RouteAnswer) => ({
  worker: a.worker,
  overlap: a.overlap,
  indexAnswered: a.indexAnswered,
  overlaps: Object.fromEntries(a.candidates.map((c) => [c.worker, [c.overlap, c.indexOverlap]]).sort()),
});

const PROMPTS = Array.from({ length: 6 }, (_, f) => [...family(f), 7, 7, 7]);
const routerMetrics = async (r: RouterHandle) => (await request(`${r.url}/metrics`)).body.text();

/** every shard replica holds exactly its workers, with the reference's counts and seqs */
async function shardsAgree(replicas: ShardProc[]): Promise<boolean> {
  const want = await reference.indexer.workers();
  for (const p of replicas) {
    const got = (await p.get('/debug/workers')) as { workers: Record<string, { blocks: number; seq: number }> };
    const names = Object.keys(got.workers).sort();
    if (JSON.stringify(names) !== JSON.stringify(OWNED[p.shard])) return false;
    for (const w of names) if (got.workers[w]!.blocks !== want[w]?.blocks || got.workers[w]!.seq !== want[w]?.seq) return false;
  }
  return true;
}

test.before(async () => {
  await initHashing();
  assert.ok(OWNED[0]!.length >= 2 && OWNED[1]!.length >= 2, `both shards own workers: ${JSON.stringify(OWNED)}`);
  nats = await startNatsServer();
  const shimBus = await bus();
  for (const [i, w] of WORKERS.entries()) {
    const e = await startSimEngine({ model: MODEL, engineId: w, prefixCachingHashAlgo: 'xxhash', speedup: 50, numBlocks: 4096 });
    engines.push(e);
    shims.push(await startShim(shimBus, { worker: w, model: MODEL, role: e.role, engineUrl: e.url, kvEvents: e.kvEventsEndpoint!, ...(e.replayEndpoint ? { kvReplay: e.replayEndpoint } : {}), namespace: ns, port: -1, blockSize: e.blockSize, capacityBlocks: e.numBlocks }));
    assert.is(e.blockSize, BS, `engine ${i} block size`);
  }
  reference = await startIndexer(await bus(), { namespace: ns, id: 'reference', gossipIntervalMs: 200 });
  for (const shard of [0, 1]) for (const r of ['a', 'b']) procs.push(new ShardProc(`ix-${shard}-${r}`, shard, nats.url, ns, snapDir));
  await Promise.all(procs.map((p) => p.start()));
  await Promise.all([reference.whenReady(30_000), ...procs.map((p) => p.ready())]);
  rU = await startRouter(await bus(), { namespace: ns, id: 'r-unsharded', indexTimeoutMs: 2000, port: 0 });
  rS = await startRouter(await bus(), { namespace: ns, id: 'r-sharded', indexShards: 2, indexTimeoutMs: 2000, port: 0 });
  rT = await startRouter(await bus(), { namespace: ns, id: 'r-tight', indexShards: 2, indexTimeoutMs: 500, port: 0 });
  for (const r of [rU, rS, rT]) await r.waitForWorkers(WORKERS.length, 30_000);
  // family f: engine e holds its first 1 + (e + f) mod 6 blocks, every engine a different depth
  for (let f = 0; f < PROMPTS.length; f++) for (let e = 0; e < engines.length; e++) await warm(e, family(f, 1 + ((e + f) % 6)));
});

test.after(async () => {
  for (const p of procs) await p.kill().catch(() => undefined);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const r of [rU, rS, rT]) await r?.close().catch(() => undefined);
  for (const s of shims) await s.stop().catch(() => undefined);
  for (const e of engines) await e.close().catch(() => undefined);
  await reference?.close().catch(() => undefined);
  for (const b of buses) await b.close().catch(() => undefined);
  await nats?.stop();
  rmSync(snapDir, { recursive: true, force: true });
});

test('(a) each shard replica holds exactly its workers, as the unsharded index has them', async () => {
  await waitFor(async () => Object.values(await reference.indexer.workers()).filter((w) => w.blocks > 0).length === WORKERS.length, 30_000, 'reference has every worker');
  await waitFor(() => shardsAgree(procs), 30_000, 'every shard replica agrees with the reference');
  for (const p of procs) {
    const m = (await p.get('/metrics')) as string;
    assert.is(metric(m, 'kvgate_indexer_foreign_batches_skipped_total'), 0, `${p.id} was delivered no other shard's batch`);
    assert.ok(metric(m, 'kvgate_indexer_stream_messages_total') > 0, `${p.id} read its workers' batches`);
    assert.equal(((await p.get('/healthz')) as { shard: string }).shard, `${p.shard}/2`);
  }
  // kvgate doctor --indexer …: one ok line per replica, naming its shard
  const doctor = spawn(process.execPath, [BIN, 'doctor', '--json', ...procs.flatMap((p) => ['--indexer', `http://127.0.0.1:${p.port}`])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  doctor.stdout!.on('data', (d) => (out += d));
  doctor.stderr!.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => doctor.once('exit', (c) => r(c)));
  assert.is(code, 0, out);
  const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { indexer: string; shard: string; ok: boolean; workers: string[] });
  assert.equal(lines.map((l) => [l.indexer, l.shard, l.ok, l.workers]), procs.map((p) => [p.id, `${p.shard}/2`, true, OWNED[p.shard]]));
});

test('(b) --index-shards 2 routes every prompt as the unsharded index does', async () => {
  const chosen = new Set<string>();
  for (const p of PROMPTS) {
    const u = await route(rU, p);
    const s = await route(rS, p);
    assert.equal(choice(s), choice(u), `prompt of family ${PROMPTS.indexOf(p)}`);
    assert.ok(u.indexAnswered && u.overlap > 0, 'the reference matched');
    chosen.add(u.worker);
    // every worker holds a different depth of the family: the index sees all of them
    assert.is(u.candidates.filter((c) => c.indexOverlap > 0).length, WORKERS.length);
  }
  assert.ok([...chosen].some((w) => shardOf(w, 2) === 0) && [...chosen].some((w) => shardOf(w, 2) === 1), `choices span both shards: ${[...chosen]}`);
  assert.is(metric(await routerMetrics(rS), 'kvgate_router_index_shard_misses_total'), 0);
});

test('(c) SIGKILL of one replica of each shard changes nothing', async () => {
  const want = await Promise.all(PROMPTS.map(async (p) => choice(await route(rU, p))));
  await procs[1]!.kill(); // ix-0-b
  for (let i = 0; i < PROMPTS.length; i++) assert.equal(choice(await route(rS, PROMPTS[i]!)), want[i], `shard 0 on one replica, prompt ${i}`);
  await procs[3]!.kill(); // ix-1-b
  for (let i = 0; i < PROMPTS.length; i++) assert.equal(choice(await route(rS, PROMPTS[i]!)), want[i], `both shards on one replica, prompt ${i}`);
  for (let i = 0; i < PROMPTS.length; i++) assert.equal(choice(await route(rT, PROMPTS[i]!)), want[i], `500 ms budget, prompt ${i}`);
  assert.is(metric(await routerMetrics(rS), 'kvgate_router_index_shard_misses_total'), 0);
  assert.is(metric(await routerMetrics(rS), 'kvgate_router_index_fallback_total'), 0);
});

/** shard 1 silent: its workers have no overlap, shard 0's are the reference's */
async function shard1Degraded(r: RouterHandle, label: string): Promise<void> {
  for (const [i, p] of PROMPTS.entries()) {
    const u = await route(rU, p);
    const got = await route(r, p);
    assert.ok(got.indexAnswered, `${label}: shard 0 answered, not a fallback (prompt ${i})`);
    for (const c of got.candidates) {
      const ref = u.candidates.find((x) => x.worker === c.worker)!;
      if (shardOf(c.worker, 2) === 1) {
        assert.is(c.indexOverlap, 0, `${label}: ${c.worker} (shard 1) lost its overlap`);
        assert.is(c.overlap, 0, `${label}: ${c.worker} (shard 1) scored by load`);
      } else {
        assert.is(c.indexOverlap, ref.indexOverlap, `${label}: ${c.worker} (shard 0) still matched`);
        assert.ok(c.indexOverlap > 0);
      }
    }
    assert.is(shardOf(got.worker, 2), 0, `${label}: the pick is a shard-0 worker, the only ones with a cached prefix (prompt ${i})`);
  }
}

test('(d) both replicas of shard 1 hung, then gone: only its workers lose their overlap; the miss is counted', async () => {
  const s1 = procs.filter((p) => p.shard === 1 && p.child?.exitCode === null && p.child.signalCode === null);
  assert.is(s1.length, 1, 'one live replica of shard 1 left after (c)');
  // (c) stopped ix-1-b already; ix-1-a hangs: it holds its subscription, but answers nothing
  const before = metric(await routerMetrics(rT), 'kvgate_router_index_shard_misses_total', 'shard="1"');
  for (const p of s1) p.signal('SIGSTOP');
  try {
    await shard1Degraded(rT, 'hung');
  } finally {
    for (const p of s1) p.signal('SIGCONT');
  }
  const text = await routerMetrics(rT);
  assert.is(metric(text, 'kvgate_router_index_shard_misses_total', 'shard="1"') - before, PROMPTS.length, 'one miss of shard 1 per decision');
  assert.is(metric(text, 'kvgate_router_index_shard_misses_total', 'shard="0"'), 0);
  assert.is(metric(text, 'kvgate_router_index_fallback_total'), 0);
  // now gone for good (no responders: the miss does not even wait for the budget)
  const beforeS = metric(await routerMetrics(rS), 'kvgate_router_index_shard_misses_total', 'shard="1"');
  for (const p of s1) await p.kill();
  await shard1Degraded(rS, 'killed');
  // doctor: shard 0's replica ok, shard 1 has none (its workers named)
  const live = procs.filter((p) => p.child?.exitCode === null && p.child.signalCode === null);
  const verdicts = judgeIndexers(await readIndexers(live.map((p) => `http://127.0.0.1:${p.port}`)), WORKERS);
  assert.equal(verdicts.map((v) => [v.shard, v.ok]), [['0/2', true], ['1/2', false]]);
  assert.is(verdicts[1]!.problems[0]!.code, 'shard-missing');
  assert.is(metric(await routerMetrics(rS), 'kvgate_router_index_shard_misses_total', 'shard="1"') - beforeS, PROMPTS.length);
  assert.is(metric(await routerMetrics(rS), 'kvgate_router_index_fallback_total'), 0);
});

test('(e) a restarted replica of shard 1 (snapshot + replay) brings its workers back, what it missed included', async () => {
  // while shard 1 is down its workers cache more: family 6, deepest on a shard-1 worker
  const late = [...family(6), 9, 9];
  const deep = WORKERS.indexOf(OWNED[1]![0]!);
  for (let e = 0; e < engines.length; e++) await warm(e, family(6, e === deep ? 8 : 1 + (e % 3)));
  await waitFor(async () => (await route(rU, late)).worker === WORKERS[deep], 30_000, 'the reference sees family 6');
  const p = procs.find((x) => x.id === 'ix-1-a')!;
  await p.start();
  await p.ready();
  assert.match(p.out, /snapshot loaded/, 'it started from its snapshot');
  await waitFor(() => shardsAgree([p]), 30_000, 'the restarted replica agrees with the reference');
  assert.ok(metric((await p.get('/metrics')) as string, 'kvgate_indexer_stream_messages_total') > 0, 'and replayed what it missed from the stream');
  for (const q of [...PROMPTS, late]) assert.equal(choice(await route(rS, q)), choice(await route(rU, q)), `prompt ${PROMPTS.indexOf(q)}`);
  assert.is((await route(rS, late)).worker, WORKERS[deep], 'the shard-1 worker with the deepest prefix wins again');
  // sharded replicas never trim the durable stream (a later reshard replays it from the start)
  const st = await (await bus()).stream(subjects(ns).eventStream, { subjects: [subjects(ns).eventsAll] });
  assert.is((await st.info()).firstSeq, 1);
});

test('(f) resharding 2 → 3: three shards with empty snapshot directories rebuild from the stream and route as the unsharded index', async () => {
  for (const p of procs) await p.kill();
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-reshard-e2e-'));
  const three: RunningIndexer[] = [];
  let r3: RouterHandle | undefined;
  try {
    for (let i = 0; i < 3; i++) three.push(await startIndexer(await bus(), { namespace: ns, id: `ix3-${i}`, shard: { index: i, of: 3 }, snapshotDir: dir, gossipIntervalMs: 200 }));
    await Promise.all(three.map((ix) => ix.whenReady(30_000)));
    const want = await reference.indexer.digests();
    for (const [i, ix] of three.entries()) {
      const mine = Object.fromEntries(Object.entries(want).filter(([w]) => shardOf(w, 3) === i));
      const text = (d: object) => JSON.stringify(Object.entries(d).sort(), (_, v) => (typeof v === 'bigint' ? v.toString(16) : v));
      assert.ok(Object.keys(mine).length > 0, `shard ${i}/3 owns workers`);
      await waitFor(async () => text(await ix.indexer.digests()) === text(mine), 30_000, `shard ${i}/3 rebuilt`);
    }
    r3 = await startRouter(await bus(), { namespace: ns, id: 'r-three', indexShards: 3, indexTimeoutMs: 2000, port: 0 });
    await r3.waitForWorkers(WORKERS.length, 30_000);
    for (const [i, q] of [...PROMPTS, [...family(6), 9, 9]].entries()) assert.equal(choice(await route(r3, q)), choice(await route(rU, q)), `prompt ${i}`);
    assert.is(metric(await routerMetrics(r3), 'kvgate_router_index_shard_misses_total'), 0);
    for (const ix of three) assert.ok(metric(await ix.indexer.metrics.metrics(), 'kvgate_indexer_foreign_batches_skipped_total') > 0, `${ix.indexer.id}: N = 3 reads every batch`);
  } finally {
    await r3?.close();
    for (const ix of three) await ix.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('(g) a fresh shard-1 replica is ready while the stream ends with a shard-0 worker\'s batch', async () => {
  const S = subjects(ns);
  const st = await (await bus()).stream(S.eventStream, { subjects: [S.eventsAll] });
  const mine = WORKERS.indexOf(OWNED[0]![0]!);
  const before = await st.lastSeqOf(S.eventsShard(0, 2));
  await warm(mine, family(7, 3)); // only this engine caches anything: its shim's batches end the stream
  // settled: nothing appended between two looks 300 ms apart, and the last message is shard 0's
  let last = -1;
  await waitFor(async () => {
    await new Promise((r) => setTimeout(r, 300));
    const now = (await st.info()).lastSeq;
    const settled = now === last;
    last = now;
    return settled && now > before && (await st.lastSeqOf(S.eventsShard(0, 2))) === now;
  }, 30_000, 'the stream ends with the shard-0 worker\'s batch');
  const end1 = await st.lastSeqOf(S.eventsShard(1, 2));
  assert.ok(end1 > 0 && end1 < last, `shard 1's last event (${end1}) is before the stream's end (${last})`);
  const ix = await startIndexer(await bus(), { namespace: ns, id: 'ix-1-fresh', shard: { index: 1, of: 2 }, gossipIntervalMs: 200 });
  try {
    await ix.whenReady(15_000);
    assert.is(ix.indexer.streamSeq, end1, 'ready at its own last event');
    assert.is(await ix.indexer.lag(), 0);
    const want = await reference.indexer.digests();
    const text = (d: object) => JSON.stringify(Object.entries(d).sort(), (_, v) => (typeof v === 'bigint' ? v.toString(16) : v));
    assert.is(text(await ix.indexer.digests()), text(Object.fromEntries(Object.entries(want).filter(([w]) => shardOf(w, 2) === 1))), 'its workers, as the reference has them');
    const m = await ix.indexer.metrics.metrics();
    assert.is(metric(m, 'kvgate_indexer_foreign_batches_skipped_total'), 0);
  } finally {
    await ix.close();
  }
});

test.run();
