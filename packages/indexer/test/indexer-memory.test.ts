/**
 * The indexer actor over MemoryBus: stream ingest, registry liveness, bus and in-process match, thread
 * shards, HTTP edge (real loopback sockets).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBus, MemoryHub, encode, decodeMatchReply, subjects, prefixHashes, hashToHex, initHashing, type EventBatch, type KvEvent } from '@kvgate/protocol';
import { startIndexer, type RunningIndexer } from '../src/index.js';
import { waitFor } from './helpers.js';

const S = subjects('default');
/** a worker id with characters the registry key must escape */
const W2 = 'w2@pod:0';

function batch(worker: string, seq: number, events: KvEvent[]): Uint8Array {
  return encode({ worker, seq, ts: Date.now(), events } satisfies EventBatch);
}

/** the shim's key escaping: characters outside [A-Za-z0-9_-] as `=xx` */
const keyOf = (worker: string) => worker.replace(/[^A-Za-z0-9_-]/g, (c) => '=' + c.charCodeAt(0).toString(16).padStart(2, '0'));

async function register(bus: MemoryBus, worker: string, model: string, blockSize: number, capacityBlocks = 100): Promise<void> {
  const kv = await bus.kv(S.workersBucket, { ttlMs: 3000 });
  await kv.put(keyOf(worker), encode({ worker, model, role: 'both', url: 'http://127.0.0.1:1', engineUrl: 'http://127.0.0.1:1', blockSize, capacityBlocks, loras: [], ts: Date.now() }));
}

async function http(port: number, method: string, path: string, body?: string): Promise<{ status: number; json: any; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method, ...(body !== undefined ? { body, headers: { 'content-type': 'application/json' } } : {}) });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON (metrics) */
  }
  return { status: res.status, json, text };
}

for (const shards of [0, 2]) {
  test(`ingest from the stream, match in process, over the bus and over HTTP (shards=${shards})`, async () => {
    await initHashing();
    const hub = new MemoryHub();
    const bus = new MemoryBus({ hub });
    const tokens = Array.from({ length: 64 }, (_, i) => i + 1);
    const hs = prefixHashes('m1', null, 16, tokens); // 4 blocks
    // events already in the stream before the indexer starts: it must replay them
    await bus.stream(S.eventStream, { subjects: [S.eventsAll] });
    bus.publish(S.events('w1'), batch('w1', 1, [{ t: 'stored', parent: null, hashes: hs }]));
    await bus.flush();
    let ix: RunningIndexer | null = null;
    try {
      ix = await startIndexer(new MemoryBus({ hub }), { id: `ix-${shards}`, shards, port: 0, gossipIntervalMs: 100 });
      await ix.whenReady(20_000);
      await register(bus, W2, 'm1', 16);
      bus.publish(S.events(W2), batch(W2, 1, [{ t: 'stored', parent: null, hashes: hs.slice(0, 2) }]));
      await waitFor(async () => (await ix!.client.match('m1', null, hs)).overlaps[W2] === 2, 20_000, 'w2 indexed');
      assert.equal((await ix.client.match('m1', null, hs)).overlaps, { w1: 4, [W2]: 2 });

      const reply = decodeMatchReply((await bus.request(S.indexMatch, encode({ model: 'm1', lora: null, hashes: hs }))).data);
      assert.equal(reply.overlaps, { w1: 4, [W2]: 2 });
      assert.ok(reply.indexerSeq >= 2);

      const port = ix.port!;
      let r = await http(port, 'POST', '/debug/match', JSON.stringify({ model: 'm1', tokens }));
      assert.is(r.status, 200);
      assert.equal(r.json.overlaps, { w1: 4, [W2]: 2 });
      assert.is(r.json.blockSize, 16, 'block size from the registry');
      r = await http(port, 'POST', '/debug/match', JSON.stringify({ model: 'm1', hashes: hs.slice(0, 3).map(hashToHex) }));
      assert.equal(r.json.overlaps, { w1: 3, [W2]: 2 });
      assert.is(r.json.tiers, undefined, 'no tiers key while every worker is GPU only');

      r = await http(port, 'POST', '/debug/match', '{nope');
      assert.is(r.status, 400);
      assert.is(r.json.error.kvg_code, 'KVG_BAD_JSON');
      r = await http(port, 'POST', '/debug/match', JSON.stringify({ model: 'other', tokens }));
      assert.is(r.status, 404);
      assert.is(r.json.error.type, 'not_found_error');
      r = await http(port, 'POST', '/debug/match', JSON.stringify({ model: 'other', tokens, blockSize: 16 }));
      assert.equal(r.json.overlaps, {}, 'another model roots other hashes');
      r = await http(port, 'POST', '/debug/match', JSON.stringify({ model: 'm1', hashes: ['xyz'] }));
      assert.is(r.status, 400);
      assert.not.ok(r.text.includes('at '), 'no stack trace');
      r = await http(port, 'GET', '/debug/workers');
      assert.is(r.json.workers.w1.blocks, 4);
      assert.is(r.json.workers.w1.registered, false);
      assert.is(r.json.workers[W2].registered, true);
      assert.is(r.json.lag, 0);
      r = await http(port, 'GET', '/metrics');
      assert.match(r.text, /kvgate_indexer_unregistered_batches_total 1/);
      assert.match(r.text, /kvgate_indexer_entries 6/);
      // a worker registering a large KV capacity sizes the index up front (4 B per block: ≥ 1 MiB for 300k)
      const bytesOf = (text: string) => Number(/kvgate_indexer_index_bytes (\d+)/.exec(text)![1]);
      const small = bytesOf(r.text);
      await register(bus, 'w3', 'm1', 16, 300_000);
      await waitFor(async () => bytesOf((await http(port, 'GET', '/metrics')).text) >= small + (1 << 20), 20_000, 'index sized from capacity');
      assert.equal((await ix.client.match('m1', null, hs)).overlaps, { w1: 4, [W2]: 2 }, 'answers unchanged by sizing');
      assert.is((await http(port, 'GET', '/readyz')).status, 200);
      assert.is((await http(port, 'GET', '/healthz')).status, 200);
      assert.is((await http(port, 'GET', '/nope')).status, 404);

      // w2 offloads: blocks 3-4 only in CPU memory (a CPU store), then block 1 also copied to CPU.
      // The GPU overlap stays 2; the reply's tiers say w2 reaches 4 blocks through the CPU tier.
      bus.publish(S.events(W2), batch(W2, 2, [{ t: 'stored', parent: hs[1]!, hashes: hs.slice(2), tier: 'cpu' }, { t: 'stored', parent: null, hashes: hs.slice(0, 1), tier: 'cpu' }]));
      await waitFor(async () => (await ix!.client.match('m1', null, hs)).tiers?.[W2]?.cpu === 4, 20_000, 'w2 cpu tier indexed');
      const tiered = await ix.client.match('m1', null, hs);
      assert.equal(tiered.overlaps, { w1: 4, [W2]: 2 });
      assert.equal(tiered.tiers, { [W2]: { gpu: 2, cpu: 4, disk: 4 } });
      const tReply = decodeMatchReply((await bus.request(S.indexMatch, encode({ model: 'm1', lora: null, hashes: hs }))).data);
      assert.equal(tReply.tiers, { [W2]: { gpu: 2, cpu: 4, disk: 4 } }, 'tiers over the bus');
      r = await http(port, 'POST', '/debug/match', JSON.stringify({ model: 'm1', tokens }));
      assert.equal(r.json.tiers, { [W2]: { gpu: 2, cpu: 4, disk: 4 } }, '/debug/match shows tiers');
      // the GPU copies go; the CPU copies stay: w2 holds no GPU block, but the CPU tier still reaches 4
      bus.publish(S.events(W2), batch(W2, 3, [{ t: 'removed', hashes: hs.slice(0, 2) }]));
      await waitFor(async () => (await ix!.client.match('m1', null, hs)).overlaps[W2] === undefined, 20_000, 'w2 GPU copies gone');
      assert.equal((await ix.client.match('m1', null, hs)).tiers, { [W2]: { gpu: 0, cpu: 1, disk: 1 } }, 'block 2 is on no tier: the CPU run stops after block 1');
      assert.is((await http(port, 'GET', '/debug/workers')).json.workers[W2].blocks, 3, 'w2 holds three blocks (on CPU)');

      // registry delete → dropped from the index
      const kv = await bus.kv(S.workersBucket, { ttlMs: 3000 });
      await kv.delete(keyOf(W2));
      await waitFor(async () => (await ix!.client.match('m1', null, hs)).tiers === undefined, 20_000, 'w2 dropped');
      assert.equal((await ix.client.match('m1', null, hs)).overlaps, { w1: 4 });
    } finally {
      await ix?.close();
      await bus.close();
    }
  });
}

test('bad payloads on the stream are counted and do not stop ingest', async () => {
  const hub = new MemoryHub();
  const bus = new MemoryBus({ hub });
  const ix = await startIndexer(new MemoryBus({ hub }), { port: 0 });
  try {
    await ix.whenReady(20_000);
    bus.publish(S.events('w9'), new Uint8Array([0xc1, 2, 3]));
    bus.publish(S.events('w9'), batch('w9', 1, [{ t: 'stored', parent: null, hashes: [5n] }]));
    await waitFor(async () => (await ix.client.match('m', null, [5n])).overlaps.w9 === 1, 20_000, 'w9 indexed');
    const r = await http(ix.port!, 'GET', '/metrics');
    assert.match(r.text, /kvgate_indexer_decode_errors 1/);
  } finally {
    await ix.close();
    await bus.close();
  }
});

test.run();
