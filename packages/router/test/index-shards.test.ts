/**
 * The router's side of index shards (issue 18, index-query.ts) without sockets: mergeShardReplies (union of
 * disjoint answers, tiers, freshness, misses by shard, no answer at all rejects) and the scatter over MemoryBus
 * (`busIndexQuery` with shards = 2 asks `…index.match.2.<i>`, never the unsharded subject; a silent or failing
 * shard costs only its workers, counted).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBus, MemoryHub, decodeMatchRequest, encode, errorBody, KvgateError, subjects, type MatchReply } from '@kvgate/protocol';
import { busIndexQuery, mergeShardReplies } from '../src/index-query.js';

const S = subjects('default');

test('mergeShardReplies: overlaps and tiers are the union, indexerSeq the lowest answer, misses named by shard', () => {
  const missed: number[] = [];
  const r = mergeShardReplies(
    [
      { overlaps: { a: 3, c: 1 }, indexerSeq: 40 },
      null,
      { overlaps: { b: 5 }, tiers: { b: { gpu: 5, cpu: 7, disk: 7 } }, indexerSeq: 12 },
      null,
    ],
    (i) => missed.push(i),
  );
  assert.equal(r, { overlaps: { a: 3, c: 1, b: 5 }, tiers: { b: { gpu: 5, cpu: 7, disk: 7 } }, indexerSeq: 12 });
  assert.equal(missed, [1, 3]);
});

test('mergeShardReplies: no tiers key when no shard sent tiers; an empty answer still counts as answered', () => {
  const missed: number[] = [];
  const r = mergeShardReplies([{ overlaps: {}, indexerSeq: 7 }, { overlaps: { x: 2 }, indexerSeq: 9 }], (i) => missed.push(i));
  assert.equal(r, { overlaps: { x: 2 }, indexerSeq: 7 });
  assert.not.ok('tiers' in r);
  assert.equal(missed, []);
  assert.equal(mergeShardReplies([{ overlaps: {}, indexerSeq: 0 }, null]), { overlaps: {}, indexerSeq: 0 }, 'no callback: fine');
});

test('mergeShardReplies: tiers of several shards merge without one replacing another', () => {
  const r = mergeShardReplies([
    { overlaps: { a: 1 }, tiers: { a: { gpu: 1, cpu: 2, disk: 2 } }, indexerSeq: 1 },
    { overlaps: { b: 1 }, tiers: { b: { gpu: 1, cpu: 1, disk: 4 } }, indexerSeq: 1 },
  ]);
  assert.equal(r.tiers, { a: { gpu: 1, cpu: 2, disk: 2 }, b: { gpu: 1, cpu: 1, disk: 4 } });
});

test('mergeShardReplies: no shard answered → rejects (the decision goes by load alone), every shard counted', () => {
  const missed: number[] = [];
  assert.throws(() => mergeShardReplies([null, null, null], (i) => missed.push(i)), /no index shard answered \(3 asked\)/);
  assert.equal(missed, [0, 1, 2]);
});

/** a fake shard replica: answers `…index.match.<of>.<i>` from a table, records what it was asked */
function shard(bus: MemoryBus, i: number, of: number, overlaps: Record<string, number>, seen: string[], seq = 5) {
  return bus.subscribe(S.indexMatchShard(i, of), {
    queue: S.indexShardQueue(i, of),
    callback: (m) => {
      const req = decodeMatchRequest(m.data);
      seen.push(`${i}:${req.model}:${req.hashes.length}`);
      m.respond(encode({ overlaps, indexerSeq: seq + i } satisfies MatchReply));
    },
  });
}

test('busIndexQuery with 2 shards: asks both shard subjects (not …index.match) and merges', async () => {
  const hub = new MemoryHub();
  const bus = new MemoryBus({ hub });
  const seen: string[] = [];
  const unsharded: string[] = [];
  const subs = [
    shard(new MemoryBus({ hub }), 0, 2, { w0: 2 }, seen),
    shard(new MemoryBus({ hub }), 1, 2, { w1: 3 }, seen),
    new MemoryBus({ hub }).subscribe(S.indexMatch, { callback: (m) => { unsharded.push('asked'); m.respond(encode({ overlaps: { wrong: 9 }, indexerSeq: 1 })); } }),
  ];
  const missed: number[] = [];
  const q = busIndexQuery(bus, S, 2000, { shards: 2, onShardMiss: (i) => missed.push(i) });
  const r = await q('m1', null, BigUint64Array.from([1n, 2n, 3n]));
  assert.equal(r, { overlaps: { w0: 2, w1: 3 }, indexerSeq: 5 });
  assert.equal(seen.sort(), ['0:m1:3', '1:m1:3']);
  assert.equal(unsharded, [], 'the unsharded subject is not asked');
  assert.equal(missed, []);
  for (const s of subs) s.unsubscribe();
});

test('busIndexQuery with 2 shards: a silent shard (no replica, or one that never answers) costs only its workers', async () => {
  const hub = new MemoryHub();
  const bus = new MemoryBus({ hub });
  const seen: string[] = [];
  const s0 = shard(new MemoryBus({ hub }), 0, 2, { w0: 2 }, seen);
  const missed: number[] = [];
  const q = busIndexQuery(bus, S, 300, { shards: 2, onShardMiss: (i) => missed.push(i) });
  // no replica of shard 1 at all
  assert.equal(await q('m1', null, BigUint64Array.from([1n])), { overlaps: { w0: 2 }, indexerSeq: 5 });
  assert.equal(missed, [1]);
  // a replica of shard 1 that takes the request and never answers: the budget runs out for it alone
  const hung = new MemoryBus({ hub }).subscribe(S.indexMatchShard(1, 2), { queue: S.indexShardQueue(1, 2), callback: () => undefined });
  assert.equal(await q('m1', null, BigUint64Array.from([1n])), { overlaps: { w0: 2 }, indexerSeq: 5 });
  assert.equal(missed, [1, 1]);
  // a replica of shard 1 answering an error body (an indexer rejecting the request): a miss too, not a crash
  hung.unsubscribe();
  const failing = new MemoryBus({ hub }).subscribe(S.indexMatchShard(1, 2), { callback: (m) => m.respond(encode(errorBody(new KvgateError('KVG_BAD_REQUEST', 'nope')).body)) });
  assert.equal(await q('m1', null, BigUint64Array.from([1n])), { overlaps: { w0: 2 }, indexerSeq: 5 });
  assert.equal(missed, [1, 1, 1]);
  // neither shard: the query rejects (the routing core routes by load alone and counts a fallback)
  s0.unsubscribe();
  failing.unsubscribe();
  await q('m1', null, BigUint64Array.from([1n])).then(
    () => assert.unreachable('resolved with no shard'),
    (e: Error) => assert.match(e.message, /no index shard answered/),
  );
  assert.equal(missed, [1, 1, 1, 0, 1]);
});

test('busIndexQuery with shards = 1 (the default) asks the one …index.match subject', async () => {
  const hub = new MemoryHub();
  const bus = new MemoryBus({ hub });
  const sub = new MemoryBus({ hub }).subscribe(S.indexMatch, { queue: S.indexQueue, callback: (m) => m.respond(encode({ overlaps: { u: 1 }, indexerSeq: 3 })) });
  assert.equal(await busIndexQuery(bus, S, 2000)('m1', null, BigUint64Array.from([1n])), { overlaps: { u: 1 }, indexerSeq: 3 });
  assert.equal(await busIndexQuery(bus, S, 2000, { shards: 1 })('m1', null, BigUint64Array.from([1n])), { overlaps: { u: 1 }, indexerSeq: 3 });
  sub.unsubscribe();
});

test.run();
