import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decode as independentDecode, encode as independentEncode } from '@msgpack/msgpack';
import {
  decode,
  decodeActive,
  decodeEventBatch,
  decodeGossip,
  decodeLoad,
  decodeMatchReply,
  decodeMatchRequest,
  decodeRegistration,
  decodeSync,
  encode,
  toHash,
  type EventBatch,
  packHashes, unpackHashes,
} from '../src/schemas.js';
import { DecodeError } from '../src/errors.js';

const BIG = [0xffffffffffffffffn, 0x8000000000000000n, 0xfedcba9876543210n, 0x8000000000000001n];

function throwsDecode(fn: () => unknown, re?: RegExp) {
  try {
    fn();
  } catch (e) {
    assert.instance(e, DecodeError, `expected DecodeError, got ${String(e)}`);
    if (re) assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('expected a DecodeError');
}

test('event batch round trip keeps hashes ≥ 2^63 exact', () => {
  const batch: EventBatch = {
    worker: 'w-1',
    seq: 7,
    ts: 1732000000123,
    model: 'qwen3-8b',
    events: [
      { t: 'stored', parent: null, hashes: [BIG[0]!, BIG[1]!, 5n] },
      { t: 'stored', parent: BIG[2]!, hashes: [BIG[3]!] },
      { t: 'removed', hashes: [BIG[1]!, 0n] },
      { t: 'cleared' },
    ],
  };
  const bytes = encode(batch);
  assert.equal(decodeEventBatch(bytes), batch);
  // hashes travel as 64-bit integers, never floats: an independent codec sees the exact values
  const seen = independentDecode(bytes, { useBigInt64: true }) as { events: { hashes?: bigint[] }[] };
  assert.equal(seen.events[0]!.hashes!.map((h) => BigInt.asUintN(64, BigInt(h))), [BIG[0], BIG[1], 5n]);
});

test('event batch accepts hashes as 8-byte buffers and small ints from other encoders', () => {
  const be = (h: bigint) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, h, false);
    return b;
  };
  const bytes = independentEncode({ worker: 'w', seq: 1, ts: 2, events: [{ t: 'stored', parent: be(BIG[0]!), hashes: [be(BIG[2]!), 9] }] });
  assert.equal(decodeEventBatch(bytes).events, [{ t: 'stored', parent: BIG[0]!, hashes: [BIG[2]!, 9n] }]);
});

test('malformed event batches → DecodeError', () => {
  throwsDecode(() => decodeEventBatch(Uint8Array.of(0x92, 0xcb)), /malformed msgpack/);
  throwsDecode(() => decodeEventBatch(Uint8Array.of()), /malformed msgpack/);
  throwsDecode(() => decodeEventBatch(encode([1, 2])), /must be a map/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1 })), /events must be an array/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 1, seq: 1, ts: 1, events: [] })), /worker/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 'x', ts: 1, events: [] })), /seq/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1, events: [{ t: 'moved' }] })), /unknown event type/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1, events: [{ t: 'removed', hashes: [1.5] }] })), /hash/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1, events: [{ t: 'removed', hashes: [2 ** 60] }] })), /hash/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1, events: [{ t: 'removed', hashes: [new Uint8Array(7)] }] })), /hash/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1, events: [{ t: 'stored', parent: 'root', hashes: [] }] })), /hash/);
  throwsDecode(() => decodeEventBatch(encode({ worker: 'w', seq: 1, ts: 1, events: [7] })), /event must be a map/);
});

test('toHash normalises every accepted form to uint64', () => {
  assert.is(toHash(-1n), BIG[0]);
  assert.is(toHash(42), 42n);
  assert.is(toHash(Uint8Array.of(0x80, 0, 0, 0, 0, 0, 0, 0)), BIG[1]);
  throwsDecode(() => toHash(-1));
  throwsDecode(() => toHash('ff'));
});

test('match request / reply, gossip and sync round trip with big hashes', () => {
  const req = { model: 'm', lora: 'l', hashes: BIG };
  assert.equal(decodeMatchRequest(encode(req)), req);
  assert.equal(decodeMatchRequest(encode({ model: 'm', hashes: [] })), { model: 'm', lora: null, hashes: [] });
  assert.equal(decodeMatchReply(encode({ overlaps: { a: 3, b: 0 }, indexerSeq: 9 })), { overlaps: { a: 3, b: 0 }, indexerSeq: 9 });
  const gossip = { indexer: 'i1', digests: { w1: { seq: 4, count: 2, xor: BIG[0]! }, w2: { seq: 0, count: 0, xor: 0n } } };
  assert.equal(decodeGossip(encode(gossip)), gossip);
  const sync = { from: 'i1', worker: 'w1', request: false, seq: 3, blocks: [0n, BIG[2]!, BIG[2]!, BIG[3]!] };
  assert.equal(decodeSync(encode(sync)), sync);
  assert.equal(decodeSync(encode({ from: 'i2', worker: 'w1', request: true, seq: 0 })), { from: 'i2', worker: 'w1', request: true, seq: 0, blocks: [] });
  throwsDecode(() => decodeMatchRequest(encode({ model: 'm', hashes: 'all' })), /hashes must be an array/);
  throwsDecode(() => decodeMatchReply(encode({ overlaps: { a: 'x' } })), /overlaps\.a/);
  throwsDecode(() => decodeGossip(encode({ indexer: 'i', digests: { w: { seq: 1, count: 1, xor: 0.5 } } })), /hash/);
  throwsDecode(() => decodeSync(encode({ from: 'i', worker: 'w', seq: 1, blocks: [null] })), /hash/);
  // tier masks: one byte per block, each in 1..7 (a forged mask must not reach the index)
  const tiered = { ...sync, tiers: Uint8Array.from([3, 2]) };
  assert.equal(Array.from(decodeSync(encode(tiered)).tiers!), [3, 2]);
  throwsDecode(() => decodeSync(encode({ ...sync, tiers: Uint8Array.from([1]) })), /one byte per block/);
  throwsDecode(() => decodeSync(encode({ ...sync, tiers: Uint8Array.from([1, 0]) })), /1\.\.7/);
  throwsDecode(() => decodeSync(encode({ ...sync, tiers: Uint8Array.from([8, 1]) })), /1\.\.7/);
});

test('load, registration and active deltas validate their fields', () => {
  const load = { worker: 'w', model: 'm', role: 'prefill' as const, waiting: 1, running: 2, kvUsage: 0.5, capacityBlocks: 1000, url: 'http://127.0.0.1:1', ts: 5 };
  assert.equal(decodeLoad(encode(load)), load);
  throwsDecode(() => decodeLoad(encode({ ...load, role: 'boss' })), /bad role/);
  throwsDecode(() => decodeLoad(encode({ ...load, kvUsage: 'high' })), /kvUsage/);
  const reg = { worker: 'w', model: 'm', role: 'both' as const, url: 'http://a', engineUrl: 'http://b', blockSize: 16, capacityBlocks: 10, loras: ['x'], ts: 1 };
  assert.equal(decodeRegistration(encode(reg)), reg);
  throwsDecode(() => decodeRegistration(encode({ ...reg, blockSize: null })), /blockSize/);
  const active = { router: 'r', deltas: [{ router: 'r', worker: 'w', dPrefillTokens: 100, dDecodeBlocks: -1 }] };
  assert.equal(decodeActive(encode(active)), active);
  throwsDecode(() => decodeActive(encode({ router: 'r', deltas: [3] })), /delta must be a map/);
});

test('generic decode wraps every msgpack failure in DecodeError', () => {
  let s = 99;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let k = 0; k < 2000; k++) {
    const buf = Uint8Array.from({ length: 1 + Math.floor(rnd() * 40) }, () => Math.floor(rnd() * 256));
    for (const fn of [decode, decodeEventBatch, decodeMatchRequest, decodeGossip, decodeSync]) {
      try {
        fn(buf);
      } catch (e) {
        if (!(e instanceof DecodeError)) assert.unreachable(`${fn.name}: non-DecodeError ${String(e)} for ${Buffer.from(buf).toString('hex')}`);
      }
    }
  }
});

test('match request: hashes packed as one 8·n-byte buffer decode exactly; a ragged buffer is a DecodeError', () => {
  const hs = [0n, 1n, 0xffffffffffffffffn, 0x8000000000000001n, 0x0123456789abcdefn];
  const packed = packHashes(hs);
  assert.is(packed.length, 40);
  assert.equal(packHashes(BigUint64Array.from(hs)), packed, 'a BigUint64Array packs to the same bytes');
  assert.equal(packHashes(BigUint64Array.from(hs).subarray(1, 3)), packed.subarray(8, 24), 'also a view at an offset');
  assert.equal([...unpackHashes(packed)], hs);
  const req = decodeMatchRequest(encode({ model: 'm', hashes: packed }));
  assert.equal([...req.hashes], hs);
  assert.throws(() => decodeMatchRequest(encode({ model: 'm', hashes: packed.subarray(0, 13) })), (e: unknown) => e instanceof DecodeError);
});

test.run();
