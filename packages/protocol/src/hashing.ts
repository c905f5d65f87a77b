/**
 * kvgate prefix hashing (DESIGN.md section 2).
 *
 *   p_{-1} = xxh64(utf8("<model>|<lora or empty>|<B>"), seed)
 *   p_i    = xxh64(le64(p_{i-1}) ‖ le32(tokens of block i), seed)      seed = 0x6b766761 ("kvga")
 *
 * One 64-bit value names a whole prefix. Only full blocks are hashed.
 * The router and the shim both call this module; nothing else may hash prompts.
 */
import xxhash from 'xxhash-wasm';

export const HASH_SEED = 0x6b766761n;

type H64Raw = (input: Uint8Array, seed?: bigint) => bigint;
let h64Raw: H64Raw | undefined;

/** Loads the WASM hasher. Call (and await) once at start-up before any other function here. */
export async function initHashing(): Promise<void> {
  if (!h64Raw) h64Raw = (await xxhash()).h64Raw;
}

function hasher(): H64Raw {
  if (!h64Raw) throw new Error('kvgate hashing used before initHashing() resolved');
  return h64Raw;
}

const enc = new TextEncoder();

/** p_{-1}: the root of every prefix chain for one (model, lora, block size). */
export function rootHash(model: string, lora: string | undefined | null, blockSize: number): bigint {
  return hasher()(enc.encode(`${model}|${lora ?? ''}|${blockSize}`), HASH_SEED);
}

// One scratch buffer reused across calls: hashing is synchronous, so no caller can observe it.
// Typed-array views (not DataView) write the little-endian layout directly; kvgate requires a
// little-endian host (checked below), which every platform Node ships for in practice is.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
if (!LITTLE_ENDIAN) throw new Error('kvgate hashing requires a little-endian host');
let scratch = new ArrayBuffer(8 + 4 * 64);
let bytes = new Uint8Array(scratch);
let parentSlot = new BigUint64Array(scratch, 0, 1);
let tokenSlots = new Uint32Array(scratch, 8);

function ensureScratch(blockSize: number): void {
  if (tokenSlots.length >= blockSize) return;
  scratch = new ArrayBuffer(8 + 4 * blockSize);
  bytes = new Uint8Array(scratch);
  parentSlot = new BigUint64Array(scratch, 0, 1);
  tokenSlots = new Uint32Array(scratch, 8);
}

/** p_i from p_{i-1} and the token ids tokens[start, start+blockSize). */
export function blockHash(parent: bigint, tokens: ArrayLike<number>, start: number, blockSize: number): bigint {
  ensureScratch(blockSize);
  parentSlot[0] = parent;
  const slots = tokenSlots;
  for (let j = 0; j < blockSize; j++) slots[j] = tokens[start + j]!;
  const need = 8 + 4 * blockSize;
  return hasher()(need === bytes.length ? bytes : bytes.subarray(0, need), HASH_SEED);
}

/** Prefix hashes of every full block of `tokens`, chained from `parent` (default: the root). */
export function prefixHashes(
  model: string,
  lora: string | undefined | null,
  blockSize: number,
  tokens: ArrayLike<number>,
  parent: bigint = rootHash(model, lora, blockSize),
): bigint[] {
  if (!Number.isInteger(blockSize) || blockSize <= 0) throw new RangeError(`block size must be a positive integer, got ${blockSize}`);
  const n = Math.floor(tokens.length / blockSize);
  const out = new Array<bigint>(n);
  let p = parent;
  for (let i = 0; i < n; i++) {
    p = blockHash(p, tokens, i * blockSize, blockSize);
    out[i] = p;
  }
  return out;
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
