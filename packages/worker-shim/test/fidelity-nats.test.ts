/**
 * Engine fidelity end to end: a real shim subscribed over real ZMQ to a fake engine that publishes today's
 * engine bytes (hand-written msgpack, see fidelity.test.ts for the upstream definitions), a real nats-server
 * (JetStream) and the real indexer. The indexer's GPU overlap must equal what the engine holds on GPU, and
 * the worker must never be cleared beyond the shim's start-up clear.
 *
 * Tiers are asserted at the relay (fidelity.test.ts): the indexer's tier support was not in the tree when this
 * test was written, so the offload scenario here keeps every offloaded block on GPU too (a tier-unaware indexer
 * and a tier-aware one then agree on the GPU overlap) and only the non-offloaded tail leaves the GPU.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createBus, initHashing, prefixHashes, subjects, type Bus } from '@kvgate/protocol';
import { startIndexer } from '@kvgate/indexer';
import { startShim } from '../src/index.js';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { BusView, FakeEngine, mp, waitFor } from './fake-engine.js';

await initHashing();
const MODEL = 'qwen3-8b';
const WORKER = 'w-fidelity';
const B = 4;
const S = subjects('default');
const toks = (n: number, base: number) => Array.from({ length: n }, (_, i) => base + i);
const H = (i: number) => 0xa000_0000_0000_0000n + BigInt(i) * 0x1_0003n;
type Bytes = number[];

const vStored = (hashes: bigint[], parent: bigint | null, tokens: number[], o: { medium?: string; blockSize?: number; extraKeys?: (Bytes | null)[]; group?: number; kind?: string } = {}): Bytes => {
  const f: [string, Bytes][] = [
    ['type', mp.str('BlockStored')],
    ['block_hashes', mp.array(hashes.map(mp.uint))],
    ['parent_block_hash', parent === null ? mp.nil() : mp.uint(parent)],
    ['token_ids', mp.array(tokens.map(mp.uint))],
    ['block_size', mp.uint(o.blockSize ?? B)],
    ['lora_id', mp.nil()],
    ['medium', mp.str(o.medium ?? 'GPU')],
    ['lora_name', mp.nil()],
  ];
  if (o.extraKeys) f.push(['extra_keys', mp.array(o.extraKeys.map((k) => k ?? mp.nil()))]);
  if (o.group !== undefined) f.push(['group_idx', mp.uint(o.group)]);
  if (o.kind !== undefined) f.push(['kv_cache_spec_kind', mp.str(o.kind)]);
  return mp.map(f);
};
const vRemoved = (hashes: bigint[], medium = 'GPU', group?: number): Bytes => {
  const f: [string, Bytes][] = [['type', mp.str('BlockRemoved')], ['block_hashes', mp.array(hashes.map(mp.uint))], ['medium', mp.str(medium)]];
  if (group !== undefined) f.push(['group_idx', mp.uint(group)]);
  return mp.map(f);
};
const vBatch = (events: Bytes[]) => Uint8Array.from(mp.map([['ts', mp.float64(Date.now() / 1000)], ['events', mp.array(events)], ['data_parallel_rank', mp.uint(0)]]));
const sgStored = (hashes: bigint[], parent: bigint | null, tokens: number[], salt: string): Bytes =>
  mp.array([mp.str('BlockStored'), mp.array(hashes.map(mp.uint)), parent === null ? mp.nil() : mp.uint(parent), mp.array(tokens.map(mp.uint)), mp.uint(B), mp.nil(), mp.str('GPU'), mp.map([['cache_salt', mp.str(salt)]])]);
const sgBatch = (events: Bytes[]) => Uint8Array.from(mp.array([mp.float64(Date.now() / 1000), mp.array(events), mp.uint(0)]));

let nats: NatsServerHandle;
test.before(async () => {
  nats = await startNatsServer();
});
test.after(async () => {
  await nats.stop();
});

test('offload placeholders, SGLang metadata, salts, hybrid groups, multimodal keys and a bad event over ZMQ + NATS: the index overlap is what the engine holds; never cleared', async () => {
  const shimBus: Bus = await createBus({ nats: nats.url });
  const idxBus: Bus = await createBus({ nats: nats.url });
  const engine = await new FakeEngine().start();
  const view = new BusView(shimBus, S.events(WORKER));
  const idx = await startIndexer(idxBus, { registryTtlMs: 5000 });
  const shim = await startShim(shimBus, { worker: WORKER, model: MODEL, engineUrl: engine.url, kvEvents: engine.kvEvents, kvReplay: engine.kvReplay, port: -1, replayProbeMs: 600_000 });
  try {
    await idx.whenReady();
    await engine.subscribed();
    // the start-up replay probe runs shortly after the SUB connects; on a loaded machine it can run after the
    // first batch below arrived, and then asks from seq 1: wait for it, so every later replay would be a gap's
    const counter = async (name: string) => {
      const text = await shim.metrics.registry.getSingleMetricAsString(`kvgate_shim_${name}`);
      return text.split('\n').filter((l) => l && !l.startsWith('#')).reduce((a, l) => a + Number(l.trim().split(/\s+/).pop()), 0);
    };
    await waitFor(async () => (await counter('replay_probes_total')) >= 1, 'start-up replay probe done');
    const overlap = async (hashes: bigint[]) => (await idx.client.match(MODEL, null, hashes)).overlaps[WORKER] ?? 0;

    // 1. vLLM with CPU offloading: 4 blocks on GPU; blocks 0-2 offloaded (placeholders) in the same batch as
    //    the GPU eviction of block 3 and a bad event; the GPU then holds blocks 0-2
    const a = toks(4 * B, 1000);
    const pa = prefixHashes(MODEL, '', B, a);
    await engine.send(vBatch([vStored([H(0), H(1), H(2), H(3)], null, a)]));
    await engine.send(vBatch([
      vStored([H(0)], null, [], { medium: 'CPU', blockSize: 0 }),
      mp.map([['type', mp.str('BlockStored')], ['block_hashes', mp.str('broken')]]),
      vStored([H(1)], null, [], { medium: 'CPU', blockSize: 0 }),
      vStored([H(2)], null, [], { medium: 'CPU', blockSize: 0 }),
      vRemoved([H(3)]),
    ]));
    await waitFor(async () => (await overlap(pa)) === 3, 'GPU overlap 3 after the offload batch');

    // 2. SGLang ≥ 0.5.18 salted request: metadata map at position 7
    const s = toks(2 * B, 2000);
    const ps = prefixHashes(MODEL, '', B, s, undefined, 'tenant-42');
    await engine.send(sgBatch([sgStored([51n], null, s.slice(0, B), 'tenant-42'), sgStored([52n], 51n, s.slice(B), 'tenant-42')]));
    // 3. vLLM salted request: the salt is the first block's extra key
    const v = toks(2 * B, 3000);
    const pv = prefixHashes(MODEL, '', B, v, undefined, 'tenant-7');
    await engine.send(vBatch([vStored([H(10), H(11)], null, v, { extraKeys: [mp.array([mp.str('tenant-7')]), null] })]));
    await waitFor(async () => (await overlap(ps)) === 2 && (await overlap(pv)) === 2, 'salted prompts indexed under their salts');
    assert.is(await overlap(prefixHashes(MODEL, '', B, s)), 0, 'the unsalted SGLang prompt gets no hit');
    assert.is(await overlap(prefixHashes(MODEL, '', B, v)), 0, 'the unsalted vLLM prompt gets no hit');

    // 4. hybrid model: the sliding-window group's store and eviction change nothing, the full-attention group's do
    const h = toks(3 * B, 4000);
    const ph = prefixHashes(MODEL, '', B, h);
    await engine.send(vBatch([
      vStored([H(20), H(21), H(22)], null, h, { group: 0, kind: 'sliding_window' }),
      vStored([H(20), H(21), H(22)], null, h, { group: 1, kind: 'full_attention' }),
      vRemoved([H(20), H(21)], 'GPU', 0),
      vRemoved([H(22)], 'GPU', 1),
    ]));
    // 5. multimodal: the image block and its child are never a text hit
    const m = toks(2 * B, 5000);
    await engine.send(vBatch([vStored([H(30), H(31)], null, m, { extraKeys: [mp.array([mp.array([mp.str('sha256:img'), mp.uint(0)])]), null] })]));
    await waitFor(async () => (await overlap(ph)) === 2, 'full-attention overlap 2');
    await shim.idle();
    await waitFor(async () => (await idx.indexer.digests())[WORKER]?.seq === shim.eventSeq, 'indexer caught up with the shim');
    assert.is(await overlap(prefixHashes(MODEL, '', B, m)), 0, 'multimodal blocks are no text hit');
    assert.is(await overlap(pa), 3);
    assert.is(await overlap(ph), 2);
    assert.is(view.cleared, 1, 'only the start-up clear: never cleared');
    assert.is(view.seqErrors, 0);
    assert.is(await counter('gaps_total'), 0, 'no sequence gap');
    assert.is(engine.replayRequests.length, 1, 'no replay but the start-up probe');
    const skipped = await shim.metrics.registry.getSingleMetricAsString('kvgate_shim_skipped_events_total');
    assert.ok(/reason="bad-block_hashes"[^\n]* 1/.test(skipped), skipped);
    assert.ok(/reason="non-full-attention-group"[^\n]* 2/.test(skipped), skipped);
  } finally {
    await shim.stop();
    view.close();
    await idx.close();
    await engine.close();
    await shimBus.close();
    await idxBus.close();
  }
});

test.run();
