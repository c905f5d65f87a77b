/**
 * Indexer replicas over a real nats-server (JetStream): convergence of two replicas plus a late third,
 * self-repair of an injected divergence by gossip, and kill → restart from snapshot + stream replay.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBus, encode, subjects, type Bus, type EventBatch, type KvEvent, type WorkerDigest } from '@kvgate/protocol';
import { startIndexer, type RunningIndexer } from '../src/index.js';
import { NaiveIndex } from '../src/naive.js';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { rng, universe, waitFor } from './helpers.js';

const S = subjects('default');
const FAST = { gossipIntervalMs: 150, graceMs: 500 };

/** a fake shim population: random batches per worker, mirrored into a reference model */
class Producer {
  readonly ref = new NaiveIndex();
  readonly seqs = new Map<string, number>();
  readonly r: () => number;
  readonly u: bigint[][];
  constructor(readonly bus: Bus, seed: number) {
    this.r = rng(seed);
    this.u = universe(this.r, 6, 24);
  }
  async send(n: number, workers = ['w1', 'w2', 'w3']): Promise<void> {
    for (let i = 0; i < n; i++) {
      const worker = workers[Math.floor(this.r() * workers.length)]!;
      const seq = (this.seqs.get(worker) ?? 0) + 1;
      this.seqs.set(worker, seq);
      const chain = this.u[Math.floor(this.r() * this.u.length)]!;
      const from = this.r() < 0.7 ? 0 : Math.floor(this.r() * chain.length);
      // a quarter of the events are CPU-tier copies (offloading engines): digests, repairs and snapshots carry tiers
      const tier = this.r() < 0.25 ? { tier: 'cpu' as const } : {};
      const events: KvEvent[] = this.r() < 0.8
        ? [{ t: 'stored', parent: from === 0 ? null : chain[from - 1]!, hashes: chain.slice(from, from + 1 + Math.floor(this.r() * 8)), ...tier }]
        : [{ t: 'removed', hashes: [chain[Math.floor(this.r() * chain.length)]!], ...tier }];
      for (const ev of events) {
        if (ev.t === 'stored') this.ref.store(worker, ev.parent, ev.hashes, ev.tier);
        else if (ev.t === 'removed') this.ref.remove(worker, ev.hashes, ev.tier);
      }
      this.bus.publish(S.events(worker), encode({ worker, seq, ts: Date.now(), events } satisfies EventBatch));
    }
    await this.bus.flush();
  }
  expected(): Record<string, { seq: number; count: number; xor: bigint }> {
    const out: Record<string, WorkerDigest> = {};
    for (const [w, seq] of this.seqs) out[w] = { seq, ...this.ref.digest(w) };
    return out;
  }
}

async function converged(ixs: RunningIndexer[], want: Record<string, WorkerDigest>): Promise<boolean> {
  for (const ix of ixs) {
    const d = await ix.indexer.digests();
    for (const [w, e] of Object.entries(want)) {
      const g = d[w];
      if (!g || g.seq !== e.seq || g.count !== e.count || g.xor !== e.xor) return false;
    }
  }
  return true;
}

async function repairsApplied(ix: RunningIndexer): Promise<number> {
  const m = /kvgate_indexer_repairs_applied_total (\d+)/.exec(await ix.indexer.metrics.metrics());
  return Number(m?.[1] ?? NaN);
}

let nats: NatsServerHandle;
const open: { close(): Promise<void> }[] = [];

test.before(async () => {
  nats = await startNatsServer();
});
test.after.each(async () => {
  while (open.length) await open.pop()!.close().catch(() => undefined);
});
test.after(async () => {
  await nats.stop();
});

async function bus(): Promise<Bus> {
  const b = await createBus({ nats: nats.url });
  open.push(b);
  return b;
}
async function indexer(opts: Parameters<typeof startIndexer>[1]): Promise<RunningIndexer> {
  const ix = await startIndexer(await bus(), { ...FAST, ...opts });
  open.unshift(ix); // closed before the buses
  return ix;
}
async function freshStream(b: Bus): Promise<void> {
  const st = await b.stream(S.eventStream, { subjects: [S.eventsAll] });
  const info = await st.info();
  await st.purgeBefore(info.lastSeq + 1);
}

test('two replicas and a late third converge to identical digests', async () => {
  const shim = await bus();
  await freshStream(shim);
  const p = new Producer(shim, 11);
  // a long grace: this test is about the stream alone, repairs must not be what makes them agree
  const a = await indexer({ id: 'conv-a', graceMs: 5000 });
  const b = await indexer({ id: 'conv-b', shards: 2, graceMs: 5000 });
  await p.send(150);
  await waitFor(() => converged([a, b], p.expected()), 15_000, 'a and b converge');
  const c = await indexer({ id: 'conv-c', graceMs: 5000 });
  await p.send(50);
  await waitFor(() => converged([a, b, c], p.expected()), 15_000, 'late c converges');
  await c.whenReady(5000);
  const q = p.u[0]!;
  const want = p.ref.match(q);
  for (const ix of [a, b, c]) {
    assert.equal((await ix.client.match('m', null, q)).overlaps, want);
    assert.match(await ix.indexer.metrics.metrics(), /kvgate_indexer_repairs_applied_total 0/);
  }
});

test('a replica with injected divergence repairs itself from its peers', async () => {
  const shim = await bus();
  await freshStream(shim);
  const p = new Producer(shim, 12);
  const a = await indexer({ id: 'div-a' });
  const b = await indexer({ id: 'div-b' });
  const c = await indexer({ id: 'div-c', shards: 2 });
  await p.send(120);
  await waitFor(() => converged([a, b, c], p.expected()), 15_000, 'initial convergence');
  // corrupt b: w1 loses blocks and gains a stranger, outside the stream (same seq, different set)
  const before = await Promise.all([a, b, c].map(repairsApplied));
  const w1 = await b.indexer.digests();
  b.indexer.inject('w1', [{ t: 'removed', hashes: p.u.flat().slice(0, 40) }, { t: 'stored', parent: null, hashes: [0xdeadbeefn] }]);
  await waitFor(async () => (await b.indexer.digests()).w1!.xor !== w1.w1!.xor, 5000, 'divergence visible');
  await waitFor(() => converged([a, b, c], p.expected()), 15_000, 'b repaired');
  const after = await Promise.all([a, b, c].map(repairsApplied));
  assert.ok(after[1]! > before[1]!, 'b repaired itself');
  assert.is(after[0], before[0], 'the majority did not move (a)');
  assert.is(after[2], before[2], 'the majority did not move (c)');
});

test('two replicas, one diverged: exactly one side moves (tie rule) and they agree again', async () => {
  const shim = await bus();
  await freshStream(shim);
  const p = new Producer(shim, 13);
  const a = await indexer({ id: 'tie-a' });
  const b = await indexer({ id: 'tie-b' });
  await p.send(60);
  await waitFor(() => converged([a, b], p.expected()), 15_000, 'initial convergence');
  const [a0, b0] = await Promise.all([repairsApplied(a), repairsApplied(b)]);
  b.indexer.inject('w2', [{ t: 'stored', parent: null, hashes: [0xabcdefn] }]);
  await waitFor(async () => (await b.indexer.digests()).w2!.count !== p.expected().w2!.count, 5000, 'divergence visible');
  await waitFor(() => converged([a, b], p.expected()), 15_000, 'tie-b yields to tie-a');
  assert.is(await repairsApplied(a), a0, 'tie-a (smaller id) keeps its state');
  assert.ok((await repairsApplied(b)) > b0, 'tie-b repaired');
});

test('kill and restart: snapshot + stream replay lose nothing, and the stream is trimmed behind snapshots', async () => {
  const shim = await bus();
  await freshStream(shim);
  const p = new Producer(shim, 14);
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-snap-'));
  try {
    const a1 = await indexer({ id: 'snap-a', snapshotDir: dir, snapshotIntervalMs: 60_000 });
    await p.send(100);
    await waitFor(() => converged([a1], p.expected()), 15_000, 'a1 caught up');
    const file = await a1.indexer.snapshotNow();
    assert.ok(file && file.startsWith(dir));
    const snapSeq = a1.indexer.streamSeq;
    // the only live replica trims the stream behind its snapshot on its next gossip tick
    const st = await shim.stream(S.eventStream, { subjects: [S.eventsAll] });
    await waitFor(async () => (await st.info()).firstSeq > snapSeq, 10_000, 'stream trimmed');
    await p.send(40);
    await waitFor(() => converged([a1], p.expected()), 15_000, 'a1 caught up again');
    open.splice(open.indexOf(a1), 1);
    await a1.close(); // "kill"
    await p.send(40); // while it is down
    const a2 = await indexer({ id: 'snap-a', snapshotDir: dir });
    await a2.whenReady(10_000);
    await waitFor(() => converged([a2], p.expected()), 15_000, 'restart recovers everything');
    for (const q of p.u) {
      const got = await a2.client.match('m', null, q);
      assert.equal(got.overlaps, p.ref.match(q));
      const tiers = p.ref.matchTiers(q);
      assert.equal(got.tiers ?? {}, tiers, 'lower-tier reach survives snapshot + replay');
    }
    assert.ok(p.u.some((q) => Object.keys(p.ref.matchTiers(q)).length > 0), 'the workload reaches some prefix through the CPU tier');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
