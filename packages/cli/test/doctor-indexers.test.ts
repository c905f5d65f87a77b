/** `kvgate doctor --indexer` (issue 18): judgeIndexers on hand-made facts, and the lines it prints. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { shardOf } from '@kvgate/indexer';
import { formatIndexer, judgeIndexers, jsonIndexer, type IndexerFacts } from '../src/commands/doctor-indexers.js';

const W = ['w0', 'w1', 'w2', 'w3', 'w4', 'w5'];
const of2 = (i: number) => W.filter((w) => shardOf(w, 2) === i);
const facts = (id: string, shard: string | null, workers: string[], over: Partial<IndexerFacts> = {}): IndexerFacts => ({ url: `http://x/${id}`, id, shard, ready: true, streamSeq: 10, lag: 0, workers, ...over });

test('2 shards × 2 replicas, each with its workers: every line ok, naming the shard', () => {
  const v = judgeIndexers([facts('a0', '0/2', of2(0)), facts('b0', '0/2', of2(0)), facts('a1', '1/2', of2(1)), facts('b1', '1/2', of2(1))], W);
  assert.equal(v.map((x) => x.ok), [true, true, true, true]);
  assert.match(formatIndexer(v[0]!), /^indexer a0 \(shard 0\/2\)  ok  \(ready, stream seq 10, lag 0, holds 3 workers\)$/);
  assert.equal(JSON.parse(jsonIndexer(v[2]!)).shard, '1/2');
});

test('unsharded: one line, "unsharded"; coverage over every registered worker', () => {
  const v = judgeIndexers([facts('u', null, W.slice(0, 5))], W);
  assert.is(v.length, 1);
  assert.not.ok(v[0]!.ok);
  assert.match(formatIndexer(v[0]!), /indexer u \(unsharded\)  PROBLEM  workers-not-held: .*unsharded.*w5/);
});

test('problems: unreachable, a shard with no replica, a worker in the wrong shard, mixed N, not ready', () => {
  const v = judgeIndexers([facts('a0', '0/2', [...of2(0), of2(1)[0]!]), facts('gone', null, [], { id: null, error: 'ECONNREFUSED' })], W);
  const codes = (i: number) => v[i]!.problems.map((p) => p.code);
  assert.equal(codes(0), ['foreign-workers']);
  assert.equal(codes(1), ['indexer-unreachable']);
  assert.is(v.length, 3, 'a line for the missing shard 1/2');
  assert.equal(codes(2), ['shard-missing']);
  assert.match(formatIndexer(v[2]!), /shard 1\/2.*no indexer given for shard 1\/2/);
  // without the registry (no --nats), no coverage lines
  assert.is(judgeIndexers([facts('a0', '0/2', of2(0))], null).length, 1);
  const mixed = judgeIndexers([facts('a', '0/2', of2(0)), facts('b', '0/3', W.filter((w) => shardOf(w, 3) === 0), { ready: false, lag: 4 })], null);
  assert.ok(mixed.every((x) => x.problems.some((p) => p.code === 'shard-count-mismatch')));
  assert.ok(mixed[1]!.problems.some((p) => p.code === 'indexer-not-ready'));
});

test.run();
