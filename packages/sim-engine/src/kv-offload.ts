/**
 * The CPU offload tier (pure; no I/O, no clock): an LRU of `capacity` block hashes, modelled on what vLLM's
 * OffloadingConnector keeps in host memory (vllm/v1/kv_offload, the CPU backend with its LRU manager).
 *
 * - Blocks enter when the GPU pool evicts a cached block (`store`). vLLM offloads every computed block as it is
 *   written (write-through); the simulator offloads at eviction instead, which gives the same hits for a tier
 *   that holds the blocks the GPU lost and emits the same placeholder events, at the moment the GPU copy goes.
 * - A block already held is only moved to the most recent end (vLLM's prepare_store skips stored hashes; its
 *   touch refreshes them). Reloading a block to GPU keeps the CPU copy (vLLM loads, it does not move).
 * - When full, the least recently used unpinned block is evicted. Pinned blocks (being reloaded in this step,
 *   vLLM's ref-counted load) are never evicted; with nothing evictable the new block is not stored (vLLM:
 *   "cannot store"), never an error.
 *
 * Map insertion order is the LRU order (oldest first): delete + set moves a key to the recent end in O(1).
 */
import type { BlockDigest } from './block-hash.js';

export interface OffloadStoreResult {
  /** digests newly held on CPU, in the order offered */
  stored: BlockDigest[];
  /** digests the LRU evicted to make room */
  removed: BlockDigest[];
}

export class CpuOffloadTier {
  readonly capacity: number;
  #lru = new Map<bigint, BlockDigest>();
  #pinned = new Map<bigint, number>();

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0) throw new RangeError(`CPU offload capacity must be a positive integer, got ${capacity}`);
    this.capacity = capacity;
  }

  /** Blocks held now. */
  get size(): number {
    return this.#lru.size;
  }

  has(d: BlockDigest): boolean {
    return this.#lru.has(d.key);
  }

  /** Length of the run of `digests[from…max)` held here, from `from` (vLLM: the hit after the GPU prefix). */
  run(digests: readonly BlockDigest[], from: number, max = digests.length): number {
    const n = Math.min(max, digests.length);
    let i = from;
    while (i < n && this.#lru.has(digests[i]!.key)) i++;
    return Math.max(0, i - from);
  }

  /** Moves the held ones of `digests` to the most recent end. */
  touch(digests: readonly BlockDigest[]): void {
    for (const d of digests) {
      const v = this.#lru.get(d.key);
      if (v === undefined) continue;
      this.#lru.delete(d.key);
      this.#lru.set(d.key, v);
    }
  }

  /** Protects blocks from eviction until `unpin` (a reload in progress). Pins nest. */
  pin(digests: readonly BlockDigest[]): void {
    for (const d of digests) this.#pinned.set(d.key, (this.#pinned.get(d.key) ?? 0) + 1);
  }

  unpin(digests: readonly BlockDigest[]): void {
    for (const d of digests) {
      const n = (this.#pinned.get(d.key) ?? 0) - 1;
      if (n > 0) this.#pinned.set(d.key, n);
      else this.#pinned.delete(d.key);
    }
  }

  /** Offers blocks the GPU evicted. New ones are stored (evicting LRU blocks as needed); held ones are touched. */
  store(digests: readonly BlockDigest[]): OffloadStoreResult {
    const stored: BlockDigest[] = [];
    const removed: BlockDigest[] = [];
    for (const d of digests) {
      if (this.#lru.has(d.key)) {
        this.touch([d]);
        continue;
      }
      if (this.#lru.size >= this.capacity) {
        const victim = this.#victim();
        if (victim === undefined) continue; // everything pinned: not stored
        this.#lru.delete(victim.key);
        removed.push(victim);
      }
      this.#lru.set(d.key, d);
      stored.push(d);
    }
    return { stored, removed };
  }

  /** Forgets every block (vLLM's reset_prefix_cache also resets the offload manager). Returns how many. */
  clear(): number {
    const n = this.#lru.size;
    this.#lru.clear();
    return n;
  }

  #victim(): BlockDigest | undefined {
    for (const [k, d] of this.#lru) if (!this.#pinned.has(k)) return d;
    return undefined;
  }
}
