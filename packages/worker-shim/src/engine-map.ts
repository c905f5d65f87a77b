/**
 * Engine block hash → kvgate prefix hash and the tiers that hold the block, for one worker (pure: no I/O).
 *
 * An engine names a cached block by its own hash (vLLM: a uint64 or a 32-byte digest; opaque to us; the
 * protocol decoder hands both over as primitives, bigint or hex string, so they key a Map by value). kvgate
 * names it by the prefix hash of DESIGN.md section 2, computed here from the parent's prefix hash and the
 * block's token ids (the chain root takes the LoRA and the request's cache salt; a block whose extra keys the
 * router cannot reproduce gets an opaque key, see extra-keys.ts). Per engine hash the map keeps
 *   - its prefix hash, and its parent's prefix hash and engine hash (to group translated blocks into
 *     parent-linked chains, and to walk an offloaded block back over the GPU blocks it covers);
 *   - which tiers hold it: a GPU bit, and a count per lower tier (vLLM's self-describing offload events may
 *     announce one hash once per chunk that covers it, and remove it as often; the copy is gone at zero).
 * An entry lives while any tier holds it: a GPU removal of a block offloaded to CPU keeps the entry, so the
 * CPU copy's later removal (or a hash-only placeholder naming it) is still understood.
 *
 * Hash-only placeholders (vLLM's offloading connector: no tokens) name blocks by engine hash only: they are
 * translated through the map (the engine stored the block on GPU first). The offload key's hash is the last
 * GPU block hash of the offloaded block (`block_hashes[factor-1::factor]`), so an offloaded block of `span`
 * GPU blocks marks that block and its span-1 ancestors. An unknown hash is counted, never guessed.
 *
 * A BlockStored whose parent is unknown is refused (the caller repairs through replay or drops it): it is
 * never chained from a guessed parent. A store of an engine hash the map already knows adds the tier; on a
 * lower tier the known prefix stands (vLLM's offload events carry no extra keys: the GPU store that came
 * first had them), on GPU the new content wins (the engine reused the hash after a removal we missed).
 *
 * Per tier it counts the blocks held there (`tierCounts`, O(1): kept up to date at each tier change, read by the
 * load report as what this worker has indexed per tier).
 *
 * Memory is bounded: entries leave with the engine's own removals, and an LRU cap bites when the engine's
 * removals are lost. A prefix evicted by the cap is handed back per tier by `takeEvicted()` so the caller can
 * publish its removal: the index then never holds a block whose removal we could no longer report.
 */
import { LRUCache } from 'lru-cache';
import { chainHashes, rootHash, TIERS, type EngineHash, type Tier } from '@kvgate/protocol';
import { opaqueKey } from './extra-keys.js';

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
  /** tier the engine stored them on (default gpu) */
  tier?: Tier;
  /** the request's cache_salt: enters the chain root (only used when `parent` is null) */
  salt?: string | null;
  /** per block: canonical text of extra keys the router cannot reproduce (the block gets an opaque key) */
  opaque?: readonly (string | undefined)[];
}

export type StoredResult =
  | { kind: 'stored'; parent: bigint | null; hashes: bigint[] }
  | { kind: 'unknown-parent' }
  | { kind: 'malformed'; reason: string };

/** a run of prefix hashes, each the child of the one before, the first a child of `parent` (null = root) */
export interface Chain {
  parent: bigint | null;
  hashes: bigint[];
}

export type TierHashes = Record<Tier, bigint[]>;

export interface EngineMapOptions {
  /** model name used for hashing (the root of every chain) */
  model: string;
  /** most engine hashes remembered before the LRU cap evicts (default 1,000,000 ≈ 150 MB) */
  maxEntries?: number;
}

interface Entry {
  prefix: bigint;
  /** parent's prefix hash (null = chained from the root) */
  parent: bigint | null;
  /** parent's engine hash (null = first block of a prompt) */
  parentKey: EngineHash | null;
  gpu: boolean;
  cpu: number;
  disk: number;
  /** GPU blocks an offloaded copy named by this hash covers (a hash-only placeholder's span; 1 otherwise) */
  span: number;
}

const held = (e: Entry): boolean => e.gpu || e.cpu > 0 || e.disk > 0;
const emptyTiers = (): TierHashes => ({ gpu: [], cpu: [], disk: [] });

/** appends `e` to the last chain when it continues it, else starts a new chain */
function appendChain(chains: Chain[], e: Entry): void {
  const last = chains.at(-1);
  if (last && last.hashes.at(-1) === e.parent) last.hashes.push(e.prefix);
  else chains.push({ parent: e.parent, hashes: [e.prefix] });
}

export class EngineMap {
  readonly #model: string;
  readonly #map: LRUCache<EngineHash, Entry>;
  readonly #roots = new Map<string, bigint>();
  #evicted: TierHashes = emptyTiers();
  #evictions = 0;
  /** entries held on each tier */
  readonly #counts: Record<Tier, number> = { gpu: 0, cpu: 0, disk: 0 };

  constructor(opts: EngineMapOptions) {
    this.#model = opts.model;
    this.#map = new LRUCache<EngineHash, Entry>({
      max: opts.maxEntries ?? 1_000_000,
      dispose: (e, _key, reason) => {
        // an entry leaving (evicted, or deleted: by then it holds nothing, or a GPU store replaced it) uncounts
        if (e.gpu) this.#counts.gpu--;
        if (e.cpu > 0) this.#counts.cpu--;
        if (e.disk > 0) this.#counts.disk--;
        if (reason !== 'evict') return;
        this.#evictions++;
        if (e.gpu) this.#evicted.gpu.push(e.prefix);
        if (e.cpu > 0) this.#evicted.cpu.push(e.prefix);
        if (e.disk > 0) this.#evicted.disk.push(e.prefix);
      },
    });
  }

  get size(): number {
    return this.#map.size;
  }

  /** blocks held on each tier (a block on several tiers counts on each) */
  tierCounts(): Record<Tier, number> {
    return { ...this.#counts };
  }

  /** total entries the LRU cap has evicted */
  get evictions(): number {
    return this.#evictions;
  }

  /** prefix hashes evicted by the cap (or replaced) since the last call, per tier that held them: publish as removed */
  takeEvicted(): TierHashes {
    const out = this.#evicted;
    this.#evicted = emptyTiers();
    return out;
  }

  /** the tiers holding an engine hash (tests, diagnostics); undefined when unknown */
  tiersOf(h: EngineHash): { prefix: bigint; gpu: boolean; cpu: number; disk: number } | undefined {
    const e = this.#map.peek(h);
    return e && { prefix: e.prefix, gpu: e.gpu, cpu: e.cpu, disk: e.disk };
  }

  #root(lora: string | null, blockSize: number, salt: string | null | undefined): bigint {
    const k = JSON.stringify([lora ?? '', blockSize, salt ?? '']);
    let r = this.#roots.get(k);
    if (r === undefined) {
      if (this.#roots.size >= 4096) this.#roots.clear(); // salts are per tenant: bound the memo
      r = rootHash(this.#model, lora ?? '', blockSize, salt || undefined);
      this.#roots.set(k, r);
    }
    return r;
  }

  /** prefix hashes of blocks [from, n) chained from p, opaque blocks keyed by opaqueKey */
  #chain(p: bigint, ev: StoredBlocks, from: number, n: number): bigint[] {
    const b = ev.blockSize;
    const opaque = ev.opaque;
    if (!opaque || !opaque.some((t, i) => i >= from && t !== undefined)) return chainHashes(p, ev.tokenIds, from * b, n - from, b);
    const out: bigint[] = [];
    for (let i = from; i < n; i++) {
      let h = chainHashes(p, ev.tokenIds, i * b, 1, b)[0]!;
      const t = opaque[i];
      if (t !== undefined) h = opaqueKey(h, t);
      out.push(h);
      p = h;
    }
    return out;
  }

  #mark(e: Entry, tier: Tier): void {
    if (tier === 'gpu') {
      if (!e.gpu) this.#counts.gpu++;
      e.gpu = true;
    } else if (e[tier]++ === 0) this.#counts[tier]++;
  }

  /** queues an entry's removal on every tier it held (a GPU store replaced its content) */
  #dropAll(e: Entry): void {
    for (const t of TIERS) if (t === 'gpu' ? e.gpu : e[t] > 0) this.#evicted[t].push(e.prefix);
  }

  stored(ev: StoredBlocks): StoredResult {
    const n = ev.blockHashes.length;
    const b = ev.blockSize;
    const tier = ev.tier ?? 'gpu';
    if (!Number.isInteger(b) || b <= 0) return { kind: 'malformed', reason: `block size ${b}` };
    if (ev.tokenIds.length !== n * b) return { kind: 'malformed', reason: `${ev.tokenIds.length} tokens for ${n} blocks of ${b}` };
    if (ev.opaque && ev.opaque.length !== n) return { kind: 'malformed', reason: `${ev.opaque.length} extra-key entries for ${n} blocks` };
    let parent: bigint | null = null;
    let p: bigint;
    if (ev.parent === null || ev.parent === undefined) {
      p = this.#root(ev.lora, b, ev.salt);
    } else {
      const known = this.#map.get(ev.parent);
      if (known === undefined) return { kind: 'unknown-parent' };
      parent = known.prefix;
      p = known.prefix;
    }
    let hashes = this.#chain(p, ev, 0, n);
    for (let i = 0; i < n; i++) {
      const key = ev.blockHashes[i]!;
      const e = this.#map.get(key);
      if (e !== undefined && e.prefix !== hashes[i]) {
        if (tier !== 'gpu') {
          // a lower-tier copy of a block stored on GPU first: the GPU store had the extra keys; keep its name
          hashes = [...hashes.slice(0, i), e.prefix, ...this.#chain(e.prefix, ev, i + 1, n)];
        } else {
          this.#dropAll(e);
          this.#map.delete(key);
        }
      }
      let cur = this.#map.get(key);
      if (cur === undefined) {
        cur = {
          prefix: hashes[i]!,
          parent: i === 0 ? parent : hashes[i - 1]!,
          parentKey: i === 0 ? (ev.parent ?? null) : ev.blockHashes[i - 1]!,
          gpu: false,
          cpu: 0,
          disk: 0,
          span: 1,
        };
        this.#map.set(key, cur);
      }
      this.#mark(cur, tier);
    }
    return { kind: 'stored', parent, hashes };
  }

  /**
   * A hash-only placeholder: the engine copied blocks it already announced to `tier`. Each hash names the last
   * of `span` GPU blocks (an offloaded block of span × the GPU block size). Returns the translated blocks as
   * parent-linked chains, and how many hashes the map did not know.
   */
  addTier(blockHashes: readonly EngineHash[], tier: Tier, span = 1): { chains: Chain[]; unknown: number } {
    const chains: Chain[] = [];
    let unknown = 0;
    for (const h of blockHashes) {
      const e = this.#map.get(h);
      if (e === undefined) {
        unknown++;
        continue;
      }
      if (span > 1) e.span = span;
      for (const x of this.#covered(e, tier === 'gpu' ? 1 : span).reverse()) {
        this.#mark(x, tier);
        appendChain(chains, x);
      }
    }
    return { chains, unknown };
  }

  /** `e` and up to span-1 of its ancestors, nearest first (an ancestor the map forgot ends the walk) */
  #covered(e: Entry, span: number): Entry[] {
    const out = [e];
    let x = e;
    while (out.length < span && x.parentKey !== null) {
      const up = this.#map.peek(x.parentKey);
      if (up === undefined) break;
      out.push(up);
      x = up;
    }
    return out;
  }

  /**
   * The engine dropped its `tier` copy of these blocks. Returns the prefix hashes whose copy on that tier is
   * now gone (publish them as removed on the tier), and how many hashes the map did not know. An entry no
   * tier holds any more is forgotten.
   */
  removed(blockHashes: readonly EngineHash[], tier: Tier = 'gpu'): { hashes: bigint[]; unknown: number } {
    const hashes: bigint[] = [];
    let unknown = 0;
    for (const h of blockHashes) {
      const e = this.#map.peek(h);
      if (e === undefined) {
        unknown++;
        continue;
      }
      const covered = tier === 'gpu' ? [e] : this.#covered(e, e.span);
      const keys = tier === 'gpu' ? [h] : this.#keysOf(h, covered.length);
      covered.forEach((x, j) => {
        if (tier === 'gpu') {
          if (!x.gpu) return;
          x.gpu = false;
          this.#counts.gpu--;
          hashes.push(x.prefix);
        } else {
          if (x[tier] === 0) return;
          if (--x[tier] === 0) {
            this.#counts[tier]--;
            hashes.push(x.prefix);
          }
        }
        if (!held(x)) this.#map.delete(keys[j]!);
      });
    }
    return { hashes, unknown };
  }

  /** engine hashes of `h` and its ancestors, nearest first, `count` of them (the keys #covered walked) */
  #keysOf(h: EngineHash, count: number): EngineHash[] {
    const out: EngineHash[] = [h];
    let k: EngineHash | null = h;
    while (out.length < count && k !== null) {
      k = this.#map.peek(k)?.parentKey ?? null;
      if (k !== null) out.push(k);
    }
    return out;
  }

  /** The engine dropped everything on one tier: returns the prefixes that lost their copy there. */
  clearTier(tier: Tier): bigint[] {
    const out: bigint[] = [];
    const gone: EngineHash[] = [];
    for (const [k, e] of this.#map.entries()) {
      if (tier === 'gpu' ? e.gpu : e[tier] > 0) {
        out.push(e.prefix);
        if (tier === 'gpu') e.gpu = false;
        else e[tier] = 0;
        if (!held(e)) gone.push(k);
      }
    }
    this.#counts[tier] = 0;
    for (const k of gone) this.#map.delete(k);
    return out;
  }

  /**
   * Every block the map holds, per tier, as parent-linked chains (a resync republishes them): a block held on
   * several tiers appears in each. Oldest entries first, so a chain's blocks mostly follow their parents.
   */
  blockSet(): Record<Tier, Chain[]> {
    const out: Record<Tier, Chain[]> = { gpu: [], cpu: [], disk: [] };
    for (const e of this.#map.rvalues()) {
      if (e === undefined) continue;
      if (e.gpu) appendChain(out.gpu, e);
      if (e.cpu > 0) appendChain(out.cpu, e);
      if (e.disk > 0) appendChain(out.disk, e);
    }
    return out;
  }

  clear(): void {
    // clear() disposes with reason 'delete', so nothing lands in the evicted list.
    this.#map.clear();
    this.#counts.gpu = this.#counts.cpu = this.#counts.disk = 0;
    this.#evicted = emptyTiers();
  }
}
