/**
 * The CPU offload tier: GPU evictions move to a CPU LRU, a prompt evicted from GPU hits on CPU and pays the
 * reload (PCIe) time instead of its prefill, CPU evictions are reported, and the events have exactly the shapes
 * vLLM's OffloadingConnector publishes (decoded with @msgpack/msgpack, not kvgate's decoder, field by field;
 * then also through kvgate's decoder, which must accept them).
 *
 * Upstream shapes (vllm/distributed/kv_events.py, the offloading connector's take_events):
 *   current (tagged structs, omit_defaults, map): BlockStored {type, block_hashes, parent_block_hash: nil,
 *     token_ids: [], block_size: 0, lora_id: nil, medium: "CPU", lora_name: nil}; BlockRemoved {type,
 *     block_hashes, medium: "CPU"}; GPU BlockStored also carries extra_keys (one entry per block), group_idx,
 *     kv_cache_spec_kind; EventBatch {ts, events, data_parallel_rank}.
 *   older (array_like, every field): ["BlockStored", hashes, nil, [], <offloaded block size>, nil, "CPU", nil],
 *     ["BlockRemoved", hashes, "CPU"]; EventBatch [ts, events, dp_rank].
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decode } from '@msgpack/msgpack';
import { decodeEngineBatch } from '@kvgate/protocol';
import {
  BlockHasher,
  CpuOffloadTier,
  DEFAULT_OFFLOAD_LINK,
  DEFAULT_TIMING,
  QWEN3_8B_SHAPE,
  Scheduler,
  bytesPerBlock,
  encodeEventBatch,
  prefillMs,
  reloadMs,
  startSimEngine,
  type BlockDigest,
  type KvCacheEvent,
  type StepResult,
} from '@kvgate/sim-engine';
import { EventCollector, post, tokens } from './helpers.js';

const B = 16;
const BYTES = bytesPerBlock(QWEN3_8B_SHAPE, B);

/** Runs one request to completion on a virtual clock; returns its steps. */
function run(s: Scheduler, id: string, prompt: number[], now = 0): { steps: StepResult[]; now: number } {
  s.submit({ id, promptTokens: prompt, maxTokens: 1, arrivalMs: now });
  const steps: StepResult[] = [];
  for (let r = s.step(now); r; r = s.step(now)) {
    steps.push(r);
    now = r.endMs;
  }
  return { steps, now };
}

const stored = (ev: KvCacheEvent[], medium: 'GPU' | 'CPU') => ev.filter((e): e is Extract<KvCacheEvent, { type: 'BlockStored' }> => e.type === 'BlockStored' && (e.medium ?? 'GPU') === medium);
const removed = (ev: KvCacheEvent[], medium: 'GPU' | 'CPU') => ev.filter((e): e is Extract<KvCacheEvent, { type: 'BlockRemoved' }> => e.type === 'BlockRemoved' && (e.medium ?? 'GPU') === medium);
const keys = (ds: readonly BlockDigest[]) => ds.map((d) => d.key);

/**
 * 40 GPU blocks of 16 tokens. A (320 tokens, 20 full blocks) runs, then B (584 tokens) needs 37 blocks: it
 * evicts A's blocks 19…3 (tail first); A's blocks 0…2 stay on GPU.
 */
function scenario(cpuOffloadBlocks: number) {
  const s = new Scheduler({ numBlocks: 40, blockSize: B, hashSeed: 'offload', cpuOffloadBlocks });
  const a = tokens(320, 1), b = tokens(584, 2);
  const digests: BlockDigest[] = [];
  s.hasher.extend(digests, a, B);
  let t = run(s, 'a', a);
  const bRun = run(s, 'b', b, t.now);
  return { s, a, digests, bEvents: bRun.steps.flatMap((r) => r.events), now: bRun.now };
}

test('a GPU eviction moves blocks to CPU: placeholder BlockStored CPU before the GPU BlockRemoved, same hashes', () => {
  const { s, digests, bEvents } = scenario(64);
  const gpuGone = removed(bEvents, 'GPU').flatMap((e) => e.hashes);
  assert.equal(keys(gpuGone), keys(digests.slice(3, 20).reverse()), 'A’s blocks 19…3 left the GPU, tail first');
  const cpuIn = stored(bEvents, 'CPU');
  assert.equal(keys(cpuIn.flatMap((e) => e.hashes)), keys(gpuGone), 'each evicted block was stored on CPU');
  for (const e of cpuIn) {
    assert.is(e.parent, null);
    assert.equal(e.tokenIds, []);
    assert.is(e.blockSize, B);
  }
  assert.ok(bEvents.indexOf(cpuIn[0]!) < bEvents.indexOf(removed(bEvents, 'GPU')[0]!), 'the CPU store comes first in the batch');
  assert.is(removed(bEvents, 'CPU').length, 0, 'the CPU tier had room');
  assert.is(s.stats().cpuCachedBlocks, 17);
  assert.is(s.stats().cpuBlocks, 64);
  assert.is(s.cachedPrefixBlocks(tokens(320, 1)), 3);
  assert.is(s.cpuPrefixBlocks(tokens(320, 1)), 17);
});

test('a prompt evicted from GPU hits on CPU: it pays the reload time, not the prefill', () => {
  const { s, a, digests, now } = scenario(64);
  const again = run(s, 'a2', a, now).steps;
  const first = again[0]!;
  // the hit may not cover the last prompt token: 19 of A's 20 full blocks, 3 on GPU then 16 on CPU
  const out = first.outputs.find((o) => o.id === 'a2')!;
  assert.is(out.cachedTokens, 19 * B, 'cached_tokens counts GPU + CPU hits');
  assert.is(out.cpuCachedTokens, 16 * B);
  assert.is(first.prefillTokens, 320 - 19 * B, 'only the last block is prefilled');
  assert.is(first.reloadBlocks, 16);
  const reload = reloadMs(DEFAULT_OFFLOAD_LINK, 16 * BYTES);
  assert.is(first.reloadMs, reload);
  assert.is(first.durationMs, prefillMs(DEFAULT_TIMING, 320 - 19 * B) + reload, 'step = prefill of the rest + PCIe copy');
  assert.ok(reload > 0 && reload < prefillMs(DEFAULT_TIMING, 16 * B), 'reloading 16 blocks is cheaper than prefilling them');

  // the reloaded blocks are GPU blocks again: one BlockStored GPU with their tokens, chained to the GPU prefix
  const gpu = stored(first.events, 'GPU');
  assert.is(gpu.length, 1);
  assert.equal(keys(gpu[0]!.hashes), keys(digests.slice(3, 20)));
  assert.is(gpu[0]!.parent!.key, digests[2]!.key);
  assert.equal(gpu[0]!.tokenIds, a.slice(3 * B, 20 * B));

  const st = s.stats();
  assert.is(st.externalHits, 16 * B, 'vLLM external_prefix_cache_hits: the CPU tokens');
  assert.is(st.externalQueries, 320 + 584 + 320, 'vLLM external_prefix_cache_queries: every admitted prompt, whole');
  assert.is(st.prefixHits, 3 * B, 'the GPU counter keeps only the GPU hit');
  assert.is(st.cpuReloadedBlocks, 16);

  // the same run without the tier recomputes all but the GPU prefix
  const g = scenario(0);
  const gFirst = run(g.s, 'a2', g.a, g.now).steps[0]!;
  assert.is(gFirst.outputs[0]!.cachedTokens, 3 * B);
  assert.is(gFirst.prefillTokens, 320 - 3 * B);
  assert.is(gFirst.reloadMs, 0);
  assert.is(gFirst.durationMs, prefillMs(DEFAULT_TIMING, 320 - 3 * B));
  assert.ok(first.durationMs < gFirst.durationMs, `CPU hit ${first.durationMs.toFixed(1)} ms vs GPU-only ${gFirst.durationMs.toFixed(1)} ms`);
  assert.is(g.s.stats().externalQueries, 0, 'no connector, no external lookups');
});

test('CPU LRU eviction emits BlockRemoved CPU for the least recently stored blocks', () => {
  const { s, a, digests, bEvents } = scenario(8);
  const offered = stored(bEvents, 'CPU').flatMap((e) => e.hashes);
  const cpuGone = removed(bEvents, 'CPU').flatMap((e) => e.hashes);
  assert.equal(keys(offered), keys(digests.slice(3, 20).reverse()));
  assert.equal(keys(cpuGone), keys(offered.slice(0, 9)), 'the 9 oldest of 17 left a CPU tier of 8');
  const lastCpuRemoval = bEvents.lastIndexOf(removed(bEvents, 'CPU').at(-1)!);
  assert.ok(bEvents.indexOf(stored(bEvents, 'CPU')[0]!) < lastCpuRemoval);
  assert.is(s.stats().cpuCachedBlocks, 8);
  // eviction was tail first, so CPU kept the blocks right after the GPU prefix: 3…10 hit
  assert.is(s.cpuPrefixBlocks(a), 8);
  const again = run(s, 'a2', a, 1e6).steps[0]!;
  assert.is(again.outputs[0]!.cachedTokens, 11 * B);
  assert.is(again.reloadBlocks, 8);
});

test('offload tier: pinned blocks are never evicted; a full, all-pinned tier stores nothing', () => {
  const h = new BlockHasher('p');
  const d: BlockDigest[] = [];
  h.extend(d, tokens(5 * 4, 3), 4);
  const t = new CpuOffloadTier(2);
  assert.equal(t.store(d.slice(0, 2)), { stored: d.slice(0, 2), removed: [] });
  t.pin([d[0]!]);
  const r = t.store([d[2]!]);
  assert.equal(r, { stored: [d[2]!], removed: [d[1]!] }, 'the unpinned LRU block goes');
  t.pin([d[2]!]);
  assert.equal(t.store([d[3]!]), { stored: [], removed: [] });
  t.unpin([d[0]!, d[2]!]);
  assert.equal(t.store([d[0]!]), { stored: [], removed: [] }, 'a held block is only touched');
  assert.equal(t.store([d[4]!]), { stored: [d[4]!], removed: [d[2]!] }, 'touching made d0 recent, so d2 goes');
  assert.is(t.run(d, 0), 1);
  assert.throws(() => new CpuOffloadTier(0), /positive/);
});

/** The events of B's eviction step, as the encoder gets them. */
function evictionBatch(): KvCacheEvent[] {
  const { bEvents } = scenario(8);
  return bEvents.filter((e) => e.type === 'BlockRemoved' || (e.type === 'BlockStored' && 'medium' in e && e.medium === 'CPU'));
}

test('map encoding (current vLLM): offload placeholders and GPU events, field by field, in key order', () => {
  const { s, digests } = scenario(64);
  const a2 = run(s, 'a2', tokens(320, 1), 1e6).steps[0]!.events; // reload: a GPU store with tokens
  const events: KvCacheEvent[] = [...evictionBatch(), ...a2];
  const raw = decode(encodeEventBatch(events, 1700000000.5, 0, 'map', 'int'), { useBigInt64: true }) as any;
  assert.equal(Object.keys(raw), ['ts', 'events', 'data_parallel_rank']);
  assert.is(raw.ts, 1700000000.5);
  assert.is(raw.data_parallel_rank, 0);
  const [cpuStored, gpuRemoved, cpuRemoved] = raw.events;
  assert.equal(Object.keys(cpuStored), ['type', 'block_hashes', 'parent_block_hash', 'token_ids', 'block_size', 'lora_id', 'medium', 'lora_name']);
  assert.equal(cpuStored, {
    type: 'BlockStored',
    block_hashes: keys(digests.slice(3, 20).reverse()),
    parent_block_hash: null,
    token_ids: [],
    block_size: 0,
    lora_id: null,
    medium: 'CPU',
    lora_name: null,
  });
  assert.equal(Object.keys(gpuRemoved), ['type', 'block_hashes', 'medium', 'group_idx']);
  assert.equal(gpuRemoved, { type: 'BlockRemoved', block_hashes: keys(digests.slice(3, 20).reverse()), medium: 'GPU', group_idx: 0 });
  assert.equal(Object.keys(cpuRemoved), ['type', 'block_hashes', 'medium']);
  assert.equal(cpuRemoved, { type: 'BlockRemoved', block_hashes: keys(digests.slice(3, 20).reverse().slice(0, 9)), medium: 'CPU' });
  const gpuStored = raw.events.find((e: any) => e.type === 'BlockStored' && e.medium === 'GPU');
  assert.equal(Object.keys(gpuStored), ['type', 'block_hashes', 'parent_block_hash', 'token_ids', 'block_size', 'lora_id', 'medium', 'lora_name', 'extra_keys', 'group_idx', 'kv_cache_spec_kind']);
  assert.is(gpuStored.parent_block_hash, digests[2]!.key);
  assert.is(gpuStored.block_size, B);
  assert.is(gpuStored.token_ids.length, gpuStored.block_hashes.length * B);
  assert.equal(gpuStored.extra_keys, gpuStored.block_hashes.map(() => null), 'one extra-keys entry per block, none for plain text');
  assert.is(gpuStored.group_idx, 0);
  assert.is(gpuStored.kv_cache_spec_kind, 'full_attention');
  assert.is(gpuStored.lora_id, null);
  assert.is(gpuStored.lora_name, null);
});

test('array encoding (older vLLM): every field present; the placeholder carries the offloaded block size', () => {
  const { digests } = scenario(8);
  const raw = decode(encodeEventBatch(evictionBatch(), 1700000000.25, 3, 'array', 'int'), { useBigInt64: true }) as any;
  assert.ok(Array.isArray(raw));
  assert.is(raw.length, 3);
  assert.is(raw[0], 1700000000.25);
  assert.is(raw[2], 3);
  const evicted = keys(digests.slice(3, 20).reverse());
  assert.equal(raw[1][0], ['BlockStored', evicted, null, [], B, null, 'CPU', null]);
  assert.equal(raw[1][1], ['BlockRemoved', evicted, 'GPU']);
  assert.equal(raw[1][2], ['BlockRemoved', evicted.slice(0, 9), 'CPU']);
});

test('kvgate’s decoder accepts the offload batches in both encodings and both hash formats', () => {
  for (const enc of ['map', 'array'] as const) {
    for (const hf of ['int', 'bytes'] as const) {
      const b = decodeEngineBatch(encodeEventBatch(evictionBatch(), 1.5, 0, enc, hf));
      assert.equal(b.invalid, [], `${enc}/${hf}: no event rejected`);
      assert.is(b.events.length, 3);
      const [st, rg, rc] = b.events as any[];
      assert.is(st.type, 'BlockStored');
      assert.ok(st.hashOnly, 'a hash-only placeholder');
      assert.is(st.medium, 'CPU');
      assert.is(st.blockHashes.length, 17);
      assert.equal([rg.type, rg.medium, rc.type, rc.medium], ['BlockRemoved', 'GPU', 'BlockRemoved', 'CPU']);
    }
  }
});

test('engine over HTTP + ZMQ: offload events in the same batch as the GPU eviction; cached_tokens and /metrics count CPU hits', async () => {
  const e = await startSimEngine({ speedup: 50, numBlocks: 40, maxModelLen: 640, cpuOffloadBlocks: 64, kvEventsEncoding: 'map', kvReplayEndpoint: null });
  const sub = await EventCollector.connect(e.kvEventsEndpoint!);
  try {
    assert.is(e.cpuOffloadBlocks, 64);
    const a = tokens(320, 1), b = tokens(584, 2);
    for (const p of [a, b]) assert.is((await post(e.url + '/v1/completions', { prompt: p, max_tokens: 1 })).status, 200);
    const again = await post(e.url + '/v1/completions', { prompt: a, max_tokens: 1 });
    assert.is(again.json.usage.prompt_tokens_details.cached_tokens, 19 * B, 'GPU + CPU hits, as vLLM reports them');
    // the reloaded blocks are announced on GPU again, with their tokens
    const onCpu = () => new Set(sub.events().filter((x) => x.type === 'BlockStored' && x.medium === 'CPU').flatMap((x) => x.block_hashes.map(String)));
    await sub.waitFor(() => sub.events().some((x) => x.type === 'BlockStored' && x.medium === 'GPU' && x.token_ids.length > 0 && onCpu().has(String(x.block_hashes[0]))), 'the reload’s GPU store');
    // one published batch holds the CPU placeholder and the GPU removal of the same blocks
    const i = sub.raw.findIndex((m) => {
      const ev = (decode(m.payload, { useBigInt64: true }) as any).events as any[];
      return ev.some((x) => x.type === 'BlockStored' && x.medium === 'CPU') && ev.some((x) => x.type === 'BlockRemoved' && x.medium === 'GPU');
    });
    assert.ok(i >= 0, 'a batch with both');
    const ev = (decode(sub.raw[i]!.payload, { useBigInt64: true }) as any).events as any[];
    const cpu = ev.find((x) => x.type === 'BlockStored' && x.medium === 'CPU');
    const gpu = ev.find((x) => x.type === 'BlockRemoved' && x.medium === 'GPU');
    assert.equal(cpu.block_hashes, gpu.block_hashes);
    assert.is(cpu.block_size, 0);
    assert.equal(cpu.token_ids, []);
    assert.equal(decodeEngineBatch(sub.raw[i]!.payload).invalid, []);
    const m = await (await fetch(e.url + '/metrics')).text();
    assert.match(m, /vllm:external_prefix_cache_hits_total\{model_name="qwen3-8b",engine="0"\} 256/);
    assert.match(m, /vllm:external_prefix_cache_queries_total\{model_name="qwen3-8b",engine="0"\} 1224/);
    assert.match(m, /vllm:prefix_cache_hits_total\{model_name="qwen3-8b",engine="0"\} 48/);
  } finally {
    await sub.close();
    await e.close();
  }
});

test.run();
