/**
 * The contract every index implementation meets (PrefixIndex in radix.ts, NaiveIndex in naive.ts).
 * One contract suite (test/index-contract.test.ts) runs against each of them.
 *
 * Semantics, per worker w and prefix hash p:
 *   - `store(w, parent, [h…])`  w now holds each h (idempotent). `parent` is recorded on the prefix for dumps.
 *   - `remove(w, [h…])`         w no longer holds each h (idempotent; unknown hashes ignored).
 *     Descendants of a removed prefix stay indexed for w: they are unreachable by match (the walk stops at
 *     the first block w lacks) until the prefix is stored again, when they become reachable again. This is
 *     exactly what a per-worker set of prefix hashes would answer, so no cascade is needed.
 *   - `clear(w)`                w holds nothing (cost O(w's blocks)); the worker stays known.
 *   - `dropWorker(w)`           clear + forget w.
 *   - `match([p0…pn-1])`        for each worker holding p0 on GPU: the number of consecutive leading prefixes it
 *     holds on GPU. Workers with depth 0 are absent. The walk stops at the first prefix no surviving worker holds.
 *
 * Tiers. Each (prefix, worker) entry carries a tier bit mask (TIER_GPU 1, TIER_CPU 2, TIER_DISK 4); `store` /
 * `remove` take a tier (default gpu) and set / clear only that bit; an entry whose mask becomes empty is gone.
 * `clear` drops every tier. `matchTiers` answers as vLLM loads (GPU prefix hit, then the connector loads the
 * run of blocks held on the offload tier right after it): gpu = leading blocks held on GPU; cpu = gpu + the run
 * of following blocks held on CPU; disk = gpu + the run of following blocks held on CPU or disk. It returns
 * only workers whose disk depth exceeds gpu (including gpu = 0); everyone else is answered by `match`.
 * Digests mix the mask into each block's contribution (a GPU-only block contributes its hash, as before).
 */
import type { Tier, TierOverlap } from '@kvgate/protocol';

export const TIER_GPU = 1, TIER_CPU = 2, TIER_DISK = 4;

/** tier name → its bit (absent = gpu) */
export function tierBit(t: Tier | undefined): number {
  return t === 'cpu' ? TIER_CPU : t === 'disk' ? TIER_DISK : TIER_GPU;
}

const partOut = new Int32Array(2);
/**
 * Digest contribution of one block (lo, hi as int32) held with tier mask m, into partOut: the hash itself for
 * m = gpu (digests of GPU-only workers are unchanged), otherwise a non-linear mix of hash and mask, so the same
 * blocks on other tiers (or the same tiers of other blocks) give another digest.
 */
export function tierPart(lo: number, hi: number, m: number): Int32Array {
  if (m === TIER_GPU) {
    partOut[0] = lo;
    partOut[1] = hi;
    return partOut;
  }
  let a = Math.imul(lo ^ Math.imul(m, 0x9e3779b1), 0x85ebca6b);
  a ^= a >>> 13;
  let b = Math.imul(hi ^ a, 0xc2b2ae35);
  b ^= b >>> 16;
  partOut[0] = lo ^ b;
  partOut[1] = hi ^ Math.imul(b ^ m, 0x27d4eb2f) ^ (a >>> 7);
  return partOut;
}

/** tierPart for a bigint hash (the reference index) */
export function tierPartBig(h: bigint, m: number): bigint {
  const p = tierPart(Number(h & 0xffffffffn) | 0, Number(h >> 32n) | 0, m);
  return (BigInt(p[1]! >>> 0) << 32n) | BigInt(p[0]! >>> 0);
}

/** Block set of one worker, as [parent, hash] pairs flattened into one u64 array (parent 0n = root). */
export interface WorkerDump {
  worker: string;
  blocks: BigUint64Array;
  /** tier mask per block (one byte per pair, 1..7); absent = every block on GPU only */
  tiers?: Uint8Array;
}

export interface IndexDump {
  workers: WorkerDump[];
}

export interface Digest {
  count: number;
  xor: bigint;
}

export interface IndexCore {
  store(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>, tier?: Tier): void;
  remove(worker: string, hashes: ArrayLike<bigint>, tier?: Tier): void;
  clear(worker: string): void;
  dropWorker(worker: string): void;
  match(hashes: ArrayLike<bigint>): Record<string, number>;
  /** per-tier depths of the workers whose disk depth exceeds their GPU depth (see above) */
  matchTiers(hashes: ArrayLike<bigint>): Record<string, TierOverlap>;
  /** every worker the index knows (including ones with no blocks after a clear) */
  workers(): string[];
  digest(worker: string): Digest;
  /** (block, worker) entries held */
  readonly entries: number;
  dumpWorker(worker: string): WorkerDump;
  /** replace one worker's block set */
  loadWorker(dump: WorkerDump): void;
  dump(): IndexDump;
  load(dump: IndexDump): void;
}

/** Order-independent digest helper shared by the implementations. */
export function xorAll(hashes: Iterable<bigint>): bigint {
  let x = 0n;
  for (const h of hashes) x ^= h;
  return x;
}
