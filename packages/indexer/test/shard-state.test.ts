/**
 * ShardState = sequencer + index: batches delivered with duplicates and shuffled within a window end in
 * the same index as the reference model applying them once, in seq order.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encode, type EventBatch, type KvEvent } from '@kvgate/protocol';
import { NaiveIndex } from '../src/naive.js';
import { ShardState } from '../src/shard-state.js';
import { WorkerSequencer } from '../src/sequencer.js';
import { rng, universe } from './helpers.js';

function applyRef(ref: NaiveIndex, b: EventBatch): void {
  for (const ev of b.events) {
    if (ev.t === 'stored') ref.store(b.worker, ev.parent, ev.hashes, ev.tier);
    else if (ev.t === 'removed') ref.remove(b.worker, ev.hashes, ev.tier);
    else ref.clear(b.worker);
  }
}

function randomBatches(r: () => number, u: bigint[][], workers: string[], n: number, tiered = false): EventBatch[] {
  const seq = new Map<string, number>();
  const out: EventBatch[] = [];
  for (let i = 0; i < n; i++) {
    const worker = workers[Math.floor(r() * workers.length)]!;
    const s = (seq.get(worker) ?? 0) + 1;
    seq.set(worker, s);
    const events: KvEvent[] = [];
    for (let k = Math.floor(r() * 4); k >= 0; k--) {
      const chain = u[Math.floor(r() * u.length)]!;
      const x = r(), y = tiered ? r() : 1;
      const tier = y < 0.3 ? { tier: 'cpu' as const } : y < 0.4 ? { tier: 'disk' as const } : {};
      if (x < 0.6) {
        const from = r() < 0.7 ? 0 : Math.floor(r() * chain.length);
        events.push({ t: 'stored', parent: from === 0 ? null : chain[from - 1]!, hashes: chain.slice(from, from + 1 + Math.floor(r() * 8)), ...tier });
      } else if (x < 0.95) events.push({ t: 'removed', hashes: [chain[Math.floor(r() * chain.length)]!], ...tier });
      else events.push({ t: 'cleared' });
    }
    out.push({ worker, seq: s, ts: i, events });
  }
  return out;
}

/** duplicates some batches and shuffles each run of `window` deliveries */
function deliver(r: () => number, batches: EventBatch[], window: number): EventBatch[] {
  const withDups = batches.flatMap((b) => (r() < 0.15 ? [b, b] : [b]));
  const out: EventBatch[] = [];
  for (let i = 0; i < withDups.length; i += window) {
    const chunk = withDups.slice(i, i + window);
    for (let j = chunk.length - 1; j > 0; j--) {
      const k = Math.floor(r() * (j + 1));
      [chunk[j], chunk[k]] = [chunk[k]!, chunk[j]!];
    }
    out.push(...chunk);
  }
  return out;
}

test('sequencer: in order, duplicate, reordered, gap, restart', () => {
  const s = new WorkerSequencer<string>(3);
  assert.equal(s.offer(5, 'a'), ['a']);
  assert.equal(s.offer(5, 'a'), []);
  assert.equal(s.offer(7, 'c'), []);
  assert.equal(s.offer(6, 'b'), ['b', 'c']);
  assert.equal(s.offer(9, 'e'), []);
  assert.equal(s.flush(), ['e'], 'flush skips the gap');
  assert.is(s.stats.gaps, 1);
  assert.is(s.stats.duplicates, 1);
  assert.equal(s.offer(0, 'z'), ['z'], 'seq 0 after a higher seq = restart');
  assert.is(s.stats.restarts, 1);
  for (const [q, v] of [[2, 'x'], [3, 'y'], [4, 'w'], [5, 'v']] as const) s.offer(q, v);
  assert.is(s.last, 5, 'a full reorder buffer skips the gap');
});

test('sequencer: takeInOrder takes only the next batch with nothing buffered, else leaves the state to offer', () => {
  const s = new WorkerSequencer<string>(3);
  assert.ok(s.takeInOrder(5), 'first batch of a worker');
  assert.ok(s.takeInOrder(6));
  assert.not.ok(s.takeInOrder(6), 'duplicate');
  assert.not.ok(s.takeInOrder(8), 'gap');
  assert.is(s.last, 6);
  assert.equal(s.offer(8, 'h'), []);
  assert.not.ok(s.takeInOrder(7), 'in order but a later batch is buffered');
  assert.equal(s.offer(7, 'g'), ['g', 'h']);
  assert.ok(s.takeInOrder(9));
  assert.is(s.last, 9);
});

test('property: duplicated and locally shuffled deliveries equal the reference applied in order', () => {
  for (let seed = 1; seed <= 25; seed++) {
    const r = rng(seed * 101);
    const u = universe(r, 6, 20);
    const batches = randomBatches(r, u, ['a', 'b', 'c', 'd'], 150);
    const ref = new NaiveIndex();
    for (const b of batches) applyRef(ref, b);
    const shard = new ShardState({ reorderWindow: 64 });
    for (const b of deliver(r, batches, 8)) {
      if (r() < 0.5) shard.ingest(encode(b));
      else shard.offerBatch(b);
    }
    const digests = shard.digests();
    for (const w of ref.workers()) {
      const d = ref.digest(w);
      assert.equal({ count: digests[w]!.count, xor: digests[w]!.xor }, d, `seed ${seed} worker ${w}`);
    }
    for (const chain of u) {
      const [ws, ds] = shard.match(BigUint64Array.from(chain));
      const got: Record<string, number> = {};
      ws.forEach((w, i) => (got[w] = ds[i]!));
      assert.equal(got, ref.match(chain), `seed ${seed}: match`);
    }
    const st = shard.stats();
    assert.is(st.gaps, 0, 'no gap when every batch arrives');
    assert.ok(st.duplicates > 0);
  }
});

test('snapshot → install into a fresh shard → same digests and answers', () => {
  const r = rng(3);
  const u = universe(r, 5, 16);
  const a = new ShardState();
  for (const b of randomBatches(r, u, ['a', 'b', 'c'], 80)) a.ingest(encode(b));
  const b = new ShardState();
  for (const s of a.snapshot()) b.installWorker(s);
  assert.equal(b.digests(), a.digests());
  for (const chain of u) assert.equal(b.match(BigUint64Array.from(chain)), a.match(BigUint64Array.from(chain)));
});

test('an index sized up front (reserve) answers exactly like one that grew; reserve is capped', () => {
  const r = rng(4);
  const u = universe(r, 8, 40);
  const grown = new ShardState(), sized = new ShardState();
  sized.reserve(50_000);
  assert.ok(sized.stats().arrayBytes >= grown.stats().arrayBytes + 4 * 50_000, 'slot table allocated');
  for (const b of randomBatches(r, u, ['a', 'b', 'c', 'd'], 200)) {
    const bytes = encode(b);
    grown.ingest(bytes);
    sized.ingest(bytes);
  }
  assert.equal(sized.digests(), grown.digests());
  for (const chain of u) assert.equal(sized.match(BigUint64Array.from(chain)), grown.match(BigUint64Array.from(chain)));
  const huge = new ShardState();
  huge.reserve(1e12); // a nonsense capacity must not allocate without bound
  assert.ok(huge.stats().arrayBytes <= 80 * 2 ** 20, `capped: ${huge.stats().arrayBytes}`);
  huge.reserve(Number.NaN);
});

/** a shard's match answer in the reference's shape: GPU overlaps (depth ≥ 1) and lower-tier reach */
function answer(s: ShardState, chain: bigint[]): { overlaps: Record<string, number>; tiers: Record<string, unknown> } {
  const [ws, ds, tiered] = s.match(BigUint64Array.from(chain));
  const overlaps: Record<string, number> = {};
  ws.forEach((w, i) => {
    if (ds[i]! > 0) overlaps[w] = ds[i]!;
  });
  const tiers: Record<string, unknown> = {};
  for (const t of tiered ?? []) tiers[t.worker] = t.tiers;
  return { overlaps, tiers };
}

test('tiered events through the wire: a shard answers GPU overlaps and cpu/disk reach exactly as the reference', () => {
  const r = rng(11);
  const u = universe(r, 6, 24);
  const shard = new ShardState(), ref = new NaiveIndex();
  let reached = 0;
  for (const b of randomBatches(r, u, ['a', 'b', 'c'], 400, true)) {
    assert.ok(shard.ingest(encode(b)));
    applyRef(ref, b);
    if (b.seq % 10 === 0) {
      for (const chain of u) {
        assert.equal(answer(shard, chain), { overlaps: ref.match(chain), tiers: ref.matchTiers(chain) });
        if (Object.keys(ref.matchTiers(chain)).length) reached++;
      }
    }
  }
  assert.ok(reached > 0, 'some prefix is reached through a lower tier');
  // a digest covers tiers: the same blocks on another tier are another state
  const d = shard.digests();
  for (const w of ['a', 'b', 'c']) assert.is(d[w]!.xor, ref.digest(w).xor, `digest of ${w}`);
  // snapshot → install keeps masks
  const copy = new ShardState();
  for (const st of shard.snapshot()) copy.installWorker(st);
  assert.equal(copy.digests(), shard.digests());
  for (const chain of u) assert.equal(answer(copy, chain), answer(shard, chain));
});

test('bad bytes are counted, not thrown', () => {
  const s = new ShardState();
  assert.is(s.ingest(new Uint8Array([1, 2, 3])), false);
  assert.is(s.stats().decodeErrors, 1);
});

test.run();
