/**
 * Upgrading an event stream from the old subject form `kvgate.<ns>.events.<worker>` (stream subjects `events.*`) to
 * the shard-bit form `kvgate.<ns>.events.<b0>…<b5>.<worker>` (stream subjects `events.>`, issue 18), over a real
 * nats-server 2.9: the first upgraded process that opens the stream widens its subjects and keeps every message;
 * an unsharded indexer reads the old messages and old shims' new ones; a shard's subject filter does not match
 * the old form, so a sharded indexer holds a worker again once its shim is upgraded (a restarted shim publishes
 * `cleared` at seq 0 first). This is the upgrade order the docs give: indexers first, then shims — and an old
 * process opening the stream again narrows it back (new-form appends refused until an upgraded one reopens it).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { connect } from 'nats';
import { createBus, encode, initHashing, prefixHashes, subjects, type Bus, type EventBatch, type WorkerDigest } from '../packages/protocol/src/index.js';
import { shardOf, startIndexer, type RunningIndexer } from '../packages/indexer/src/index.js';
import { startNatsServer } from './harness/nats-server.js';
import { metricSum } from './harness/metrics.js';

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out (${timeoutMs} ms) waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const batch = (worker: string, seq: number, hashes: bigint[]) =>
  encode({ worker, seq, ts: Date.now(), events: [{ t: 'cleared' }, { t: 'stored', parent: null, hashes }] } satisfies EventBatch);
const text = (d: Record<string, WorkerDigest>) => JSON.stringify(Object.entries(d).sort(), (_, v) => (typeof v === 'bigint' ? v.toString(16) : v));

test('an events.* stream is widened to events.> on open; old messages stay readable unfiltered; shards see new-form batches only', async () => {
  await initHashing();
  const nats = await startNatsServer();
  const ns = `up${randomBytes(3).toString('hex')}`;
  const S = subjects(ns);
  const buses: Bus[] = [];
  const open: RunningIndexer[] = [];
  const bus = async () => {
    const b = await createBus({ nats: nats.url });
    buses.push(b);
    return b;
  };
  const nc = await connect({ servers: nats.url });
  try {
    const hs = prefixHashes('m1', null, 16, Array.from({ length: 64 }, (_, i) => i + 1));
    const cands = Array.from({ length: 40 }, (_, i) => `old-${i}`);
    const a = cands.find((w) => shardOf(w, 2) === 0)!;
    const b = cands.find((w) => shardOf(w, 2) === 1)!;
    const c = cands.filter((w) => shardOf(w, 2) === 0)[1]!;
    // before the upgrade: the stream as the old release made it, with old-form batches in it
    const shim = await bus();
    const old = await shim.stream(S.eventStream, { subjects: [`kvgate.${ns}.events.*`] });
    // (seq 0 then 1: a shim's history; a restart numbers from 0 again, which the indexer reads as the restart)
    for (const [w, n] of [[a, 2], [b, 3]] as const) for (const seq of [0, 1]) await old.append(`kvgate.${ns}.events.${w}`, batch(w, seq, hs.slice(0, n)));
    const jsm = await nc.jetstreamManager();
    assert.equal((await jsm.streams.info(S.eventStream)).config.subjects, [`kvgate.${ns}.events.*`]);

    // the upgraded unsharded indexer opens the stream: subjects widened, both old messages kept and read
    const u = await startIndexer(await bus(), { namespace: ns, id: 'whole', gossipIntervalMs: 200 });
    open.push(u);
    await u.whenReady(15_000);
    const si = await jsm.streams.info(S.eventStream);
    assert.equal(si.config.subjects, [S.eventsAll], 'widened to events.>');
    assert.is(si.state.messages, 4, 'old messages kept');
    await waitFor(async () => Object.values(await u.indexer.digests()).filter((d) => d.seq === 1).length === 2, 15_000, 'the unsharded indexer read the old messages');
    assert.equal(Object.fromEntries(Object.entries(await u.indexer.digests()).map(([w, d]) => [w, d.count])), { [a]: 2, [b]: 3 });

    // upgraded shards: ready at once (no new-form event yet), holding none of the old-form workers
    const shards = await Promise.all([0, 1].map(async (i) => startIndexer(await bus(), { namespace: ns, id: `s${i}`, shard: { index: i, of: 2 }, gossipIntervalMs: 200 })));
    open.push(...shards);
    await Promise.all(shards.map((s) => s.whenReady(15_000)));
    for (const s of shards) assert.equal(await s.indexer.digests(), {}, `${s.indexer.id}: a shard filter does not match the old form`);

    // an old shim still running publishes the old form into the widened stream: the unsharded indexer has it
    const widened = await shim.stream(S.eventStream, { subjects: [S.eventsAll] });
    for (const seq of [0, 1]) await widened.append(`kvgate.${ns}.events.${c}`, batch(c, seq, hs.slice(0, 1)));
    await waitFor(async () => (await u.indexer.digests())[c]?.seq === 1, 15_000, 'an old shim\'s new batches reach the unsharded indexer');
    assert.is((await u.indexer.digests())[c]!.count, 1);

    // shims upgraded (restarted): each publishes `cleared` at seq 0, now in the new form
    await widened.append(S.events(a), batch(a, 0, hs.slice(0, 4)));
    await widened.append(S.events(b), batch(b, 0, hs.slice(0, 1)));
    await widened.append(S.events(c), batch(c, 0, hs.slice(0, 2)));
    await waitFor(async () => Object.values(await u.indexer.digests()).every((d) => d.seq === 0), 15_000, 'the unsharded indexer has the new-form batches');
    assert.equal(Object.fromEntries(Object.entries(await u.indexer.digests()).map(([w, d]) => [w, d.count])), { [a]: 4, [b]: 1, [c]: 2 });
    const want = await u.indexer.digests();
    for (const [i, s] of shards.entries()) {
      const mine = Object.fromEntries(Object.entries(want).filter(([w]) => shardOf(w, 2) === i));
      await waitFor(async () => text(await s.indexer.digests()) === text(mine), 15_000, `shard ${i}/2 holds its upgraded workers`);
      assert.is(metricSum(await s.indexer.metrics.metrics(), 'kvgate_indexer_foreign_batches_skipped_total'), 0);
    }
    assert.equal(Object.keys(await shards[0]!.indexer.digests()).sort(), [a, c].sort());
    assert.equal(Object.keys(await shards[1]!.indexer.digests()), [b]);

    // why the order matters: an old process opening the stream again narrows it back, and new-form appends fail
    // until an upgraded one reopens it (the README's "do not restart old shims or indexers during the upgrade")
    await shim.stream(S.eventStream, { subjects: [`kvgate.${ns}.events.*`] });
    const raw = nc.jetstream();
    let refused: unknown = null;
    await raw.publish(S.events(a), batch(a, 1, hs.slice(0, 1)), { expect: { streamName: S.eventStream }, timeout: 2000 }).catch((e: unknown) => (refused = e));
    assert.ok(refused, 'a new-form append is not captured by events.*');
    await shim.stream(S.eventStream, { subjects: [S.eventsAll] });
    assert.ok((await raw.publish(S.events(a), batch(a, 1, hs.slice(0, 1)), { expect: { streamName: S.eventStream } })).seq > 0, 'captured again after an upgraded open');
    assert.is((await jsm.streams.info(S.eventStream)).state.messages, 10, 'nothing lost on the way: 4 + 2 old-form, 3 new-form, this one');
  } finally {
    for (const ix of open) await ix.close().catch(() => undefined);
    for (const b of buses) await b.close().catch(() => undefined);
    await nc.close();
    await nats.stop();
  }
});

test.run();
