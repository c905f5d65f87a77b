/**
 * PrefixIndex: the global prefix → worker index. Pure (no I/O), single-threaded, typed arrays only.
 *
 * Representation. A prefix hash p_i names a whole prefix (DESIGN.md §2), so the radix tree is stored flat:
 * one *node* per prefix in an open-addressing hash table keyed by the 64-bit hash (split into two uint32,
 * no BigInt on the hot path), with the parent hash kept on the node. Children need no pointers: the child of
 * node p along block b is found by hashing (p, b), which the caller already did. One index serves every
 * model, LoRA and block size because the root p_{-1} is mixed into every hash.
 *
 *   node  n: one 32-byte record (two per cache line, so a lookup costs ~2 cache misses: slot + record):
 *              [keyLo, keyHi, fpLo, fpHi, holderCount, holderHead, lastUsed, bitsetId]
 *            + parent hash (cold, read only by dumps) + 1.4–2.9 four-byte hash slots      ≈ 48 B
 *            Holders of a prefix held by ≥ 8 workers are also kept in a worker bitset (bitsetId), so
 *            "does w already hold it?" on store stays O(1) for shared system prompts.
 *   Records live in fixed pages of 16,384: growth adds a page and never copies (copying grown arrays
 *   was a third of ingest time); only the 4-byte slot table is rehashed when it doubles.
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
 * Memory bound. `maxEntries` caps (block, worker) entries. Beyond it, whole prefixes are evicted by sampled
 * LRU (as Redis does): every store and match stamps the prefixes it touches with a logical clock; eviction
 * samples 16 live prefixes and drops the least recently used, until under the cap. Stamping is one write to a
 * cache line the lookup already loaded; an intrusive LRU list would cost 8 B per prefix and ~8 random writes
 * per touched prefix, i.e. double the match time. Evictions are counted.
 */
import type { Digest, IndexCore, IndexDump, WorkerDump } from './core.js';

const NONE = -1;
const MAX_WORKERS = 0xffff;
const SAMPLES = 16;

// node and entry records live in fixed-size pages: growing adds a page, nothing is ever copied
const P = 14;
const PAGE = 1 << P;
const PM = PAGE - 1;

// node record fields
const N = 8;
const KLO = 0, KHI = 1, FPLO = 2, FPHI = 3, CNT = 4, HEAD = 5, USED = 6, BITS = 7;
// entry record fields
const E = 6;
const ENODE = 0, EW = 1, NEXTN = 2, PREVN = 3, NEXTW = 4, PREVW = 5;
/** a prefix with this many holders gets a worker bitset, so "does w hold it?" stays O(1) on store */
const POPULAR = 8;
/** prefixes looked up together in match (independent loads overlap in the CPU instead of queueing) */
const CHUNK = 32;

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

export class PrefixIndex implements IndexCore {
  // ---- nodes: pages of PAGE records (keys stored as int32: compare with `x | 0`) ----
  readonly #np: Int32Array[] = [];
  /** parent hash per node, cold (dumps only) */
  readonly #pp: Int32Array[] = [];
  #nodes = 0;
  /** node ids [0, #nodeHigh) have been handed out at least once */
  #nodeHigh = 0;
  #freeNode = NONE;
  // ---- hash table: slot → node id, load ≤ 0.7 ----
  #slots = new Int32Array(16).fill(NONE);
  #mask = 15;
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
  // ---- match scratch ----
  #stamp = new Float64Array(64);
  #epoch = 1;
  #genEnd = new Int32Array(1024);
  #resW = new Int32Array(64);
  #resD = new Int32Array(64);
  #cand = new Int32Array(CHUNK);
  // ---- eviction ----
  readonly #maxEntries: number;
  #clock = 1;
  #evictedNodes = 0;
  #evictedEntries = 0;
  #rng = 0x9e3779b9;
  // ---- holder bitsets of popular prefixes: #bitWords int32 words each ----
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
    const pages = this.#np.length * PAGE * (N + 2) * 4 + this.#ep.length * PAGE * E * 4;
    return {
      nodes: this.#nodes,
      entries: this.#entries,
      workers: this.#ordinal.size,
      evictedNodes: this.#evictedNodes,
      evictedEntries: this.#evictedEntries,
      arrayBytes: pages + this.#slots.byteLength + this.#bits.byteLength,
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

  #home(lo: number, hi: number): number {
    return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> 0) & this.#mask;
  }

  /** lo, hi as int32 */
  #find(lo: number, hi: number): number {
    const slots = this.#slots, np = this.#np, mask = this.#mask;
    let s = this.#home(lo, hi);
    for (;;) {
      const n = slots[s]!;
      if (n === NONE) return NONE;
      const pg = np[n >>> P]!, r = (n & PM) * N;
      if (pg[r + KLO] === lo && pg[r + KHI] === hi) return n;
      s = (s + 1) & mask;
    }
  }

  #insertSlot(n: number): void {
    const slots = this.#slots, mask = this.#mask;
    let s = this.#home(this.#n(n, KLO), this.#n(n, KHI));
    while (slots[s] !== NONE) s = (s + 1) & mask;
    slots[s] = n;
  }

  /** backward-shift deletion: no tombstones, probe chains stay short */
  #deleteSlot(n: number): void {
    const slots = this.#slots, mask = this.#mask;
    let i = this.#home(this.#n(n, KLO), this.#n(n, KHI));
    while (slots[i] !== n) i = (i + 1) & mask;
    slots[i] = NONE;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const m = slots[j]!;
      if (m === NONE) return;
      const k = this.#home(this.#n(m, KLO), this.#n(m, KHI));
      // move m back into the hole at i unless its home lies cyclically in (i, j]
      const stays = i <= j ? k > i && k <= j : k > i || k <= j;
      if (!stays) {
        slots[i] = m;
        slots[j] = NONE;
        i = j;
      }
    }
  }

  /** double the slot table when the next node would push the load over 0.7 */
  #reserveSlot(): void {
    if ((this.#nodes + 1) <= this.#slots.length * 0.7) return;
    const size = this.#slots.length * 2;
    this.#slots = new Int32Array(size).fill(NONE);
    this.#mask = size - 1;
    for (let n = 0; n < this.#nodeHigh; n++) if (this.#n(n, CNT) > 0) this.#insertSlot(n);
  }

  #newNode(lo: number, hi: number, pLo: number, pHi: number): number {
    this.#reserveSlot();
    let n: number;
    if (this.#freeNode !== NONE) {
      n = this.#freeNode;
      this.#freeNode = this.#n(n, HEAD);
    } else {
      n = this.#nodeHigh++;
      if ((n >>> P) === this.#np.length) {
        this.#np.push(new Int32Array(PAGE * N));
        this.#pp.push(new Int32Array(PAGE * 2));
      }
    }
    const pg = this.#np[n >>> P]!, r = (n & PM) * N;
    pg[r + KLO] = lo;
    pg[r + KHI] = hi;
    pg[r + FPLO] = 0;
    pg[r + FPHI] = 0;
    pg[r + CNT] = 0;
    pg[r + HEAD] = NONE;
    pg[r + USED] = this.#clock;
    pg[r + BITS] = NONE;
    const pp = this.#pp[n >>> P]!;
    pp[(n & PM) * 2] = pLo;
    pp[(n & PM) * 2 + 1] = pHi;
    this.#insertSlot(n);
    this.#nodes++;
    return n;
  }

  #freeNodeAt(n: number): void {
    const b = this.#n(n, BITS);
    if (b !== NONE) {
      this.#bits.fill(0, b * this.#bitWords, (b + 1) * this.#bitWords);
      this.#freeBits.push(b);
    }
    this.#deleteSlot(n);
    this.#setN(n, HEAD, this.#freeNode);
    this.#freeNode = n;
    this.#nodes--;
  }

  /** advance the logical clock once per operation; halve every stamp before int32 overflow */
  #tick(): number {
    if (this.#clock >= 0x7ffffffe) {
      for (let n = 0; n < this.#nodeHigh; n++) this.#setN(n, USED, this.#n(n, USED) >>> 1);
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
      this.#stamp = grow(this.#stamp, cap);
      this.#resW = grow(this.#resW, cap);
      this.#resD = grow(this.#resD, cap);
      this.#widenBits(cap);
    }
    this.#names[w] = name;
    this.#ordinal.set(name, w);
    this.#wHead[w] = NONE;
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

  /** does w hold n? O(1) for popular prefixes, else a walk of < POPULAR holders */
  #holds(n: number, w: number): boolean {
    const b = this.#n(n, BITS);
    if (b !== NONE) return (this.#bits[b * this.#bitWords + (w >>> 5)]! & (1 << (w & 31))) !== 0;
    return this.#entryOf(n, w) !== NONE;
  }

  #makeBits(n: number): void {
    let b = this.#freeBits.pop();
    if (b === undefined) {
      b = this.#bitHigh++;
      if ((b + 1) * this.#bitWords > this.#bits.length) this.#bits = grow(this.#bits, Math.max(64, this.#bits.length * 2, (b + 1) * this.#bitWords));
    }
    this.#setN(n, BITS, b);
    const base = b * this.#bitWords;
    for (let e = this.#n(n, HEAD); e !== NONE; e = this.#e(e, NEXTN)) {
      const w = this.#e(e, EW);
      this.#bits[base + (w >>> 5)] |= 1 << (w & 31);
    }
  }

  /** worker ordinals outgrew the bitset width: re-lay every bitset */
  #widenBits(workerCap: number): void {
    const words = Math.ceil(workerCap / 32);
    if (words <= this.#bitWords) return;
    const old = this.#bits, ow = this.#bitWords;
    this.#bits = new Int32Array(Math.max(64, this.#bitHigh * words * 2));
    for (let b = 0; b < this.#bitHigh; b++) this.#bits.set(old.subarray(b * ow, (b + 1) * ow), b * words);
    this.#bitWords = words;
  }

  // ---- entries ------------------------------------------------------------------------------------

  #addEntry(n: number, w: number): void {
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
    ep[x + EW] = w;
    const h = np[r + HEAD]!;
    ep[x + NEXTN] = h;
    ep[x + PREVN] = NONE;
    if (h !== NONE) this.#setE(h, PREVN, e);
    np[r + HEAD] = e;
    const c = ++np[r + CNT]!;
    np[r + FPLO] ^= this.#wKey[2 * w]!;
    np[r + FPHI] ^= this.#wKey[2 * w + 1]!;
    if (np[r + BITS] !== NONE) this.#bits[np[r + BITS]! * this.#bitWords + (w >>> 5)] |= 1 << (w & 31);
    else if (c === POPULAR) this.#makeBits(n);
    const wh = this.#wHead[w]!;
    ep[x + NEXTW] = wh;
    ep[x + PREVW] = NONE;
    if (wh !== NONE) this.#setE(wh, PREVW, e);
    this.#wHead[w] = e;
    this.#wCount[w]++;
    this.#wXor[2 * w] ^= np[r + KLO]!;
    this.#wXor[2 * w + 1] ^= np[r + KHI]!;
    this.#entries++;
  }

  /** unlink entry e everywhere; frees its node when it was the last holder */
  #removeEntry(e: number): void {
    const ep = this.#ep[e >>> P]!, x = (e & PM) * E;
    const n = ep[x + ENODE]!, w = ep[x + EW]!;
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
    this.#wXor[2 * w] ^= np[r + KLO]!;
    this.#wXor[2 * w + 1] ^= np[r + KHI]!;
    np[r + FPLO] ^= this.#wKey[2 * w]!;
    np[r + FPHI] ^= this.#wKey[2 * w + 1]!;
    if (np[r + BITS] !== NONE) this.#bits[np[r + BITS]! * this.#bitWords + (w >>> 5)] &= ~(1 << (w & 31));
    ep[x + NEXTN] = this.#freeEntry;
    this.#freeEntry = e;
    this.#entries--;
    if (--np[r + CNT]! === 0) this.#freeNodeAt(n);
  }

  #entryOf(n: number, w: number): number {
    for (let e = this.#n(n, HEAD); e !== NONE; e = this.#e(e, NEXTN)) if (this.#e(e, EW) === w) return e;
    return NONE;
  }

  // ---- events -------------------------------------------------------------------------------------

  store(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>): void {
    const p = parent === null ? 0n : BigInt.asUintN(64, parent);
    this.storePairs(this.#worker(worker), Number(p & 0xffffffffn), Number(p >> 32n), asPairs(hashes), hashes.length);
  }

  /** hot path: hashes as (lo, hi) uint32 pairs; parent (0, 0) = root */
  storePairs(w: number, pLo: number, pHi: number, pairs: Uint32Array, count: number): void {
    const now = this.#tick();
    pLo |= 0;
    pHi |= 0;
    for (let i = 0; i < count; i++) {
      const lo = pairs[2 * i]! | 0, hi = pairs[2 * i + 1]! | 0;
      let n = this.#find(lo, hi);
      if (n === NONE) {
        n = this.#newNode(lo, hi, pLo, pHi);
        this.#addEntry(n, w);
      } else {
        this.#setN(n, USED, now);
        if (!this.#holds(n, w)) this.#addEntry(n, w);
      }
      pLo = lo;
      pHi = hi;
    }
    if (this.#maxEntries > 0 && this.#entries > this.#maxEntries) this.#evict();
  }

  remove(worker: string, hashes: ArrayLike<bigint>): void {
    const w = this.#ordinal.get(worker);
    if (w !== undefined) this.removePairs(w, asPairs(hashes), hashes.length);
  }

  /** O(1) per block, plus a walk of the holders of a popular prefix the worker does hold */
  removePairs(w: number, pairs: Uint32Array, count: number): void {
    for (let i = 0; i < count; i++) {
      const n = this.#find(pairs[2 * i]! | 0, pairs[2 * i + 1]! | 0);
      if (n === NONE || !this.#holds(n, w)) continue;
      const e = this.#entryOf(n, w);
      if (e !== NONE) this.#removeEntry(e);
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
        if (this.#n(n, USED) < oldest) {
          oldest = this.#n(n, USED);
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

  /**
   * Hot path. Fills the result arrays (read with resultWorker / resultDepth) and returns how many workers
   * hold at least the first block.
   */
  matchPairs(pairs: Uint32Array, len: number): number {
    if (len === 0) return 0;
    const n0 = this.#find(pairs[0]! | 0, pairs[1]! | 0);
    if (n0 === NONE) return 0;
    const now = this.#tick();
    const np = this.#np, ep = this.#ep, stamp = this.#stamp, resW = this.#resW;
    if (this.#genEnd.length < len + 2) this.#genEnd = new Int32Array(len + 2);
    const genEnd = this.#genEnd;
    // survivors of generation g carry stamp base+g; generation g ends at level genEnd[g] (= their depth)
    const base = this.#epoch;
    this.#epoch += len + 2;
    let g = 0, k = 0;
    for (let e = this.#n(n0, HEAD); e !== NONE; ) {
      const pg = ep[e >>> P]!, x = (e & PM) * E;
      const w = pg[x + EW]!;
      stamp[w] = base;
      resW[k++] = w;
      e = pg[x + NEXTN]!;
    }
    this.#setN(n0, USED, now);
    let alive = k, prevPg = np[n0 >>> P]!, prev = (n0 & PM) * N, i = 1;
    const slots = this.#slots, cand = this.#cand;
    walk: for (let c = 1; c < len; c += CHUNK) {
      const end = Math.min(len, c + CHUNK);
      // pass 1: home slots of the whole chunk (independent loads, overlapped by the CPU)
      for (let j = c; j < end; j++) cand[j - c] = slots[this.#home(pairs[2 * j]! | 0, pairs[2 * j + 1]! | 0)]!;
      // pass 2: resolve the candidates (record loads, again independent); NONE = not indexed
      for (let j = c; j < end; j++) {
        const n = cand[j - c]!;
        if (n === NONE) continue;
        const lo = pairs[2 * j]! | 0, hi = pairs[2 * j + 1]! | 0;
        const pg = np[n >>> P]!, r = (n & PM) * N;
        if (pg[r + KLO] !== lo || pg[r + KHI] !== hi) cand[j - c] = this.#find(lo, hi);
      }
      // pass 3: the walk, in order
      for (; i < end; i++) {
        const n = cand[i - c]!;
        if (n === NONE) break walk;
        const pg = np[n >>> P]!, r = (n & PM) * N;
        pg[r + USED] = now;
        if (pg[r + CNT] === prevPg[prev + CNT] && pg[r + FPLO] === prevPg[prev + FPLO] && pg[r + FPHI] === prevPg[prev + FPHI]) {
          prevPg = pg;
          prev = r;
          continue; // same holder set: survivors unchanged
        }
        const cur = base + g, next = cur + 1;
        let survived = 0;
        for (let e = pg[r + HEAD]!; e !== NONE; ) {
          const epg = ep[e >>> P]!, x = (e & PM) * E;
          const w = epg[x + EW]!;
          if (stamp[w] === cur) {
            stamp[w] = next;
            survived++;
          }
          e = epg[x + NEXTN]!;
        }
        genEnd[g++] = i;
        alive = survived;
        prevPg = pg;
        prev = r;
        if (alive === 0) break walk;
      }
    }
    if (alive > 0) genEnd[g] = i;
    const resD = this.#resD;
    for (let j = 0; j < k; j++) resD[j] = genEnd[stamp[resW[j]!]! - base]!;
    return k;
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
    const v = new Uint32Array(blocks.buffer);
    let j = 0;
    for (let e = this.#wHead[w]!; e !== NONE; e = this.#e(e, NEXTW)) {
      const n = this.#e(e, ENODE);
      const pp = this.#pp[n >>> P]!;
      v[j++] = pp[(n & PM) * 2]!;
      v[j++] = pp[(n & PM) * 2 + 1]!;
      v[j++] = this.#n(n, KLO);
      v[j++] = this.#n(n, KHI);
    }
    return { worker, blocks };
  }

  loadWorker(dump: WorkerDump): void {
    const w = this.#worker(dump.worker);
    this.clearOrdinal(w);
    const v = new Uint32Array(dump.blocks.buffer, dump.blocks.byteOffset, dump.blocks.length * 2);
    // entries are pushed at the head of the worker list: load in reverse so dump → load keeps the order
    for (let j = v.length - 4; j >= 0; j -= 4) this.storePairs(w, v[j]!, v[j + 1]!, v.subarray(j + 2, j + 4), 1);
  }

  dump(): IndexDump {
    return { workers: this.workers().map((w) => this.dumpWorker(w)) };
  }

  load(dump: IndexDump): void {
    for (const w of this.workers()) this.dropWorker(w);
    for (const d of dump.workers) this.loadWorker(d);
  }
}
