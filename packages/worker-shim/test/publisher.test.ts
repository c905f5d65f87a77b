/**
 * The pure parts of publishing through an outage: the bounded batch buffer, the publisher's replay-in-order and
 * overflow → resync paths over a fake stream, and the relay's resync batch (whole block set, tiers kept).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeEventBatch, initHashing, prefixHashes, type EventBatch, type KvEvent } from '@kvgate/protocol';
import { BatchBuffer } from '../src/batch-buffer.js';
import { EventPublisher } from '../src/publisher.js';
import { EventRelay, RESYNC_MAX_HASHES } from '../src/relay.js';
import { createMetrics, type ShimMetrics } from '../src/metrics.js';
import { LoraNames } from '../src/lora.js';
import { mp, seqFrame, vllmArrayBatch, type Ev } from './fake-engine.js';
import { waitFor } from './fake-engine.js';

await initHashing();

const item = (seq: number, bytes = 10) => ({ seq, data: new Uint8Array(bytes), delayed: false });

test('buffer: bounded by batches and by bytes; settle puts failed ones back in front, in order', () => {
  const b = new BatchBuffer({ maxBatches: 3, maxBytes: 1000 });
  assert.ok(b.push(item(0)) && b.push(item(1)) && b.push(item(2)));
  assert.not.ok(b.push(item(3)), 'a fourth batch passes the count bound');
  assert.is(b.length, 3);
  assert.is(b.bytes, 30);
  const head = b.peek(2);
  assert.equal(head.map((x) => x.seq), [0, 1]);
  b.push(item(9)); // refused (full) — the buffer is unchanged
  b.settle(2, [head[1]!]);
  assert.equal(b.peek(10).map((x) => x.seq), [1, 2], 'the failed one is back at the front');
  assert.is(b.bytes, 20);
  const bytes = new BatchBuffer({ maxBatches: 100, maxBytes: 25 });
  assert.ok(bytes.push(item(0)) && bytes.push(item(1)));
  assert.not.ok(bytes.push(item(2)), 'a third batch passes the byte bound');
  bytes.clear();
  assert.is(bytes.length, 0);
  assert.is(bytes.bytes, 0);
});

const counter = async (m: ShimMetrics, name: string, labels = ''): Promise<number> => {
  const text = await m.registry.metrics();
  const re = new RegExp(`^kvgate_shim_${name}\\{${labels ? `${labels},` : ''}worker="w"\\} (\\S+)$`, 'm');
  return Number(re.exec(text)?.[1] ?? 0);
};

/** a fake stream: stores appends while `up`, rejects them otherwise */
function fakeStream() {
  const stored: number[] = [];
  const s = {
    up: true,
    reopens: 0,
    stored,
    append: async (data: Uint8Array) => {
      if (!s.up) throw new Error('no responders');
      stored.push(decodeEventBatch(data).seq);
      return stored.length;
    },
    reopen: async () => {
      s.reopens++;
      if (!s.up) throw new Error('no responders');
    },
  };
  return s;
}

const batch = (seq: number): EventBatch => ({ worker: 'w', seq, ts: 0, events: [{ t: 'stored', parent: null, hashes: [BigInt(seq + 1)] }] });

test('publisher: batches made while the bus is down are kept and stored in order once it is back', async () => {
  const metrics = createMetrics('w');
  const s = fakeStream();
  let connected = true;
  let resyncs = 0;
  const p = new EventPublisher({ worker: 'w', metrics, append: s.append, reopen: s.reopen, connected: () => connected, requestResync: () => resyncs++, maxBatches: 100, retryMs: 5 });
  p.publish(batch(0));
  await waitFor(() => s.stored.length === 1, 'first batch stored');
  s.up = false;
  p.publish(batch(1)); // append fails: kept
  await waitFor(async () => (await counter(metrics, 'publish_failures_total')) === 1, 'a failed append');
  connected = false;
  for (let q = 2; q < 20; q++) p.publish(batch(q));
  assert.is(p.buffered, 19);
  assert.is(await counter(metrics, 'publish_buffer_batches'), 19);
  s.up = true;
  connected = true;
  p.busReconnected();
  await waitFor(() => s.stored.length === 20, 'buffer replayed');
  assert.equal(s.stored, Array.from({ length: 20 }, (_, i) => i), 'stored once each, in order');
  assert.is(await counter(metrics, 'publish_replayed_batches_total'), 19);
  assert.is(await counter(metrics, 'publish_buffer_overflows_total'), 0);
  assert.is(resyncs, 0, 'no resync while the buffer held');
  assert.is(p.buffered, 0);
  p.stop();
});

test('publisher: past its bound the buffer is dropped; once the bus is back a resync is asked and published from', async () => {
  const metrics = createMetrics('w');
  const s = fakeStream();
  let connected = true;
  let resyncs = 0;
  const p = new EventPublisher({ worker: 'w', metrics, append: s.append, reopen: s.reopen, connected: () => connected, requestResync: () => resyncs++, maxBatches: 5, retryMs: 5 });
  p.publish(batch(0));
  await waitFor(() => s.stored.length === 1, 'first batch stored');
  connected = false;
  s.up = false;
  for (let q = 1; q <= 8; q++) p.publish(batch(q)); // the 6th overflows
  assert.is(p.state, 'overflowed');
  assert.is(p.buffered, 0);
  assert.is(await counter(metrics, 'publish_buffer_overflows_total'), 1);
  assert.is(await counter(metrics, 'publish_dropped_batches_total'), 8, 'the five kept, the one that overflowed and the two after');
  await new Promise((r) => setTimeout(r, 30));
  assert.is(resyncs, 0, 'no resync while the bus is down');
  connected = true;
  s.up = true;
  p.busReconnected();
  await waitFor(() => resyncs === 1, 'resync asked');
  assert.is(await counter(metrics, 'resyncs_total', 'reason="overflow"'), 1);
  p.publish(batch(9)); // made before the resync batch: replaced by it
  p.publish(batch(10), true);
  p.publish(batch(11));
  await waitFor(() => s.stored.length === 3, 'resync and its successor stored');
  assert.equal(s.stored, [0, 10, 11]);
  assert.is(await counter(metrics, 'publish_replayed_batches_total'), 0, 'nothing replayed');
  p.stop();
});

// ---- the relay's resync batch --------------------------------------------------------------------------------
const M = 'm';
const B = 2;
const st = (h: bigint, parent: bigint | null, tokens: number[]): Ev => ({ type: 'stored', hashes: [h], parent, tokens, blockSize: B });
/** vLLM ≤ 0.23 array encoding of a hash-only offload placeholder on CPU (the OffloadingConnector's event) */
function cpuPlaceholder(hashes: bigint[]): Uint8Array {
  const ev = mp.array([mp.str('BlockStored'), mp.array(hashes.map((h) => mp.uint(h))), mp.nil(), mp.array([]), mp.uint(0), mp.nil(), mp.str('CPU'), mp.nil()]);
  return Uint8Array.from(mp.array([mp.float64(Date.now() / 1000), mp.array([ev]), mp.uint(0)]));
}

test('relay resync: cleared + the block set per tier at the next seq; requests queued together share one', async () => {
  const out: { b: EventBatch; resync: boolean }[] = [];
  const relay = new EventRelay({
    worker: 'w', model: M, metrics: createMetrics('w'), loras: new LoraNames(), maxMapEntries: 1000, maxMailbox: 1000,
    publish: (b, resync) => out.push({ b, resync: resync === true }),
    replay: async () => null,
    refreshLoras: async () => undefined,
  });
  const frame = (seq: number, payload: Uint8Array) => [Buffer.alloc(0), seqFrame(seq), Buffer.from(payload)];
  relay.post(frame(0, vllmArrayBatch([st(1n, null, [1, 2]), st(2n, 1n, [3, 4]), st(3n, 2n, [5, 6]), st(7n, null, [9, 9])])));
  relay.post(frame(1, vllmArrayBatch([{ type: 'removed', hashes: [3n] }])));
  relay.post(frame(2, cpuPlaceholder([1n])));
  const [a, b] = [relay.resync(), relay.resync()];
  assert.ok(relay.resyncQueued);
  const seq = await a;
  assert.is(await b, seq, 'one resync for both');
  await relay.idle();
  const r = out.filter((x) => x.resync);
  assert.is(r.length, 1);
  assert.is(r[0]!.b.seq, seq);
  assert.is(seq, out.length - 1, 'at the next outgoing seq');
  const chain = prefixHashes(M, '', B, [1, 2, 3, 4, 5, 6]);
  const other = prefixHashes(M, '', B, [9, 9]);
  const evs = r[0]!.b.events;
  assert.equal(evs[0], { t: 'cleared' });
  const gpu = new Set(evs.flatMap((e) => (e.t === 'stored' && !e.tier ? e.hashes : [])));
  const cpu = new Set(evs.flatMap((e) => (e.t === 'stored' && e.tier === 'cpu' ? e.hashes : [])));
  assert.equal([...gpu].sort(), [chain[0]!, chain[1]!, other[0]!].sort(), 'GPU: what is held, not the removed block');
  assert.equal([...cpu], [chain[0]!], 'CPU copy kept with its tier');
  for (const e of evs) if (e.t === 'stored' && e.hashes[0] === chain[1]) assert.is(e.parent, chain[0], 'chains keep their parent');
  assert.not.ok(relay.resyncQueued);
});

test('relay resync: a block set past RESYNC_MAX_HASHES continues in the next batches, only the first clears', async () => {
  const out: EventBatch[] = [];
  const relay = new EventRelay({
    worker: 'w', model: M, metrics: createMetrics('w'), loras: new LoraNames(), maxMapEntries: 200_000, maxMailbox: 1000,
    publish: (b) => out.push(b), replay: async () => null, refreshLoras: async () => undefined,
  });
  // one long chain, 1,000 blocks per engine batch (the hand-written msgpack arrays hold at most 65,535 items)
  const per = 1000;
  const frames = Math.ceil((RESYNC_MAX_HASHES + 10) / per);
  const n = frames * per;
  for (let f = 0; f < frames; f++) {
    const hashes = Array.from({ length: per }, (_, i) => BigInt(f * per + i + 1));
    const parent = f === 0 ? null : BigInt(f * per);
    relay.post([Buffer.alloc(0), seqFrame(f), Buffer.from(vllmArrayBatch([{ type: 'stored', hashes, parent, tokens: Array.from({ length: per * B }, (_, i) => i % 1000), blockSize: B }]))]);
  }
  const seq = await relay.resync();
  const r = out.filter((b) => b.seq >= seq);
  assert.is(r.length, 2);
  assert.equal(r.map((b) => b.seq), [seq, seq + 1]);
  assert.is(r[0]!.events[0]!.t, 'cleared');
  assert.not.ok(r[1]!.events.some((e) => e.t === 'cleared'));
  const all = r.flatMap((b) => b.events.flatMap((e: KvEvent) => (e.t === 'stored' ? e.hashes : [])));
  assert.is(all.length, n);
  const second = r[1]!.events[0]!;
  assert.ok(second.t === 'stored' && second.parent === all[RESYNC_MAX_HASHES - 1], 'the continuation chains from the last block before it');
});

test.run();
