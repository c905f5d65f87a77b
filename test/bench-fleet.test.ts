/**
 * The fleet simulation's machinery end to end (issue 18, bench/fleet.ts behind `kvgate bench fleet`), small: 40
 * engines × 256 blocks, 2 shard processes over a real nats-server, 2 s of churn. Asserts what the figures stand on,
 * not timings: every shard applied every batch of its workers (all events, no sequence gap; delivered through its
 * subject filter, nothing else), each holds exactly its engines
 * (shardOf) × B entries — about total / N —, every cached prompt the router asked for matched its engine with the
 * whole prompt through the scatter/merge, no query failed, and the figures are finite and positive. The fleet
 * starts and stops its own processes (nats-server, shards, publisher, router); the test checks none is left.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { shardOf } from '../packages/indexer/src/shards.js';
import { runFleet, fleetFigures } from '../bench/fleet.js';
import { workerName } from '../bench/fleet-model.js';

test('kvgate bench fleet: 2 shards absorb every event, hold their engines exactly, and answer every cached prompt', async () => {
  const W = 40, B = 256, N = 2;
  const o = {
    workers: W,
    blocks: B,
    shards: [N],
    seconds: 2,
    qps: 40,
    qlen: 16,
    // a fixed churn (the measured one takes a few CPU seconds): 10 steps/s per engine of 4 + 4 blocks
    churn: { storedPerS: 40, removedPerS: 40, batchesPerS: 10, seconds: 1, numBlocks: B },
    drainTimeoutMs: 60_000,
    progress: () => {},
  };
  const res = await runFleet(o);
  assert.is(res.k, 4);
  const run = res.runs[0]!;
  assert.is(run.shards, N);
  assert.ok(run.drainSecs >= 0, 'every shard applied the last published batch');
  assert.is(run.lost, 0, 'the stream took every batch published');
  const owned = [0, 0];
  for (let w = 0; w < W; w++) owned[shardOf(workerName(w), N)]!++;
  for (const s of run.perShard) {
    assert.is(s.appliedSeq, s.streamEnd, `shard ${s.shard} applied every batch of its workers`);
    assert.ok(s.streamEnd > 0 && s.streamEnd <= run.lastSeq);
    assert.is(s.foreignSkipped, 0, `shard ${s.shard} was delivered its workers' batches only (subject filter)`);
    assert.is(s.gaps, 0, `shard ${s.shard}: no sequence gap`);
    assert.is(s.expectedEntries, owned[s.shard]! * B);
    assert.is(s.entries, s.expectedEntries, `shard ${s.shard} holds exactly its ${owned[s.shard]} engines × ${B} blocks`);
    assert.ok(Math.abs(s.entries - (W * B) / N) <= 0.35 * ((W * B) / N), `shard ${s.shard}: ${s.entries} entries ≈ total / N`);
    assert.ok(s.rssMb > 10 && Number.isFinite(s.rssMb), `shard ${s.shard} RSS ${s.rssMb} MB read from /proc`);
  }
  // the fill and the churn: W cleared batches, W × B/512 rounded up fill batches, then the churn steps
  assert.ok(run.lastSeq > W * 2, `stream holds the fill and the churn (${run.lastSeq} batches)`);
  assert.is(Math.max(...run.perShard.map((s) => s.streamEnd)), run.lastSeq, 'the last batch is some shard\'s');
  assert.ok(run.absorbedEventsPerS > 0 && run.publishedEventsPerS > 0);
  const m = run.match;
  assert.ok(m.queries >= 40, `${m.queries} queries sent`);
  assert.is(m.failures, 0, 'no query failed');
  assert.is(m.shardMisses, 0, 'every shard answered every query (1 s timeout)');
  assert.ok(m.hitsExpected > 0, 'cached prompts were asked');
  assert.is(m.hitsExact, m.hitsExpected, 'every cached prompt matched its engine with the whole prompt (scatter + merge)');
  assert.ok(m.p50 > 0 && m.p99 >= m.p50);
  const figs = fleetFigures(res, o);
  assert.equal(figs.map((f) => f.bench), ['fleet.2.events_per_s', 'fleet.2.match.p50', 'fleet.2.match.p99', 'fleet.2.rss_mb_per_shard']);
  for (const f of figs) assert.ok(Number.isFinite(f.value) && f.value > 0, `${f.bench} = ${f.value}`);
  // nothing left running
  for (const s of run.perShard) {
    let alive = true;
    try {
      process.kill(s.pid, 0);
    } catch {
      alive = false;
    }
    assert.not.ok(alive, `shard process ${s.pid} stopped`);
  }
});

test.run();
