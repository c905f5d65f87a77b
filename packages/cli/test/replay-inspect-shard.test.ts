/** `kvgate replay inspect --shard i/N` (issue 18): the index rebuilt as one shard holds only that shard's workers. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { shardOf } from '@kvgate/indexer';
import type { KvlogRecord } from '@kvgate/protocol';
import { inspect } from '../src/replay/inspect.js';

const W = ['w0', 'w1', 'w2', 'w3'];
const records: KvlogRecord[] = W.map((w, i) => ({
  kind: 'event',
  seq: i + 1,
  time: 1000 + i,
  subject: `kvgate.default.events.${w}`,
  batch: { worker: w, seq: 1, ts: 1000 + i, events: [{ t: 'stored', parent: null, hashes: [11n, 12n, 13n].slice(0, i + 1) }] },
}));

test('inspect with a shard: only its workers, the match too; without one (or 0/1): everyone', () => {
  const all = inspect(records, { seq: 10, hashes: [11n, 12n, 13n] });
  assert.equal(Object.keys(all.workers), W);
  assert.is(all.shard, undefined);
  assert.equal(inspect(records, { seq: 10, shard: { index: 0, of: 1 } }).workers, all.workers);
  for (const i of [0, 1]) {
    const r = inspect(records, { seq: 10, hashes: [11n, 12n, 13n], shard: { index: i, of: 2 } });
    const mine = W.filter((w) => shardOf(w, 2) === i);
    assert.ok(mine.length > 0);
    assert.is(r.shard, `${i}/2`);
    assert.equal(Object.keys(r.workers), mine);
    assert.equal(r.match, Object.fromEntries(mine.map((w) => [w, all.match![w]!])));
    assert.is(r.upTo.eventsApplied, mine.length, 'the other shard\'s batches are not applied');
  }
});

test('kvgate replay inspect --shard 2/2: one line naming --shard, exit 1 (as replay reports every error), before reading anything', () => {
  const bin = new URL('../../../bin/kvgate.js', import.meta.url).pathname;
  const r = spawnSync(process.execPath, [bin, 'replay', 'inspect', '/nonexistent.kvlog', '--seq', '1', '--shard', '2/2'], { encoding: 'utf8' });
  assert.is(r.status, 1, r.stderr);
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /--shard/);
});

test.run();
