/** GossipTracker decisions (pure: digests and a clock in, repair orders out) and the snapshot codec. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GossipTracker } from '../src/gossip.js';
import { decodeSnapshot, encodeSnapshot, readNewestSnapshot, writeSnapshot } from '../src/snapshot.js';
import { DecodeError, encode } from '@kvgate/protocol';

const d = (seq: number, count: number, xor: bigint) => ({ seq, count, xor });

test('behind a peer for longer than the grace period → repair from the most advanced peer', () => {
  const g = new GossipTracker('a', { graceMs: 100 });
  g.observe({ indexer: 'b', digests: { w: d(5, 3, 7n) } }, 0);
  g.observe({ indexer: 'c', digests: { w: d(9, 3, 7n) } }, 0);
  assert.equal(g.decide({ w: d(4, 3, 7n) }, 10), [], 'first sighting only starts the clock');
  assert.equal(g.decide({ w: d(4, 3, 7n) }, 60), []);
  assert.equal(g.decide({ w: d(4, 3, 7n) }, 120), [{ worker: 'w', from: 'c', reason: 'behind' }]);
  assert.equal(g.decide({ w: d(4, 3, 7n) }, 150), [], 'cooldown after asking');
});

test('catching up within the grace period is progress, not divergence', () => {
  const g = new GossipTracker('a', { graceMs: 100 });
  g.observe({ indexer: 'b', digests: { w: d(5, 3, 7n) } }, 0);
  assert.equal(g.decide({ w: d(4, 3, 7n) }, 10), []);
  assert.equal(g.decide({ w: d(5, 3, 7n) }, 50), []);
  assert.equal(g.decide({ w: d(5, 3, 7n) }, 500), []);
});

test('same seq, different sets: the minority repairs from the majority; the majority stays', () => {
  const bad = new GossipTracker('b', { graceMs: 100 });
  const good = new GossipTracker('a', { graceMs: 100 });
  for (const g of [bad, good]) {
    g.observe({ indexer: 'a', digests: { w: d(5, 3, 7n) } }, 0);
    g.observe({ indexer: 'b', digests: { w: d(5, 3, 9n) } }, 0);
    g.observe({ indexer: 'c', digests: { w: d(5, 3, 7n) } }, 0);
  }
  bad.decide({ w: d(5, 3, 9n) }, 0);
  assert.equal(bad.decide({ w: d(5, 3, 9n) }, 200), [{ worker: 'w', from: 'a', reason: 'mismatch' }]);
  good.decide({ w: d(5, 3, 7n) }, 0);
  assert.equal(good.decide({ w: d(5, 3, 7n) }, 200), []);
});

test('two replicas disagreeing: only the larger id moves', () => {
  const a = new GossipTracker('a', { graceMs: 10 });
  const b = new GossipTracker('b', { graceMs: 10 });
  a.observe({ indexer: 'b', digests: { w: d(5, 3, 9n) } }, 0);
  b.observe({ indexer: 'a', digests: { w: d(5, 3, 7n) } }, 0);
  a.decide({ w: d(5, 3, 7n) }, 0);
  b.decide({ w: d(5, 3, 9n) }, 0);
  assert.equal(a.decide({ w: d(5, 3, 7n) }, 50), []);
  assert.equal(b.decide({ w: d(5, 3, 9n) }, 50), [{ worker: 'w', from: 'a', reason: 'mismatch' }]);
});

test('dropped workers are not revived by slower peers; dead peers are forgotten', () => {
  const g = new GossipTracker('a', { graceMs: 10, peerTtlMs: 1000 });
  g.observe({ indexer: 'b', digests: { gone: d(5, 3, 9n) } }, 0);
  g.forget('gone', 0);
  g.decide({}, 0);
  assert.equal(g.decide({}, 20), []);
  assert.equal(g.livePeers(500), ['b']);
  assert.equal(g.livePeers(2000), []);
});

test('stream trim: only the smallest live id trims, behind the oldest live snapshot', () => {
  const a = new GossipTracker('a');
  a.observe({ indexer: 'b', digests: {}, snapshotSeq: 50 }, 0);
  assert.is(a.purgeFrom(80, 10), 51);
  a.observe({ indexer: 'c', digests: {}, snapshotSeq: 0 }, 0);
  assert.is(a.purgeFrom(80, 10), null, 'a replica without snapshots blocks trimming');
  const b = new GossipTracker('b');
  b.observe({ indexer: 'a', digests: {}, snapshotSeq: 80 }, 0);
  assert.is(b.purgeFrom(50, 10), null, 'not the smallest live id');
});

test('snapshots: newest file in the directory wins; torn files are skipped', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-snaptest-'));
  try {
    const blocks = BigUint64Array.from([0n, 0xffffffffffffffffn, 0xffffffffffffffffn, 2n]);
    writeSnapshot(dir, { indexer: 'x', streamSeq: 10, ts: 1, workers: [{ worker: 'w', seq: 3, blocks }] });
    writeSnapshot(dir, { indexer: 'y', streamSeq: 20, ts: 2, workers: [{ worker: 'v', seq: 4, blocks: blocks.subarray(2) }] });
    writeFileSync(join(dir, 'z.snap'), Buffer.from([1, 2, 3]));
    const s = readNewestSnapshot(dir)!;
    assert.is(s.indexer, 'y');
    assert.is(s.streamSeq, 20);
    assert.equal(Array.from(s.workers[0]!.blocks), [0xffffffffffffffffn, 2n]);
    assert.is(readNewestSnapshot(join(dir, 'missing')), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('snapshots carry tier masks; a file without them (written before tiers) loads as GPU only; bad masks are refused', () => {
  const blocks = BigUint64Array.from([0n, 7n, 7n, 8n]);
  const tiers = Uint8Array.from([3, 2]);
  const back = decodeSnapshot(encodeSnapshot({ indexer: 'x', streamSeq: 1, ts: 1, workers: [{ worker: 'w', seq: 2, blocks, tiers }, { worker: 'g', seq: 1, blocks }] }));
  assert.equal(Array.from(back.workers[0]!.tiers!), [3, 2]);
  assert.is(back.workers[1]!.tiers, undefined, 'a GPU-only worker has no mask array');
  // the v1 layout as files were written before tiers: no `tiers` key
  const old = encode({ v: 1, indexer: 'o', streamSeq: 5, ts: 1, workers: [{ worker: 'w', seq: 2, blocks: new Uint8Array(blocks.buffer) }] });
  const o = decodeSnapshot(old);
  assert.is(o.workers[0]!.tiers, undefined);
  assert.equal(Array.from(o.workers[0]!.blocks), [0n, 7n, 7n, 8n]);
  const bad = (t: Uint8Array) => encode({ v: 1, indexer: 'o', streamSeq: 5, ts: 1, workers: [{ worker: 'w', seq: 2, blocks: new Uint8Array(blocks.buffer), tiers: t }] });
  assert.throws(() => decodeSnapshot(bad(Uint8Array.from([1]))), (e: unknown) => e instanceof DecodeError && /one byte per block/.test(e.message));
  assert.throws(() => decodeSnapshot(bad(Uint8Array.from([1, 9]))), (e: unknown) => e instanceof DecodeError && /1\.\.7/.test(e.message));
});

test.run();
