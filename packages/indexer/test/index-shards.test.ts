/**
 * Index shards across processes (`kvgate indexer --shard i/N`, issue 18) over MemoryBus (no sockets): parseShard,
 * a shard given every worker's events holds only its own (stream replay and live, registrations too) and, N a power
 * of two, is delivered only its own (subject filter: nothing skipped, ready though the stream ends with another
 * shard's batch), an odd N reads everything and skips the rest, answers on
 * its own match subject only, and snapshots into `<dir>/shard-<N>-<i>` and back; thread shards inside a process
 * shard all get workers.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryBus, MemoryHub, decodeMatchReply, encode, initHashing, prefixHashes, subjects, type EventBatch, type KvEvent } from '@kvgate/protocol';
import { LocalShard, parseShard, shardOf, ShardSet, startIndexer, type RunningIndexer } from '../src/index.js';
import { waitFor } from './helpers.js';

const S = subjects('default');
// shardOf(·, 2): w0, w2, w4 → 0; w1, w3, w5 → 1 (asserted below, so a changed hash fails here first)
const SHARD0 = ['w0', 'w2', 'w4'];
const SHARD1 = ['w1', 'w3', 'w5'];
const ALL = ['w0', 'w1', 'w2', 'w3', 'w4', 'w5'];

function batch(worker: string, seq: number, events: KvEvent[]): Uint8Array {
  return encode({ worker, seq, ts: Date.now(), events } satisfies EventBatch);
}

async function register(bus: MemoryBus, worker: string): Promise<void> {
  const kv = await bus.kv(S.workersBucket, { ttlMs: 3000 });
  await kv.put(worker, encode({ worker, model: 'm1', role: 'both', url: 'http://127.0.0.1:1', engineUrl: 'http://127.0.0.1:1', blockSize: 16, capacityBlocks: 100, loras: [], ts: Date.now() }));
}

const counter = async (ix: RunningIndexer, name: string) => Number(new RegExp(`${name} (\\d+)`).exec(await ix.indexer.metrics.metrics())?.[1] ?? NaN);

test('parseShard: i/N with 0 ≤ i < N ≤ 1024, anything else a KVG_CONFIG error naming the value', () => {
  assert.equal(parseShard('0/2'), { index: 0, of: 2 });
  assert.equal(parseShard(' 3/4 '), { index: 3, of: 4 });
  assert.equal(parseShard('0/1'), { index: 0, of: 1 });
  assert.equal(parseShard('1023/1024'), { index: 1023, of: 1024 });
  for (const bad of ['2/2', '1/0', '0/1025', '-1/2', '1', '1/2/3', 'a/b', '', '0.5/2']) {
    try {
      parseShard(bad);
      assert.unreachable(`accepted ${JSON.stringify(bad)}`);
    } catch (e) {
      assert.is((e as { code?: string }).code, 'KVG_CONFIG', bad);
      assert.ok((e as Error).message.includes(JSON.stringify(bad)), `message names ${JSON.stringify(bad)}`);
    }
  }
});

test('shardOf splits the test workers as the tests assume', () => {
  for (const w of SHARD0) assert.is(shardOf(w, 2), 0, w);
  for (const w of SHARD1) assert.is(shardOf(w, 2), 1, w);
});

test('a process shard with thread shards spreads its workers over every thread (not the process hash again)', async () => {
  // every worker of process shard 0/2 has shardOf(w, 2) = 0: the thread split must not reuse that hash
  const mine = Array.from({ length: 200 }, (_, i) => `worker-${i}`).filter((w) => shardOf(w, 2) === 0);
  const held = async (set: ShardSet) => {
    mine.forEach((w, i) => set.inject(w, [{ t: 'stored', parent: null, hashes: [BigInt(i + 1)] }]));
    return Promise.all(set.shards.map(async (s) => Object.keys(await s.call<Record<string, unknown>>({ op: 'digests' })).length));
  };
  const spread = await held(new ShardSet([new LocalShard(), new LocalShard()], 2));
  assert.ok(spread[0]! > 0 && spread[1]! > 0, `both threads hold workers (${spread.join(', ')})`);
  assert.is(spread[0]! + spread[1]!, mine.length);
  // what it was before: fnv mod 2 again, every worker in thread 0
  assert.equal(await held(new ShardSet([new LocalShard(), new LocalShard()])), [mine.length, 0]);
});

for (const threads of [0, 2]) {
  test(`a shard given every worker's events holds only its own; snapshot in <dir>/shard-2-<i> and back (threads=${threads})`, async () => {
    await initHashing();
    const hub = new MemoryHub();
    const shim = new MemoryBus({ hub });
    const dir = mkdtempSync(join(tmpdir(), 'kvgate-shard-snap-'));
    const open: RunningIndexer[] = [];
    let refresh: NodeJS.Timeout | undefined;
    const hs = prefixHashes('m1', null, 16, Array.from({ length: 64 }, (_, i) => i + 1)); // 4 blocks
    // worker k caches the first 1 + (k mod 4) blocks of the same prompt: every worker overlaps, differently
    const depth = (w: string) => 1 + (Number(w.slice(1)) % 4);
    try {
      await shim.stream(S.eventStream, { subjects: [S.eventsAll] });
      // half the history is in the stream before the shards start (replay), half arrives live
      for (const w of ALL.slice(0, 3)) shim.publish(S.events(w), batch(w, 1, [{ t: 'stored', parent: null, hashes: hs.slice(0, depth(w)) }]));
      await shim.flush();
      const start = (i: number, id: string) => startIndexer(new MemoryBus({ hub }), { id, shards: threads, shard: { index: i, of: 2 }, snapshotDir: dir, snapshotIntervalMs: 60_000, gossipIntervalMs: 100 });
      const s0 = await start(0, 'sh0');
      open.push(s0);
      const s1 = await start(1, 'sh1');
      open.push(s1);
      assert.equal(s0.indexer.shard, { index: 0, of: 2 });
      // the stream ends with w2's batch (shard 0) at start-up: shard 1's end is w1's (seq 2), and it gets ready there
      await Promise.all([s0.whenReady(20_000), s1.whenReady(20_000)]);
      assert.is(s1.indexer.streamSeq, 2, 'shard 1 ready at its last event, not the stream\'s');
      assert.is(s0.indexer.streamSeq, 3);
      // the shims' registrations, kept alive as a shim does (the bucket's TTL is 3 s)
      for (const w of ALL) await register(shim, w);
      refresh = setInterval(() => void Promise.all(ALL.map((w) => register(shim, w))).catch(() => undefined), 500);
      for (const w of ALL.slice(3)) shim.publish(S.events(w), batch(w, 1, [{ t: 'stored', parent: null, hashes: hs.slice(0, depth(w)) }]));
      // the stream's last message is another shard's worker for one of them: its position still reaches the end
      shim.publish(S.events('w5'), batch('w5', 2, [{ t: 'removed', hashes: [hs[3]!] }]));
      await shim.flush();
      const want = (ws: string[]) => Object.fromEntries(ws.map((w) => [w, w === 'w5' ? Math.min(depth(w), 3) : depth(w)]));
      // stream: w0 w1 w2 | w3 w4 w5 w5 — each shard is delivered its workers' batches: its position is its last one's seq
      await waitFor(() => s0.indexer.streamSeq === 5 && s1.indexer.streamSeq === 7, 20_000, 'each shard read its workers\' batches');
      await waitFor(async () => Object.keys((await s1.client.match('m1', null, hs)).overlaps).length === 3, 20_000, 'shard 1 caught up');
      await waitFor(async () => Object.keys((await s0.client.match('m1', null, hs)).overlaps).length === 3, 20_000, 'shard 0 caught up');
      assert.equal((await s0.client.match('m1', null, hs)).overlaps, want(SHARD0));
      assert.equal((await s1.client.match('m1', null, hs)).overlaps, want(SHARD1));
      assert.equal(Object.keys(await s0.indexer.digests()).sort(), SHARD0, 'shard 0 digests: its workers only');
      assert.equal(Object.keys(await s1.indexer.digests()).sort(), SHARD1, 'shard 1 digests: its workers only');
      // registrations: the other shard's workers are not listed (not even as registered without blocks)
      await waitFor(async () => Object.values(await s0.indexer.workers()).every((w) => w.registered), 20_000, 'shard 0 registry');
      assert.equal(Object.keys(await s0.indexer.workers()).sort(), SHARD0);
      assert.equal(Object.keys(await s1.indexer.workers()).sort(), SHARD1);
      assert.ok(s0.indexer.registration('w0'));
      assert.is(s0.indexer.registration('w1'), undefined);
      // a model only shard 1's workers serve: shard 0 still knows its block size (for /debug/match with tokens)
      assert.is(shardOf('w7', 2), 1);
      await (await shim.kv(S.workersBucket, { ttlMs: 3000 })).put('w7', encode({ worker: 'w7', model: 'm2', role: 'both', url: 'http://127.0.0.1:1', engineUrl: 'http://127.0.0.1:1', blockSize: 32, capacityBlocks: 100, loras: [], ts: Date.now() }));
      await waitFor(() => s0.indexer.blockSizeOf('m2') === 32, 20_000, 'shard 0 learns m2\'s block size');
      assert.is(s0.indexer.registration('w7'), undefined);
      assert.is(s0.indexer.streamSeq, 5, 'shard 0 at w4\'s batch: the foreign tail is not its to read');
      assert.is(s1.indexer.streamSeq, 7);
      assert.is(await s0.indexer.lag(), 0, 'and not behind');
      assert.is(await s1.indexer.lag(), 0);
      assert.is(await counter(s0, 'kvgate_indexer_foreign_batches_skipped_total'), 0, 'the filter delivered no foreign batch');
      assert.is(await counter(s1, 'kvgate_indexer_foreign_batches_skipped_total'), 0);
      assert.is(await counter(s0, 'kvgate_indexer_stream_messages_total'), 3);
      assert.is(await counter(s1, 'kvgate_indexer_stream_messages_total'), 4);

      // each shard answers its own subject in its own queue group; nobody answers the unsharded subject
      const req = encode({ model: 'm1', lora: null, hashes: hs });
      assert.equal(decodeMatchReply((await shim.request(S.indexMatchShard(0, 2), req, { timeoutMs: 2000 })).data).overlaps, want(SHARD0));
      assert.equal(decodeMatchReply((await shim.request(S.indexMatchShard(1, 2), req, { timeoutMs: 2000 })).data).overlaps, want(SHARD1));
      try {
        await shim.request(S.indexMatch, req, { timeoutMs: 200 });
        assert.unreachable('a shard answered the unsharded subject');
      } catch (e) {
        assert.instance(e, Error);
      }

      // snapshots: one directory per shard under the configured one
      const f0 = await s0.indexer.snapshotNow();
      const f1 = await s1.indexer.snapshotNow();
      assert.is(f0, join(dir, 'shard-2-0', 'sh0.snap'));
      assert.is(f1, join(dir, 'shard-2-1', 'sh1.snap'));
      assert.equal(readdirSync(dir).sort(), ['shard-2-0', 'shard-2-1']);
      assert.not.ok(existsSync(join(dir, 'sh0.snap')), 'nothing in the root directory');
      await s0.close();
      open.splice(open.indexOf(s0), 1);
      // a restarted replica of shard 0 (another id) loads shard 0's snapshot, not shard 1's, and has nothing to replay
      const s0b = await start(0, 'sh0-b');
      open.push(s0b);
      await s0b.whenReady(20_000);
      assert.is(s0b.indexer.streamSeq, 5);
      assert.equal(Object.keys(await s0b.indexer.digests()).sort(), SHARD0);
      assert.equal((await s0b.client.match('m1', null, hs)).overlaps, want(SHARD0));
      assert.is(await counter(s0b, 'kvgate_indexer_stream_messages_total'), 0, 'all from the snapshot');
    } finally {
      clearInterval(refresh);
      for (const ix of open) await ix.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('resharding 1 → 2 → 3: shards without a snapshot of their own start from the unsharded one (the stream was trimmed behind it), then from the untrimmed stream', async () => {
  await initHashing();
  const hub = new MemoryHub();
  const shim = new MemoryBus({ hub });
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-reshard-'));
  const open: RunningIndexer[] = [];
  const hs = prefixHashes('m1', null, 16, Array.from({ length: 96 }, (_, i) => i + 1)); // 6 blocks
  const seqs = new Map<string, number>();
  const want: Record<string, number> = {};
  /** worker → stream seq of its last batch (every publish here is the stream's next message) */
  const at = new Map<string, number>();
  let streamSeq = 0;
  /** worker w now caches the first `n` blocks (a cleared batch then the chain: the depth is exactly n) */
  const put = (w: string, n: number) => {
    const seq = (seqs.get(w) ?? 0) + 1;
    seqs.set(w, seq);
    shim.publish(S.events(w), batch(w, seq, [{ t: 'cleared' }, { t: 'stored', parent: null, hashes: hs.slice(0, n) }]));
    at.set(w, ++streamSeq);
    want[w] = n;
  };
  /**
   * where shard i of `of` stands once caught up: a power-of-two shard is delivered its workers' batches only (and
   * starts at the unsharded snapshot's 6), another reads (and skips) up to the stream's end
   */
  const endOf = (of: number, i: number) => ((of & (of - 1)) === 0 ? Math.max(6, ...[...at].filter(([w]) => shardOf(w, of) === i).map(([, q]) => q)) : streamSeq);
  const only = (of: number, i: number) => Object.fromEntries(Object.entries(want).filter(([w]) => shardOf(w, of) === i));
  const stream = await shim.stream(S.eventStream, { subjects: [S.eventsAll] });
  try {
    ALL.forEach((w, k) => put(w, 1 + (k % 6)));
    await shim.flush();
    const u = await startIndexer(new MemoryBus({ hub }), { id: 'whole', snapshotDir: dir, snapshotIntervalMs: 60_000, gossipIntervalMs: 100 });
    open.push(u);
    await u.whenReady(20_000);
    await u.indexer.snapshotNow();
    // the only unsharded replica trims the stream behind its snapshot: what came before is in the snapshot alone
    await waitFor(async () => (await stream.info()).firstSeq > 6, 20_000, 'stream trimmed behind the unsharded snapshot');
    ALL.forEach((w, k) => k % 2 === 0 && put(w, 6 - (k % 6))); // after the snapshot: only in the stream
    await shim.flush();
    await waitFor(() => u.indexer.streamSeq === 9, 20_000, 'unsharded caught up');
    await u.close();
    open.splice(0);

    const layout = async (of: number) => {
      const ixs = await Promise.all(Array.from({ length: of }, (_, i) => startIndexer(new MemoryBus({ hub }), { id: `r${of}-${i}`, shard: { index: i, of }, snapshotDir: dir, snapshotIntervalMs: 60_000 })));
      open.push(...ixs);
      await Promise.all(ixs.map((ix) => ix.whenReady(20_000)));
      for (const [i, ix] of ixs.entries()) {
        await waitFor(() => ix.indexer.streamSeq === endOf(of, i), 20_000, `shard ${i}/${of} caught up at ${endOf(of, i)}`);
        assert.equal((await ix.client.match('m1', null, hs)).overlaps, only(of, i), `shard ${i}/${of}: its workers, before and after the trim`);
      }
      return ixs;
    };
    const two = await layout(2);
    // a sharded deployment never trims: 2 → 3 could replay everything since the unsharded snapshot
    for (const ix of two) await ix.indexer.snapshotNow();
    ALL.forEach((w, k) => k % 2 === 1 && put(w, 2));
    await shim.flush();
    for (const [i, ix] of two.entries()) await waitFor(() => ix.indexer.streamSeq === endOf(2, i), 20_000, `shard ${i}/2 caught up at ${endOf(2, i)}`);
    await new Promise((r) => setTimeout(r, 300)); // gossip ticks: none of them trims
    assert.is((await stream.info()).firstSeq, 7, 'no shard trimmed the stream');
    for (const ix of two) assert.is(await counter(ix, 'kvgate_indexer_foreign_batches_skipped_total'), 0, `${ix.indexer.id}: filtered`);
    for (const ix of two) await ix.close();
    open.splice(0);
    // N = 3 has no subject filter: every shard reads every batch and skips the others' (N = 2 was delivered none)
    for (const ix of await layout(3)) assert.ok(await counter(ix, 'kvgate_indexer_foreign_batches_skipped_total') > 0, `${ix.indexer.id} skipped foreign batches`);
    assert.equal(readdirSync(dir).sort(), ['shard-2-0', 'shard-2-1', 'whole.snap']);
  } finally {
    for (const ix of open) await ix.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('shard 0/1 is the whole index: no shard, the unsharded subject, snapshots in the directory itself', async () => {
  await initHashing();
  const hub = new MemoryHub();
  const shim = new MemoryBus({ hub });
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-shard-snap-'));
  let ix: RunningIndexer | null = null;
  try {
    await shim.stream(S.eventStream, { subjects: [S.eventsAll] });
    const hs = prefixHashes('m1', null, 16, Array.from({ length: 32 }, (_, i) => i + 1));
    for (const w of ALL) shim.publish(S.events(w), batch(w, 1, [{ t: 'stored', parent: null, hashes: hs }]));
    await shim.flush();
    ix = await startIndexer(new MemoryBus({ hub }), { id: 'whole', shard: parseShard('0/1'), snapshotDir: dir, snapshotIntervalMs: 60_000 });
    await ix.whenReady(20_000);
    assert.is(ix.indexer.shard, null);
    await waitFor(async () => Object.keys(await ix!.indexer.digests()).length === 6, 20_000, 'all workers');
    const r = decodeMatchReply((await shim.request(S.indexMatch, encode({ model: 'm1', lora: null, hashes: hs }), { timeoutMs: 2000 })).data);
    assert.is(Object.keys(r.overlaps).length, 6);
    assert.is(await ix.indexer.snapshotNow(), join(dir, 'whole.snap'));
  } finally {
    await ix?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
