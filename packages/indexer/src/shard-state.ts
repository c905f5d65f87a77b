/**
 * ShardState: everything one index shard owns — a PrefixIndex, a sequencer per worker, counters.
 * Pure (bytes in, data out). It runs either inline (LocalShard) or inside a worker thread (shard-thread.ts);
 * both drive it with the same ShardRequest messages, so it is the single definition of shard behaviour.
 */
import { DecodeError, type EventBatch, type KvEvent, type TierOverlap, type WorkerDigest } from '@kvgate/protocol';
import { tierBit } from './core.js';
import { PrefixIndex, type PrefixIndexStats } from './radix.js';
import { WorkerSequencer } from './sequencer.js';
import { CLEARED, DecodedBatch, REMOVED, STORED, decodeBatchInto } from './wire.js';

export interface ShardOptions {
  /** cap on (block, worker) entries in this shard; 0 = unbounded */
  maxEntries?: number;
  /** reorder window per worker, in batches (default 64) */
  reorderWindow?: number;
}

export interface ShardCounters {
  batches: number;
  storedBlocks: number;
  removedBlocks: number;
  clears: number;
  decodeErrors: number;
  duplicates: number;
  gaps: number;
  restarts: number;
}

/** One worker's block set as it travels in snapshots and repairs. */
export interface WorkerState {
  worker: string;
  seq: number;
  /** [parent, hash] pairs, little-endian u64 */
  blocks: BigUint64Array;
  /** tier mask per block (1 gpu, 2 cpu, 4 disk); absent = every block on GPU only */
  tiers?: Uint8Array;
}

/** A shard's figures: its counters plus its PrefixIndex's stats. */
export interface ShardStats extends ShardCounters, PrefixIndexStats {}

/** Messages a shard understands (postMessage-able: bigints, typed arrays, plain objects). */
export type ShardRequest =
  | { op: 'ingest'; data: Uint8Array }
  | { op: 'match'; hashes: BigUint64Array }
  | { op: 'digests' }
  | { op: 'dumpWorker'; worker: string }
  | { op: 'installWorker'; state: WorkerState; onlyIfNotBehind?: boolean }
  | { op: 'dropWorker'; worker: string }
  | { op: 'inject'; worker: string; events: KvEvent[] }
  | { op: 'flushGaps' }
  | { op: 'snapshot' }
  | { op: 'stats' }
  | { op: 'reserve'; blocks: number };

/**
 * One shard's match answer: GPU depth per worker (0 = holds the first block on a lower tier only), and, for
 * the workers that reach further through lower tiers, their cumulative cpu and disk depths (`tiered`).
 */
export type MatchPart = [workers: string[], depths: number[], tiered?: { worker: string; tiers: TierOverlap }[]];

export class ShardState {
  readonly #index: PrefixIndex;
  readonly #seqs = new Map<string, WorkerSequencer<DecodedBatch>>();
  readonly #window: number;
  readonly #decoded = new DecodedBatch();
  readonly #counters = { batches: 0, storedBlocks: 0, removedBlocks: 0, clears: 0, decodeErrors: 0 };
  /**
   * workers whose sequence skipped a gap since the last `flushGaps()`, or whose first batch here came far into
   * their sequence without a clear (unknown history): the indexer asks their shims to resync
   */
  readonly #gapped = new Set<string>();

  constructor(opts: ShardOptions = {}) {
    this.#index = new PrefixIndex({ maxEntries: opts.maxEntries ?? 0 });
    this.#window = opts.reorderWindow ?? 64;
  }

  /** Dispatch one message; the reply is whatever the op returns (undefined for fire-and-forget ops). */
  handle(req: ShardRequest): unknown {
    switch (req.op) {
      case 'ingest':
        return this.ingest(req.data);
      case 'match':
        return this.match(req.hashes);
      case 'digests':
        return this.digests();
      case 'dumpWorker':
        return this.dumpWorker(req.worker);
      case 'installWorker':
        return this.installWorker(req.state, req.onlyIfNotBehind);
      case 'dropWorker':
        return this.dropWorker(req.worker);
      case 'inject':
        return this.inject(req.worker, req.events);
      case 'flushGaps':
        return this.flushGaps();
      case 'snapshot':
        return this.snapshot();
      case 'stats':
        return this.stats();
      case 'reserve':
        return this.reserve(req.blocks);
    }
  }

  #sequencer(worker: string): WorkerSequencer<DecodedBatch> {
    let s = this.#seqs.get(worker);
    if (!s) this.#seqs.set(worker, (s = new WorkerSequencer<DecodedBatch>(this.#window)));
    return s;
  }

  /** Decode one `…events.<hash bits>.<worker>` payload and apply it in sequence. Bad bytes are counted, never thrown. */
  ingest(data: Uint8Array): boolean {
    const b = this.#decoded; // refilled per payload: copied (clone) only if the batch must wait
    try {
      decodeBatchInto(data, b);
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      this.#counters.decodeErrors++;
      return false;
    }
    this.offer(b);
    return true;
  }

  /** Apply a decoded batch in sequence (a batch that must wait for its predecessors is cloned). */
  offer(b: DecodedBatch): void {
    const s = this.#sequencer(b.worker);
    const first = s.last === null;
    const clears = b.count > 0 && b.type[0] === CLEARED;
    // nothing before a clear matters (a shim's resync, its restart clear): do not wait for it, it is no gap
    if (clears && !first) s.skipTo(b.seq);
    if (s.takeInOrder(b.seq)) {
      this.#apply(b);
      // the first batch of a worker without state, far into its sequence: its history is unknown here
      if (first && b.seq > 0 && !clears) this.#gapped.add(b.worker);
    } else {
      const gaps = s.stats.gaps;
      for (const ready of s.offer(b.seq, b.clone())) this.#apply(ready);
      if (s.stats.gaps !== gaps) this.#gapped.add(b.worker); // the reorder window overflowed: a gap was skipped
    }
  }

  /** Apply an already-decoded EventBatch (in-process producers, tests). */
  offerBatch(batch: EventBatch): void {
    this.offer(fromEventBatch(batch));
  }

  #apply(b: DecodedBatch): void {
    const ix = this.#index;
    const w = ix.ordinal(b.worker);
    this.#counters.batches++;
    for (let i = 0; i < b.count; i++) {
      const t = b.type[i]!, len = b.len[i]!;
      if (t === STORED) {
        ix.storePairs(w, b.parentLo[i]!, b.parentHi[i]!, b.pairs, b.start[i]!, len, b.tier[i]!);
        this.#counters.storedBlocks += len;
      } else if (t === REMOVED) {
        ix.removePairs(w, b.pairs, b.start[i]!, len, b.tier[i]!);
        this.#counters.removedBlocks += len;
      } else if (t === CLEARED) {
        ix.clearOrdinal(w);
        this.#counters.clears++;
      }
    }
  }

  match(hashes: BigUint64Array): MatchPart {
    const ix = this.#index;
    // the tiered walk is the GPU walk while no entry is on a lower tier (PrefixIndex.matchPairs)
    const k = ix.matchPairs(new Uint32Array(hashes.buffer, hashes.byteOffset, hashes.length * 2), hashes.length, true);
    const workers = new Array<string>(k), depths = new Array<number>(k);
    let tiered: { worker: string; tiers: TierOverlap }[] | undefined;
    for (let i = 0; i < k; i++) {
      const w = ix.resultWorker(i), gpu = ix.resultDepth(i), disk = ix.resultDisk(i);
      workers[i] = w;
      depths[i] = gpu;
      if (disk > gpu) (tiered ??= []).push({ worker: w, tiers: { gpu, cpu: ix.resultCpu(i), disk } });
    }
    return tiered ? [workers, depths, tiered] : [workers, depths];
  }

  /** seq = last applied batch seq (-1 before any) */
  digests(): Record<string, WorkerDigest> {
    const out: Record<string, WorkerDigest> = {};
    for (const w of this.#index.workers()) {
      const d = this.#index.digest(w);
      out[w] = { seq: this.#seqs.get(w)?.last ?? -1, count: d.count, xor: d.xor };
    }
    return out;
  }

  dumpWorker(worker: string): WorkerState {
    const d = this.#index.dumpWorker(worker);
    const st: WorkerState = { worker, seq: this.#seqs.get(worker)?.last ?? -1, blocks: d.blocks };
    if (d.tiers) st.tiers = d.tiers;
    return st;
  }

  /**
   * Replace one worker's block set and sequence position (peer repair, snapshot load). With
   * `onlyIfNotBehind`, a state older than what this shard already applied is refused (returns false).
   */
  installWorker(s: WorkerState, onlyIfNotBehind = false): boolean {
    const last = this.#seqs.get(s.worker)?.last ?? null;
    if (onlyIfNotBehind && last !== null && s.seq < last) return false;
    this.#index.loadWorker(s.tiers ? { worker: s.worker, blocks: s.blocks, tiers: s.tiers } : { worker: s.worker, blocks: s.blocks });
    this.#sequencer(s.worker).reset(s.seq < 0 ? null : s.seq);
    return true;
  }

  /** size the index for the KV capacity (blocks) of this shard's workers; see PrefixIndex.reserve */
  reserve(blocks: number): void {
    this.#index.reserve(blocks);
  }

  dropWorker(worker: string): void {
    this.#index.dropWorker(worker);
    this.#seqs.delete(worker);
    this.#gapped.delete(worker);
  }

  /** Debug / tests: apply events outside the sequence (used to inject divergence). */
  inject(worker: string, events: KvEvent[]): void {
    for (const ev of events) {
      if (ev.t === 'stored') this.#index.store(worker, ev.parent, ev.hashes, ev.tier);
      else if (ev.t === 'removed') this.#index.remove(worker, ev.hashes, ev.tier);
      else this.#index.clear(worker);
    }
  }

  /**
   * Skip every gap still open (their batches did not come within a flush period) and apply what follows; returns
   * the workers that skipped a gap since the last call, here or when their reorder window overflowed.
   */
  flushGaps(): string[] {
    for (const [w, s] of this.#seqs) {
      const gaps = s.stats.gaps;
      for (const b of s.flush()) this.#apply(b);
      if (s.stats.gaps !== gaps) this.#gapped.add(w);
    }
    const out = [...this.#gapped];
    this.#gapped.clear();
    return out;
  }

  snapshot(): WorkerState[] {
    return this.#index.workers().map((w) => this.dumpWorker(w));
  }

  stats(): ShardStats {
    let duplicates = 0, gaps = 0, restarts = 0;
    for (const s of this.#seqs.values()) {
      duplicates += s.stats.duplicates;
      gaps += s.stats.gaps;
      restarts += s.stats.restarts;
    }
    const ix = this.#index.stats();
    return { ...this.#counters, duplicates, gaps, restarts, nodes: ix.nodes, entries: ix.entries, workers: ix.workers, evictedNodes: ix.evictedNodes, evictedEntries: ix.evictedEntries, arrayBytes: ix.arrayBytes, matchLookups: ix.matchLookups };
  }
}

function pairsOf(hashes: bigint[]): Uint32Array {
  return new Uint32Array(BigUint64Array.from(hashes, (h) => BigInt.asUintN(64, h)).buffer);
}

export function fromEventBatch(batch: EventBatch): DecodedBatch {
  const b = new DecodedBatch();
  b.worker = batch.worker;
  b.seq = batch.seq;
  b.ts = batch.ts;
  for (const ev of batch.events) {
    if (ev.t === 'stored') {
      const p = ev.parent === null ? 0n : BigInt.asUintN(64, ev.parent);
      b.pushEvent(STORED, Number(p & 0xffffffffn), Number(p >> 32n), tierBit(ev.tier));
      b.pushHashes(pairsOf(ev.hashes));
    } else if (ev.t === 'removed') {
      b.pushEvent(REMOVED, 0, 0, tierBit(ev.tier));
      b.pushHashes(pairsOf(ev.hashes));
    } else b.pushEvent(CLEARED, 0, 0);
  }
  return b;
}
