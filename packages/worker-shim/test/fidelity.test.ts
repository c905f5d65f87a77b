/**
 * Engine fidelity at the relay (no sockets, publish injected): event batches as today's engines encode them,
 * written byte by byte with the hand msgpack writer of fake-engine.ts (`mp`) from the upstream definitions:
 *   - vLLM vllm/distributed/kv_events.py: BlockStored(block_hashes, parent_block_hash, token_ids, block_size,
 *     lora_id, medium, lora_name, extra_keys=None, group_idx=None, kv_cache_spec_kind=None,
 *     kv_cache_spec_sliding_window=None), BlockRemoved(block_hashes, medium, group_idx=None); tag=True,
 *     omit_defaults=True: the map form names the class under "type" and drops fields equal to their default;
 *     the array form (≤ 0.23, array_like) carries every field;
 *   - vLLM's offloading connector placeholders (offloading/events.py `_placeholder_stored`): block_hashes =
 *     [the offload key's block hash], parent None, token_ids [], block_size 0, lora_id None, medium "CPU";
 *   - vLLM's extra keys (kv_cache_utils.generate_block_hash_extra_keys): lora name + mm keys + cache_salt on the
 *     first block + prompt-embeds digests, None for a block without any;
 *   - SGLang python/sglang/srt/disaggregation/kv_events.py: array_like BlockStored(block_hashes,
 *     parent_block_hash, token_ids, block_size, lora_id, medium) and BlockStoredWithMetadata (same tag) with
 *     `metadata: BlockStoredMetadata{cache_salt}` (a map) at position 7; mediums GPU, CPU_PINNED, DISK, EXTERNAL.
 * The published kvgate events are applied to a per-tier model of the index, which must equal what the engine
 * holds on each tier.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeEngineBatch, initHashing, prefixHashes, type EventBatch, type KvEvent, type ReplayMessage, type Tier } from '@kvgate/protocol';
import { EventRelay } from '../src/relay.js';
import { createMetrics, type ShimMetrics } from '../src/metrics.js';
import { LoraNames } from '../src/lora.js';
import { canonical, interpretExtraKeys, opaqueKey } from '../src/extra-keys.js';
import { tierOfMedium } from '../src/tiers.js';
import { mp, seqFrame } from './fake-engine.js';

await initHashing();
const M = 'qwen3-8b';
const B = 4;
const toks = (n: number, base = 100) => Array.from({ length: n }, (_, i) => base + i);
/** uint64 engine hashes above 2^63 */
const H = (i: number) => 0x9000_0000_0000_0000n + BigInt(i) * 0x1_0001n;

// ---- upstream shapes, byte by byte ---------------------------------------------------------------------
type Bytes = number[];
const hashB = (h: bigint | Uint8Array): Bytes => (typeof h === 'bigint' ? mp.uint(h) : mp.bin(h));
const optStr = (s: string | undefined | null): Bytes => (s == null ? mp.nil() : mp.str(s));
const optUint = (n: number | undefined | null): Bytes => (n == null ? mp.nil() : mp.uint(n));

interface VStored {
  hashes: (bigint | Uint8Array)[];
  parent: bigint | Uint8Array | null;
  tokens: number[];
  blockSize: number;
  loraId?: number;
  medium?: string;
  loraName?: string;
  /** per block: the already-encoded tuple, or null */
  extraKeys?: (Bytes | null)[];
  group?: number;
  kind?: string;
  window?: number;
}

/** vLLM current (plain struct, tag=True, omit_defaults=True) */
function vStoredMap(e: VStored): Bytes {
  const f: [string, Bytes][] = [
    ['type', mp.str('BlockStored')],
    ['block_hashes', mp.array(e.hashes.map(hashB))],
    ['parent_block_hash', e.parent === null ? mp.nil() : hashB(e.parent)],
    ['token_ids', mp.array(e.tokens.map(mp.uint))],
    ['block_size', mp.uint(e.blockSize)],
    ['lora_id', optUint(e.loraId)],
    ['medium', optStr(e.medium ?? 'GPU')],
    ['lora_name', optStr(e.loraName)],
  ];
  if (e.extraKeys) f.push(['extra_keys', mp.array(e.extraKeys.map((k) => k ?? mp.nil()))]);
  if (e.group !== undefined) f.push(['group_idx', mp.uint(e.group)]);
  if (e.kind !== undefined) f.push(['kv_cache_spec_kind', mp.str(e.kind)]);
  if (e.window !== undefined) f.push(['kv_cache_spec_sliding_window', mp.uint(e.window)]);
  return mp.map(f);
}

/** vLLM array_like: every field, in order */
function vStoredArr(e: VStored): Bytes {
  return mp.array([
    mp.str('BlockStored'),
    mp.array(e.hashes.map(hashB)),
    e.parent === null ? mp.nil() : hashB(e.parent),
    mp.array(e.tokens.map(mp.uint)),
    mp.uint(e.blockSize),
    optUint(e.loraId),
    optStr(e.medium ?? 'GPU'),
    optStr(e.loraName),
    e.extraKeys ? mp.array(e.extraKeys.map((k) => k ?? mp.nil())) : mp.nil(),
    optUint(e.group),
    optStr(e.kind),
    optUint(e.window),
  ]);
}

/** the offloading connector's hash-only placeholder (map form; older versions send the offloaded block size) */
function placeholder(hashes: bigint[], medium = 'CPU', blockSize = 0, group?: number): Bytes {
  return vStoredMap({ hashes, parent: null, tokens: [], blockSize, medium, group });
}

function vRemovedMap(hashes: (bigint | Uint8Array)[], medium = 'GPU', group?: number): Bytes {
  const f: [string, Bytes][] = [['type', mp.str('BlockRemoved')], ['block_hashes', mp.array(hashes.map(hashB))], ['medium', mp.str(medium)]];
  if (group !== undefined) f.push(['group_idx', mp.uint(group)]);
  return mp.map(f);
}
const vRemovedArr = (hashes: bigint[], medium = 'GPU', group?: number): Bytes =>
  mp.array([mp.str('BlockRemoved'), mp.array(hashes.map(hashB)), mp.str(medium), optUint(group)]);

const batchMap = (events: Bytes[]): Uint8Array => Uint8Array.from(mp.map([['ts', mp.float64(1.7e9)], ['events', mp.array(events)], ['data_parallel_rank', mp.uint(0)]]));
const batchArr = (events: Bytes[]): Uint8Array => Uint8Array.from(mp.array([mp.float64(1.7e9), mp.array(events), mp.uint(0)]));

/** SGLang array_like BlockStored, or BlockStoredWithMetadata when salted (metadata map at position 7) */
function sgStored(hashes: bigint[], parent: bigint | null, tokens: number[], medium: string, salt?: string): Bytes {
  const f = [mp.str('BlockStored'), mp.array(hashes.map(mp.uint)), parent === null ? mp.nil() : mp.uint(parent), mp.array(tokens.map(mp.uint)), mp.uint(B), mp.nil(), mp.str(medium)];
  if (salt !== undefined) f.push(mp.map([['cache_salt', mp.str(salt)]]));
  return mp.array(f);
}
const sgRemoved = (hashes: bigint[], medium: string): Bytes => mp.array([mp.str('BlockRemoved'), mp.array(hashes.map(mp.uint)), mp.str(medium)]);
/** SGLang EventBatch(ts, events, attn_dp_rank) */
const sgBatch = (events: Bytes[]): Uint8Array => Uint8Array.from(mp.array([mp.float64(1.7e9), mp.array(events), mp.uint(0)]));

// ---- the relay, and a per-tier model of what the index holds ---------------------------------------------
class TierView {
  readonly held = new Map<bigint, Set<Tier>>();
  cleared = 0;
  apply(events: KvEvent[]): void {
    for (const e of events) {
      if (e.t === 'cleared') {
        this.held.clear();
        this.cleared++;
        continue;
      }
      const tier = e.tier ?? 'gpu';
      for (const h of e.hashes) {
        const s = this.held.get(h) ?? new Set<Tier>();
        if (e.t === 'stored') s.add(tier);
        else s.delete(tier);
        if (s.size) this.held.set(h, s);
        else this.held.delete(h);
      }
    }
  }
  on(tier: Tier): bigint[] {
    return [...this.held].filter(([, s]) => s.has(tier)).map(([h]) => h);
  }
}

function rig(opts: { loraMap?: Map<number, string>; held?: Map<bigint, Uint8Array> } = {}) {
  const out: EventBatch[] = [];
  const view = new TierView();
  const asked: bigint[] = [];
  const metrics = createMetrics('w');
  const relay = new EventRelay({
    worker: 'w',
    model: M,
    metrics,
    loras: new LoraNames(opts.loraMap),
    maxMapEntries: 10_000,
    maxMailbox: 1000,
    publish: (b) => {
      out.push(b);
      view.apply(b.events);
    },
    replay: async (from) => {
      asked.push(from);
      return [...(opts.held ?? [])].filter(([s]) => s >= from).map(([seq, p]): ReplayMessage => ({ end: false, seq, batch: decodeEngineBatch(p) }));
    },
    refreshLoras: async () => undefined,
  });
  let seq = 0;
  const send = async (payload: Uint8Array) => {
    relay.post([Buffer.alloc(0), seqFrame(seq++), Buffer.from(payload)]);
    await relay.idle();
  };
  return { relay, out, view, asked, metrics, send, events: () => out.flatMap((b) => b.events) };
}

async function count(metrics: ShimMetrics, name: string, label = ''): Promise<number> {
  const text = await metrics.registry.getSingleMetricAsString(`kvgate_shim_${name}`);
  let total = 0;
  for (const line of text.split('\n')) if (!line.startsWith('#') && line.includes(label)) total += Number(line.trim().split(/\s+/).pop());
  return total;
}

const sorted = (xs: bigint[]) => [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
const same = (a: bigint[], b: bigint[]) => assert.equal(sorted(a), sorted(b));

// ---- (a) offload placeholders mixed with GPU events -------------------------------------------------------
test('vLLM offloading: placeholders in the same batch as GPU events add the CPU tier; a GPU removal leaves the CPU copy; no clear', async () => {
  const { view, send, events, metrics, asked } = rig();
  const t = toks(4 * B);
  const p = prefixHashes(M, '', B, t);
  // seq 0: the prompt lands on GPU
  await send(batchMap([vStoredMap({ hashes: [H(0), H(1), H(2), H(3)], parent: null, tokens: t, blockSize: B })]));
  // seq 1: blocks 0-1 offloaded (placeholders), then evicted from GPU; block 3 evicted from GPU without a copy;
  //        one new GPU block stored in the same batch
  const u = toks(B, 900);
  await send(batchMap([
    placeholder([H(0)]),
    placeholder([H(1)]),
    vRemovedMap([H(0), H(1), H(3)], 'GPU'),
    vStoredMap({ hashes: [H(7)], parent: H(2), tokens: u, blockSize: B }),
  ]));
  const p7 = prefixHashes(M, '', B, [...t.slice(0, 3 * B), ...u])[3]!;
  same(view.on('gpu'), [p[2]!, p7]);
  same(view.on('cpu'), [p[0]!, p[1]!]);
  // the placeholders became one parent-linked chain from the root on the cpu tier
  assert.ok(events().some((e) => e.t === 'stored' && e.tier === 'cpu' && e.parent === null && e.hashes.join() === [p[0], p[1]].join()));
  // seq 2: the CPU copy of block 0 goes; an unknown placeholder is counted, never guessed
  await send(batchMap([vRemovedMap([H(0)], 'CPU'), placeholder([H(99)])]));
  same(view.on('cpu'), [p[1]!]);
  same(view.on('gpu'), [p[2]!, p7]);
  assert.is(await count(metrics, 'skipped_events_total', 'reason="unknown-offload-hash"'), 1);
  // a CPU placeholder for a block whose every copy is gone is unknown too (the entry was forgotten)
  await send(batchMap([placeholder([H(3)])]));
  assert.is(await count(metrics, 'skipped_events_total', 'reason="unknown-offload-hash"'), 2);
  assert.is(view.cleared, 0, 'never cleared');
  assert.equal(asked, [], 'no replay asked: no batch was lost');
});

test('older vLLM placeholders give the offloaded block size: one offload key covers that many GPU blocks', async () => {
  const { view, send } = rig();
  const t = toks(4 * B);
  const p = prefixHashes(M, '', B, t);
  await send(batchArr([vStoredArr({ hashes: [H(0), H(1), H(2), H(3)], parent: null, tokens: t, blockSize: B })]));
  // offloaded block = 2 GPU blocks; its key is the last GPU block's hash (block_hashes[factor-1::factor])
  await send(batchArr([
    vStoredArr({ hashes: [H(1), H(3)], parent: null, tokens: [], blockSize: 2 * B, medium: 'CPU' }),
    vRemovedArr([H(0), H(1), H(2), H(3)]),
  ]));
  same(view.on('cpu'), p);
  assert.equal(view.on('gpu'), []);
  await send(batchArr([vRemovedArr([H(3)], 'CPU')]));
  same(view.on('cpu'), p.slice(0, 2));
});

test('self-describing offload events and SGLang host/disk tiers: full-token stores on lower tiers chain as usual and keep their tier', async () => {
  const { view, send } = rig();
  const t = toks(3 * B, 40);
  const p = prefixHashes(M, '', B, t);
  await send(sgBatch([sgStored([1n, 2n, 3n], null, t, 'GPU')]));
  await send(sgBatch([sgStored([1n, 2n], null, t.slice(0, 2 * B), 'CPU_PINNED'), sgStored([3n], 2n, t.slice(2 * B), 'DISK'), sgRemoved([1n, 2n, 3n], 'GPU')]));
  same(view.on('cpu'), p.slice(0, 2));
  same(view.on('disk'), [p[2]!]);
  assert.equal(view.on('gpu'), []);
  // a block the engine first learned on a lower tier (never on GPU) still chains from its known parent
  await send(sgBatch([sgStored([4n], 3n, toks(B, 5000), 'EXTERNAL')]));
  same(view.on('disk'), [p[2]!, prefixHashes(M, '', B, [...t, ...toks(B, 5000)])[3]!]);
  await send(sgBatch([sgRemoved([3n, 4n], 'DISK'), sgRemoved([1n], 'CPU_PINNED')]));
  same(view.on('cpu'), [p[1]!]);
  assert.equal(view.on('disk'), []);
  assert.is(view.cleared, 0);
});

// ---- (b) SGLang metadata map at position 7, (c) salts ------------------------------------------------------
test('SGLang BlockStoredWithMetadata (array form, metadata map at position 7): the salt roots the chain; no clear', async () => {
  const { view, send, metrics, asked } = rig();
  const t = toks(2 * B, 7);
  const salted = prefixHashes(M, '', B, t, undefined, 'tenant-42');
  await send(sgBatch([sgStored([11n], null, t.slice(0, B), 'GPU', 'tenant-42'), sgStored([12n], 11n, t.slice(B), 'GPU', 'tenant-42')]));
  same(view.on('gpu'), salted);
  assert.not.equal(sorted(salted), sorted(prefixHashes(M, '', B, t)), 'a salted prompt is not the unsalted one');
  // an unsalted request with the same text is a different chain on the same worker
  await send(sgBatch([sgStored([21n, 22n], null, t, 'GPU')]));
  same(view.on('gpu'), [...salted, ...prefixHashes(M, '', B, t)]);
  assert.is(await count(metrics, 'skipped_events_total'), 0);
  assert.is(view.cleared, 0);
  assert.equal(asked, []);
});

test('vLLM salted requests (extra_keys: [cache_salt] on the first block, with and without a LoRA): published hashes are prefixHashes(…, salt)', async () => {
  const { view, send, metrics } = rig();
  const t = toks(3 * B, 300);
  // map form, base model: extra_keys = [("tenant-42",), None, None]
  await send(batchMap([vStoredMap({ hashes: [H(1), H(2)], parent: null, tokens: t.slice(0, 2 * B), blockSize: B, extraKeys: [mp.array([mp.str('tenant-42')]), null] })]));
  await send(batchMap([vStoredMap({ hashes: [H(3)], parent: H(2), tokens: t.slice(2 * B), blockSize: B, extraKeys: [null] })]));
  const want = prefixHashes(M, '', B, t, undefined, 'tenant-42');
  same(view.on('gpu'), want);
  assert.ok(want.every((h) => !prefixHashes(M, '', B, t).includes(h)));
  // array form with a LoRA: the LoRA name leads every block's keys, the salt follows on the first block
  const l = toks(2 * B, 600);
  await send(batchArr([vStoredArr({
    hashes: [H(10), H(11)], parent: null, tokens: l, blockSize: B, loraId: 1, loraName: 'sql-lora',
    extraKeys: [mp.array([mp.str('sql-lora'), mp.str('tenant-7')]), mp.array([mp.str('sql-lora')])],
  })]));
  const wantLora = prefixHashes(M, 'sql-lora', B, l, undefined, 'tenant-7');
  assert.ok(wantLora.every((h) => view.on('gpu').includes(h)));
  assert.ok(prefixHashes(M, 'sql-lora', B, l).every((h) => !view.on('gpu').includes(h)), 'not the unsalted LoRA chain');
  assert.is(await count(metrics, 'unreproducible_blocks_total'), 0);
  // older vLLM put the numeric lora_int_id first (no lora_name on the event; the name comes from --lora-map)
  const o = rig({ loraMap: new Map([[3, 'chat']]) });
  await o.send(batchArr([vStoredArr({ hashes: [H(20)], parent: null, tokens: l.slice(0, B), blockSize: B, loraId: 3, extraKeys: [mp.array([mp.uint(3), mp.str('s1')])] })]));
  same(o.view.on('gpu'), prefixHashes(M, 'chat', B, l.slice(0, B), undefined, 's1'));
});

// ---- (d) hybrid models ----------------------------------------------------------------------------------------
test('hybrid models: only the full-attention group indexes; sliding-window and Mamba groups never create or remove an overlap', async () => {
  const { view, send, metrics } = rig();
  const t = toks(3 * B, 50);
  const p = prefixHashes(M, '', B, t);
  const hs = [H(1), H(2), H(3)];
  // vLLM hashes a request's blocks once: every group announces the same hashes, with its own group_idx
  await send(batchMap([
    vStoredMap({ hashes: hs, parent: null, tokens: t, blockSize: B, group: 0, kind: 'sliding_window', window: 128 }),
    vStoredMap({ hashes: hs, parent: null, tokens: t, blockSize: B, group: 1, kind: 'full_attention' }),
    vStoredMap({ hashes: hs, parent: null, tokens: t, blockSize: B, group: 2, kind: 'mamba' }),
  ]));
  same(view.on('gpu'), p);
  // the window slides: group 0 drops the first blocks, Mamba keeps only its state; the prefix is still cached
  await send(batchMap([vRemovedMap([H(1), H(2)], 'GPU', 0), vRemovedMap([H(1), H(2), H(3)], 'GPU', 2)]));
  same(view.on('gpu'), p);
  await send(batchMap([vRemovedMap([H(3)], 'GPU', 1)]));
  same(view.on('gpu'), p.slice(0, 2));
  assert.is(await count(metrics, 'skipped_events_total', 'reason="non-full-attention-group"'), 4);
  // a second full-attention group (same hashes) is not counted twice
  await send(batchMap([vStoredMap({ hashes: [H(3)], parent: H(2), tokens: t.slice(2 * B), blockSize: B, group: 3, kind: 'mla_attention' })]));
  same(view.on('gpu'), p.slice(0, 2));
  assert.is(await count(metrics, 'skipped_events_total', 'reason="other-full-attention-group"'), 1);
});

test('hybrid models without spec kinds: group 0 only', async () => {
  const { view, send, metrics } = rig();
  const t = toks(2 * B, 70);
  await send(batchArr([
    vStoredArr({ hashes: [H(1), H(2)], parent: null, tokens: t, blockSize: B, group: 0 }),
    vStoredArr({ hashes: [H(1), H(2)], parent: null, tokens: t, blockSize: B, group: 1 }),
    vRemovedArr([H(1), H(2)], 'GPU', 1),
  ]));
  same(view.on('gpu'), prefixHashes(M, '', B, t));
  assert.is(await count(metrics, 'skipped_events_total', 'reason="unclassified-group"'), 2);
});

// ---- (e) unreproducible extra keys ------------------------------------------------------------------------------
test('multimodal extra keys: the block and its descendants get keys no text prompt can match, counted', async () => {
  const { view, send, metrics } = rig();
  const t = toks(3 * B, 10);
  const text = prefixHashes(M, '', B, t);
  // block 0 holds an image placeholder: mm key (identifier, offset within the block); blocks 1-2 plain
  const mm = mp.array([mp.array([mp.str('sha256:img-1'), mp.uint(1)])]);
  await send(batchMap([vStoredMap({ hashes: [H(1), H(2)], parent: null, tokens: t.slice(0, 2 * B), blockSize: B, extraKeys: [mm, null] })]));
  await send(batchMap([vStoredMap({ hashes: [H(3)], parent: H(2), tokens: t.slice(2 * B), blockSize: B })]));
  const got = view.on('gpu');
  assert.is(got.length, 3);
  assert.ok(got.every((h) => !text.includes(h)), 'no block matches the text prompt');
  assert.ok(got.every((h) => !prefixHashes(M, '', B, t, undefined, 'sha256:img-1').includes(h)), 'nor a salted one');
  // the documented rule: opaqueKey(ordinary prefix hash, canonical remaining keys), descendants chain from it
  const k0 = opaqueKey(text[0]!, canonical([['sha256:img-1', 1]]));
  same(got, [k0, ...prefixHashes(M, '', B, t.slice(B), k0)]);
  // prompt-embedding digests (bytes) on a later block, and a salt plus an image on the first: opaque too
  await send(batchMap([vStoredMap({ hashes: [H(9)], parent: H(3), tokens: toks(B, 1), blockSize: B, extraKeys: [mp.array([mp.bin(Uint8Array.of(1, 2, 3))])] })]));
  await send(batchMap([vStoredMap({ hashes: [H(10)], parent: null, tokens: t.slice(0, B), blockSize: B, extraKeys: [mp.array([mp.array([mp.str('sha256:img-2'), mp.uint(0)]), mp.str('tenant')])] })]));
  assert.is(await count(metrics, 'unreproducible_blocks_total'), 3);
  assert.ok(view.on('gpu').every((h) => !text.includes(h) && !prefixHashes(M, '', B, t, undefined, 'tenant').includes(h)));
  // the engine's removal finds the opaque block
  await send(batchMap([vRemovedMap([H(1)])]));
  assert.not.ok(view.on('gpu').includes(k0));
});

test('extra-key rules: LoRA entry dropped, one string on a first block is the salt, anything else opaque', () => {
  assert.equal(interpretExtraKeys(null, true, undefined, null), { kind: 'plain' });
  assert.equal(interpretExtraKeys(['lora-a'], false, 'lora-a', 1), { kind: 'plain' });
  assert.equal(interpretExtraKeys(['lora-a', 's'], true, 'lora-a', 1), { kind: 'salt', salt: 's' });
  assert.equal(interpretExtraKeys([2n, 's'], true, undefined, 2), { kind: 'salt', salt: 's' });
  assert.equal(interpretExtraKeys(['mmhash'], false, undefined, null), { kind: 'opaque', text: '["mmhash"]' });
  assert.equal(interpretExtraKeys([['id', 3], 's'], true, undefined, null), { kind: 'opaque', text: '[["id",i3],"s"]' });
  assert.is(canonical([5, 5n, 1.5, true, null, Uint8Array.of(255)]), '[i5,i5,f1.5,true,null,bff]');
  assert.equal(['GPU', undefined, 'gpu', 'CPU', 'CPU_PINNED', 'DISK', 'EXTERNAL', 'NVME_OF'].map((m) => tierOfMedium(m)), ['gpu', 'gpu', 'gpu', 'cpu', 'cpu', 'disk', 'disk', 'disk']);
});

// ---- (f) one malformed event among good ones ---------------------------------------------------------------------
test('one malformed event among good ones: the good ones apply, the bad one is counted by reason, no replay, no clear', async () => {
  const { view, send, metrics, asked, out } = rig();
  const t = toks(2 * B, 20);
  const p = prefixHashes(M, '', B, t);
  await send(batchArr([
    vStoredArr({ hashes: [H(1)], parent: null, tokens: t.slice(0, B), blockSize: B }),
    // block_hashes is a string: not an engine event anyone can read
    mp.array([mp.str('BlockStored'), mp.str('oops'), mp.nil(), mp.array([]), mp.uint(B), mp.nil(), mp.str('GPU'), mp.nil()]),
    // 3 tokens are no whole block of 4
    vStoredArr({ hashes: [H(5)], parent: null, tokens: [1, 2, 3], blockSize: B }),
    vStoredArr({ hashes: [H(2)], parent: H(1), tokens: t.slice(B), blockSize: B }),
    mp.array([mp.str('SomeFutureEvent'), mp.uint(1)]),
  ]));
  same(view.on('gpu'), p);
  assert.is(await count(metrics, 'skipped_events_total', 'reason="token-count"'), 1);
  assert.is(await count(metrics, 'skipped_events_total', 'reason="unknown-type"'), 1);
  assert.is(await count(metrics, 'skipped_events_total'), 3);
  // the next batch follows in sequence: nothing to replay
  await send(batchArr([vRemovedArr([H(2)])]));
  same(view.on('gpu'), p.slice(0, 1));
  assert.equal(asked, []);
  assert.is(view.cleared, 0);
  assert.equal(out.map((b) => b.seq), [0, 1]);
});

test.run();
