/**
 * kvgate prefix hashing (DESIGN.md section 2).
 *
 *   p_{-1} = xxh64(utf8("<model>|<lora or empty>|<B>"), seed)
 *   p_i    = xxh64(le64(p_{i-1}) ‖ le32(tokens of block i), seed)      seed = 0x6b766761 ("kvga")
 *
 * One 64-bit value names a whole prefix. Only full blocks are hashed.
 * The router and the shim both call this module; nothing else may hash prompts.
 *
 * Speed: the block chain runs inside a small purpose-built WASM module (./xxh64-wasm.ts): the prompt's
 * tokens are copied into linear memory once and all blocks are hashed in one call. Calling
 * xxhash-wasm's h64Raw per block cost ~115 µs for an 8K-token prompt (per-call copy + boundary + BigInt
 * conversion dominate); the chain does it in a fraction of that (bench `hash.prompt8k`).
 * xxhash-wasm stays for the root hash and as an independent cross-check at start-up.
 */
import xxhash from 'xxhash-wasm';
import { loadXxh64Wasm, type Xxh64Wasm } from './xxh64-wasm.js';

export const HASH_SEED = 0x6b766761n;

type H64Raw = (input: Uint8Array, seed?: bigint) => bigint;
let h64Raw: H64Raw | undefined;
let wasm: Xxh64Wasm | undefined;
let loading: Promise<void> | undefined;

/** Loads the WASM hashers. Call (and await) once at start-up before any other function here. */
export function initHashing(): Promise<void> {
  loading ??= (async () => {
    const [x, w] = await Promise.all([xxhash(), loadXxh64Wasm()]);
    crossCheck(x.h64Raw, w);
    h64Raw = x.h64Raw;
    wasm = w;
  })();
  return loading;
}

/** The chain hasher must agree with xxhash-wasm byte for byte; refuse to start otherwise. */
function crossCheck(ref: H64Raw, w: Xxh64Wasm): void {
  const input = Uint8Array.from({ length: 8 + 4 * 16 }, (_, i) => (i * 151 + 7) & 0xff);
  new Uint8Array(w.memory.buffer).set(input, 8);
  const got = BigInt.asUintN(64, w.xxh64(8, input.length, HASH_SEED));
  const want = ref(input, HASH_SEED);
  if (got !== want) throw new Error(`kvgate hashing self-check failed: ${got.toString(16)} != ${want.toString(16)}`);
}

function ready(): Xxh64Wasm {
  if (!wasm) throw new Error('kvgate hashing used before initHashing() resolved');
  return wasm;
}

const enc = new TextEncoder();

/**
 * p_{-1}: the root of every prefix chain for one (model, lora, block size[, cache salt]).
 * A salted request (`cache_salt`, vLLM and SGLang) roots its chain in `…|salt:<salt>` (DESIGN.md §2), so no
 * unsalted prompt and no prompt of another salt can match its blocks; unsalted roots are unchanged.
 */
export function rootHash(model: string, lora: string | undefined | null, blockSize: number, salt?: string | null): bigint {
  ready();
  return h64Raw!(enc.encode(rootText(model, lora, blockSize, salt)), HASH_SEED);
}

function rootText(model: string, lora: string | undefined | null, blockSize: number, salt: string | undefined | null): string {
  const base = `${model}|${lora ?? ''}|${blockSize}`;
  return salt ? `${base}|salt:${salt}` : base;
}

// Roots are few (one per model × lora × block size) and prefixHashes needs one per call: memoise them.
const roots = new Map<string, bigint>();
function cachedRoot(model: string, lora: string | undefined | null, blockSize: number, salt?: string | null): bigint {
  const key = rootText(model, lora, blockSize, salt);
  let r = roots.get(key);
  if (r === undefined) {
    if (roots.size >= 4096) roots.clear();
    r = rootHash(model, lora, blockSize, salt);
    roots.set(key, r);
  }
  return r;
}

// ---- the chain --------------------------------------------------------------------------------------
// Linear memory layout per call: [0, 8) gap (p_{-1} of block 0 is written there), tokens from 8, then the
// uint64 results (8-aligned). Views are re-made when memory grows (growing detaches the old buffer).
// Token ids are stored as uint32 (ToUint32, like any Uint32Array write); the host must be little-endian
// so the uint32/uint64 views match XXH64's little-endian reads (checked below).
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
if (!LITTLE_ENDIAN) throw new Error('kvgate hashing requires a little-endian host');
const TOK = 8;
let u32 = new Uint32Array(0);
let u64 = new BigUint64Array(0);

/** Hashes `n` blocks of `tokens` from `start`, chained from `parent`; the results are at u64[outIndex, outIndex+n). */
function runChain(parent: bigint, tokens: ArrayLike<number>, start: number, n: number, blockSize: number): number {
  const w = ready();
  const count = n * blockSize;
  const outByte = (TOK + 4 * count + 7) & ~7;
  const need = outByte + 8 * n;
  if (w.memory.buffer.byteLength < need) w.memory.grow(Math.ceil((need - w.memory.buffer.byteLength) / 65536));
  if (u32.buffer !== w.memory.buffer) {
    u32 = new Uint32Array(w.memory.buffer);
    u64 = new BigUint64Array(w.memory.buffer);
  }
  const base = TOK >> 2;
  if (ArrayBuffer.isView(tokens)) {
    // typed arrays: one bulk copy. (For plain arrays TypedArray#set is slower than this loop in V8.)
    const t = tokens as unknown as Uint32Array;
    u32.set(start === 0 && t.length === count ? t : t.subarray(start, start + count), base);
  } else {
    const m = u32;
    for (let j = 0; j < count; j++) m[base + j] = tokens[start + j]!;
  }
  w.chain(parent, TOK, n, 4 * blockSize, outByte, HASH_SEED);
  return outByte >> 3;
}

function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize <= 0) throw new RangeError(`block size must be a positive integer, got ${blockSize}`);
}

/** p_i from p_{i-1} and the token ids tokens[start, start+blockSize). */
export function blockHash(parent: bigint, tokens: ArrayLike<number>, start: number, blockSize: number): bigint {
  checkBlockSize(blockSize);
  if (start + blockSize > tokens.length) throw new RangeError(`block of ${blockSize} from ${start} overruns ${tokens.length} tokens`);
  return u64[runChain(parent, tokens, start, 1, blockSize)]!;
}

/**
 * Hashes of `nBlocks` consecutive blocks of `tokens` starting at token `start`, chained from `parent`
 * (for callers that already hold p_{i-1}, e.g. the shim extending a known prefix).
 */
export function chainHashes(parent: bigint, tokens: ArrayLike<number>, start: number, nBlocks: number, blockSize: number): bigint[] {
  checkBlockSize(blockSize);
  if (nBlocks <= 0) return [];
  if (start + nBlocks * blockSize > tokens.length) throw new RangeError(`${nBlocks} blocks of ${blockSize} from ${start} overrun ${tokens.length} tokens`);
  const at = runChain(parent, tokens, start, nBlocks, blockSize);
  const out = new Array<bigint>(nBlocks);
  for (let i = 0; i < nBlocks; i++) out[i] = u64[at + i]!;
  return out;
}

/** Prefix hashes of every full block of `tokens`, chained from `parent` (default: the root). */
export function prefixHashes(
  model: string,
  lora: string | undefined | null,
  blockSize: number,
  tokens: ArrayLike<number>,
  parent?: bigint,
  salt?: string | null,
): bigint[] {
  checkBlockSize(blockSize);
  return chainHashes(parent ?? cachedRoot(model, lora, blockSize, salt), tokens, 0, Math.floor(tokens.length / blockSize), blockSize);
}

/**
 * Same as prefixHashes, as a BigUint64Array: no BigInt is allocated per hash (read them lazily, or compare
 * and copy them as uint64). For hot paths that only forward or compare hashes.
 */
export function prefixHashesU64(
  model: string,
  lora: string | undefined | null,
  blockSize: number,
  tokens: ArrayLike<number>,
  parent?: bigint,
  salt?: string | null,
): BigUint64Array {
  checkBlockSize(blockSize);
  const n = Math.floor(tokens.length / blockSize);
  if (n === 0) return new BigUint64Array(0);
  const at = runChain(parent ?? cachedRoot(model, lora, blockSize, salt), tokens, 0, n, blockSize);
  return u64.slice(at, at + n);
}

/** 16 lowercase hex digits, zero-padded. */
export function hashToHex(h: bigint): string {
  return h.toString(16).padStart(16, '0');
}

const HEX16 = /^[0-9a-f]{16}$/i;
export function hexToHash(s: string): bigint {
  if (!HEX16.test(s)) throw new RangeError(`not a 16-hex-digit hash: ${JSON.stringify(s)}`);
  return BigInt('0x' + s);
}
