/** The pure parts of resync: the per-worker rate limit (resync.ts) and which workers a shard reports as gapped. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encode, type EventBatch } from '@kvgate/protocol';
import { ResyncGate } from '../src/resync.js';
import { ShardState } from '../src/shard-state.js';

const names = (os: { worker: string }[]) => os.map((o) => o.worker).sort();

test('gate: one request per worker per interval, however often it is wanted', () => {
  const g = new ResyncGate({ minIntervalMs: 1000 });
  g.want('a', 'gap');
  g.want('a', 'gap');
  g.want('b', 'reconnect');
  assert.equal(g.due(0), [{ worker: 'a', reason: 'gap' }, { worker: 'b', reason: 'reconnect' }]);
  assert.equal(g.due(0), [], 'nothing wanted any more');
  g.want('a', 'gap');
  assert.equal(g.due(10), [], 'a request is in flight');
  g.answered('a', true, 20);
  assert.equal(g.due(500), [], 'within the interval');
  g.want('a', 'gap');
  assert.equal(g.due(999), []);
  assert.equal(names(g.due(1020)), ['a'], 'wanted meanwhile: asked once the interval is over');
  assert.equal(g.due(5000), [], 'one answer-less want is one request');
});

test('gate: a gap outranks a reconnect; a reconnect does not downgrade a gap', () => {
  const g = new ResyncGate({ minIntervalMs: 100 });
  g.want('a', 'reconnect');
  g.want('a', 'gap');
  g.want('a', 'reconnect');
  assert.equal(g.due(0), [{ worker: 'a', reason: 'gap' }]);
});

test('gate: no answer backs off (doubling, capped), gives up after maxAttempts until wanted again', () => {
  const g = new ResyncGate({ minIntervalMs: 100, maxBackoffMs: 300, maxAttempts: 3 });
  g.want('a', 'gap');
  assert.is(g.due(0).length, 1);
  g.answered('a', false, 0);
  assert.is(g.due(99).length, 0);
  assert.equal(g.due(100), [{ worker: 'a', reason: 'gap' }], 'retried after the first back-off');
  g.answered('a', false, 100);
  assert.is(g.due(299).length, 0, 'doubled');
  assert.is(g.due(300).length, 1);
  g.answered('a', false, 300);
  assert.is(g.pending, 0, 'given up after three answer-less requests');
  assert.is(g.due(10_000).length, 0);
  g.want('a', 'reconnect');
  assert.equal(g.due(10_000), [{ worker: 'a', reason: 'reconnect' }], 'wanted anew: asked again');
});

test('gate: forget drops a worker with its state', () => {
  const g = new ResyncGate({ minIntervalMs: 100 });
  g.want('a', 'gap');
  g.forget('a');
  assert.equal(g.due(0), []);
  g.answered('a', true, 0); // an answer for a forgotten worker is ignored
  g.want('a', 'gap');
  assert.is(g.due(0).length, 1);
});

const batch = (worker: string, seq: number, h: bigint): Uint8Array =>
  encode({ worker, seq, ts: 0, events: [{ t: 'stored', parent: null, hashes: [h] }] } satisfies EventBatch);

test('shard: flushGaps names the workers that skipped a gap, once; a filled reorder is no gap', () => {
  const s = new ShardState({ reorderWindow: 4 });
  s.ingest(batch('a', 0, 1n));
  s.ingest(batch('a', 2, 3n)); // waits for 1
  s.ingest(batch('a', 1, 2n)); // fills it
  s.ingest(batch('b', 0, 4n));
  s.ingest(batch('b', 2, 5n)); // 1 never comes
  assert.equal(s.flushGaps(), ['b']);
  assert.equal(s.flushGaps(), [], 'reported once');
  assert.is(s.digests().b!.seq, 2, 'the gap was skipped and what followed applied');
  // a reorder window that overflows skips the gap at once; the next flush reports it
  for (let q = 5; q <= 9; q++) s.ingest(batch('a', q, BigInt(100 + q)));
  assert.is(s.digests().a!.seq, 9);
  assert.equal(s.flushGaps(), ['a']);
  // a worker dropped meanwhile is not reported
  s.ingest(batch('c', 0, 7n));
  s.ingest(batch('c', 3, 8n));
  for (let q = 4; q <= 8; q++) s.ingest(batch('c', q, BigInt(200 + q)));
  s.dropWorker('c');
  assert.equal(s.flushGaps(), []);
});

const cleared = (worker: string, seq: number, h: bigint): Uint8Array =>
  encode({ worker, seq, ts: 0, events: [{ t: 'cleared' }, { t: 'stored', parent: null, hashes: [h] }] } satisfies EventBatch);

test('shard: a batch that starts with cleared needs no predecessors (no gap, no wait); a first batch far into a sequence is reported', () => {
  const s = new ShardState({ reorderWindow: 4 });
  s.ingest(batch('a', 0, 1n));
  s.ingest(cleared('a', 5, 9n)); // 1..4 lost: a resync batch replaces them
  assert.is(s.digests().a!.seq, 5, 'applied at once');
  assert.is(s.digests().a!.count, 1, 'only what the clear left');
  s.ingest(batch('a', 3, 2n)); // a late one from before the clear
  assert.is(s.digests().a!.count, 1, 'ignored');
  assert.equal(s.flushGaps(), [], 'no gap reported');
  s.ingest(batch('b', 7, 3n)); // the first batch of b seen here, far into its sequence: history unknown
  assert.equal(s.flushGaps(), ['b']);
  s.ingest(batch('c', 0, 4n));
  s.ingest(cleared('d', 3, 5n));
  assert.equal(s.flushGaps(), [], 'a first batch at 0, or one that clears, is no hole');
});

test.run();
