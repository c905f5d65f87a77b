/**
 * Paged KV cache with prefix caching (pure; no I/O, no clock), modelled on vLLM v1's BlockPool:
 *
 * - `numBlocks` physical blocks of `blockSize` tokens. A block is in use while its reference count is > 0.
 * - A full, computed block may be *cached*: it carries its engine hash and can be shared by later requests
 *   whose prompt has the same prefix (`touch`).
 * - Blocks with refcount 0 sit in a free queue ordered for eviction (head = least recently freed). Allocation
 *   pops from the head; popping a cached block evicts it (BlockRemoved). Callers free a request's blocks in
 *   reverse order, so a prefix's tail is evicted before its head.
 * - At most one cached block per hash: a second copy computed concurrently is not cached (no duplicate events).
 *
 * - Optional CPU offload tier (`cpuBlocks` > 0, kv-offload.ts): a cached block the pool evicts moves there. Its
 *   events are those of vLLM's OffloadingConnector: a hash-only BlockStored (medium CPU, no tokens, no parent)
 *   and, when the CPU LRU evicts, BlockRemoved (medium CPU). In one allocation the CPU store is recorded before
 *   the GPU removal, so a consumer that maps engine hashes still knows the block when the placeholder arrives
 *   (in vLLM the write-through store precedes the GPU eviction by far).
 *
 * Every change to the set of cached hashes is recorded as a vLLM-style event; `drainEvents()` hands them out.
 */
import type { BlockDigest } from './block-hash.js';
import { CpuOffloadTier } from './kv-offload.js';

/** vLLM's `medium` strings (kv_events.MEDIUM_GPU, the CPU backend's "CPU"). */
export type Medium = 'GPU' | 'CPU';

/**
 * A BlockStored with `medium: 'CPU'` is an offload placeholder: `tokenIds` empty, `parent` null; `blockSize` is
 * the offloaded block size (older vLLM sent it; the current one sends 0, which the encoder writes).
 */
export type KvCacheEvent =
  | { type: 'BlockStored'; hashes: BlockDigest[]; parent: BlockDigest | null; tokenIds: number[]; blockSize: number; medium?: Medium }
  | { type: 'BlockRemoved'; hashes: BlockDigest[]; medium?: Medium }
  | { type: 'AllBlocksCleared' };

const NIL = -1;

export class KvCache {
  readonly numBlocks: number;
  readonly blockSize: number;
  #ref: Int32Array;
  #digest: Array<BlockDigest | null>;
  #byKey = new Map<bigint, number>();
  // Free queue as an intrusive doubly linked list over block ids: O(1) remove-from-middle when a cached block
  // is touched again, which an array queue cannot do.
  #prev: Int32Array;
  #next: Int32Array;
  #inFree: Uint8Array;
  #head = NIL;
  #tail = NIL;
  #free = 0;
  #events: KvCacheEvent[] = [];
  /** the CPU tier, null when off */
  readonly offload: CpuOffloadTier | null;

  /** false: no events are recorded (a driver that never drains them) */
  readonly recordsEvents: boolean;

  constructor(numBlocks: number, blockSize: number, cpuBlocks = 0, recordEvents = true) {
    this.recordsEvents = recordEvents;
    if (!Number.isInteger(numBlocks) || numBlocks <= 0) throw new RangeError(`numBlocks must be a positive integer, got ${numBlocks}`);
    if (!Number.isInteger(blockSize) || blockSize <= 0) throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.#ref = new Int32Array(numBlocks);
    this.#digest = new Array<BlockDigest | null>(numBlocks).fill(null);
    this.#prev = new Int32Array(numBlocks);
    this.#next = new Int32Array(numBlocks);
    this.#inFree = new Uint8Array(numBlocks);
    for (let i = 0; i < numBlocks; i++) this.#pushTail(i);
    if (!Number.isInteger(cpuBlocks) || cpuBlocks < 0) throw new RangeError(`cpuBlocks must be a non-negative integer, got ${cpuBlocks}`);
    this.offload = cpuBlocks > 0 ? new CpuOffloadTier(cpuBlocks) : null;
  }

  /** Blocks with refcount 0 (free or cached-but-unused). */
  get freeBlocks(): number {
    return this.#free;
  }
  /** Fraction of blocks in use (vLLM's kv_cache_usage_perc, 0..1). */
  get usage(): number {
    return 1 - this.#free / this.numBlocks;
  }
  /** Number of blocks currently holding a cached hash. */
  get cachedBlocks(): number {
    return this.#byKey.size;
  }

  /** Count of leading `digests` whose blocks are cached (a prefix-cache hit of that many blocks). */
  longestHit(digests: readonly BlockDigest[], maxBlocks = digests.length): number {
    const n = Math.min(maxBlocks, digests.length);
    let i = 0;
    while (i < n && this.#byKey.has(digests[i]!.key)) i++;
    return i;
  }

  /** Block ids of the first `count` digests (which must be cached), each with one more reference. */
  touch(digests: readonly BlockDigest[], count: number): number[] {
    const ids = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const id = this.#byKey.get(digests[i]!.key);
      if (id === undefined) throw new Error(`touch: block ${i} is not cached`);
      this.#ref1(id);
      ids[i] = id;
    }
    return ids;
  }

  /** `n` fresh blocks (refcount 1), evicting cached ones as needed; null when fewer than `n` are free. */
  allocate(n: number): number[] | null {
    if (n > this.#free) return null;
    const out = new Array<number>(n);
    let removed: BlockDigest[] | null = null;
    for (let i = 0; i < n; i++) {
      const id = this.#head;
      this.#unlink(id);
      const d = this.#digest[id];
      if (d) {
        this.#byKey.delete(d.key);
        this.#digest[id] = null;
        if (this.recordsEvents || this.offload) (removed ??= []).push(d);
      }
      this.#ref[id] = 1;
      out[i] = id;
    }
    if (removed) {
      const cpu = this.offload?.store(removed);
      if (!this.recordsEvents) return out;
      if (cpu?.stored.length) this.#events.push({ type: 'BlockStored', hashes: cpu.stored, parent: null, tokenIds: [], blockSize: this.blockSize, medium: 'CPU' });
      this.#events.push({ type: 'BlockRemoved', hashes: removed, medium: 'GPU' });
      if (cpu?.removed.length) this.#events.push({ type: 'BlockRemoved', hashes: cpu.removed, medium: 'CPU' });
    }
    return out;
  }

  /** Drops one reference from each block; at 0 a block joins the free queue's tail (evicted last). */
  free(ids: readonly number[]): void {
    for (const id of ids) {
      const r = --this.#ref[id]!;
      if (r < 0) throw new Error(`free: block ${id} freed twice`);
      if (r === 0) this.#pushTail(id);
    }
  }

  /**
   * Marks block `id` (in use, full, computed) as caching `digest`. Returns the id the caller should hold for it:
   * `id` itself, or the block that already caches this hash (then `id` is released and the existing one gains a
   * reference) so that each hash is cached once. `stored` is true when a new hash entered the cache.
   */
  cacheBlock(id: number, digest: BlockDigest): { id: number; stored: boolean } {
    const existing = this.#byKey.get(digest.key);
    if (existing === id) return { id, stored: false };
    if (existing !== undefined) {
      this.#ref1(existing);
      this.free([id]);
      return { id: existing, stored: false };
    }
    this.#digest[id] = digest;
    this.#byKey.set(digest.key, id);
    return { id, stored: true };
  }

  /** The digest a block caches, if any. */
  digestOf(id: number): BlockDigest | null {
    return this.#digest[id] ?? null;
  }

  /** Records a BlockStored event (the scheduler groups one request's newly cached blocks into one event). */
  recordStored(hashes: BlockDigest[], parent: BlockDigest | null, tokenIds: number[]): void {
    if (hashes.length > 0 && this.recordsEvents) this.#events.push({ type: 'BlockStored', hashes, parent, tokenIds, blockSize: this.blockSize, medium: 'GPU' });
  }

  /**
   * Forgets every cached hash (vLLM's reset_prefix_cache), the CPU tier's too: one AllBlocksCleared without a
   * medium, which clears every tier. Refused (false) while any block is in use.
   */
  reset(): boolean {
    if (this.#free !== this.numBlocks) return false;
    for (const id of this.#byKey.values()) this.#digest[id] = null;
    this.#byKey.clear();
    this.offload?.clear();
    if (this.recordsEvents) this.#events.push({ type: 'AllBlocksCleared' });
    return true;
  }

  /** Events recorded since the last call, oldest first. */
  drainEvents(): KvCacheEvent[] {
    const e = this.#events;
    this.#events = [];
    return e;
  }

  #ref1(id: number): void {
    if (this.#ref[id] === 0) this.#unlink(id);
    this.#ref[id]!++;
  }

  #pushTail(id: number): void {
    this.#prev[id] = this.#tail;
    this.#next[id] = NIL;
    if (this.#tail === NIL) this.#head = id;
    else this.#next[this.#tail] = id;
    this.#tail = id;
    this.#inFree[id] = 1;
    this.#free++;
  }

  #unlink(id: number): void {
    if (!this.#inFree[id]) throw new Error(`block ${id} is not in the free queue`);
    const p = this.#prev[id]!, n = this.#next[id]!;
    if (p === NIL) this.#head = n;
    else this.#next[p] = n;
    if (n === NIL) this.#tail = p;
    else this.#prev[n] = p;
    this.#inFree[id] = 0;
    this.#free--;
  }
}
