/** The fast batch decoder agrees with the reference decoder (schemas.ts) on valid and malformed inputs. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encode as encode2 } from '@msgpack/msgpack';
import { encode, decodeEventBatch, DecodeError, type EventBatch } from '@kvgate/protocol';
import { DecodedBatch, decodeBatchFast, decodeBatchInto } from '../src/wire.js';
import { rng } from './helpers.js';

function toBig(lo: number, hi: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}
function normalise(b: DecodedBatch): unknown {
  const events: unknown[] = [];
  for (let i = 0; i < b.count; i++) {
    const pairs = b.hashes(i), hs: bigint[] = [];
    for (let j = 0; j < pairs.length; j += 2) hs.push(toBig(pairs[j]!, pairs[j + 1]!));
    const parent = b.parentLo[i] === 0 && b.parentHi[i] === 0 ? null : toBig(b.parentLo[i]!, b.parentHi[i]!);
    const tier = b.tier[i] === 2 ? { tier: 'cpu' } : b.tier[i] === 4 ? { tier: 'disk' } : {};
    if (b.type[i] === 0) events.push({ t: 'stored', parent, hashes: hs, ...tier });
    else if (b.type[i] === 1) events.push({ t: 'removed', hashes: hs, ...tier });
    else events.push({ t: 'cleared' });
  }
  return { worker: b.worker, seq: b.seq, events };
}
function reference(bytes: Uint8Array): unknown {
  const b = decodeEventBatch(bytes);
  return { worker: b.worker, seq: b.seq, events: b.events };
}

function randomBatch(r: () => number): EventBatch {
  const h = () => (r() < 0.3 ? BigInt(Math.floor(r() * 300)) + 1n : (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32)));
  const events = Array.from({ length: Math.floor(r() * 5) }, () => {
    const x = r(), y = r();
    const tier = y < 0.15 ? { tier: 'cpu' as const } : y < 0.25 ? { tier: 'disk' as const } : {};
    if (x < 0.5) return { t: 'stored' as const, parent: r() < 0.3 ? null : h(), hashes: Array.from({ length: Math.floor(r() * 20) }, h), ...tier };
    if (x < 0.9) return { t: 'removed' as const, hashes: Array.from({ length: Math.floor(r() * 20) }, h), ...tier };
    return { t: 'cleared' as const };
  });
  return { worker: `w-${Math.floor(r() * 1000)}é`, seq: Math.floor(r() * 1e9), ts: Date.now() + r(), events, model: 'm' };
}

test('fast decoder equals the reference decoder on msgpackr output', () => {
  const r = rng(7);
  const reused = new DecodedBatch();
  for (let i = 0; i < 300; i++) {
    const bytes = encode(randomBatch(r));
    assert.equal(normalise(decodeBatchFast(bytes)), reference(bytes));
    decodeBatchInto(bytes, reused);
    assert.equal(normalise(reused), reference(bytes), 'decoded into a reused DecodedBatch');
  }
});

test('fast decoder equals the reference on an independent encoder (@msgpack/msgpack, bigint as int64)', () => {
  const r = rng(8);
  for (let i = 0; i < 200; i++) {
    const b = randomBatch(r);
    const bytes = encode2({ extra: [1, { x: 2 }], ...b }, { useBigInt64: true });
    assert.equal(normalise(decodeBatchFast(bytes)), reference(bytes));
  }
});

test('tiers decode per event: absent and gpu are GPU, cpu and disk keep their tier; an unknown tier or a non-string is malformed, as in the reference', () => {
  const batch: EventBatch = {
    worker: 'w', seq: 1, ts: 1,
    events: [
      { t: 'stored', parent: null, hashes: [11n, 12n] },
      { t: 'stored', parent: null, hashes: [11n, 12n], tier: 'cpu' },
      { t: 'removed', hashes: [11n], tier: 'disk' },
      { t: 'removed', hashes: [12n], tier: 'gpu' },
    ],
  };
  const fast = decodeBatchFast(encode(batch));
  assert.equal(Array.from(fast.tier.subarray(0, fast.count)), [1, 2, 4, 1]);
  assert.equal(normalise(fast), reference(encode(batch)));
  for (const tier of [5, 'nvme', ['cpu']]) {
    const bad = encode({ ...batch, events: [{ t: 'stored', parent: null, hashes: [1n], tier }] });
    assert.throws(() => decodeBatchFast(bad), (e: unknown) => e instanceof DecodeError, `tier ${JSON.stringify(tier)}`);
    assert.throws(() => decodeEventBatch(bad), (e: unknown) => e instanceof DecodeError, `reference, tier ${JSON.stringify(tier)}`);
  }
  // a nil tier is GPU in both
  const nil = encode({ ...batch, events: [{ t: 'stored', parent: null, hashes: [1n], tier: null }] });
  assert.equal(normalise(decodeBatchFast(nil)), reference(nil));
});

test('seq and ts in every msgpack number encoding decode as the reference does', () => {
  // hand-built: {worker:'w', seq:<n>, ts:<n>, events:[]} with the number bytes given
  const head = [0x84, 0xa6, ...Buffer.from('worker'), 0xa1, 0x77];
  const tail = [0xa6, ...Buffer.from('events'), 0x90];
  const nums: number[][] = [
    [0x05],
    [0xff], // -1 fixint
    [0xcc, 0xc8],
    [0xcd, 0x12, 0x34],
    [0xce, 0x89, 0xab, 0xcd, 0xef],
    [0xcf, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00],
    [0xd0, 0x85],
    [0xd1, 0x80, 0x01],
    [0xd2, 0x80, 0x00, 0x00, 0x01],
    [0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
    [0xd3, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x07],
    [0xca, 0x40, 0x49, 0x0f, 0xdb],
    [0xcb, 0x42, 0x7a, 0x21, 0x5c, 0x61, 0x9f, 0x50, 0x00],
  ];
  const reused = new DecodedBatch();
  for (const seq of nums) {
    for (const ts of [nums[0]!, seq]) {
      const bytes = new Uint8Array([...head, 0xa3, ...Buffer.from('seq'), ...seq, 0xa2, ...Buffer.from('ts'), ...ts, ...tail]);
      const ref = decodeEventBatch(bytes);
      decodeBatchInto(bytes, reused);
      assert.is(reused.seq, Number(ref.seq), Buffer.from(bytes).toString('hex'));
      assert.is(reused.ts, Number(ref.ts));
    }
  }
  // a non-finite float is not a number here, in either decoder
  const nan = new Uint8Array([...head, 0xa3, ...Buffer.from('seq'), 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0, 0xa2, ...Buffer.from('ts'), 0x01, ...tail]);
  assert.throws(() => decodeBatchFast(nan), (e: unknown) => e instanceof DecodeError);
  assert.throws(() => decodeEventBatch(nan), (e: unknown) => e instanceof DecodeError);
});

test('hashes as 8-byte buffers and unknown event fields are accepted', () => {
  const buf = new Uint8Array(8);
  new DataView(buf.buffer).setBigUint64(0, 0xfedcba9876543210n);
  const bytes = encode({ worker: 'a', seq: 1, ts: 2, events: [{ t: 'stored', parent: null, hashes: [buf], group_idx: 3 }] });
  assert.equal(normalise(decodeBatchFast(bytes)), reference(bytes));
});

test('decoded batches stay intact while many more are decoded (clones of the shared instance, worker-name cache)', () => {
  const r = rng(9);
  const kept: { bytes: Uint8Array; fast: DecodedBatch }[] = [];
  // > 256 distinct ids (the name cache collides), ids longer than a fixstr, enough hashes to grow the arrays
  for (let i = 0; i < 3000; i++) {
    const b = randomBatch(r);
    b.worker = i % 3 === 0 ? `a-very-long-worker-identifier-that-is-not-a-fixstr-${i % 7}` : `w${Math.floor(r() * 600)}`;
    b.events.push({ t: 'stored', parent: null, hashes: Array.from({ length: 40 }, (_, j) => BigInt(i * 1000 + j + 1)) });
    const bytes = encode(b);
    kept.push({ bytes, fast: decodeBatchFast(bytes) });
  }
  for (const k of kept) assert.equal(normalise(k.fast), reference(k.bytes));
  const cut = encode({ worker: 'abcdefgh', seq: 1, ts: 1, events: [] }).subarray(0, 12); // inside the worker id
  assert.throws(() => decodeBatchFast(cut), (e: unknown) => e instanceof DecodeError);
});

test('malformed input throws DecodeError in both decoders', () => {
  const bad = [
    new Uint8Array([0xc1]),
    encode([1, 2]),
    encode({ worker: 'a', seq: 1, ts: 1 }),
    encode({ worker: 'a', seq: 1, ts: 1, events: [{ t: 'weird' }] }),
    encode({ worker: 'a', seq: 1, ts: 1, events: [{ t: 'stored', hashes: [1.5] }] }),
    encode({ worker: 1, seq: 1, ts: 1, events: [] }),
    encode({ worker: 'a', seq: 'x', ts: 1, events: [] }),
    encode({ worker: 'a', seq: 1, ts: 1, events: [{ t: 'removed' }] }),
    encode({ worker: 'a', seq: 1, ts: 1, events: [{ t: 'stored', hashes: [1] }] }).subarray(0, 20),
  ];
  for (const b of bad) {
    assert.throws(() => decodeBatchFast(b), (e: unknown) => e instanceof DecodeError, `fast: ${Buffer.from(b).toString('hex')}`);
    assert.throws(() => decodeEventBatch(b), (e: unknown) => e instanceof DecodeError, `reference: ${Buffer.from(b).toString('hex')}`);
  }
});

test.run();
