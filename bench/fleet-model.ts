/**
 * The fleet simulation's synthetic KV state (issue 18), shared by its publisher and its querier so both compute
 * the same hashes without exchanging them: what block each simulated engine holds at each point of its history.
 *
 * Engine w's blocks are a sequence of positions p = 0, 1, 2, …; position p is the block p mod DOC of document
 * floor(p / DOC): a document is one chain (the first block has no parent, block p's parent is block p − 1). Every
 * (w, p) has its own 64-bit hash (long unique documents, few shared prefixes: the index's costliest workload, the
 * one issue 18's memory goal is stated for). An engine first fills its cache with positions [0, B); then each step
 * stores the next k positions and evicts k blocks, the oldest document first and its tail first (vLLM frees a
 * request's blocks in reverse order so the tail is evicted first): the cache always holds exactly B blocks, so a
 * shard holding m engines holds exactly m·B entries once it has applied everything.
 */

/** murmur3's 32-bit finaliser: a bijection on uint32 */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The hash of engine w's block at position p as (lo, hi) uint32s: lo is a bijection of p for a given w, hi = f(w) ^ lo
 * with f a bijection, so distinct (w, p) never collide; both halves look random. Never (0, 0) in practice (that
 * pair is "no parent" on the indexer's wire decoder), and a collision with it would need p = f⁻¹(…) exactly.
 */
export function blockHash(w: number, p: number, out: Uint32Array, at: number): void {
  const lo = fmix32((p + fmix32(w * 2 + 1)) >>> 0);
  out[at] = lo;
  out[at + 1] = (fmix32(w + 0x51ed27) ^ lo) >>> 0;
}

const pairs = new Uint32Array(2 * 4096);
const view = new BigUint64Array(pairs.buffer);

/** positions `ps` of engine w → their hashes as BigInts (what the shim's EventBatch carries) */
export function hashesOf(w: number, ps: ArrayLike<number>): bigint[] {
  const out: bigint[] = new Array(ps.length);
  for (let i = 0; i < ps.length; i += 4096) {
    const n = Math.min(4096, ps.length - i);
    for (let j = 0; j < n; j++) blockHash(w, ps[i + j]!, pairs, 2 * j);
    for (let j = 0; j < n; j++) out[i + j] = view[j]!;
  }
  return out;
}

/** engine w's positions [from, from + n) as one BigUint64Array (the router's prompt hashes) */
export function hashArray(w: number, from: number, n: number): BigUint64Array {
  const out = new BigUint64Array(n);
  const v = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) blockHash(w, from + i, v, 2 * i);
  return out;
}

/** positions [from, to) */
export function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

/** blocks per document for a cache of B blocks: B / 16, between 16 and 1024 (B ≥ 16·16 gives 16 documents) */
export function docLength(blocks: number): number {
  return Math.max(16, Math.min(1024, Math.floor(blocks / 16)));
}

/** the position of the e-th evicted block (oldest document first, its tail first) */
export function evictedPosition(e: number, doc: number): number {
  const d = Math.floor(e / doc);
  return d * doc + (doc - 1 - (e % doc));
}

/**
 * Documents whose first `qlen` blocks an engine holds for sure when the slowest engine has stored positions
 * [0, stored) and evicted `evicted` blocks, and any engine may have evicted up to `slack` more since (the
 * querier's view of the window lags; stored only grows, so the slowest's `stored` is safe): [first, last]
 * (empty when first > last).
 */
export function heldDocs(stored: number, evicted: number, doc: number, qlen: number, slack: number): [number, number] {
  // evicting runs a document from its tail: its head survives until e passes d·doc + doc − qlen
  const e = evicted + slack;
  const first = Math.floor(e / doc) + (e % doc > doc - qlen ? 1 : 0);
  const last = Math.floor(stored / doc) - 1;
  return [first, last];
}

/** the fleet's worker ids (subject tokens; shardOf hashes these) */
export function workerName(w: number): string {
  return `fleet-${String(w).padStart(5, '0')}`;
}

export const FLEET_MODEL = 'fleet-model';
export const BLOCK_SIZE = 16;
