/**
 * vLLM event batches written byte by byte (test/fake-engine.ts `mp`), in both encodings, published from
 * a test ZMQ PUB, end up as the right kvgate prefixes on the bus. Also: malformed frames, gaps repaired
 * through replay, unrepairable gaps, engine restarts, start-up relearning, and block size / capacity
 * learned from vllm:cache_config_info on a fake /metrics server.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeLoad, decodeRegistration, initHashing, MemoryBus, prefixHashes, subjects, type LoadReport } from '@kvgate/protocol';
import { startIndexer } from '@kvgate/indexer';
import { startShim, registryKey, type ShimOptions } from '../src/index.js';
import { BusView, FakeEngine, sameSet, vllmArrayBatch, vllmMapBatch, waitFor, type Ev } from './fake-engine.js';

await initHashing();

const MODEL = 'qwen3-8b';
const WORKER = 'w-bytes';
const B = 4;
const S = subjects('default');
const METRICS = `# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="4",num_gpu_blocks="1234",enable_prefix_caching="True"} 1.0
vllm:num_requests_running{model_name="qwen3-8b"} 2.0
vllm:num_requests_waiting{model_name="qwen3-8b"} 1.0
vllm:kv_cache_usage_perc{model_name="qwen3-8b"} 0.125
`;
const toks = (n: number, base = 100) => Array.from({ length: n }, (_, i) => base + i);
/** uint64 hashes above 2^63, as vLLM's int hashes often are */
const H = (i: number) => 0x8000_0000_0000_0000n + BigInt(i) * 0x1_0000_0001n;
const digest = (i: number) => Uint8Array.from({ length: 32 }, (_, j) => (i * 31 + j) & 0xff);

async function setup(extra: Partial<ShimOptions> = {}, engineOpts: { models?: unknown; preload?: Uint8Array[] } = {}) {
  const bus = new MemoryBus();
  const engine = await new FakeEngine({ metricsText: METRICS, models: engineOpts.models }).start();
  for (const p of engineOpts.preload ?? []) await engine.send(p); // nobody subscribed yet: only the replay buffer has them
  const view = new BusView(bus, S.events(WORKER));
  const shim = await startShim(bus, {
    worker: WORKER,
    model: MODEL,
    engineUrl: engine.url,
    kvEvents: engine.kvEvents,
    kvReplay: engine.kvReplay,
    port: -1,
    scrapeIntervalMs: 50,
    replayTimeoutMs: 2000,
    replayProbeMs: 600_000, // probes only on connect: the tests below count gaps and replays exactly
    ...extra,
  });
  await engine.subscribed();
  const close = async () => {
    await shim.stop();
    view.close();
    await engine.close();
    await bus.close();
  };
  return { bus, engine, view, shim, close };
}

async function counter(shim: { metrics: { registry: { getSingleMetricAsString(n: string): Promise<string> } } }, name: string, label = ''): Promise<number> {
  const text = await shim.metrics.registry.getSingleMetricAsString(`kvgate_shim_${name}`);
  let total = 0;
  for (const line of text.split('\n')) if (!line.startsWith('#') && line.includes(label)) total += Number(line.trim().split(/\s+/).pop());
  return total;
}

for (const [encoding, batch] of [['array', vllmArrayBatch], ['map', vllmMapBatch]] as const) {
  test(`${encoding} encoding, uint64 hashes: stored chains and removals become kvgate prefixes`, async () => {
    const { engine, view, shim, close } = await setup();
    try {
      const tokens = toks(3 * B);
      const want = prefixHashes(MODEL, '', B, tokens);
      await engine.send(batch([{ type: 'stored', hashes: [H(0), H(1)], parent: null, tokens: tokens.slice(0, 2 * B), blockSize: B }]));
      await engine.send(batch([{ type: 'stored', hashes: [H(2)], parent: H(1), tokens: tokens.slice(2 * B), blockSize: B }]));
      await waitFor(() => view.has(want), 'three blocks');
      assert.ok(sameSet(view.blocks, want));
      const second = view.batches.find((b) => b.events.some((e) => e.t === 'stored' && e.hashes[0] === want[2]))!;
      assert.equal(second.events[0], { t: 'stored', parent: want[1], hashes: [want[2]] });
      await engine.send(batch([{ type: 'removed', hashes: [H(2), H(99)] }]));
      await waitFor(() => !view.blocks.has(want[2]!), 'removal');
      assert.ok(sameSet(view.blocks, want.slice(0, 2)));
      assert.is(view.seqErrors, 0);
      assert.is(view.cleared, 1, 'only the start-up clear');
      assert.is(await counter(shim, 'unknown_removals_total'), 1);
      await engine.send(batch([{ type: 'cleared' }]));
      await waitFor(() => view.cleared === 2, 'AllBlocksCleared relayed');
      assert.is(view.blocks.size, 0);
    } finally {
      await close();
    }
  });

  test(`${encoding} encoding, 32-byte digests and lora_name`, async () => {
    const { engine, view, close } = await setup();
    try {
      const tokens = toks(2 * B, 7);
      const want = prefixHashes(MODEL, 'sql-lora', B, tokens);
      await engine.send(batch([{ type: 'stored', hashes: [digest(1)], parent: null, tokens: tokens.slice(0, B), blockSize: B, loraId: 3, loraName: 'sql-lora' }]));
      await engine.send(batch([{ type: 'stored', hashes: [digest(2)], parent: digest(1), tokens: tokens.slice(B), blockSize: B, loraId: 3, loraName: 'sql-lora' }]));
      await waitFor(() => view.has(want), 'lora blocks');
      assert.ok(sameSet(view.blocks, want));
      assert.not.ok(view.has(prefixHashes(MODEL, '', B, tokens).slice(0, 1)), 'not hashed as the base model');
      await engine.send(batch([{ type: 'removed', hashes: [digest(1), digest(2)] }]));
      await waitFor(() => view.blocks.size === 0, 'digest removals');
    } finally {
      await close();
    }
  });
}

test('a hand-written hex batch (vLLM array encoding) decodes to the golden prefix', async () => {
  const { engine, view, close } = await setup();
  try {
    // [1.5, [["BlockStored", [0xffffffffffffffff], nil, [1,2,3,4], 4, nil, "GPU", nil]], 0]
    const hex = '93' + 'cb3ff8000000000000' + '91' + '98' + 'ab426c6f636b53746f726564' + '91cfffffffffffffffff' + 'c0' + '9401020304' + '04' + 'c0' + 'a3475055' + 'c0' + '00';
    await engine.send(Buffer.from(hex, 'hex'));
    const want = prefixHashes(MODEL, '', 4, [1, 2, 3, 4]);
    await waitFor(() => view.has(want), 'golden block');
    assert.ok(sameSet(view.blocks, want));
  } finally {
    await close();
  }
});

test('lora_id without lora_name resolves through the engine /v1/models, and --lora-map wins', async () => {
  const models = { object: 'list', data: [{ id: MODEL, parent: null }, { id: 'alpha', parent: MODEL }, { id: 'beta', parent: MODEL }] };
  const { engine, view, shim, close } = await setup({ loraMap: '1=flagged' }, { models });
  try {
    const t = toks(B, 50);
    await engine.send(vllmArrayBatch([
      { type: 'stored', hashes: [1n], parent: null, tokens: t, blockSize: B, loraId: 2 },
      { type: 'stored', hashes: [2n], parent: null, tokens: t, blockSize: B, loraId: 1 },
      { type: 'stored', hashes: [3n], parent: null, tokens: t, blockSize: B, loraId: 9 },
    ]));
    const want = [...prefixHashes(MODEL, 'beta', B, t), ...prefixHashes(MODEL, 'flagged', B, t)];
    await waitFor(() => view.has(want), 'lora blocks');
    await shim.idle();
    assert.ok(sameSet(view.blocks, want), 'the unknown lora id 9 is dropped, not hashed as something else');
    assert.is(await counter(shim, 'skipped_events_total', 'unknown-lora'), 1);
  } finally {
    await close();
  }
});

test('malformed ZMQ frames are counted and skipped; a bad event costs only itself, not its batch', async () => {
  const { engine, view, shim, close } = await setup();
  try {
    const t = toks(2 * B);
    const want = prefixHashes(MODEL, '', B, t);
    await engine.sendRaw([Buffer.from('only-one-frame')]);
    await engine.sendRaw([Buffer.alloc(0), Buffer.from([0, 0, 0]), Buffer.from([0x90])]); // 3-byte seq
    await engine.sendRaw([Buffer.alloc(0), Buffer.alloc(8), Buffer.from([0xc1, 0xc1, 0xc1])]); // msgpack never-used byte
    // one batch: a BlockStored whose 3 tokens are no whole block of 4, then a good one
    await engine.send(vllmArrayBatch([
      { type: 'stored', hashes: [9n], parent: null, tokens: t.slice(0, 3), blockSize: B },
      { type: 'stored', hashes: [1n, 2n], parent: null, tokens: t, blockSize: B },
    ]));
    await waitFor(() => view.has(want), 'the good event of the batch');
    await shim.idle();
    assert.ok(sameSet(view.blocks, want));
    assert.is(await counter(shim, 'malformed_frames_total'), 3);
    assert.is(await counter(shim, 'skipped_events_total', 'reason="token-count"'), 1);
    assert.is(view.cleared, 1, 'only the start-up clear');
    assert.is(await counter(shim, 'gaps_total'), 0);
    assert.ok(!engine.replayRequests.includes(1n), 'no replay for the batch that had a bad event');
  } finally {
    await close();
  }
});

test('a gap is repaired through the replay socket', async () => {
  const { engine, view, shim, close } = await setup();
  try {
    const t = toks(3 * B);
    const want = prefixHashes(MODEL, '', B, t);
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [H(0)], parent: null, tokens: t.slice(0, B), blockSize: B }]));
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [H(1)], parent: H(0), tokens: t.slice(B, 2 * B), blockSize: B }]), { live: false });
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [H(2)], parent: H(1), tokens: t.slice(2 * B), blockSize: B }]));
    await waitFor(() => view.has(want), 'all three blocks');
    assert.ok(engine.replayRequests.includes(1n));
    assert.is(await counter(shim, 'gaps_total'), 1);
    assert.ok((await counter(shim, 'replays_total', 'complete')) >= 1);
    assert.is(view.cleared, 1, 'a repaired gap does not clear');
    assert.is(view.seqErrors, 0);
  } finally {
    await close();
  }
});

test('a gap replay cannot fill clears the worker, then relearns from new events', async () => {
  const { engine, view, shim, close } = await setup();
  try {
    const t = toks(3 * B);
    const want = prefixHashes(MODEL, '', B, t);
    const other = prefixHashes(MODEL, '', B, toks(B, 9000));
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [H(0)], parent: null, tokens: t.slice(0, B), blockSize: B }]));
    await waitFor(() => view.has(want.slice(0, 1)), 'first block');
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [H(1)], parent: H(0), tokens: t.slice(B, 2 * B), blockSize: B }]), { live: false, replay: false });
    await engine.send(vllmArrayBatch([
      { type: 'stored', hashes: [H(2)], parent: H(1), tokens: t.slice(2 * B), blockSize: B },
      { type: 'stored', hashes: [H(3)], parent: null, tokens: toks(B, 9000), blockSize: B },
    ]));
    await waitFor(() => view.has(other), 'relearned block');
    await shim.idle();
    assert.is(view.cleared, 2);
    assert.ok(sameSet(view.blocks, other), 'the child of the lost block is not attached anywhere');
    assert.is(await counter(shim, 'unknown_parents_total'), 1);
    // the replay answered nothing for seq 1 (or, on a loaded machine, did not answer in time): either way, lost
    assert.is((await counter(shim, 'replays_total', 'empty')) + (await counter(shim, 'replays_total', 'unavailable')), 1);
  } finally {
    await close();
  }
});

test('an engine restart (sequence goes down) yields cleared, then the new state', async () => {
  const { engine, view, shim, close } = await setup();
  try {
    const a = toks(2 * B);
    const b = toks(B, 5000);
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [1n, 2n], parent: null, tokens: a, blockSize: B }]));
    await engine.send(vllmArrayBatch([{ type: 'removed', hashes: [2n] }]));
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [2n], parent: 1n, tokens: a.slice(B), blockSize: B }]));
    await waitFor(() => view.has(prefixHashes(MODEL, '', B, a)), 'old state');
    engine.seq = 0n;
    engine.buffer.clear();
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [1n], parent: null, tokens: b, blockSize: B }]));
    const want = prefixHashes(MODEL, '', B, b);
    await waitFor(() => view.cleared === 2 && view.has(want), 'cleared and new state');
    assert.ok(sameSet(view.blocks, want));
    assert.is(await counter(shim, 'engine_restarts_total'), 1);
  } finally {
    await close();
  }
});

test('a shim started beside a running engine relearns its cache through replay', async () => {
  const t = toks(2 * B);
  const want = prefixHashes(MODEL, '', B, t);
  const pre = [
    vllmMapBatch([{ type: 'stored', hashes: [H(0)], parent: null, tokens: t.slice(0, B), blockSize: B }]),
    vllmMapBatch([{ type: 'stored', hashes: [H(1)], parent: H(0), tokens: t.slice(B), blockSize: B }]),
  ];
  const { engine, view, close } = await setup({}, { preload: pre });
  try {
    const more = toks(B, 777);
    await engine.send(vllmMapBatch([{ type: 'stored', hashes: [H(5)], parent: null, tokens: more, blockSize: B }]));
    await waitFor(() => view.has([...want, ...prefixHashes(MODEL, '', B, more)]), 'replayed and live blocks');
    assert.ok(engine.replayRequests.includes(0n));
  } finally {
    await close();
  }
});

test('block size and capacity come from vllm:cache_config_info; load is reported and follows changes', async () => {
  const { bus, engine, shim, close } = await setup({ blockSize: 16, loadIntervalMs: 100 });
  const loads: LoadReport[] = [];
  const sub = bus.subscribe(S.load(WORKER), { callback: (m) => loads.push(decodeLoad(m.data)) });
  try {
    assert.is(shim.blockSize, 4);
    assert.is(shim.capacityBlocks, 1234);
    const kv = await bus.kv(S.workersBucket);
    const reg = decodeRegistration((await kv.get(registryKey(WORKER)))!);
    assert.equal([reg.worker, reg.model, reg.role, reg.blockSize, reg.capacityBlocks], [WORKER, MODEL, 'both', 4, 1234]);
    await waitFor(() => loads.length > 0, 'a load report');
    assert.equal([loads[0]!.running, loads[0]!.waiting, loads[0]!.kvUsage, loads[0]!.capacityBlocks], [2, 1, 0.125, 1234]);
    engine.metricsText = METRICS.replace('waiting{model_name="qwen3-8b"} 1.0', 'waiting{model_name="qwen3-8b"} 9.0');
    await waitFor(() => loads.some((l) => l.waiting === 9), 'load change reported');
  } finally {
    sub.unsubscribe();
    await close();
  }
});

test('load reports carry the blocks published per tier (indexedBlocks): GPU stores, a CPU offload, a GPU removal', async () => {
  const { bus, engine, view, close } = await setup({ loadIntervalMs: 50 });
  const loads: LoadReport[] = [];
  const sub = bus.subscribe(S.load(WORKER), { callback: (m) => loads.push(decodeLoad(m.data)) });
  const tiers = () => loads.at(-1)?.indexedBlocks;
  try {
    const tokens = toks(3 * B);
    const want = prefixHashes(MODEL, '', B, tokens);
    await engine.send(vllmMapBatch([{ type: 'stored', hashes: [H(0), H(1), H(2)], parent: null, tokens, blockSize: B }]));
    await waitFor(() => view.has(want), 'three blocks');
    await waitFor(() => JSON.stringify(tiers()) === JSON.stringify({ gpu: 3, cpu: 0, disk: 0 }), `3 on gpu (last ${JSON.stringify(tiers())})`);
    // vLLM's offloading connector: a hash-only placeholder on CPU for block 0, then block 1 leaves the GPU
    await engine.send(vllmMapBatch([{ type: 'stored', hashes: [H(0)], parent: null, tokens: [], blockSize: 0, medium: 'CPU' }]));
    await engine.send(vllmMapBatch([{ type: 'removed', hashes: [H(1)] }]));
    await waitFor(() => JSON.stringify(tiers()) === JSON.stringify({ gpu: 2, cpu: 1, disk: 0 }), `2 on gpu, 1 on cpu (last ${JSON.stringify(tiers())})`);
  } finally {
    sub.unsubscribe();
    await close();
  }
});

test('hand-written batches in both encodings end up in the index (startIndexer on the same bus)', async () => {
  const { bus, engine, view, close } = await setup();
  const idx = await startIndexer(bus, { registryTtlMs: 3000 });
  try {
    await idx.whenReady();
    const a = toks(3 * B, 1000);
    const b = toks(2 * B, 2000);
    const wantA = prefixHashes(MODEL, '', B, a);
    const wantB = prefixHashes(MODEL, '', B, b);
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [H(10), H(11), H(12)], parent: null, tokens: a, blockSize: B }]));
    await engine.send(vllmMapBatch([{ type: 'stored', hashes: [digest(20), digest(21)], parent: null, tokens: b, blockSize: B }]));
    await waitFor(() => view.has([...wantA, ...wantB]), 'bus view');
    await waitFor(async () => (await idx.client.match(MODEL, null, wantA)).overlaps[WORKER] === 3, 'index holds prompt a');
    assert.is((await idx.client.match(MODEL, null, wantB)).overlaps[WORKER], 2);
    await engine.send(vllmArrayBatch([{ type: 'removed', hashes: [H(12)] }]));
    await waitFor(async () => (await idx.client.match(MODEL, null, wantA)).overlaps[WORKER] === 2, 'index follows the removal');
  } finally {
    await idx.close();
    await close();
  }
});

test('clean stop deregisters and publishes cleared', async () => {
  const { bus, engine, view, shim, close } = await setup();
  const t = toks(B);
  await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [1n], parent: null, tokens: t, blockSize: B }]));
  await waitFor(() => view.blocks.size === 1, 'block');
  const kv = await bus.kv(S.workersBucket);
  assert.ok(await kv.get(registryKey(WORKER)));
  await shim.stop();
  assert.is(await kv.get(registryKey(WORKER)), null);
  await waitFor(() => view.cleared === 2, 'final cleared');
  assert.is(view.blocks.size, 0);
  await close();
});

test.run();
