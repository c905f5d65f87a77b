/**
 * ShardState: everything one index shard owns — a PrefixIndex, a sequencer per worker, counters.
 * Pure (bytes in, data out). It runs either inline (LocalShard) or inside a worker thread (shard-thread.ts);
 * both drive it with the same ShardRequest messages, so it is the single definition of shard behaviour.
 */
import { DecodeError, type EventBatch, type KvEvent, type WorkerDigest } from '@kvgate/protocol';
import { PrefixIndex, type PrefixIndexStats } from './radix.js';
import { WorkerSequencer } from './sequencer.js';
import { decodeBatchFast, type FastBatch } from './wire.js';

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
  | { op: 'stats' };

export type MatchPart = [workers: string[], depths: number[]];

const EMPTY_PAIRS = new Uint32Array(0);

export class ShardState {
  readonly #index: PrefixIndex;
  readonly #seqs = new Map<string, WorkerSequencer<FastBatch>>();
  readonly #window: number;
  readonly #counters = { batches: 0, storedBlocks: 0, removedBlocks: 0, clears: 0, decodeErrors: 0 };

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
    }
  }

  #sequencer(worker: string): WorkerSequencer<FastBatch> {
    let s = this.#seqs.get(worker);
    if (!s) this.#seqs.set(worker, (s = new WorkerSequencer<FastBatch>(this.#window)));
    return s;
  }

  /** Decode one `…events.<worker>` payload and apply it in sequence. Bad bytes are counted, never thrown. */
  ingest(data: Uint8Array): boolean {
    let b: FastBatch;
    try {
      b = decodeBatchFast(data, true); // hashes in a scratch buffer: copied below if the batch must wait
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      this.#counters.decodeErrors++;
      return false;
    }
    const s = this.#sequencer(b.worker);
    if (s.takeInOrder(b.seq)) this.#apply(b);
    else {
      for (const ev of b.events) ev.pairs = ev.pairs.slice();
      for (const ready of s.offer(b.seq, b)) this.#apply(ready);
    }
    return true;
  }

  offer(b: FastBatch): void {
    const s = this.#sequencer(b.worker);
    if (s.takeInOrder(b.seq)) this.#apply(b);
    else for (const ready of s.offer(b.seq, b)) this.#apply(ready);
  }

  /** Apply an already-decoded EventBatch (in-process producers, tests). */
  offerBatch(batch: EventBatch): void {
    this.offer(fromEventBatch(batch));
  }

  #apply(b: FastBatch): void {
    const ix = this.#index;
    const w = ix.ordinal(b.worker);
    this.#counters.batches++;
    for (const ev of b.events) {
      if (ev.t === 0) {
        ix.storePairs(w, ev.parentLo, ev.parentHi, ev.pairs, ev.pairs.length >>> 1);
        this.#counters.storedBlocks += ev.pairs.length >>> 1;
      } else if (ev.t === 1) {
        ix.removePairs(w, ev.pairs, ev.pairs.length >>> 1);
        this.#counters.removedBlocks += ev.pairs.length >>> 1;
      } else {
        ix.clearOrdinal(w);
        this.#counters.clears++;
      }
    }
  }

  match(hashes: BigUint64Array): MatchPart {
    const ix = this.#index;
    const k = ix.matchPairs(new Uint32Array(hashes.buffer, hashes.byteOffset, hashes.length * 2), hashes.length);
    const workers = new Array<string>(k), depths = new Array<number>(k);
    for (let i = 0; i < k; i++) {
      workers[i] = ix.resultWorker(i);
      depths[i] = ix.resultDepth(i);
    }
    return [workers, depths];
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
    return { worker, seq: this.#seqs.get(worker)?.last ?? -1, blocks: this.#index.dumpWorker(worker).blocks };
  }

  /**
   * Replace one worker's block set and sequence position (peer repair, snapshot load). With
   * `onlyIfNotBehind`, a state older than what this shard already applied is refused (returns false).
   */
  installWorker(s: WorkerState, onlyIfNotBehind = false): boolean {
    const last = this.#seqs.get(s.worker)?.last ?? null;
    if (onlyIfNotBehind && last !== null && s.seq < last) return false;
    this.#index.loadWorker({ worker: s.worker, blocks: s.blocks });
    this.#sequencer(s.worker).reset(s.seq < 0 ? null : s.seq);
    return true;
  }

  dropWorker(worker: string): void {
    this.#index.dropWorker(worker);
    this.#seqs.delete(worker);
  }

  /** Debug / tests: apply events outside the sequence (used to inject divergence). */
  inject(worker: string, events: KvEvent[]): void {
    for (const ev of events) {
      if (ev.t === 'stored') this.#index.store(worker, ev.parent, ev.hashes);
      else if (ev.t === 'removed') this.#index.remove(worker, ev.hashes);
      else this.#index.clear(worker);
    }
  }

  flushGaps(): void {
    for (const s of this.#seqs.values()) for (const b of s.flush()) this.#apply(b);
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
  if (hashes.length === 0) return EMPTY_PAIRS;
  const b = BigUint64Array.from(hashes, (h) => BigInt.asUintN(64, h));
  return new Uint32Array(b.buffer);
}

export function fromEventBatch(batch: EventBatch): FastBatch {
  return {
    worker: batch.worker,
    seq: batch.seq,
    events: batch.events.map((ev) => {
      if (ev.t === 'stored') {
        const p = ev.parent === null ? 0n : BigInt.asUintN(64, ev.parent);
        return { t: 0, parentLo: Number(p & 0xffffffffn), parentHi: Number(p >> 32n), pairs: pairsOf(ev.hashes) };
      }
      if (ev.t === 'removed') return { t: 1, parentLo: 0, parentHi: 0, pairs: pairsOf(ev.hashes) };
      return { t: 2, parentLo: 0, parentHi: 0, pairs: EMPTY_PAIRS };
    }),
  };
}
