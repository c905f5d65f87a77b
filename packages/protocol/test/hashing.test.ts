import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { initHashing, prefixHashes, prefixHashesU64, rootHash, hashToHex, hexToHash } from '../src/hashing.js';

// ---- reference: a straightforward XXH64 over BigInt, independent of xxhash-wasm -----------------
const M = (1n << 64n) - 1n;
const P1 = 11400714785074694791n, P2 = 14029467366897019727n, P3 = 1609587929392839161n, P4 = 9650029242287828579n, P5 = 2870177450012600261n;
const rotl = (x: bigint, r: bigint) => ((x << r) | (x >> (64n - r))) & M;
const round = (acc: bigint, lane: bigint) => (rotl((acc + lane * P2) & M, 31n) * P1) & M;
const merge = (acc: bigint, v: bigint) => (((acc ^ round(0n, v)) * P1 + P4) & M);
function le64(b: Uint8Array, i: number): bigint { let v = 0n; for (let k = 7; k >= 0; k--) v = (v << 8n) | BigInt(b[i + k]!); return v; }
function le32(b: Uint8Array, i: number): bigint { return BigInt(b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16)) + (BigInt(b[i + 3]!) << 24n); }
function xxh64Ref(b: Uint8Array, seed: bigint): bigint {
  let i = 0, h: bigint;
  const n = b.length;
  if (n >= 32) {
    let v1 = (seed + P1 + P2) & M, v2 = (seed + P2) & M, v3 = seed, v4 = (seed - P1) & M;
    for (; i + 32 <= n; i += 32) { v1 = round(v1, le64(b, i)); v2 = round(v2, le64(b, i + 8)); v3 = round(v3, le64(b, i + 16)); v4 = round(v4, le64(b, i + 24)); }
    h = (rotl(v1, 1n) + rotl(v2, 7n) + rotl(v3, 12n) + rotl(v4, 18n)) & M;
    h = merge(h, v1); h = merge(h, v2); h = merge(h, v3); h = merge(h, v4);
  } else h = (seed + P5) & M;
  h = (h + BigInt(n)) & M;
  for (; i + 8 <= n; i += 8) h = ((rotl(h ^ round(0n, le64(b, i)), 27n) * P1) + P4) & M;
  if (i + 4 <= n) { h = ((rotl(h ^ ((le32(b, i) * P1) & M), 23n) * P2) + P3) & M; i += 4; }
  for (; i < n; i++) h = (rotl(h ^ ((BigInt(b[i]!) * P5) & M), 11n) * P1) & M;
  h ^= h >> 33n; h = (h * P2) & M; h ^= h >> 29n; h = (h * P3) & M; h ^= h >> 32n;
  return h;
}
function refPrefixHashes(model: string, lora: string, B: number, tokens: number[], salt = ''): string[] {
  const seed = 0x6b766761n;
  let p = xxh64Ref(new TextEncoder().encode(`${model}|${lora}|${B}` + (salt ? `|salt:${salt}` : '')), seed);
  const out: string[] = [];
  for (let i = 0; i + B <= tokens.length; i += B) {
    const buf = new Uint8Array(8 + 4 * B);
    const dv = new DataView(buf.buffer);
    dv.setBigUint64(0, p, true);
    for (let j = 0; j < B; j++) dv.setUint32(8 + 4 * j, tokens[i + j]!, true);
    p = xxh64Ref(buf, seed);
    out.push(p.toString(16).padStart(16, '0'));
  }
  return out;
}
// -----------------------------------------------------------------------------------------------

const DESIGN_TOKENS = [...Array.from({ length: 37 }, (_, i) => i + 1), 4000000000, 0];
const DESIGN_VECTOR = ['ecba4711477ec43e', '416b05b16af791e3', 'a36876b12525c24d', '5c47497e899aafbd'];

test.before(async () => { await initHashing(); });

test('reference XXH64 matches the published test vectors', () => {
  // xxhash's own sanity vectors: empty input, seed 0 and seed PRIME32_1
  assert.is(xxh64Ref(new Uint8Array(0), 0n).toString(16), 'ef46db3751d8e999');
  assert.is(xxh64Ref(new TextEncoder().encode('a'), 0n).toString(16), 'd24ec4f1a98c6e5b');
  assert.is(xxh64Ref(new TextEncoder().encode('abc'), 0n).toString(16), '44bc2cf5ad770999');
});

test('DESIGN.md golden vector (qwen3-8b, B=8, 39 tokens → 4 blocks)', () => {
  assert.equal(refPrefixHashes('qwen3-8b', '', 8, DESIGN_TOKENS), DESIGN_VECTOR);
  assert.equal(prefixHashes('qwen3-8b', null, 8, DESIGN_TOKENS).map(hashToHex), DESIGN_VECTOR);
});

const SALTED_VECTOR = ['b8e46651f0aa60da', '437290a7058b85cf', 'd85edb981e89b894', '53b5bd19857e7750'];

test('DESIGN.md salted golden vector (salt tenant-42): salt enters the root only', () => {
  assert.equal(refPrefixHashes('qwen3-8b', '', 8, DESIGN_TOKENS, 'tenant-42'), SALTED_VECTOR);
  assert.equal(prefixHashes('qwen3-8b', null, 8, DESIGN_TOKENS, undefined, 'tenant-42').map(hashToHex), SALTED_VECTOR);
  assert.equal([...prefixHashesU64('qwen3-8b', null, 8, DESIGN_TOKENS, undefined, 'tenant-42')].map(hashToHex), SALTED_VECTOR);
  // an empty or absent salt is the unsalted chain; another salt is another chain
  assert.equal(prefixHashes('qwen3-8b', null, 8, DESIGN_TOKENS, undefined, '').map(hashToHex), DESIGN_VECTOR);
  assert.is.not(hashToHex(prefixHashes('qwen3-8b', null, 8, DESIGN_TOKENS, undefined, 'tenant-43')[0]!), SALTED_VECTOR[0]);
  assert.is(rootHash('qwen3-8b', null, 8, 'tenant-42'), xxh64Ref(new TextEncoder().encode('qwen3-8b||8|salt:tenant-42'), 0x6b766761n));
});

test('production hashing equals the reference on random prompts, block sizes and loras', () => {
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let k = 0; k < 40; k++) {
    const B = [1, 4, 8, 16, 32, 64][k % 6]!;
    const tokens = Array.from({ length: Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 2 ** 32));
    const lora = k % 3 === 0 ? `adapter-${k}` : '';
    assert.equal(prefixHashes('m', lora, B, tokens).map(hashToHex), refPrefixHashes('m', lora, B, tokens), `case ${k}`);
  }
});

test('partial trailing block is never hashed; prefix property holds', () => {
  const t = Array.from({ length: 100 }, (_, i) => i * 7);
  const all = prefixHashes('m', '', 16, t);
  assert.is(all.length, 6);
  assert.equal(prefixHashes('m', '', 16, t.slice(0, 50)), all.slice(0, 3));
  assert.is(prefixHashes('m', '', 16, t.slice(0, 15)).length, 0);
});

test('model, lora and block size separate the hash spaces', () => {
  const t = Array.from({ length: 32 }, (_, i) => i);
  const a = prefixHashes('m', '', 16, t)[0];
  assert.is.not(a, prefixHashes('m2', '', 16, t)[0]);
  assert.is.not(a, prefixHashes('m', 'l', 16, t)[0]);
  assert.is.not(rootHash('m', '', 16), rootHash('m', '', 8));
});

test('hex round trip and validation', () => {
  const h = 0xecba4711477ec43en;
  assert.is(hexToHash(hashToHex(h)), h);
  assert.is(hashToHex(1n), '0000000000000001');
  assert.throws(() => hexToHash('xyz'));
});

test('`kvgate hash` CLI prints the golden vector', () => {
  const out = execFileSync(process.execPath, ['bin/kvgate.js', 'hash', '--model', 'qwen3-8b', '--block-size', '8', '--tokens', DESIGN_TOKENS.join(',')], { encoding: 'utf8' });
  assert.equal(out.trim().split('\n'), DESIGN_VECTOR);
  const salted = execFileSync(process.execPath, ['bin/kvgate.js', 'hash', '--model', 'qwen3-8b', '--block-size', '8', '--salt', 'tenant-42', '--tokens', DESIGN_TOKENS.join(',')], { encoding: 'utf8' });
  assert.equal(salted.trim().split('\n'), SALTED_VECTOR);
});

test('`kvgate hash` rejects bad tokens with a clear message', () => {
  try {
    execFileSync(process.execPath, ['bin/kvgate.js', 'hash', '--model', 'm', '--tokens', '1,x'], { encoding: 'utf8', stdio: 'pipe' });
    assert.unreachable('should fail');
  } catch (e) {
    const err = e as { status: number; stderr: string };
    assert.is(err.status, 2);
    assert.match(err.stderr, /not an unsigned 32-bit integer/);
  }
});

test.run();
