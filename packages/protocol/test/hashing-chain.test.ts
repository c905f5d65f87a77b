import { test } from 'uvu';
import * as assert from 'uvu/assert';
import xxhash from 'xxhash-wasm';
import { blockHash, chainHashes, HASH_SEED, initHashing, prefixHashes, prefixHashesU64, rootHash } from '../src/hashing.js';
import { loadXxh64Wasm } from '../src/xxh64-wasm.js';

// Reference: the straightforward per-block chain over xxhash-wasm (an independent XXH64 implementation).
let h64Raw: (b: Uint8Array, seed?: bigint) => bigint;
function refChain(parent: bigint, tokens: ArrayLike<number>, B: number): bigint[] {
  const out: bigint[] = [];
  const buf = new Uint8Array(8 + 4 * B);
  const dv = new DataView(buf.buffer);
  let p = parent;
  for (let i = 0; i + B <= tokens.length; i += B) {
    dv.setBigUint64(0, p, true);
    for (let j = 0; j < B; j++) dv.setUint32(8 + 4 * j, tokens[i + j]! >>> 0, true);
    p = h64Raw(buf, HASH_SEED);
    out.push(p);
  }
  return out;
}

let s = 0x9e3779b9;
const rnd = () => ((s ^= s << 13), (s ^= s >>> 17), (s ^= s << 5), (s >>> 0) / 2 ** 32);
const randTokens = (n: number) => Array.from({ length: n }, () => Math.floor(rnd() * 2 ** 32));

test.before(async () => {
  await initHashing();
  h64Raw = (await xxhash()).h64Raw;
});

test('the WASM xxh64 equals xxhash-wasm for every length 0..300 and several seeds', async () => {
  const w = await loadXxh64Wasm();
  const mem = new Uint8Array(w.memory.buffer);
  for (let len = 0; len <= 300; len++) {
    const input = Uint8Array.from({ length: len }, () => Math.floor(rnd() * 256));
    const at = 8 + (len % 8); // unaligned starts too
    mem.set(input, at);
    for (const seed of [0n, HASH_SEED, (1n << 64n) - 1n, 1n << 63n]) {
      assert.is(BigInt.asUintN(64, w.xxh64(at, len, seed)), h64Raw(input, seed), `len ${len} seed ${seed}`);
    }
  }
});

test('chained hashes equal the per-block reference for block sizes 1..33 and hashes ≥ 2^63 as parents', () => {
  for (let B = 1; B <= 33; B++) {
    const tokens = randTokens(B * 7 + (B % 5));
    const parent = (1n << 63n) + BigInt(B) * 0x123456789n;
    assert.equal(chainHashes(parent, tokens, 0, 7, B), refChain(parent, tokens, B).slice(0, 7), `B=${B}`);
    assert.equal(prefixHashes('m', 'l', B, tokens), refChain(rootHash('m', 'l', B), tokens, B), `prefix B=${B}`);
  }
});

test('prefixHashesU64 holds the same values as prefixHashes, as a fresh BigUint64Array', () => {
  const tokens = randTokens(8192 + 5);
  const a = prefixHashes('qwen3-8b', '', 16, tokens);
  const u = prefixHashesU64('qwen3-8b', '', 16, tokens);
  assert.instance(u, BigUint64Array);
  assert.equal([...u], a);
  const again = prefixHashesU64('qwen3-8b', '', 16, tokens.slice(0, 32));
  assert.equal([...again], a.slice(0, 2));
  assert.equal([...u.subarray(0, 2)], a.slice(0, 2), 'an earlier result is not overwritten by a later call');
  assert.is(prefixHashesU64('m', '', 16, [1, 2, 3]).length, 0);
});

test('blockHash and chainHashes from a mid-prompt parent continue the prefix chain', () => {
  const tokens = randTokens(160);
  const all = prefixHashes('m', null, 16, tokens);
  assert.is(blockHash(all[3]!, tokens, 64, 16), all[4]);
  assert.equal(chainHashes(all[4]!, tokens, 80, 5, 16), all.slice(5));
  assert.equal(chainHashes(all[4]!, tokens, 80, 0, 16), []);
  assert.throws(() => chainHashes(all[4]!, tokens, 80, 6, 16), RangeError);
  assert.throws(() => prefixHashes('m', null, 0, tokens), RangeError);
  assert.throws(() => blockHash(1n, tokens, 0, 1.5), RangeError);
  assert.throws(() => blockHash(1n, tokens, 150, 16), RangeError);
});

test('typed-array and plain-array tokens hash alike; out-of-range ids wrap like a Uint32Array write', () => {
  const tokens = randTokens(100);
  assert.equal(prefixHashes('m', '', 8, Uint32Array.from(tokens)), prefixHashes('m', '', 8, tokens));
  assert.equal(chainHashes(5n, Uint32Array.from(tokens), 16, 3, 8), chainHashes(5n, tokens, 16, 3, 8));
  assert.equal(prefixHashes('m', '', 2, [-1, 2 ** 32 + 7]), prefixHashes('m', '', 2, [0xffffffff, 7]));
});

test('memory grows for huge prompts and stays correct for the next small one', () => {
  const huge = randTokens(1 << 20); // 4 MiB of tokens
  const hs = prefixHashes('m', '', 64, huge);
  assert.is(hs.length, (1 << 20) / 64);
  const ref = refChain(rootHash('m', '', 64), huge.slice(0, 64 * 3), 64);
  assert.equal(hs.slice(0, 3), ref);
  assert.is(hs[hs.length - 1], chainHashes(hs[hs.length - 2]!, huge, huge.length - 64, 1, 64)[0]);
  const small = randTokens(48);
  assert.equal(prefixHashes('m', '', 16, small), refChain(rootHash('m', '', 16), small, 16));
});

test.run();
