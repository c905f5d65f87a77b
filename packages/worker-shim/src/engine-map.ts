/**
 * Engine block hash → kvgate prefix hash, for one worker (pure: no I/O).
 *
 * An engine names a cached block by its own hash (vLLM: a uint64 or a 32-byte digest; opaque to us;
 * the protocol decoder hands both over as primitives, bigint or hex string, so they key a Map by value).
 * kvgate names it by the prefix hash of DESIGN.md section 2, computed here from the parent's prefix
 * hash and the block's token ids. The map remembers every engine hash it has seen stored, so that
 *   - a later BlockStored can chain from its parent (parent engine hash → parent prefix hash), and
 *   - a later BlockRemoved can name the prefix that went away.
 * A BlockStored whose parent is unknown is refused (the caller repairs through replay or drops it):
 * it is never chained from a guessed parent.
 *
 * Memory is bounded: entries leave with the engine's own BlockRemoved events, and an LRU cap bites
 * when the engine's removals are lost. A prefix evicted by the cap is handed back by `takeEvicted()`
 * so the caller can publish its removal: the index then never holds a block whose removal we could
 * no longer report.
 */
import { LRUCache } from 'lru-cache';
import { chainHashes, rootHash, type EngineHash } from '@kvgate/protocol';

export interface StoredBlocks {
  /** engine hashes of the new blocks, in chain order */
  blockHashes: readonly EngineHash[];
  /** engine hash of the block before the first new one; null = the first new block starts a prompt */
  parent: EngineHash | null | undefined;
  /** tokens of all new blocks, blockSize per block */
  tokenIds: ArrayLike<number>;
  blockSize: number;
  /** LoRA adapter name used for hashing (null/empty = base model) */
  lora: string | null;
}

export type StoredResult =
  | { kind: 'stored'; parent: bigint | null; hashes: bigint[] }
  | { kind: 'unknown-parent' }
  | { kind: 'malformed'; reason: string };

export interface EngineMapOptions {
  /** model name used for hashing (the root of every chain) */
  model: string;
  /** most engine hashes remembered before the LRU cap evicts (default 1,000,000 ≈ 100 MB) */
  maxEntries?: number;
}

export class EngineMap {
  readonly #model: string;
  readonly #map: LRUCache<EngineHash, bigint>;
  readonly #roots = new Map<string, bigint>();
  #evicted: bigint[] = [];
  #evictions = 0;

  constructor(opts: EngineMapOptions) {
    this.#model = opts.model;
    this.#map = new LRUCache<EngineHash, bigint>({
      max: opts.maxEntries ?? 1_000_000,
      dispose: (value, _key, reason) => {
        if (reason === 'evict') {
          this.#evictions++;
          this.#evicted.push(value);
        }
      },
    });
  }

  get size(): number {
    return this.#map.size;
  }

  /** total entries the LRU cap has evicted */
  get evictions(): number {
    return this.#evictions;
  }

  /** prefix hashes evicted by the cap since the last call (publish them as removed) */
  takeEvicted(): bigint[] {
    const out = this.#evicted;
    this.#evicted = [];
    return out;
  }

  #root(lora: string | null, blockSize: number): bigint {
    const k = `${lora ?? ''}|${blockSize}`;
    let r = this.#roots.get(k);
    if (r === undefined) {
      r = rootHash(this.#model, lora ?? '', blockSize);
      this.#roots.set(k, r);
    }
    return r;
  }

  stored(ev: StoredBlocks): StoredResult {
    const n = ev.blockHashes.length;
    const b = ev.blockSize;
    if (!Number.isInteger(b) || b <= 0) return { kind: 'malformed', reason: `block size ${b}` };
    if (ev.tokenIds.length !== n * b) return { kind: 'malformed', reason: `${ev.tokenIds.length} tokens for ${n} blocks of ${b}` };
    let parent: bigint | null = null;
    let p: bigint;
    if (ev.parent === null || ev.parent === undefined) {
      p = this.#root(ev.lora, b);
    } else {
      const known = this.#map.get(ev.parent);
      if (known === undefined) return { kind: 'unknown-parent' };
      parent = known;
      p = known;
    }
    const hashes = chainHashes(p, ev.tokenIds, 0, n, b);
    for (let i = 0; i < n; i++) this.#map.set(ev.blockHashes[i]!, hashes[i]!);
    return { kind: 'stored', parent, hashes };
  }

  /** Forgets the engine hashes; returns the prefix hashes of the ones it knew, and how many it did not. */
  removed(blockHashes: readonly EngineHash[]): { hashes: bigint[]; unknown: number } {
    const hashes: bigint[] = [];
    let unknown = 0;
    for (const h of blockHashes) {
      const p = this.#map.peek(h);
      if (p === undefined) {
        unknown++;
        continue;
      }
      this.#map.delete(h);
      hashes.push(p);
    }
    return { hashes, unknown };
  }

  clear(): void {
    // clear() disposes with reason 'delete', so nothing lands in the evicted list.
    this.#map.clear();
    this.#evicted = [];
  }
}
