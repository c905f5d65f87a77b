/**
 * PrefixIndex: the global prefix → worker index. Pure (no I/O), single-threaded, typed arrays only.
 *
 * Representation. A prefix hash p_i names a whole prefix (DESIGN.md §2), so the radix tree is stored flat:
 * one *node* per prefix in an open-addressing hash table keyed by the 64-bit hash (split into two uint32,
 * no BigInt on the hot path); the parent hash is known for each node (dumps). Children need no pointers: the child of
 * node p along block b is found by hashing (p, b), which the caller already did. One index serves every
 * model, LoRA and block size because the root p_{-1} is mixed into every hash.
 *
 *   node  n: one 24-byte record (8 per three cache lines): [keyLo, keyHi, fpLo, fpHi, holderCount, holderHead]
 *            + 1 byte saying where its parent hash is + 1.25–1.9 four-byte slots  ≈ 31 B. Nothing else per
 *            prefix: the parent hash (dumps only) is the key of record n-1 for a chain stored in order (its
 *            blocks get consecutive records), the root, or else in a small side table (a chain's first block
 *            when its parent's record is elsewhere); the LRU stamp exists only in a bounded index (own pages);
 *            a popular prefix's bitset id is in a map (exactly the prefixes with ≥ 8 holders have one).
 *            A slot holds the node id and a 7-bit tag of the key, so probing past other keys reads no
 *            record: a key that is not indexed (each new block on store) costs one slot-table line.
 *            Holders of a prefix held by ≥ 8 workers are also kept in a worker bitset, so
 *            "does w already hold it?" on store stays O(1) for shared system prompts.
 *   Records live in fixed pages of 16,384: growth adds a page and never copies (copying grown arrays
 *   was a third of ingest time); only the 4-byte slot table is rehashed when it grows (1.5× at load 0.8).
 *   entry e: one (node, worker) pair, a 24-byte record [node, worker, nextN, prevN, nextW, prevW]: doubly
 *            linked in its node's holder list and its worker's list, so remove / clear / expiry cost O(1)
 *            per block and O(that worker's blocks) per worker.
 *   worker : ordinal (< 65,535), head of its entry list, block count, xor digest, a random 64-bit key.
 *
 * Match. Walk p_0, p_1, … keeping the survivors (workers holding every prefix so far). Survivors ⊆
 * holders(p_{i-1}), so when p_i's holder set equals p_{i-1}'s nothing changes; equality is tested in O(1) by
 * (count, fingerprint), the fingerprint being the xor of the holders' random 64-bit keys (a false "equal"
 * needs a 64-bit xor collision: ≤ 2^-64 per step). Only steps where the holder set changes walk that set.
 * A system prompt held by all 256 workers costs one comparison per block, not 256. The walk stops at the
 * first prefix nobody holds (early exit) or when no survivor is left.
 *
 * Runs: path compression without edges. A chain stored in one event gets consecutive records, so match
 * scans records prevN+1, prevN+2, … while their key is the prompt's next hash and their holder set is
 * unchanged: an implicit radix edge read like an array (sequential, no probe, no dependent load). Off a run
 * it tries the next record (same chain, another holder set), then the table. Every guess is verified (key +
 * live), so runs need no upkeep on remove / free / reuse and cannot change an answer. A 512-block bench
 * prompt needs ≈ 3 table lookups instead of ≈ 270. (A 4-byte child hint per prefix, tried before the table,
 * was dropped for memory: it only helped chains whose blocks were stored interleaved with other chains.)
 * Real edges (runs of hashes per edge) were not built: with per-worker set semantics any store/remove can
 * split an edge, and moving the split-off tail's hash → (edge, offset) entries is O(edge length), not
 * O(blocks touched).
 *
 * Memory bound. `maxEntries` caps (block, worker) entries. Beyond it, whole prefixes are evicted by sampled
 * LRU (as Redis does): every store and match stamps the prefixes it touches with a logical clock; eviction
 * samples 16 live prefixes and drops the least recently used, until under the cap. Stamping is one write per
 * touched prefix into the stamp pages (sequential along a run); an intrusive LRU list would cost 8 B per prefix and ~8 random writes
 * per touched prefix, i.e. double the match time. Evictions are counted.
 */
import type { Tier, TierOverlap } from '@kvgate/protocol';
import { TIER_CPU, TIER_DISK, TIER_GPU, tierBit, tierPart, type Digest, type IndexCore, type IndexDump, type WorkerDump } from './core.js';

const NONE = -1;
const MAX_WORKERS = 0xffff;
const SAMPLES = 16;
/**
 * hash-table slot: 0 = empty, else ((node + 1) << TAG) | tag, the tag being TAG low bits of the mixed key;
 * a probe only reads the record of a slot whose tag matches (1 in 128 of the others)
 */
const TAG = 7;
const TAGM = (1 << TAG) - 1;
const MAX_NODES = (1 << (32 - TAG)) - 1;

// node and entry records live in fixed-size pages: growing adds a page, nothing is ever copied
const P = 14;
const PAGE = 1 << P;
const PM = PAGE - 1;

// node record fields (24 B). The LRU stamp, the parent hash and a popular prefix's bitset id live outside it:
// stamps in pages allocated only when the index is bounded, parents mostly derived (see #pf), bitset ids in a map.
const N = 6;
const KLO = 0, KHI = 1, FPLO = 2, FPHI = 3, CNT = 4, HEAD = 5;
// how a node's parent hash is known (one byte per node, #pf): the root, the key of record n-1 (a chain stored in
// order gets consecutive records, so this is the usual case), or the #parents side table
const PAR_TABLE = 0, PAR_ROOT = 1, PAR_PREV = 2;
// entry record fields
const E = 6;
const ENODE = 0, EW = 1, NEXTN = 2, PREVN = 3, NEXTW = 4, PREVW = 5;
/** EW holds the worker ordinal (low 16 bits, < MAX_WORKERS) and the entry's tier mask above it: entries stay 24 B */
const WM = 0xffff, MS = 16;
const ALL_TIERS = TIER_GPU | TIER_CPU | TIER_DISK;
// tiered match: phase of a surviving worker (see matchPairs)
const PH_GPU = 0, PH_CPU = 1, PH_DISK = 2;
/** a prefix with this many holders gets a worker bitset, so "does w hold it?" stays O(1) on store */
const POPULAR = 8;
/** reserve() sizes the slot table up to this many slots (64 MiB) */
const RESERVE_MAX = 1 << 24;
/**
 * slot-table load bound and growth factor. Any size works (home = mixed key × size / 2^32), so the table
 * grows by 1.5× at load 0.8 (tags keep a long probe on the slot lines) instead of doubling at 0.7: 0.53–0.8
 * full, ≈ 6 B per prefix instead of 6–11.
 */
const MAX_LOAD = 0.8, GROWTH = 1.5;
const TWO32 = 2 ** 32;

export interface PrefixIndexOptions {
  /** cap on (block, worker) entries; 0 = unbounded. Default 0. */
  maxEntries?: number;
}

export interface PrefixIndexStats {
  nodes: number;
  entries: number;
  workers: number;
  evictedNodes: number;
  evictedEntries: number;
  /** bytes held by the typed arrays (capacity, not use) */
  arrayBytes: number;
  /** hash-table lookups made by match since creation (the run scan and child hints avoid most) */
  matchLookups: number;
}

function grow<T extends Int32Array | Float64Array>(a: T, n: number): T {
  const b = new (a.constructor as new (n: number) => T)(n);
  b.set(a.subarray(0, Math.min(a.length, n)));
  return b;
}

/** Scratch u64 buffer viewed as (lo, hi) uint32 pairs (little-endian host; hashing.ts checks it). */
let scratch64 = new BigUint64Array(1024);
let scratch32 = new Uint32Array(scratch64.buffer);
function asPairs(hashes: ArrayLike<bigint>): Uint32Array {
  if (hashes instanceof BigUint64Array) return new Uint32Array(hashes.buffer, hashes.byteOffset, hashes.length * 2);
  if (scratch64.length < hashes.length) {
    scratch64 = new BigUint64Array(Math.max(hashes.length, scratch64.length * 2));
    scratch32 = new Uint32Array(scratch64.buffer);
  }
  for (let i = 0; i < hashes.length; i++) scratch64[i] = BigInt.asUintN(64, hashes[i]!);
  return scratch32;
}

/**
 * node id → (lo, hi) int32 pair: the parent hashes that are not derivable (PAR_TABLE). Open addressing on
 * typed arrays (linear probing, backward-shift deletion, load ≤ 0.5): 12 B per slot, no object per entry.
 */
class NodePairs {
  /** node + 1 per slot, 0 = empty */
  #keys = new Int32Array(16);
  #vals = new Int32Array(32);
  #size = 0;
  #shift = 28;

  get bytes(): number {
    return this.#keys.byteLength + this.#vals.byteLength;
  }

  #home(n: number): number {
    return Math.imul(n + 1, 0x9e3779b1) >>> this.#shift;
  }

  set(n: number, lo: number, hi: number): void {
    if ((this.#size + 1) * 2 > this.#keys.length) this.#rehash(this.#keys.length * 2);
    const keys = this.#keys, mask = keys.length - 1;
    let s = this.#home(n);
    while (keys[s] !== 0 && keys[s] !== n + 1) s = (s + 1) & mask;
    if (keys[s] === 0) this.#size++;
    keys[s] = n + 1;
    this.#vals[2 * s] = lo;
    this.#vals[2 * s + 1] = hi;
  }

  /** the pair of n into out (n must be present) */
  get(n: number, out: Int32Array): void {
    const keys = this.#keys, mask = keys.length - 1;
    let s = this.#home(n);
    while (keys[s] !== n + 1) {
      if (keys[s] === 0) throw new Error(`radix: no parent recorded for node ${n}`);
      s = (s + 1) & mask;
    }
    out[0] = this.#vals[2 * s]!;
    out[1] = this.#vals[2 * s + 1]!;
  }

  delete(n: number): void {
    const keys = this.#keys, vals = this.#vals, mask = keys.length - 1;
    let i = this.#home(n);
    while (keys[i] !== n + 1) {
      if (keys[i] === 0) return;
      i = (i + 1) & mask;
    }
    keys[i] = 0;
    this.#size--;
    for (let j = (i + 1) & mask; keys[j] !== 0; j = (j + 1) & mask) {
      const k = this.#home(keys[j]! - 1);
      const stays = i <= j ? k > i && k <= j : k > i || k <= j;
      if (stays) continue;
      keys[i] = keys[j]!;
      vals[2 * i] = vals[2 * j]!;
      vals[2 * i + 1] = vals[2 * j + 1]!;
      keys[j] = 0;
      i = j;
    }
  }

  #rehash(size: number): void {
    const ok = this.#keys, ov = this.#vals;
    this.#keys = new Int32Array(size);
    this.#vals = new Int32Array(2 * size);
    this.#shift = 32 - Math.log2(size);
    this.#size = 0;
    for (let s = 0; s < ok.length; s++) if (ok[s] !== 0) this.set(ok[s]! - 1, ov[2 * s]!, ov[2 * s + 1]!);
  }
}

export class PrefixIndex implements IndexCore {
  // ---- nodes: pages of PAGE records (keys stored as int32: compare with `x | 0`) ----
  readonly #np: Int32Array[] = [];
  /** per node: how its parent hash is known (PAR_*), cold (dumps and record reuse only) */
  readonly #pf: Uint8Array[] = [];
  /** parent hashes of the nodes marked PAR_TABLE (a chain's first block when it does not follow its parent's record) */
  readonly #parents = new NodePairs();
  /** LRU stamp per node: pages exist only when the index is bounded (maxEntries > 0) */
  readonly #up: Int32Array[] = [];
  /** bitset id of each node with ≥ POPULAR holders (exactly those) */
  readonly #bitsOf = new Map<number, number>();
  #nodes = 0;
  /** node ids [0, #nodeHigh) have been handed out at least once */
  #nodeHigh = 0;
  #freeNode = NONE;
  // ---- hash table: slot → node id, load ≤ MAX_LOAD ----
  #slots = new Int32Array(16);
  /** home slot = floor(mixed key (uint32) × #scale), #scale = slots / 2^32 */
  #scale = 16 / TWO32;
  /** empty slot found by the last missing #find (valid until the table changes) */
  #hole = NONE;
  /** keeps #touchSlots' loads alive */
  #sink = 0;
  #matchLookups = 0;
  // ---- entries ----
  readonly #ep: Int32Array[] = [];
  #entries = 0;
  #entryHigh = 0;
  #freeEntry = NONE;
  // ---- workers ----
  readonly #ordinal = new Map<string, number>();
  #names: (string | undefined)[] = [];
  #freeOrdinals: number[] = [];
  #wHead = new Int32Array(64).fill(NONE);
  #wCount = new Float64Array(64);
  #wXor = new Int32Array(128);
  #wKey = new Int32Array(128);
  /** per worker: the last node its last store touched (chains continue across batches) */
  #wLast = new Int32Array(64).fill(NONE);
  // ---- match scratch ----
  #stamp = new Float64Array(64);
  #epoch = 1;
  #genEnd = new Int32Array(1024);
  #resW = new Int32Array(64);
  #resD = new Int32Array(64);
  /** tiered match: cpu and disk depths and phase per result slot, tier mask seen per worker */
  #resC = new Int32Array(64);
  #resK = new Int32Array(64);
  #resP = new Int32Array(64);
  #seen = new Int32Array(64);
  #live = new Int32Array(64);
  /** entries whose mask is not GPU-only: while 0, the tiered match is the GPU match */
  #tiered = 0;
  // ---- eviction ----
  readonly #maxEntries: number;
  #clock = 1;
  #evictedNodes = 0;
  #evictedEntries = 0;
  #rng = 0x9e3779b9;
  // ---- holder bitsets of popular prefixes: three (gpu, cpu, disk holders) of #bitWords int32 words each ----
  #bits = new Int32Array(0);
  #bitWords = 2;
  #bitHigh = 0;
  #freeBits: number[] = [];

  constructor(opts: PrefixIndexOptions = {}) {
    this.#maxEntries = opts.maxEntries ?? 0;
  }

  get entries(): number {
    return this.#entries;
  }

  stats(): PrefixIndexStats {
    const pages = this.#np.length * PAGE * (N * 4 + 1) + this.#up.length * PAGE * 4 + this.#ep.length * PAGE * E * 4 + this.#parents.bytes;
    return {
      nodes: this.#nodes,
      entries: this.#entries,
      workers: this.#ordinal.size,
      evictedNodes: this.#evictedNodes,
      evictedEntries: this.#evictedEntries,
      arrayBytes: pages + this.#slots.byteLength + this.#bits.byteLength,
      matchLookups: this.#matchLookups,
    };
  }

  // ---- record access (cold paths; hot loops inline the page arithmetic) -----------------------------

  #n(n: number, f: number): number {
    return this.#np[n >>> P]![(n & PM) * N + f]!;
  }
  #setN(n: number, f: number, v: number): void {
    this.#np[n >>> P]![(n & PM) * N + f] = v;
  }
  #e(e: number, f: number): number {
    return this.#ep[e >>> P]![(e & PM) * E + f]!;
  }
  #setE(e: number, f: number, v: number): void {
    this.#ep[e >>> P]![(e & PM) * E + f] = v;
  }

  // ---- hash table ---------------------------------------------------------------------------------

  /** 32 well-mixed bits of a key: the top bits pick the home slot, the low TAG bits are the slot's tag */
  static #mix(lo: number, hi: number): number {
    return Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) ^ (hi >>> 15);
  }

  /** the slot value of node n whose key mixes to h */
  static #slotOf(n: number, h: number): number {
    return ((n + 1) << TAG) | (h & TAGM);
  }

  /** home slot of a mixed key */
  #home(h: number): number {
    return Math.floor((h >>> 0) * this.#scale);
  }

  /**
   * lo, hi as int32. A miss leaves the empty slot that ended the probe in #hole (newNode fills it).
   * A probe reads a node record only when the slot's tag matches: a key that is not indexed (every new
   * block on store) costs the slot-table line and no record miss.
   */
  #find(lo: number, hi: number): number {
    const slots = this.#slots, np = this.#np, size = slots.length;
    const h = PrefixIndex.#mix(lo, hi), tag = h & TAGM;
    let s = Math.floor((h >>> 0) * this.#scale);
    for (;;) {
      const v = slots[s]!;
      if (v === 0) {
        this.#hole = s;
        return NONE;
      }
      if ((v & TAGM) === tag) {
        const n = (v >>> TAG) - 1;
        const pg = np[n >>> P]!, r = (n & PM) * N;
        if (pg[r + KLO] === lo && pg[r + KHI] === hi) return n;
      }
      if (++s === size) s = 0;
    }
  }

  #insertSlot(n: number): void {
    const slots = this.#slots, size = slots.length;
    const h = PrefixIndex.#mix(this.#n(n, KLO), this.#n(n, KHI));
    let s = this.#home(h);
    while (slots[s] !== 0) if (++s === size) s = 0;
    slots[s] = PrefixIndex.#slotOf(n, h);
  }

  #homeOfNode(n: number): number {
    return this.#home(PrefixIndex.#mix(this.#n(n, KLO), this.#n(n, KHI)));
  }

  /** backward-shift deletion: no tombstones, probe chains stay short */
  #deleteSlot(n: number): void {
    const slots = this.#slots, size = slots.length;
    let i = this.#homeOfNode(n);
    while ((slots[i]! >>> TAG) - 1 !== n) if (++i === size) i = 0;
    slots[i] = 0;
    let j = i;
    for (;;) {
      if (++j === size) j = 0;
      const m = slots[j]!;
      if (m === 0) return;
      const k = this.#homeOfNode((m >>> TAG) - 1);
      // move m back into the hole at i unless its home lies cyclically in (i, j]
      const stays = i <= j ? k > i && k <= j : k > i || k <= j;
      if (!stays) {
        slots[i] = m;
        slots[j] = 0;
        i = j;
      }
    }
  }

  /**
   * Size the hash table up front for an index of `blocks` (block, worker) entries, so that ingest does not
   * rehash while the index fills. The indexer calls it with the KV capacity its workers registered: their
   * caches never hold more blocks than that, and at steady state they hold about that many. Prefixes ≤
   * entries, and shared prefixes make them fewer (1.8 holders per prefix on the bench workload), so the
   * table gets capacity / MAX_LOAD slots: it does not grow even if every cached block is its own prefix
   * (long unique documents). Capped at RESERVE_MAX slots (beyond, the table still grows on demand); the
   * cost is 5 B per block of capacity.
   */
  reserve(blocks: number): void {
    const cap = Math.min(Math.max(0, Math.floor(blocks)), this.#maxEntries > 0 ? this.#maxEntries : Infinity);
    const want = Math.min(Math.ceil(cap / MAX_LOAD), RESERVE_MAX);
    // at least GROWTH× when it grows: workers registering one by one raise `want` a little each, and growing to
    // exactly `want` rehashed the table once per registration (~800 times for 2,000 workers up to RESERVE_MAX)
    if (this.#slots.length < want) this.#grow(Math.min(Math.max(want, Math.ceil(this.#slots.length * GROWTH)), RESERVE_MAX));
  }

  /** grow the slot table by GROWTH when the next node would push the load over MAX_LOAD (returns whether it did) */
  #reserveSlot(): boolean {
    if ((this.#nodes + 1) <= this.#slots.length * MAX_LOAD) return false;
    this.#grow(Math.ceil(this.#slots.length * GROWTH));
    return true;
  }

  #grow(size: number): void {
    this.#slots = new Int32Array(size);
    this.#scale = size / TWO32;
    // Re-insert in home order, not node order: node order writes one random slot of the new table per node
    // (a cache miss each; it was a third of ingest). Partition the live nodes by the top bits of their home
    // (sequential reads, ≤ 256 write streams), then insert partition by partition: each stays in a small,
    // cached stretch of the table.
    const live = this.#nodes, hs = new Int32Array(live), ns = new Int32Array(live);
    let m = 0;
    for (let n = 0; n < this.#nodeHigh; n++) {
      const pg = this.#np[n >>> P]!, r = (n & PM) * N;
      if (pg[r + CNT]! > 0) {
        hs[m] = PrefixIndex.#mix(pg[r + KLO]!, pg[r + KHI]!);
        ns[m++] = n;
      }
    }
    const B = 8, sh = 32 - B;
    const at = new Int32Array((1 << B) + 1);
    for (let i = 0; i < m; i++) at[(hs[i]! >>> sh) + 1]++;
    for (let b = 1; b <= 1 << B; b++) at[b] += at[b - 1]!;
    const hs2 = new Int32Array(m), ns2 = new Int32Array(m);
    for (let i = 0; i < m; i++) {
      const j = at[hs[i]! >>> sh]!++;
      hs2[j] = hs[i]!;
      ns2[j] = ns[i]!;
    }
    const slots = this.#slots, scale = this.#scale;
    for (let i = 0; i < m; i++) {
      const h = hs2[i]!;
      let x = Math.floor((h >>> 0) * scale);
      while (slots[x] !== 0) if (++x === size) x = 0;
      slots[x] = PrefixIndex.#slotOf(ns2[i]!, h);
    }
  }

  /** a new node for a key #find just missed (`hole` = that miss's empty slot) */
  #newNode(lo: number, hi: number, pLo: number, pHi: number, hole: number): number {
    if (this.#reserveSlot()) hole = NONE;
    let n: number;
    if (this.#freeNode !== NONE) {
      n = this.#freeNode;
      this.#freeNode = this.#n(n, HEAD);
      // record n's key is about to change: a live successor whose parent is "the key of record n" keeps it
      // in the side table
      const m = n + 1;
      if (m < this.#nodeHigh && this.#n(m, CNT) > 0 && this.#pf[m >>> P]![m & PM] === PAR_PREV) {
        this.#parents.set(m, this.#n(n, KLO), this.#n(n, KHI));
        this.#pf[m >>> P]![m & PM] = PAR_TABLE;
      }
    } else {
      if (this.#nodeHigh === MAX_NODES) throw new RangeError(`index holds at most ${MAX_NODES} prefixes`);
      n = this.#nodeHigh++;
      if ((n >>> P) === this.#np.length) {
        this.#np.push(new Int32Array(PAGE * N));
        this.#pf.push(new Uint8Array(PAGE));
        if (this.#maxEntries > 0) this.#up.push(new Int32Array(PAGE));
      }
    }
    const pg = this.#np[n >>> P]!, r = (n & PM) * N;
    pg[r + KLO] = lo;
    pg[r + KHI] = hi;
    pg[r + FPLO] = 0;
    pg[r + FPHI] = 0;
    pg[r + CNT] = 0;
    pg[r + HEAD] = NONE;
    if (this.#maxEntries > 0) this.#up[n >>> P]![n & PM] = this.#clock;
    // the parent: the root, the key of the record before (a chain stored in order), else the side table
    let pf = PAR_TABLE;
    if ((pLo | pHi) === 0) pf = PAR_ROOT;
    else if (n > 0) {
      const q = n - 1, qg = this.#np[q >>> P]!, qr = (q & PM) * N;
      if (qg[qr + KLO] === pLo && qg[qr + KHI] === pHi) pf = PAR_PREV;
    }
    this.#pf[n >>> P]![n & PM] = pf;
    if (pf === PAR_TABLE) this.#parents.set(n, pLo, pHi);
    if (hole !== NONE) this.#slots[hole] = PrefixIndex.#slotOf(n, PrefixIndex.#mix(lo, hi));
    else this.#insertSlot(n);
    this.#nodes++;
    return n;
  }

  /** parent hash of node n into #pOut */
  #parentOf(n: number): void {
    const pf = this.#pf[n >>> P]![n & PM]!;
    if (pf === PAR_ROOT) {
      this.#pOut[0] = 0;
      this.#pOut[1] = 0;
    } else if (pf === PAR_PREV) {
      this.#pOut[0] = this.#n(n - 1, KLO);
      this.#pOut[1] = this.#n(n - 1, KHI);
    } else this.#parents.get(n, this.#pOut);
  }
  readonly #pOut = new Int32Array(2);

  #freeNodeAt(n: number): void {
    // its key stays in the record until reuse (a successor's PAR_PREV parent may still read it)
    if (this.#pf[n >>> P]![n & PM] === PAR_TABLE) this.#parents.delete(n);
    this.#deleteSlot(n);
    this.#hole = NONE;
    this.#setN(n, HEAD, this.#freeNode);
    this.#freeNode = n;
    this.#nodes--;
  }

  /** advance the logical clock once per operation; halve every stamp before int32 overflow */
  #tick(): number {
    if (this.#clock >= 0x7ffffffe) {
      for (const up of this.#up) for (let j = 0; j < PAGE; j++) up[j] = up[j]! >>> 1;
      this.#clock >>>= 1;
    }
    return ++this.#clock;
  }

  #random(): number {
    // xorshift32: worker keys and eviction samples only need to be well spread, not secret
    let x = this.#rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#rng = x >>> 0;
    return this.#rng;
  }

  // ---- workers ------------------------------------------------------------------------------------

  #worker(name: string): number {
    let w = this.#ordinal.get(name);
    if (w !== undefined) return w;
    w = this.#freeOrdinals.pop() ?? this.#names.length;
    if (w >= MAX_WORKERS) throw new RangeError(`index holds at most ${MAX_WORKERS} workers`);
    if (w >= this.#wHead.length) {
      const cap = this.#wHead.length * 2;
      const head = new Int32Array(cap).fill(NONE);
      head.set(this.#wHead);
      this.#wHead = head;
      this.#wCount = grow(this.#wCount, cap);
      this.#wXor = grow(this.#wXor, cap * 2);
      this.#wKey = grow(this.#wKey, cap * 2);
      const last = new Int32Array(cap).fill(NONE);
      last.set(this.#wLast);
      this.#wLast = last;
      this.#stamp = grow(this.#stamp, cap);
      this.#resW = grow(this.#resW, cap);
      this.#resD = grow(this.#resD, cap);
      this.#resC = grow(this.#resC, cap);
      this.#resK = grow(this.#resK, cap);
      this.#resP = grow(this.#resP, cap);
      this.#seen = grow(this.#seen, cap);
      this.#live = grow(this.#live, cap);
      this.#widenBits(cap);
    }
    this.#names[w] = name;
    this.#ordinal.set(name, w);
    this.#wHead[w] = NONE;
    this.#wLast[w] = NONE;
    this.#wCount[w] = 0;
    this.#wXor[2 * w] = 0;
    this.#wXor[2 * w + 1] = 0;
    this.#wKey[2 * w] = this.#random();
    this.#wKey[2 * w + 1] = this.#random();
    return w;
  }

  /** ordinal of a worker, creating it (hot-path callers resolve the name once per batch) */
  ordinal(worker: string): number {
    return this.#worker(worker);
  }

  // ---- holder bitsets -------------------------------------------------------------------------------

  /** does w hold n on a tier of `bits`? O(1) for popular prefixes, else a walk of < POPULAR holders */
  #holds(n: number, w: number, bits: number): boolean {
    if (this.#n(n, CNT) >= POPULAR) {
      const b = this.#bitsOf.get(n)!;
      const words = this.#bitWords, at = b * 3 * words + (w >>> 5), bit = 1 << (w & 31), x = this.#bits;
      if (bits === TIER_GPU) return (x[at]! & bit) !== 0; // the ingest hot path
      return (((bits & TIER_GPU ? x[at]! : 0) | (bits & TIER_CPU ? x[at + words]! : 0) | (bits & TIER_DISK ? x[at + 2 * words]! : 0)) & bit) !== 0;
    }
    const e = this.#entryOf(n, w);
    return e !== NONE && ((this.#e(e, EW) >>> MS) & bits) !== 0;
  }

  /** does w hold n on every tier of `bits`? (bits = gpu, a popular prefix: one bitset read) */
  #holdsAll(n: number, w: number, bits: number): boolean {
    if (bits === TIER_GPU) return this.#holds(n, w, TIER_GPU);
    const e = this.#entryOf(n, w);
    return e !== NONE && ((this.#e(e, EW) >>> MS) & bits) === bits;
  }

  /** set w's bits in n's tier bitsets to mask m (a popular prefix) */
  #setBits(b: number, w: number, m: number): void {
    const words = this.#bitWords, at = b * 3 * words + (w >>> 5), bit = 1 << (w & 31), x = this.#bits;
    if (m & TIER_GPU) x[at] |= bit;
    else x[at] &= ~bit;
    if (m & TIER_CPU) x[at + words] |= bit;
    else x[at + words] &= ~bit;
    if (m & TIER_DISK) x[at + 2 * words] |= bit;
    else x[at + 2 * words] &= ~bit;
  }

  #makeBits(n: number): void {
    let b = this.#freeBits.pop();
    if (b === undefined) {
      b = this.#bitHigh++;
      if ((b + 1) * 3 * this.#bitWords > this.#bits.length) this.#bits = grow(this.#bits, Math.max(64, this.#bits.length * 2, (b + 1) * 3 * this.#bitWords));
    }
    this.#bitsOf.set(n, b);
    for (let e = this.#n(n, HEAD); e !== NONE; e = this.#e(e, NEXTN)) {
      const v = this.#e(e, EW);
      this.#setBits(b, v & WM, v >>> MS);
    }
  }

  /** worker ordinals outgrew the bitset width: re-lay every bitset */
  #widenBits(workerCap: number): void {
    const words = Math.ceil(workerCap / 32);
    if (words <= this.#bitWords) return;
    const old = this.#bits, ow = this.#bitWords;
    this.#bits = new Int32Array(Math.max(64, this.#bitHigh * 3 * words * 2));
    for (let b = 0; b < 3 * this.#bitHigh; b++) this.#bits.set(old.subarray(b * ow, (b + 1) * ow), b * words);
    this.#bitWords = words;
  }

  // ---- entries ------------------------------------------------------------------------------------

  /** xor the fingerprint key of (w, mask m) into node record r of page np */
  #fpXor(np: Int32Array, r: number, w: number, m: number): void {
    let lo = this.#wKey[2 * w]!, hi = this.#wKey[2 * w + 1]!;
    if (m !== TIER_GPU) {
      // non-linear in the mask: xor-ing keys of (w, m1) and (w, m2) never gives another holder's key pattern,
      // so equal (count, fingerprint) still means equal holders *and* masks
      const a = Math.imul(lo ^ Math.imul(m, 0x9e3779b1), 0x85ebca6b);
      const c = Math.imul(hi ^ (a >>> 15) ^ m, 0xc2b2ae35);
      lo = a ^ (c >>> 13);
      hi = c ^ (a >>> 11);
    }
    np[r + FPLO] ^= lo;
    np[r + FPHI] ^= hi;
  }

  /** w's digest ± the block of node record r held with mask m */
  #digestXor(np: Int32Array, r: number, w: number, m: number): void {
    const d = tierPart(np[r + KLO]!, np[r + KHI]!, m);
    this.#wXor[2 * w] ^= d[0]!;
    this.#wXor[2 * w + 1] ^= d[1]!;
  }

  #addEntry(n: number, w: number, m: number): void {
    let e: number;
    if (this.#freeEntry !== NONE) {
      e = this.#freeEntry;
      this.#freeEntry = this.#e(e, NEXTN);
    } else {
      e = this.#entryHigh++;
      if ((e >>> P) === this.#ep.length) this.#ep.push(new Int32Array(PAGE * E));
    }
    const ep = this.#ep[e >>> P]!, x = (e & PM) * E;
    const np = this.#np[n >>> P]!, r = (n & PM) * N;
    ep[x + ENODE] = n;
    ep[x + EW] = w | (m << MS);
    const h = np[r + HEAD]!;
    ep[x + NEXTN] = h;
    ep[x + PREVN] = NONE;
    if (h !== NONE) this.#setE(h, PREVN, e);
    np[r + HEAD] = e;
    const c = ++np[r + CNT]!;
    if (m === TIER_GPU) {
      np[r + FPLO] ^= this.#wKey[2 * w]!;
      np[r + FPHI] ^= this.#wKey[2 * w + 1]!;
      this.#wXor[2 * w] ^= np[r + KLO]!;
      this.#wXor[2 * w + 1] ^= np[r + KHI]!;
    } else {
      this.#fpXor(np, r, w, m);
      this.#digestXor(np, r, w, m);
      this.#tiered++;
    }
    if (c > POPULAR) this.#setBits(this.#bitsOf.get(n)!, w, m);
    else if (c === POPULAR) this.#makeBits(n);
    const wh = this.#wHead[w]!;
    ep[x + NEXTW] = wh;
    ep[x + PREVW] = NONE;
    if (wh !== NONE) this.#setE(wh, PREVW, e);
    this.#wHead[w] = e;
    this.#wCount[w]++;
    this.#entries++;
  }

  /** change entry e's tier mask to m (≠ 0) */
  #setMask(e: number, m: number): void {
    const ep = this.#ep[e >>> P]!, x = (e & PM) * E;
    const n = ep[x + ENODE]!, v = ep[x + EW]!, w = v & WM, old = v >>> MS;
    if (old === m) return;
    const np = this.#np[n >>> P]!, r = (n & PM) * N;
    ep[x + EW] = w | (m << MS);
    this.#fpXor(np, r, w, old);
    this.#fpXor(np, r, w, m);
    this.#digestXor(np, r, w, old);
    this.#digestXor(np, r, w, m);
    this.#tiered += (m !== TIER_GPU ? 1 : 0) - (old !== TIER_GPU ? 1 : 0);
    if (np[r + CNT]! >= POPULAR) this.#setBits(this.#bitsOf.get(n)!, w, m);
  }

  /** unlink entry e everywhere; frees its node when it was the last holder */
  #removeEntry(e: number): void {
    const ep = this.#ep[e >>> P]!, x = (e & PM) * E;
    const n = ep[x + ENODE]!, v = ep[x + EW]!, w = v & WM, m = v >>> MS;
    const np = this.#np[n >>> P]!, r = (n & PM) * N;
    const nn = ep[x + NEXTN]!, pn = ep[x + PREVN]!;
    if (pn !== NONE) this.#setE(pn, NEXTN, nn);
    else np[r + HEAD] = nn;
    if (nn !== NONE) this.#setE(nn, PREVN, pn);
    const nw = ep[x + NEXTW]!, pw = ep[x + PREVW]!;
    if (pw !== NONE) this.#setE(pw, NEXTW, nw);
    else this.#wHead[w] = nw;
    if (nw !== NONE) this.#setE(nw, PREVW, pw);
    this.#wCount[w]--;
    this.#fpXor(np, r, w, m);
    this.#digestXor(np, r, w, m);
    if (m !== TIER_GPU) this.#tiered--;
    const c = np[r + CNT]!;
    if (c > POPULAR) this.#setBits(this.#bitsOf.get(n)!, w, 0);
    else if (c === POPULAR) {
      // below POPULAR holders: the bitset goes (a node has one exactly while it has ≥ POPULAR holders)
      const b = this.#bitsOf.get(n)!;
      this.#bits.fill(0, b * 3 * this.#bitWords, (b + 1) * 3 * this.#bitWords);
      this.#freeBits.push(b);
      this.#bitsOf.delete(n);
    }
    ep[x + NEXTN] = this.#freeEntry;
    this.#freeEntry = e;
    this.#entries--;
    if (--np[r + CNT]! === 0) this.#freeNodeAt(n);
  }

  #entryOf(n: number, w: number): number {
    for (let e = this.#n(n, HEAD); e !== NONE; e = this.#e(e, NEXTN)) if ((this.#e(e, EW) & WM) === w) return e;
    return NONE;
  }

  // ---- events -------------------------------------------------------------------------------------

  store(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>, tier?: Tier): void {
    const p = parent === null ? 0n : BigInt.asUintN(64, parent);
    this.storePairs(this.#worker(worker), Number(p & 0xffffffffn), Number(p >> 32n), asPairs(hashes), 0, hashes.length, tierBit(tier));
  }

  /** w now holds n on the tiers of `bits` too (it does not yet hold all of them) */
  #hold(n: number, w: number, bits: number): void {
    // storing GPU with no tiered entry anywhere: w holds nothing of n (GPU-only fleets skip the holder walk)
    const e = bits === TIER_GPU && this.#tiered === 0 ? NONE : this.#entryOf(n, w);
    if (e === NONE) this.#addEntry(n, w, bits);
    else this.#setMask(e, (this.#e(e, EW) >>> MS) | bits);
  }

  /** record prev + 1 if it is live with key (lo, hi) (a chain indexed in order: its next block), else NONE */
  #following(prev: number, lo: number, hi: number): number {
    const c = prev + 1;
    if (c >= this.#nodeHigh) return NONE;
    const pg = this.#np[c >>> P]!, r = (c & PM) * N;
    return pg[r + KLO] === lo && pg[r + KHI] === hi && pg[r + CNT]! > 0 ? c : NONE;
  }

  /**
   * Read the home slots of blocks [from, from + 32) up front: independent loads the CPU overlaps, so the
   * table misses of a new chain cost about one miss instead of one each when #find comes to them.
   * Returns the first block not touched.
   */
  #touchSlots(pairs: Uint32Array, o: number, from: number, count: number): number {
    const slots = this.#slots, scale = this.#scale, end = Math.min(count, from + 32);
    let x = 0;
    for (let j = from; j < end; j++) x ^= slots[Math.floor((PrefixIndex.#mix(pairs[o + 2 * j]! | 0, pairs[o + 2 * j + 1]! | 0) >>> 0) * scale)]!;
    this.#sink ^= x;
    return end;
  }

  /**
   * Hot path: `count` hashes as (lo, hi) uint32 pairs from pairs[2·from]; parent (0, 0) = root.
   * Each block is first looked for in the record after the previous block's (a replica storing a chain that
   * is already indexed in order: sequential record reads, no hash-table probe), then in the table.
   */
  storePairs(w: number, pLo: number, pHi: number, pairs: Uint32Array, from: number, count: number, bits = TIER_GPU): void {
    const o = 2 * from;
    const now = this.#tick();
    const stamp = this.#maxEntries > 0; // only eviction reads the stamps (new nodes get one regardless)
    pLo |= 0;
    pHi |= 0;
    // the parent: usually the node this worker's previous store ended on (a chain continued batch by batch)
    let prev = this.#wLast[w]!;
    if (prev !== NONE) {
      const pg = this.#np[prev >>> P]!, r = (prev & PM) * N;
      if (pg[r + KLO] !== pLo || pg[r + KHI] !== pHi || pg[r + CNT] === 0) prev = NONE;
    }
    if (prev === NONE && (pLo | pHi) !== 0) prev = this.#find(pLo, pHi);
    let touched = 0;
    for (let i = 0; i < count; i++) {
      const lo = pairs[o + 2 * i]! | 0, hi = pairs[o + 2 * i + 1]! | 0;
      let n = prev === NONE ? NONE : this.#following(prev, lo, hi);
      if (n === NONE) {
        if (i >= touched && count - i > 2) touched = this.#touchSlots(pairs, o, i, count);
        n = this.#find(lo, hi);
        if (n === NONE) {
          n = this.#newNode(lo, hi, pLo, pHi, this.#hole);
          this.#addEntry(n, w, bits);
        } else {
          if (stamp) this.#up[n >>> P]![n & PM] = now;
          if (!this.#holdsAll(n, w, bits)) this.#hold(n, w, bits);
        }
      } else {
        if (stamp) this.#up[n >>> P]![n & PM] = now;
        if (!this.#holdsAll(n, w, bits)) this.#hold(n, w, bits);
      }
      prev = n;
      pLo = lo;
      pHi = hi;
    }
    this.#wLast[w] = prev;
    if (this.#maxEntries > 0 && this.#entries > this.#maxEntries) this.#evict();
  }

  remove(worker: string, hashes: ArrayLike<bigint>, tier?: Tier): void {
    const w = this.#ordinal.get(worker);
    if (w !== undefined) this.removePairs(w, asPairs(hashes), 0, hashes.length, tierBit(tier));
  }

  /**
   * Clear the tiers of `bits` of each block; an entry left with no tier is dropped. O(1) per block, plus a
   * walk of the holders of a popular prefix the worker does hold.
   */
  removePairs(w: number, pairs: Uint32Array, from: number, count: number, bits = TIER_GPU): void {
    const o = 2 * from;
    for (let i = 0; i < count; i++) {
      const n = this.#find(pairs[o + 2 * i]! | 0, pairs[o + 2 * i + 1]! | 0);
      if (n === NONE || !this.#holds(n, w, bits)) continue;
      const e = this.#entryOf(n, w);
      if (e === NONE) continue;
      const left = (this.#e(e, EW) >>> MS) & ~bits;
      if (left === 0) this.#removeEntry(e);
      else this.#setMask(e, left);
    }
  }

  clear(worker: string): void {
    const w = this.#ordinal.get(worker);
    if (w !== undefined) this.clearOrdinal(w);
  }

  /** O(the worker's blocks) */
  clearOrdinal(w: number): void {
    while (this.#wHead[w] !== NONE) this.#removeEntry(this.#wHead[w]!);
  }

  dropWorker(worker: string): void {
    const w = this.#ordinal.get(worker);
    if (w === undefined) return;
    this.clearOrdinal(w);
    this.#ordinal.delete(worker);
    this.#names[w] = undefined;
    this.#freeOrdinals.push(w);
  }

  // ---- eviction -----------------------------------------------------------------------------------

  #evict(): void {
    while (this.#entries > this.#maxEntries && this.#nodes > 0) {
      let victim = NONE, oldest = Infinity;
      for (let tries = 0, found = 0; found < SAMPLES && tries < SAMPLES * 8; tries++) {
        const n = this.#random() % this.#nodeHigh;
        if (this.#n(n, CNT) === 0) continue; // free
        found++;
        const used = this.#up[n >>> P]![n & PM]!;
        if (used < oldest) {
          oldest = used;
          victim = n;
        }
      }
      if (victim === NONE) for (let n = 0; victim === NONE; n++) if (this.#n(n, CNT) > 0) victim = n;
      const c = this.#n(victim, CNT);
      this.#evictedNodes++;
      this.#evictedEntries += c;
      // removing the last holder frees the node (its head field then links the free list): count first
      for (let k = c; k > 0; k--) this.#removeEntry(this.#n(victim, HEAD));
    }
  }

  // ---- match --------------------------------------------------------------------------------------

  match(hashes: ArrayLike<bigint>): Record<string, number> {
    const k = this.matchPairs(asPairs(hashes), hashes.length);
    const out: Record<string, number> = {};
    for (let i = 0; i < k; i++) out[this.#names[this.#resW[i]!]!] = this.#resD[i]!;
    return out;
  }

  matchTiers(hashes: ArrayLike<bigint>): Record<string, TierOverlap> {
    const k = this.matchPairs(asPairs(hashes), hashes.length, true);
    const out: Record<string, TierOverlap> = {};
    for (let i = 0; i < k; i++) {
      if (this.#resK[i]! > this.#resD[i]!) out[this.#names[this.#resW[i]!]!] = { gpu: this.#resD[i]!, cpu: this.#resC[i]!, disk: this.#resK[i]! };
    }
    return out;
  }

  /**
   * Hot path. Fills the result arrays (read with resultWorker / resultDepth, and resultCpu / resultDisk when
   * `tiered`) and returns their length: the workers holding the first block on GPU, or with `tiered` on any
   * tier (then a worker's GPU depth may be 0). While the index holds no tiered entry the tiered answer is the
   * GPU answer (cpu = disk = gpu), computed by the GPU walk.
   */
  matchPairs(pairs: Uint32Array, len: number, tiered = false): number {
    if (tiered) {
      if (this.#tiered > 0) return this.#matchTiered(pairs, len);
      const k = this.#matchGpu(pairs, len);
      this.#resC.set(this.#resD.subarray(0, k));
      this.#resK.set(this.#resD.subarray(0, k));
      return k;
    }
    return this.#matchGpu(pairs, len);
  }

  #matchGpu(pairs: Uint32Array, len: number): number {
    if (len === 0) return 0;
    this.#matchLookups++;
    const n0 = this.#find(pairs[0]! | 0, pairs[1]! | 0);
    if (n0 === NONE) return 0;
    const stampUsed = this.#maxEntries > 0; // only eviction reads the stamps: unbounded, skip the writes
    const now = stampUsed ? this.#tick() : 0;
    const np = this.#np, ep = this.#ep, up = this.#up, stamp = this.#stamp, resW = this.#resW;
    if (this.#genEnd.length < len + 2) this.#genEnd = new Int32Array(len + 2);
    const genEnd = this.#genEnd;
    // survivors of generation g carry stamp base+g; generation g ends at level genEnd[g] (= their depth)
    const base = this.#epoch;
    this.#epoch += len + 2;
    let g = 0, k = 0;
    let pg = np[n0 >>> P]!, r = (n0 & PM) * N;
    if (pg[r + CNT]! >= POPULAR) {
      const bits = this.#bitsOf.get(n0)!;
      // a popular first prefix (a system prompt): its holders from the bitset, not by chasing entry records
      // (its GPU holders: the first of its three bitsets)
      const b = this.#bits, words = this.#bitWords, at = bits * 3 * words;
      for (let j = 0; j < words; j++) {
        for (let v = b[at + j]!; v !== 0; ) {
          const low = v & -v;
          const w = (j << 5) + 31 - Math.clz32(low);
          stamp[w] = base;
          resW[k++] = w;
          v ^= low;
        }
      }
    } else {
      for (let e = pg[r + HEAD]!; e !== NONE; ) {
        const epg = ep[e >>> P]!, x = (e & PM) * E;
        const v = epg[x + EW]!;
        if (v & (TIER_GPU << MS)) {
          stamp[v & WM] = base;
          resW[k++] = v & WM;
        }
        e = epg[x + NEXTN]!;
      }
      if (k === 0) return 0; // held on other tiers only
    }
    if (stampUsed) up[n0 >>> P]![n0 & PM] = now;
    let alive = k, cnt = pg[r + CNT]!, fpLo = pg[r + FPLO]!, fpHi = pg[r + FPHI]!;
    let prevN = n0, i = 1;
    const nodeHigh = this.#nodeHigh;
    while (i < len) {
      // 1. the run: records prevN+1, prevN+2, … of the same page whose keys are the prompt's next hashes and
      //    whose holder set is unchanged. A chain stored together sits in consecutive records, so this is a
      //    sequential scan with no hash-table probe and no load to wait for before the next address.
      const pbase = prevN & ~PM, rp = np[prevN >>> P]!;
      let j = (prevN & PM) + 1;
      const jEnd = Math.min(PAGE, nodeHigh - pbase);
      for (; i < len && j < jEnd; j++, i++) {
        const x = j * N;
        if (rp[x + KLO] !== (pairs[2 * i]! | 0) || rp[x + KHI] !== (pairs[2 * i + 1]! | 0) || rp[x + CNT] !== cnt || rp[x + FPLO] !== fpLo || rp[x + FPHI] !== fpHi) break;
        if (stampUsed) up[prevN >>> P]![j] = now;
      }
      prevN = pbase + j - 1;
      if (i >= len) break;
      // 2. one step off the run: p_i is prevN+1 with another holder set, else in the table
      const lo = pairs[2 * i]! | 0, hi = pairs[2 * i + 1]! | 0;
      let n = prevN + 1;
      if (n < nodeHigh) {
        pg = np[n >>> P]!;
        r = (n & PM) * N;
        if (pg[r + KLO] !== lo || pg[r + KHI] !== hi || pg[r + CNT] === 0) n = NONE;
      } else n = NONE;
      if (n === NONE) {
        this.#matchLookups++;
        n = this.#find(lo, hi);
        if (n === NONE) break; // nobody holds p_i
        pg = np[n >>> P]!;
        r = (n & PM) * N;
      }
      if (stampUsed) up[n >>> P]![n & PM] = now;
      prevN = n;
      if (pg[r + CNT] !== cnt || pg[r + FPLO] !== fpLo || pg[r + FPHI] !== fpHi) {
        // the holder set changed: survivors are the current ones that hold p_i
        cnt = pg[r + CNT]!;
        fpLo = pg[r + FPLO]!;
        fpHi = pg[r + FPHI]!;
        const cur = base + g, next = cur + 1;
        let survived = 0;
        for (let e = pg[r + HEAD]!; e !== NONE; ) {
          const epg = ep[e >>> P]!, x = (e & PM) * E;
          const v = epg[x + EW]!, w = v & WM;
          if (stamp[w] === cur && (v & (TIER_GPU << MS)) !== 0) {
            stamp[w] = next;
            survived++;
          }
          e = epg[x + NEXTN]!;
        }
        genEnd[g++] = i;
        alive = survived;
        if (alive === 0) break;
      }
      i++;
    }
    if (alive > 0) genEnd[g] = i;
    const resD = this.#resD;
    for (let j = 0; j < k; j++) resD[j] = genEnd[stamp[resW[j]!]! - base]!;
    return k;
  }

  /**
   * The tiered walk: the GPU walk's skeleton (runs, then the table; the holder set is re-read only where
   * (count, fingerprint) changes, and the fingerprint covers masks, so an unchanged one means every worker's
   * mask is unchanged and so is its phase). A survivor is in one phase: PH_GPU (in its GPU prefix), PH_CPU (GPU
   * prefix ended; CPU and disk runs both going on), PH_DISK (only the CPU-or-disk run goes on). Where the holder
   * set changes, survivors' masks at that level are collected (#seen) and each survivor's phase advances;
   * a survivor whose runs all ended leaves the survivor list. Cost per change: holders + survivors.
   */
  #matchTiered(pairs: Uint32Array, len: number): number {
    if (len === 0) return 0;
    this.#matchLookups++;
    const n0 = this.#find(pairs[0]! | 0, pairs[1]! | 0);
    if (n0 === NONE) return 0;
    const stampUsed = this.#maxEntries > 0;
    const now = stampUsed ? this.#tick() : 0;
    const np = this.#np, ep = this.#ep, up = this.#up, stamp = this.#stamp, seen = this.#seen;
    const resW = this.#resW, resD = this.#resD, resC = this.#resC, resK = this.#resK, resP = this.#resP;
    const live = this.#live;
    const tag = this.#epoch++;
    let k = 0;
    let pg = np[n0 >>> P]!, r = (n0 & PM) * N;
    // level 0: every holder on any tier starts, in the phase its mask puts it
    for (let e = pg[r + HEAD]!; e !== NONE; ) {
      const epg = ep[e >>> P]!, x = (e & PM) * E;
      const v = epg[x + EW]!, w = v & WM, m = v >>> MS;
      stamp[w] = tag;
      resW[k] = w;
      resD[k] = 0;
      if (m & TIER_GPU) resP[k] = PH_GPU;
      else if (m & TIER_CPU) resP[k] = PH_CPU;
      else {
        resC[k] = 0;
        resP[k] = PH_DISK;
      }
      live[k] = k;
      k++;
      e = epg[x + NEXTN]!;
    }
    if (stampUsed) up[n0 >>> P]![n0 & PM] = now;
    let alive = k, cnt = pg[r + CNT]!, fpLo = pg[r + FPLO]!, fpHi = pg[r + FPHI]!;
    let prevN = n0, i = 1;
    const nodeHigh = this.#nodeHigh;
    while (i < len) {
      const pbase = prevN & ~PM, rp = np[prevN >>> P]!;
      let j = (prevN & PM) + 1;
      const jEnd = Math.min(PAGE, nodeHigh - pbase);
      for (; i < len && j < jEnd; j++, i++) {
        const x = j * N;
        if (rp[x + KLO] !== (pairs[2 * i]! | 0) || rp[x + KHI] !== (pairs[2 * i + 1]! | 0) || rp[x + CNT] !== cnt || rp[x + FPLO] !== fpLo || rp[x + FPHI] !== fpHi) break;
        if (stampUsed) up[prevN >>> P]![j] = now;
      }
      prevN = pbase + j - 1;
      if (i >= len) break;
      const lo = pairs[2 * i]! | 0, hi = pairs[2 * i + 1]! | 0;
      let n = prevN + 1;
      if (n < nodeHigh) {
        pg = np[n >>> P]!;
        r = (n & PM) * N;
        if (pg[r + KLO] !== lo || pg[r + KHI] !== hi || pg[r + CNT] === 0) n = NONE;
      } else n = NONE;
      if (n === NONE) {
        this.#matchLookups++;
        n = this.#find(lo, hi);
        if (n === NONE) break; // nobody holds p_i: every run ends here
        pg = np[n >>> P]!;
        r = (n & PM) * N;
      }
      if (stampUsed) up[n >>> P]![n & PM] = now;
      prevN = n;
      if (pg[r + CNT] !== cnt || pg[r + FPLO] !== fpLo || pg[r + FPHI] !== fpHi) {
        cnt = pg[r + CNT]!;
        fpLo = pg[r + FPLO]!;
        fpHi = pg[r + FPHI]!;
        for (let e = pg[r + HEAD]!; e !== NONE; ) {
          const epg = ep[e >>> P]!, y = (e & PM) * E;
          const v = epg[y + EW]!, w = v & WM;
          if (stamp[w] === tag) seen[w] = (v >>> MS) | 8;
          e = epg[y + NEXTN]!;
        }
        let kept = 0;
        for (let a = 0; a < alive; a++) {
          const j = live[a]!, w = resW[j]!, m = seen[w]! & ALL_TIERS;
          seen[w] = 0;
          let ph = resP[j]!;
          if (ph === PH_GPU && (m & TIER_GPU) === 0) {
            resD[j] = i;
            ph = PH_CPU;
          }
          if (ph === PH_CPU && (m & TIER_CPU) === 0) {
            resC[j] = i;
            ph = PH_DISK;
          }
          if (ph === PH_DISK && (m & (TIER_CPU | TIER_DISK)) === 0) {
            resK[j] = i;
            stamp[w] = 0;
            continue;
          }
          resP[j] = ph;
          live[kept++] = j;
        }
        alive = kept;
        if (alive === 0) break;
      }
      i++;
    }
    // survivors' open runs end where the walk stopped
    for (let a = 0; a < alive; a++) {
      const j = live[a]!;
      const ph = resP[j]!;
      if (ph === PH_GPU) resD[j] = i;
      if (ph !== PH_DISK) resC[j] = i;
      resK[j] = i;
      stamp[resW[j]!] = 0;
    }
    return k;
  }

  resultCpu(i: number): number {
    return this.#resC[i]!;
  }

  resultDisk(i: number): number {
    return this.#resK[i]!;
  }

  resultWorker(i: number): string {
    return this.#names[this.#resW[i]!]!;
  }

  resultDepth(i: number): number {
    return this.#resD[i]!;
  }

  // ---- inspection, dump, load ---------------------------------------------------------------------

  workers(): string[] {
    return [...this.#ordinal.keys()];
  }

  digest(worker: string): Digest {
    const w = this.#ordinal.get(worker);
    if (w === undefined) return { count: 0, xor: 0n };
    return { count: this.#wCount[w]!, xor: (BigInt(this.#wXor[2 * w + 1]! >>> 0) << 32n) | BigInt(this.#wXor[2 * w]! >>> 0) };
  }

  dumpWorker(worker: string): WorkerDump {
    const w = this.#ordinal.get(worker);
    if (w === undefined) return { worker, blocks: new BigUint64Array(0) };
    const blocks = new BigUint64Array(this.#wCount[w]! * 2);
    const tiers = new Uint8Array(this.#wCount[w]!);
    const v = new Uint32Array(blocks.buffer);
    let j = 0, b = 0, tiered = false;
    for (let e = this.#wHead[w]!; e !== NONE; e = this.#e(e, NEXTW)) {
      const n = this.#e(e, ENODE), m = this.#e(e, EW) >>> MS;
      tiers[b++] = m;
      if (m !== TIER_GPU) tiered = true;
      this.#parentOf(n);
      v[j++] = this.#pOut[0]!;
      v[j++] = this.#pOut[1]!;
      v[j++] = this.#n(n, KLO);
      v[j++] = this.#n(n, KHI);
    }
    // GPU-only workers dump as before tiers (no mask array)
    return tiered ? { worker, blocks, tiers } : { worker, blocks };
  }

  /** replace one worker's block set; mask bytes outside 1..7 are a RangeError (nothing changed then) */
  loadWorker(dump: WorkerDump): void {
    const t = dump.tiers;
    if (t) {
      if (t.length * 2 !== dump.blocks.length) throw new RangeError(`dump of ${dump.worker}: ${t.length} tier masks for ${dump.blocks.length / 2} blocks`);
      for (let i = 0; i < t.length; i++) if (t[i]! === 0 || t[i]! > ALL_TIERS) throw new RangeError(`dump of ${dump.worker}: tier mask ${t[i]} of block ${i} is not in 1..7`);
    }
    const w = this.#worker(dump.worker);
    this.clearOrdinal(w);
    const v = new Uint32Array(dump.blocks.buffer, dump.blocks.byteOffset, dump.blocks.length * 2);
    // entries are pushed at the head of the worker list: load in reverse so dump → load keeps the order
    for (let j = v.length - 4; j >= 0; j -= 4) this.storePairs(w, v[j]!, v[j + 1]!, v, (j + 2) >>> 1, 1, t ? t[j >>> 2]! : TIER_GPU);
  }

  dump(): IndexDump {
    return { workers: this.workers().map((w) => this.dumpWorker(w)) };
  }

  load(dump: IndexDump): void {
    for (const w of this.workers()) this.dropWorker(w);
    for (const d of dump.workers) this.loadWorker(d);
  }
}
