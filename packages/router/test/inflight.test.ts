import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Inflight } from '../src/inflight.js';

test('tickets add load and release prefill at first byte, decode at finish (idempotent)', () => {
  const f = new Inflight({ routerId: 'r1' });
  const t = f.start('w1', 100, 7);
  assert.equal(f.local('w1'), { prefillTokens: 100, decodeBlocks: 7 });
  f.prefillDone(t);
  f.prefillDone(t);
  assert.equal(f.local('w1'), { prefillTokens: 0, decodeBlocks: 7 });
  f.finish(t);
  f.finish(t);
  assert.equal(f.local('w1'), { prefillTokens: 0, decodeBlocks: 0 });
  const t2 = f.start('w1', 5, 1);
  f.finish(t2); // finishing without a first byte releases prefill too
  assert.equal(f.local('w1'), { prefillTokens: 0, decodeBlocks: 0 });
});

test('deltas batch up and sum per worker; peers see them; own echo ignored', () => {
  const a = new Inflight({ routerId: 'a' });
  const b = new Inflight({ routerId: 'b' });
  a.start('w1', 10, 1);
  a.start('w1', 20, 2);
  const t = a.start('w2', 5, 1);
  a.finish(t);
  const batch = a.takeBatch()!;
  assert.is(batch.router, 'a');
  const w1 = batch.deltas.find((d) => d.worker === 'w1')!;
  assert.equal([w1.dPrefillTokens, w1.dDecodeBlocks], [30, 3]);
  assert.not.ok(batch.deltas.some((d) => d.worker === 'w2'), 'net-zero worker omitted');
  assert.is(a.takeBatch(), null);
  b.applyPeer(batch);
  a.applyPeer(batch);
  assert.equal(b.total('w1'), { prefillTokens: 30, decodeBlocks: 3 });
  assert.equal(a.total('w1'), { prefillTokens: 30, decodeBlocks: 3 }, 'own batch not double counted');
  b.start('w1', 1, 1);
  assert.equal(b.total('w1'), { prefillTokens: 31, decodeBlocks: 4 });
  assert.equal(b.peers(), ['a']);
});

test('a silent peer is forgotten after its TTL', () => {
  let now = 1000;
  const b = new Inflight({ routerId: 'b', peerTtlMs: 500, now: () => now });
  b.applyPeer({ router: 'a', deltas: [{ router: 'a', worker: 'w1', dPrefillTokens: 50, dDecodeBlocks: 5 }] });
  assert.is(b.total('w1').prefillTokens, 50);
  now += 400;
  b.applyPeer({ router: 'a', deltas: [] }); // heartbeat
  now += 400;
  assert.is(b.total('w1').prefillTokens, 50);
  now += 600;
  assert.is(b.total('w1').prefillTokens, 0);
  assert.equal(b.peers(), []);
});

test('predicted prefixes: longest credited run per worker, expiring after the TTL', () => {
  let now = 1000; // lru-cache reads a start time of 0 as "no TTL"
  const f = new Inflight({ routerId: 'r', predictedTtlMs: 1000, predictStride: 1, now: () => now });
  f.predict('w1', [1n, 2n, 3n, 4n]);
  f.predict('w2', [1n, 2n, 9n]);
  const o = f.predictedOverlaps([1n, 2n, 3n, 5n]);
  assert.is(o.get('w1'), 3);
  assert.is(o.get('w2'), 2);
  assert.is(f.predictedOverlaps([7n, 1n]).size, 0);
  now += 1500;
  assert.is(f.predictedOverlaps([1n, 2n]).size, 0);
});

test('strided predictions: overlaps rounded down to the stride, or a shorter prompt\'s exact end', () => {
  const f = new Inflight({ routerId: 'r', predictStride: 4 });
  const a = Array.from({ length: 10 }, (_, i) => BigInt(100 + i));
  f.predict('w1', a); // remembers blocks 3, 7 and the last (9)
  assert.is(f.predictedOverlaps(a).get('w1'), 10);
  assert.is(f.predictedOverlaps([...a.slice(0, 9), 999n]).get('w1'), 8, 'diverges in the last block: rounded down');
  assert.is(f.predictedOverlaps([...a.slice(0, 6), 999n, 998n]).get('w1'), 4);
  assert.is(f.predictedOverlaps(a.slice(0, 3)).size, 0, 'shorter than one stride and not a remembered end');
  f.predict('w2', a.slice(0, 6)); // remembers 3 and 5
  assert.is(f.predictedOverlaps(a).get('w2'), 6);
  assert.is(f.predictedOverlaps(a).get('w1'), 10);
});

test('dropWorker forgets local and peer load', () => {
  const f = new Inflight({ routerId: 'r' });
  f.start('w1', 10, 1);
  f.applyPeer({ router: 'p', deltas: [{ router: 'p', worker: 'w1', dPrefillTokens: 3, dDecodeBlocks: 3 }] });
  f.dropWorker('w1');
  assert.equal(f.total('w1'), { prefillTokens: 0, decodeBlocks: 0 });
});

test.run();
