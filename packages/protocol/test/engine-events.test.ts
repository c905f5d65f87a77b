import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeEngineBatch, decodeEngineFrames, decodeReplayFrames, engineHash, REPLAY_END_SEQ } from '../src/engine-events/decode.js';
import type { BlockStored, EngineBatch } from '../src/engine-events/types.js';
import { DecodeError } from '../src/errors.js';

// ---- a tiny msgpack writer, straight from the format spec (github.com/msgpack/msgpack/blob/master/spec.md) ----
// Each helper returns the encoded bytes of one value; nothing here uses msgpackr or the project's encoder.
type B = number[];
const be = (n: bigint, bytes: number): B => Array.from({ length: bytes }, (_, i) => Number((n >> BigInt(8 * (bytes - 1 - i))) & 0xffn));
const nil = (): B => [0xc0];
/** smallest unsigned form, as msgspec writes it */
const uint = (n: number | bigint): B => {
  const v = BigInt(n);
  if (v < 0x80n) return [Number(v)];
  if (v < 0x100n) return [0xcc, Number(v)];
  if (v < 0x10000n) return [0xcd, ...be(v, 2)];
  if (v < 0x100000000n) return [0xce, ...be(v, 4)];
  return [0xcf, ...be(v, 8)];
};
const u64 = (n: bigint): B => [0xcf, ...be(n, 8)];
const u32 = (n: number): B => [0xce, ...be(BigInt(n), 4)];
const i64 = (n: bigint): B => [0xd3, ...be(BigInt.asUintN(64, n), 8)];
const f64 = (x: number): B => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setFloat64(0, x, false);
  return [0xcb, ...b];
};
const str = (s: string): B => {
  const b = [...new TextEncoder().encode(s)];
  if (b.length < 32) return [0xa0 | b.length, ...b];
  if (b.length < 256) return [0xd9, b.length, ...b];
  throw new Error('test writer: string too long');
};
const bin = (b: ArrayLike<number>): B => {
  if (b.length >= 256) throw new Error('test writer: bin too long');
  return [0xc4, b.length, ...Array.from(b)];
};
const arr = (...items: B[]): B => {
  const head = items.length < 16 ? [0x90 | items.length] : [0xdc, ...be(BigInt(items.length), 2)];
  return head.concat(...items);
};
const map = (...entries: [string, B][]): B => {
  if (entries.length >= 16) throw new Error('test writer: map too big');
  return [0x80 | entries.length].concat(...entries.map(([k, v]) => [...str(k), ...v]));
};
const bytes = (b: B) => Uint8Array.from(b);
const seqFrame = (n: bigint) => Uint8Array.from(be(n, 8));

function throwsDecode(fn: () => unknown, re?: RegExp) {
  try {
    fn();
  } catch (e) {
    assert.instance(e, DecodeError, `expected DecodeError, got ${String(e)}`);
    assert.is((e as DecodeError).code, 'KVG_DECODE');
    if (re) assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('expected a DecodeError');
}

/** the batch decodes, but its only event is dropped as invalid (one bad event never costs its batch) */
function rejectsEvent(payload: B, re: RegExp, reason?: string) {
  const b = decodeEngineBatch(bytes(payload));
  assert.is(b.events.length, 0, 'the bad event is not decoded');
  assert.is(b.invalid.length, 1, `one invalid event for ${re}`);
  assert.match(b.invalid[0]!.message, re);
  assert.match(b.invalid[0]!.reason, /^[a-z_-]+$/);
  if (reason) assert.is(b.invalid[0]!.reason, reason);
}

/** a frame-level DecodeError, or a batch whose events are all dropped as invalid */
function rejected(payload: B) {
  let b: EngineBatch;
  try {
    b = decodeEngineBatch(bytes(payload));
  } catch (e) {
    assert.instance(e, DecodeError, `expected DecodeError, got ${String(e)}`);
    return;
  }
  assert.ok(b.invalid.length > 0 && b.events.length === 0, 'nothing of it decodes');
}

// ---- fixtures --------------------------------------------------------------------------------------
const BIG1 = 0xfedcba9876543210n; // ≥ 2^63: must not lose a bit
const BIG2 = (1n << 64n) - 2n;
const TOKENS32 = Array.from({ length: 32 }, (_, i) => [0, 5, 127, 128, 255, 256, 65535, 65536, 4000000000][i % 9]! + (i < 9 ? 0 : i % 7));
const DIGEST_A = Array.from({ length: 32 }, (_, i) => (i * 37 + 1) & 0xff);
const DIGEST_B = Array.from({ length: 32 }, (_, i) => (255 - i * 3) & 0xff);
const hex = (b: number[]) => b.map((x) => x.toString(16).padStart(2, '0')).join('');

/** vLLM ≤ 0.23: array_like structs, batch `[ts, events, dp_rank]` */
function legacyBatch(): B {
  return arr(
    f64(1732000000.25),
    arr(
      arr(str('BlockStored'), arr(u64(BIG1), u64(BIG2)), nil(), arr(...TOKENS32.map(uint)), uint(16), nil(), str('GPU'), nil()),
      arr(str('BlockRemoved'), arr(u64(BIG1)), str('GPU')),
      arr(str('AllBlocksCleared')),
    ),
    uint(3),
  );
}

test('array encoding (vLLM ≤ 0.23): every field, hashes ≥ 2^63 exact, dp_rank present', () => {
  const b = decodeEngineBatch(bytes(legacyBatch()));
  assert.equal(b, {
    ts: 1732000000.25,
    dpRank: 3,
    skipped: 0,
    invalid: [],
    events: [
      { type: 'BlockStored', blockHashes: [BIG1, BIG2], parentBlockHash: null, tokenIds: TOKENS32, blockSize: 16, aligned: true, hashOnly: false, loraId: null, medium: 'GPU' },
      { type: 'BlockRemoved', blockHashes: [BIG1], medium: 'GPU' },
      { type: 'AllBlocksCleared' },
    ],
  } satisfies EngineBatch);
  const stored = b.events[0] as BlockStored;
  assert.is(stored.blockHashes[0], 0xfedcba9876543210n);
  assert.is(typeof stored.tokenIds[8], 'number');
  assert.is(stored.tokenIds[8], 4000000000);
});

test('array encoding (older SGLang): 5-field BlockStored, no medium, no dp_rank, int64 and small-int hashes', () => {
  const payload = arr(
    f64(12.5),
    arr(
      arr(str('BlockStored'), arr(i64(-2n)), i64(-9_000_000_000_000_000_000n), arr(uint(1), uint(2), uint(3), uint(4)), uint(4), uint(7)),
      arr(str('BlockStored'), arr(uint(5)), uint(3_000_000_000), arr(uint(9), uint(9)), uint(2), nil()),
      arr(str('BlockRemoved'), arr(i64(-2n), uint(5))),
    ),
  );
  const b = decodeEngineBatch(bytes(payload));
  assert.is(b.dpRank, undefined);
  assert.not.ok('dpRank' in b);
  assert.equal(b.events, [
    { type: 'BlockStored', blockHashes: [(1n << 64n) - 2n], parentBlockHash: BigInt.asUintN(64, -9_000_000_000_000_000_000n), tokenIds: [1, 2, 3, 4], blockSize: 4, aligned: true, hashOnly: false, loraId: 7 },
    { type: 'BlockStored', blockHashes: [5n], parentBlockHash: 3_000_000_000n, tokenIds: [9, 9], blockSize: 2, aligned: true, hashOnly: false, loraId: null },
    { type: 'BlockRemoved', blockHashes: [(1n << 64n) - 2n, 5n] },
  ]);
});

test('map encoding (newer vLLM): batch as map, events as maps, 32-byte digests, extra fields ignored', () => {
  const payload = map(
    ['ts', f64(99.75)],
    [
      'events',
      arr(
        map(
          ['type', str('BlockStored')],
          ['block_hashes', arr(bin(DIGEST_A), bin(DIGEST_B))],
          ['parent_block_hash', bin(DIGEST_B.slice().reverse())],
          ['token_ids', arr(...Array.from({ length: 8 }, (_, i) => uint(i * 1000)))],
          ['block_size', uint(4)],
          ['lora_id', uint(2)],
          ['medium', str('GPU')],
          ['lora_name', str('sql-lora')],
          ['extra_keys', arr(nil(), arr(str('salt'), uint(1)))],
          ['group_idx', uint(1)],
          ['kv_cache_spec_kind', str('full_attention')],
          ['some_future_field', map(['x', arr()])],
        ),
        map(['type', str('BlockRemoved')], ['block_hashes', arr(bin(DIGEST_A))], ['medium', nil()], ['group_idx', uint(0)]),
        map(['type', str('AllBlocksCleared')]),
      ),
    ],
    ['data_parallel_rank', uint(0)],
  );
  const b = decodeEngineBatch(bytes(payload));
  assert.equal(b, {
    ts: 99.75,
    dpRank: 0,
    skipped: 0,
    invalid: [],
    events: [
      {
        type: 'BlockStored',
        blockHashes: [hex(DIGEST_A), hex(DIGEST_B)],
        parentBlockHash: hex(DIGEST_B.slice().reverse()),
        tokenIds: Array.from({ length: 8 }, (_, i) => i * 1000),
        blockSize: 4,
        aligned: true,
        hashOnly: false,
        loraId: 2,
        medium: 'GPU',
        loraName: 'sql-lora',
        extraKeys: [null, ['salt', 1]],
        groupIdx: 1,
        kvCacheSpecKind: 'full_attention',
      },
      { type: 'BlockRemoved', blockHashes: [hex(DIGEST_A)], groupIdx: 0 },
      { type: 'AllBlocksCleared' },
    ],
  });
  assert.is((b.events[0] as BlockStored).blockHashes[0], hex(DIGEST_A));
  assert.is(((b.events[0] as BlockStored).blockHashes[0] as string).length, 64);
});

test('map encoding: trailing optional fields missing, no data_parallel_rank, batch as array of map events', () => {
  const asMap = map(['ts', f64(1)], ['events', arr(map(['type', str('BlockStored')], ['block_hashes', arr(u64(BIG1))], ['token_ids', arr(uint(1), uint(2))], ['block_size', uint(2)]))]);
  const a = decodeEngineBatch(bytes(asMap));
  assert.not.ok('dpRank' in a);
  assert.equal(a.events, [{ type: 'BlockStored', blockHashes: [BIG1], parentBlockHash: null, tokenIds: [1, 2], blockSize: 2, aligned: true, hashOnly: false, loraId: null }]);
  // msgspec can also emit the batch array_like with plain (map) events; dp_rank nil means absent
  const asArray = arr(f64(2), arr(map(['type', str('BlockRemoved')], ['block_hashes', arr(u64(BIG2))])), nil());
  const b = decodeEngineBatch(bytes(asArray));
  assert.equal(b, { ts: 2, events: [{ type: 'BlockRemoved', blockHashes: [BIG2] }], skipped: 0, invalid: [] });
});

test('unknown event tags are skipped and counted, in both encodings; known ones around them survive', () => {
  const payload = arr(
    f64(3),
    arr(
      arr(str('BlockPinned'), arr(uint(1)), str('whatever')),
      arr(str('AllBlocksCleared')),
      map(['type', str('BlockOffloaded')], ['block_hashes', arr(uint(1))]),
      arr(str('BlockRemoved'), arr(uint(8))),
    ),
  );
  const b = decodeEngineBatch(bytes(payload));
  assert.is(b.skipped, 2);
  assert.equal(b.events, [{ type: 'AllBlocksCleared' }, { type: 'BlockRemoved', blockHashes: [8n] }]);
});

test('the same 64-bit value decodes to the same Map key whatever its msgpack width', () => {
  const widths = [uint(7), [0xcc, 7], [0xcd, 0, 7], u32(7), u64(7n), i64(7n), [0xd0, 7]];
  const keys = widths.map((w) => (decodeEngineBatch(bytes(arr(f64(0), arr(arr(str('BlockRemoved'), arr(w)))))).events[0] as { blockHashes: unknown[] }).blockHashes[0]);
  const m = new Map(keys.map((k) => [k, true]));
  assert.is(m.size, 1);
  assert.is(keys[0], 7n);
  // -1 as int64 (or as a negative fixint) is 2^64-1 as uint64
  assert.is(engineHash(-1), (1n << 64n) - 1n);
  assert.is(engineHash(-1n), (1n << 64n) - 1n);
  assert.is(decodeEngineBatch(bytes(arr(f64(0), arr(arr(str('BlockRemoved'), arr([0xff])))))).events[0]!.type, 'BlockRemoved');
  assert.equal((decodeEngineBatch(bytes(arr(f64(0), arr(arr(str('BlockRemoved'), arr([0xff])))))).events[0] as { blockHashes: unknown[] }).blockHashes, [(1n << 64n) - 1n]);
  // integer hashes and byte hashes never collide as keys
  assert.is.not(engineHash(Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 7)), engineHash(7));
});

test('fewer hashes than token blocks (vLLM skips null blocks) decodes with aligned=false', () => {
  const payload = arr(f64(0), arr(arr(str('BlockStored'), arr(uint(11)), uint(10), arr(...[1, 2, 3, 4, 5, 6].map(uint)), uint(2), nil(), str('GPU'), nil(), nil(), uint(1))));
  const ev = decodeEngineBatch(bytes(payload)).events[0] as BlockStored;
  assert.is(ev.aligned, false);
  assert.equal(ev.blockHashes, [11n]);
  assert.is(ev.tokenIds.length, 6);
  assert.is(ev.groupIdx, 1);
});

test('SGLang EAGLE bigram token pairs reduce to the first token of each pair', () => {
  const pairs = arr(arr(uint(1), uint(2)), arr(uint(2), uint(3)), arr(uint(3), uint(4)), arr(uint(4), uint(5)));
  const ev = decodeEngineBatch(bytes(arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), pairs, uint(4), nil()))))).events[0] as BlockStored;
  assert.equal(ev.tokenIds, [1, 2, 3, 4]);
  rejectsEvent(arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr(arr(uint(1))), uint(1), nil()))), /pair/, 'bad-token_ids');
});

test('block-shape validation: whole blocks only, never more hashes than blocks', () => {
  const stored = (hashes: B, toks: number[], bs: B) => arr(f64(0), arr(arr(str('BlockStored'), hashes, nil(), arr(...toks.map(uint)), bs, nil())));
  rejectsEvent(stored(arr(uint(1)), [1, 2, 3], uint(2)), /whole number/, 'token-count');
  rejectsEvent(stored(arr(uint(1), uint(2)), [1, 2], uint(2)), /2 block hashes but only 1/, 'token-count');
  rejectsEvent(stored(arr(uint(1)), [1, 2], uint(0)), /block_size must be positive/, 'bad-block_size');
  rejectsEvent(stored(arr(uint(1)), [1, 2], f64(2.5)), /block_size/, 'bad-block_size');
  rejectsEvent(stored(arr(uint(1)), [1, 2], [0xff]), /block_size/, 'bad-block_size');
  rejectsEvent(stored(arr(uint(1)), [1, 2], nil()), /block_size/, 'bad-block_size');
});

test('batch-level wrong types → DecodeError naming the field', () => {
  const cases: [B, RegExp][] = [
    [arr(f64(0), str('nope')), /events must be an array/],
    [str('batch'), /array or a map/],
    [uint(5), /array or a map/],
    [arr(f64(0)), /needs \[ts, events\]/],
    [arr(str('yesterday'), arr()), /ts must be a number/],
    [map(['events', arr()]), /ts must be a number/],
    [map(['ts', f64(0)]), /events must be an array/],
    [arr(f64(0), arr(), str('zero')), /data_parallel_rank/],
  ];
  for (const [payload, re] of cases) throwsDecode(() => decodeEngineBatch(bytes(payload)), re);
});

test('event-level wrong types drop that event alone, with a message naming the field and a stable reason', () => {
  const cases: [B, RegExp][] = [
    [arr(f64(0), arr(arr(uint(1), arr()))), /tag must be a string/],
    [arr(f64(0), arr(uint(3))), /event 0 must be an array or a map/],
    [arr(f64(0), arr(arr())), /tag must be a string/],
    [arr(f64(0), arr(map(['block_hashes', arr()]))), /tag must be a string/],
    [arr(f64(0), arr(arr(str('BlockRemoved'), str('abc')))), /block_hashes must be an array/],
    [arr(f64(0), arr(arr(str('BlockRemoved')))), /block_hashes must be an array/],
    [arr(f64(0), arr(arr(str('BlockRemoved'), arr(f64(1.5))))), /block_hashes\[0\] must be an integer or bytes/],
    [arr(f64(0), arr(arr(str('BlockRemoved'), arr(str('deadbeef'))))), /block_hashes\[0\]/],
    [arr(f64(0), arr(arr(str('BlockRemoved'), arr(bin([]))))), /empty byte hash/],
    [arr(f64(0), arr(arr(str('BlockRemoved'), arr(uint(1)), uint(4)))), /medium must be a string/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), str('p'), arr(uint(1)), uint(1), nil()))), /parent_block_hash/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), str('tokens'), uint(1), nil()))), /token_ids must be an array/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr([0xff]), uint(1), nil()))), /uint32 token id/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr(u64(1n << 32n)), uint(1), nil()))), /uint32 token id/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr(f64(1.5)), uint(1), nil()))), /uint32 token id/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr(uint(1)), uint(1), str('lora')))), /lora_id/],
    [arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr(uint(1)), uint(1), nil(), nil(), uint(9)))), /lora_name/],
    [map(['ts', f64(0)], ['events', arr(map(['type', str('BlockStored')], ['block_hashes', arr()], ['token_ids', arr()]))]), /block_size/],
  ];
  for (const [payload, re] of cases) rejectsEvent(payload, re);
});

// ---- current upstream shapes (vllm/distributed/kv_events.py; sglang/srt/disaggregation/kv_events.py) ----

/** vLLM's current BlockStored as an array_like struct: every field present, in declaration order */
function vllmStoredArray(o: { hashes: B; parent: B; tokens: B; bs: B; medium: B; loraName?: B; extra?: B; group?: B; kind?: B; window?: B }): B {
  return arr(str('BlockStored'), o.hashes, o.parent, o.tokens, o.bs, nil(), o.medium, o.loraName ?? nil(), o.extra ?? nil(), o.group ?? nil(), o.kind ?? nil(), o.window ?? nil());
}

test('vLLM offloading connector: hash-only CPU placeholders in the same batch as GPU events', () => {
  // BlockStored(block_hashes=[…], parent_block_hash=None, token_ids=[], lora_id=None, block_size=0, medium="CPU", lora_name=None)
  const payload = arr(
    f64(5.5),
    arr(
      vllmStoredArray({ hashes: arr(u64(BIG1), u64(BIG2)), parent: nil(), tokens: arr(...[1, 2, 3, 4].map(uint)), bs: uint(2), medium: str('GPU'), group: uint(0), kind: str('full_attention') }),
      vllmStoredArray({ hashes: arr(u64(BIG1), u64(BIG2)), parent: nil(), tokens: arr(), bs: uint(0), medium: str('CPU') }),
      arr(str('BlockRemoved'), arr(u64(BIG1)), str('GPU'), uint(0)),
      arr(str('BlockRemoved'), arr(u64(BIG2)), str('CPU'), nil()),
      // older connector versions put the offloaded block size in block_size
      vllmStoredArray({ hashes: arr(u64(BIG2)), parent: nil(), tokens: arr(), bs: uint(32), medium: str('CPU') }),
    ),
    uint(0),
  );
  const b = decodeEngineBatch(bytes(payload));
  assert.equal(b.invalid, []);
  assert.is(b.events.length, 5);
  const gpu = b.events[0] as BlockStored, cpu = b.events[1] as BlockStored, old = b.events[4] as BlockStored;
  assert.equal([gpu.hashOnly, gpu.aligned, gpu.medium, gpu.groupIdx, gpu.kvCacheSpecKind], [false, true, 'GPU', 0, 'full_attention']);
  assert.equal([cpu.hashOnly, cpu.aligned, cpu.blockSize, cpu.tokenIds, cpu.medium, cpu.parentBlockHash], [true, false, 0, [], 'CPU', null]);
  assert.equal(cpu.blockHashes, [BIG1, BIG2]);
  assert.equal(b.events[3], { type: 'BlockRemoved', blockHashes: [BIG2], medium: 'CPU' });
  assert.equal([old.hashOnly, old.blockSize], [true, 32]);
  // the same placeholder as a map (newer vLLM: omit_defaults drops the None fields)
  const asMap = map(['ts', f64(1)], ['events', arr(map(['type', str('BlockStored')], ['block_hashes', arr(bin(DIGEST_A))], ['parent_block_hash', nil()], ['token_ids', arr()], ['block_size', uint(0)], ['lora_id', nil()], ['medium', str('CPU')], ['lora_name', nil()]))]);
  const m = decodeEngineBatch(bytes(asMap)).events[0] as BlockStored;
  assert.equal([m.hashOnly, m.medium, m.blockHashes], [true, 'CPU', [hex(DIGEST_A)]]);
});

test('SGLang ≥ 0.5.18 BlockStoredWithMetadata: metadata map at position 7 carries cache_salt', () => {
  // SGLang array_like: ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, metadata]
  const salted = arr(str('BlockStored'), arr(i64(-5n)), nil(), arr(...[7, 8, 9, 10].map(uint)), uint(2), nil(), str('GPU'), map(['cache_salt', str('tenant-42')]));
  const plain = arr(str('BlockStored'), arr(uint(3)), i64(-5n), arr(uint(1), uint(2)), uint(2), nil(), str('CPU_PINNED'));
  const b = decodeEngineBatch(bytes(arr(f64(2), arr(salted, plain), uint(1))));
  assert.equal(b.invalid, []);
  assert.is(b.dpRank, 1);
  const s0 = b.events[0] as BlockStored, s1 = b.events[1] as BlockStored;
  assert.is(s0.cacheSalt, 'tenant-42');
  assert.is(s0.loraName, undefined);
  assert.is(s1.cacheSalt, undefined);
  assert.is(s1.medium, 'CPU_PINNED');
  assert.is(s1.parentBlockHash, BigInt.asUintN(64, -5n));
  // a map event with a metadata key; a metadata map of the wrong shape drops that event only
  const mapEv = map(['type', str('BlockStored')], ['block_hashes', arr(uint(4))], ['parent_block_hash', nil()], ['token_ids', arr(uint(1), uint(2))], ['block_size', uint(2)], ['lora_id', nil()], ['medium', str('GPU')], ['metadata', map(['cache_salt', str('s')])]);
  assert.is((decodeEngineBatch(bytes(map(['ts', f64(0)], ['events', arr(mapEv)]))).events[0] as BlockStored).cacheSalt, 's');
  rejectsEvent(arr(f64(0), arr(arr(str('BlockStored'), arr(uint(1)), nil(), arr(uint(1)), uint(1), nil(), str('GPU'), map(['cache_salt', uint(5)])))), /cache_salt/);
});

test('vLLM extra_keys: one entry per block (lora name, multimodal pairs, cache_salt, embedding digests)', () => {
  const extra = arr(arr(str('sql-lora'), str('tenant-7')), arr(arr(str('mm-hash-1'), uint(3))), nil(), arr(bin([1, 2, 3])));
  const ev = vllmStoredArray({ hashes: arr(uint(1), uint(2), uint(3), uint(4)), parent: nil(), tokens: arr(...Array.from({ length: 8 }, (_, i) => uint(i))), bs: uint(2), medium: str('GPU'), loraName: str('sql-lora'), extra });
  const s = decodeEngineBatch(bytes(arr(f64(0), arr(ev)))).events[0] as BlockStored;
  assert.is(s.loraName, 'sql-lora');
  assert.equal(s.extraKeys!.slice(0, 3), [['sql-lora', 'tenant-7'], [['mm-hash-1', 3]], null]);
  assert.equal([...(s.extraKeys![3]![0] as Uint8Array)], [1, 2, 3]);
  // one entry per block hash, or the event is dropped
  rejectsEvent(arr(f64(0), arr(vllmStoredArray({ hashes: arr(uint(1)), parent: nil(), tokens: arr(uint(1), uint(2)), bs: uint(2), medium: str('GPU'), extra: arr(nil(), nil()) }))), /2 entries for 1 block/, 'bad-extra_keys');
});

test('hybrid models: group index, spec kind and sliding window decode; trailing future fields are ignored', () => {
  const sw = vllmStoredArray({ hashes: arr(uint(9)), parent: nil(), tokens: arr(uint(1), uint(2)), bs: uint(2), medium: str('GPU'), group: uint(1), kind: str('sliding_window'), window: uint(4096) });
  const withFuture = arr(...[sw].map((e) => e), arr(str('BlockStored'), arr(uint(10)), nil(), arr(uint(1), uint(2)), uint(2), nil(), str('GPU'), nil(), nil(), uint(0), str('full_attention'), nil(), uint(2), str('local'), map(['owner', str('x')])));
  const b = decodeEngineBatch(bytes(arr(f64(0), withFuture)));
  assert.equal(b.invalid, []);
  const [a, c] = b.events as BlockStored[];
  assert.equal([a!.groupIdx, a!.kvCacheSpecKind, a!.kvCacheSpecSlidingWindow], [1, 'sliding_window', 4096]);
  assert.equal([c!.groupIdx, c!.kvCacheSpecKind, c!.kvCacheSpecSlidingWindow], [0, 'full_attention', undefined]);
});

test('one bad event never costs its batch: the good events around it decode, the bad one is listed', () => {
  const good1 = arr(str('BlockStored'), arr(uint(1)), nil(), arr(uint(1), uint(2)), uint(2), nil(), str('GPU'), nil());
  const bad = arr(str('BlockStored'), arr(uint(2)), nil(), arr(uint(1), uint(2)), uint(0), nil(), str('GPU'), map(['cache_salt', arr()]));
  const good2 = arr(str('BlockRemoved'), arr(uint(1)), str('GPU'));
  const b = decodeEngineBatch(bytes(arr(f64(0), arr(good1, bad, arr(str('Unknown')), good2))));
  assert.equal(b.events.map((e) => e.type), ['BlockStored', 'BlockRemoved']);
  assert.is(b.skipped, 1);
  assert.is(b.invalid.length, 1);
  assert.is(b.invalid[0]!.index, 1);
  assert.is(b.invalid[0]!.reason, 'bad-block_size');
});

test('truncated and over-long payloads → DecodeError (every prefix of a valid batch)', () => {
  for (const full of [legacyBatch(), map(['ts', f64(1)], ['events', arr(map(['type', str('BlockRemoved')], ['block_hashes', arr(bin(DIGEST_A))]))])]) {
    assert.ok(decodeEngineBatch(bytes(full)).events.length > 0);
    for (let n = 0; n < full.length; n++) throwsDecode(() => decodeEngineBatch(bytes(full.slice(0, n))));
    throwsDecode(() => decodeEngineBatch(bytes([...full, 0xc0])), /malformed msgpack/);
  }
  throwsDecode(() => decodeEngineBatch(bytes([0xc1])), /array or a map/); // 0xc1 "never used": msgpackr yields a marker object
  rejectsEvent(arr(f64(0), arr(arr(str('BlockRemoved'), arr([0xc1])))), /block_hashes\[0\]/, 'bad-block_hashes');
  throwsDecode(() => decodeEngineBatch('not bytes' as unknown as Uint8Array), /bytes/);
});

test('msgpack extension types and other exotica never escape as anything but DecodeError', () => {
  const exotic: B[] = [
    [0xd4, 0x65, 0x00], // msgpackr "error" extension
    [0xd6, 0xff, 0, 0, 0, 1], // timestamp → Date
    arr(f64(0), arr([0xd4, 0x01, 0x00])), // unknown fixext
    arr(f64(0), arr(arr(str('BlockRemoved'), arr([0xd6, 0xff, 0, 0, 0, 1])))), // Date as a hash
    arr(f64(0), arr(arr(str('BlockRemoved'), arr([0xd4, 0x00, 0x00])))), // ext 0 (msgpackr: undefined) as a hash
    [0xd4, 0x72, 0x40, 0x40], // msgpackr record definition
    [0xc7, 0x05, 0x69, 0, 0, 0, 1, 0x90], // structured-clone id extension (disabled)
    [0xdd, 0xff, 0xff, 0xff, 0xff], // array32 claiming 4 G items in 5 bytes
    [0xdf, 0xff, 0xff, 0xff, 0xff], // map32 claiming 4 G entries
    [0xdb, 0xff, 0xff, 0xff, 0xff, 0x61], // str32 claiming 4 GiB
    [0xc6, 0x7f, 0xff, 0xff, 0xff], // bin32 claiming 2 GiB
    Array.from({ length: 100_000 }, () => 0x91), // 100k nested one-element arrays (stack depth)
  ];
  for (const p of exotic) rejected(p);
});

test('fuzz: random and mutated buffers either decode or throw DecodeError', () => {
  let s = 0x2545f491;
  const rnd = () => ((s ^= s << 13), (s ^= s >>> 17), (s ^= s << 5), (s >>> 0) / 2 ** 32);
  const seeds = [legacyBatch(), map(['ts', f64(1)], ['events', arr(map(['type', str('BlockStored')], ['block_hashes', arr(bin(DIGEST_A))], ['parent_block_hash', u64(BIG2)], ['token_ids', arr(uint(1), uint(300))], ['block_size', uint(2)]))], ['data_parallel_rank', uint(1)])];
  let decoded = 0, rejected = 0;
  for (let k = 0; k < 4000; k++) {
    let buf: number[];
    if (k % 4 === 0) {
      buf = Array.from({ length: 1 + Math.floor(rnd() * 64) }, () => Math.floor(rnd() * 256));
    } else {
      buf = [...seeds[k % seeds.length]!];
      const edits = 1 + Math.floor(rnd() * 4);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(rnd() * buf.length);
        const op = Math.floor(rnd() * 4);
        if (op === 0) buf[at] = Math.floor(rnd() * 256);
        else if (op === 1) buf[at]! ^= 1 << Math.floor(rnd() * 8);
        else if (op === 2) buf.splice(at, 1);
        else buf.splice(at, 0, Math.floor(rnd() * 256));
      }
    }
    try {
      const b = decodeEngineBatch(Uint8Array.from(buf));
      assert.ok(Array.isArray(b.events) && Number.isFinite(b.ts));
      decoded++;
    } catch (e) {
      if (!(e instanceof DecodeError)) assert.unreachable(`non-DecodeError for ${Buffer.from(buf).toString('hex')}: ${String(e)}`);
      rejected++;
    }
  }
  assert.is(decoded + rejected, 4000);
  assert.ok(rejected > 1000, `most garbage is rejected (${rejected})`);
  assert.ok(decoded > 10, `some mutations still decode (${decoded})`);
});

test('frames: [topic, seq (8-byte big-endian), payload]', () => {
  const payload = bytes(legacyBatch());
  const m = decodeEngineFrames([new TextEncoder().encode('kv@pod-1@qwen3-8b'), seqFrame((1n << 63n) + 5n), payload]);
  assert.is(m.topic, 'kv@pod-1@qwen3-8b');
  assert.is(m.seq, (1n << 63n) + 5n);
  assert.equal(m.batch, decodeEngineBatch(payload));
  const empty = decodeEngineFrames([new Uint8Array(0), seqFrame(0n), payload]);
  assert.is(empty.topic, '');
  assert.is(empty.seq, 0n);
  throwsDecode(() => decodeEngineFrames([new Uint8Array(0), Uint8Array.of(0, 0, 0, 0, 0, 0, 1), payload]), /seq frame must be 8 bytes, got 7/);
  throwsDecode(() => decodeEngineFrames([new Uint8Array(0), new Uint8Array(9), payload]), /8 bytes/);
  throwsDecode(() => decodeEngineFrames([seqFrame(1n), payload]), /3 frames/);
  throwsDecode(() => decodeEngineFrames([new Uint8Array(0), seqFrame(1n), payload, payload]), /3 frames/);
  throwsDecode(() => decodeEngineFrames([new Uint8Array(0), seqFrame(1n), Uint8Array.of(0x92, 0xcb)]), /malformed/);
  throwsDecode(() => decodeEngineFrames('frames' as unknown as Uint8Array[]));
});

test('replay frames: batches, the DEALER empty delimiter, and the end marker', () => {
  const payload = bytes(legacyBatch());
  const r = decodeReplayFrames([seqFrame(42n), payload]);
  assert.equal(r, { end: false, seq: 42n, batch: decodeEngineBatch(payload) });
  assert.equal(decodeReplayFrames([new Uint8Array(0), seqFrame(43n), payload]).seq, 43n);
  const end = decodeReplayFrames([Uint8Array.from(be(BigInt.asUintN(64, -1n), 8)), new Uint8Array(0)]);
  assert.equal(end, { end: true, seq: REPLAY_END_SEQ });
  throwsDecode(() => decodeReplayFrames([seqFrame(1n)]), /2 frames/);
  throwsDecode(() => decodeReplayFrames([Uint8Array.of(1, 2), payload]), /8 bytes/);
});

test.run();
