/**
 * In-flight accounting: what this router (and its peers) have sent to each worker and not seen finish.
 *
 * - A request, once routed, adds its uncached prefill tokens and its decode blocks to its worker. Prefill tokens
 *   leave at the first upstream byte (prefill done), decode blocks at completion (or failure, or client abort).
 * - Changes are queued as deltas and shared with peer routers as one ActiveBatch every `flushMs` on
 *   `…router.active`, so N replicas see each other's bursts between engine load reports. A peer that stays silent
 *   for `peerTtlMs` is forgotten (routers send an empty batch as a heartbeat once a second).
 * - Predicted prefixes: a routed prompt's block hashes are credited to its worker at once (short TTL), so a burst
 *   of identical prompts sticks to the worker that will hold the prefix before its engine reports it. A prefix
 *   hash names its whole prefix, so only every `predictStride`-th block (and the last) is remembered: overlaps
 *   come out rounded down to that stride, at a fraction of the cost.
 *
 * No I/O: the cluster view (cluster-view.ts) calls `takeBatch()` on a timer and feeds peers' batches to `applyPeer()`.
 */
import { LRUCache } from 'lru-cache';
import type { ActiveBatch, ActiveDelta } from '@kvgate/protocol';

export interface InflightOptions {
  /** this router's id (stamped on outgoing batches; our own batches echoed back are ignored) */
  routerId: string;
  /** forget a peer router's contributions after this long without a batch; default 5000 ms */
  peerTtlMs?: number;
  /** how long a predicted prefix credit lasts; default 30000 ms */
  predictedTtlMs?: number;
  /** most predicted block hashes remembered; default 100000 */
  predictedMax?: number;
  /** remember every n-th block hash of a prediction (plus the last); default 8 */
  predictStride?: number;
  /** clock, injectable for tests; default Date.now */
  now?: () => number;
}

export interface Load {
  prefillTokens: number;
  decodeBlocks: number;
}

/** One routed request's share of a worker's load. */
export interface Ticket {
  readonly worker: string;
  readonly prefillTokens: number;
  readonly decodeBlocks: number;
  prefillOpen: boolean;
  open: boolean;
}

interface Peer {
  seen: number;
  byWorker: Map<string, Load>;
}

export class Inflight {
  readonly routerId: string;
  #local = new Map<string, Load>();
  #peers = new Map<string, Peer>();
  #pending = new Map<string, Load>();
  #predicted: LRUCache<bigint, string[]>;
  #peerTtlMs: number;
  #stride: number;
  #now: () => number;

  constructor(opts: InflightOptions) {
    this.routerId = opts.routerId;
    this.#peerTtlMs = opts.peerTtlMs ?? 5000;
    this.#now = opts.now ?? Date.now;
    this.#stride = Math.max(1, Math.floor(opts.predictStride ?? 8));
    this.#predicted = new LRUCache<bigint, string[]>({
      max: opts.predictedMax ?? 100_000,
      ttl: opts.predictedTtlMs ?? 30_000,
      perf: { now: this.#now },
      // an injected clock is read on every check (the default caches "now" for 1 ms)
      ttlResolution: opts.now ? 0 : 1,
    });
  }

  /** A request was sent to `worker`. */
  start(worker: string, prefillTokens: number, decodeBlocks: number): Ticket {
    this.#add(worker, prefillTokens, decodeBlocks);
    return { worker, prefillTokens, decodeBlocks, prefillOpen: true, open: true };
  }

  /** The first upstream byte arrived: the worker finished this request's prefill. Idempotent. */
  prefillDone(t: Ticket): void {
    if (!t.prefillOpen) return;
    t.prefillOpen = false;
    this.#add(t.worker, -t.prefillTokens, 0);
  }

  /** The request completed, failed or was cancelled. Idempotent. */
  finish(t: Ticket): void {
    if (!t.open) return;
    this.prefillDone(t);
    t.open = false;
    this.#add(t.worker, 0, -t.decodeBlocks);
  }

  #add(worker: string, dPrefill: number, dDecode: number): void {
    if (dPrefill === 0 && dDecode === 0) return;
    const l = this.#local.get(worker) ?? { prefillTokens: 0, decodeBlocks: 0 };
    l.prefillTokens += dPrefill;
    l.decodeBlocks += dDecode;
    if (l.prefillTokens === 0 && l.decodeBlocks === 0) this.#local.delete(worker);
    else this.#local.set(worker, l);
    const p = this.#pending.get(worker) ?? { prefillTokens: 0, decodeBlocks: 0 };
    p.prefillTokens += dPrefill;
    p.decodeBlocks += dDecode;
    this.#pending.set(worker, p);
  }

  /** The deltas queued since the last call, as one batch (null when nothing changed). */
  takeBatch(): ActiveBatch | null {
    const deltas: ActiveDelta[] = [];
    for (const [worker, d] of this.#pending) {
      if (d.prefillTokens !== 0 || d.decodeBlocks !== 0) deltas.push({ router: this.routerId, worker, dPrefillTokens: d.prefillTokens, dDecodeBlocks: d.decodeBlocks });
    }
    this.#pending.clear();
    return deltas.length > 0 ? { router: this.routerId, deltas } : null;
  }

  /** A peer's batch (our own, echoed by the bus, is ignored). An empty batch is a heartbeat. */
  applyPeer(batch: ActiveBatch): void {
    if (batch.router === this.routerId) return;
    let peer = this.#peers.get(batch.router);
    if (!peer) this.#peers.set(batch.router, (peer = { seen: 0, byWorker: new Map() }));
    peer.seen = this.#now();
    for (const d of batch.deltas) {
      const l = peer.byWorker.get(d.worker) ?? { prefillTokens: 0, decodeBlocks: 0 };
      l.prefillTokens = Math.max(0, l.prefillTokens + d.dPrefillTokens);
      l.decodeBlocks = Math.max(0, l.decodeBlocks + d.dDecodeBlocks);
      peer.byWorker.set(d.worker, l);
    }
  }

  /** Forget everything about a worker (it left the registry). */
  dropWorker(worker: string): void {
    this.#local.delete(worker);
    for (const p of this.#peers.values()) p.byWorker.delete(worker);
  }

  /** This router's own load on a worker. */
  local(worker: string): Load {
    const l = this.#local.get(worker);
    return { prefillTokens: l?.prefillTokens ?? 0, decodeBlocks: l?.decodeBlocks ?? 0 };
  }

  /** Load on a worker from this router and every live peer. */
  total(worker: string): Load {
    const out = this.local(worker);
    const now = this.#now();
    for (const [id, p] of this.#peers) {
      if (now - p.seen > this.#peerTtlMs) {
        this.#peers.delete(id);
        continue;
      }
      const l = p.byWorker.get(worker);
      if (l) {
        out.prefillTokens += l.prefillTokens;
        out.decodeBlocks += l.decodeBlocks;
      }
    }
    return out;
  }

  /** Ids of peers heard from within the TTL. */
  peers(): string[] {
    const now = this.#now();
    return [...this.#peers].filter(([, p]) => now - p.seen <= this.#peerTtlMs).map(([id]) => id);
  }

  /** Credit a prompt's block hashes to the worker it was just routed to. */
  predict(worker: string, hashes: ArrayLike<bigint>): void {
    const n = hashes.length;
    for (let i = this.#stride - 1; i < n + this.#stride - 1; i += this.#stride) {
      const h = hashes[Math.min(i, n - 1)]!;
      const ws = this.#predicted.get(h);
      if (!ws) this.#predicted.set(h, [worker]);
      else if (!ws.includes(worker)) this.#predicted.set(h, [...ws, worker]);
      else this.#predicted.set(h, ws); // refresh the TTL
    }
  }

  /** Per worker, how many leading blocks of `hashes` a recent prediction credits to it (see predictStride). */
  predictedOverlaps(hashes: ArrayLike<bigint>): Map<string, number> {
    const out = new Map<string, number>();
    const m = hashes.length;
    const s = this.#stride;
    let alive: readonly string[] | undefined;
    let prev = -1;
    // An earlier prompt may have ended between two stride points (its last block was remembered too): when workers
    // drop out at a stride point, or the walk ends, look for their end in the blocks since the previous point.
    for (let i = s - 1; i < m; i += s) {
      const ws = this.#predicted.get(hashes[i]!);
      const here = ws ? (alive ? alive.filter((w) => ws.includes(w)) : ws) : [];
      const dropped = alive ? alive.filter((w) => !here.includes(w)) : undefined;
      if (dropped === undefined || dropped.length > 0) this.#tails(out, hashes, prev, i - 1, dropped);
      if (here.length === 0) return out;
      for (const w of here) out.set(w, i + 1);
      alive = here;
      prev = i;
    }
    this.#tails(out, hashes, prev, m - 1, alive);
    return out;
  }

  /** predictedOverlaps: the ends of `who`'s predictions (every worker's when undefined) in blocks (from, to] */
  #tails(out: Map<string, number>, hashes: ArrayLike<bigint>, from: number, to: number, who: readonly string[] | undefined): void {
    const s = this.#stride;
    let left = who ? who.length : Infinity;
    for (let j = to; j > from && left > 0; j--) {
      if ((j + 1) % s === 0) continue;
      const ws = this.#predicted.get(hashes[j]!);
      if (!ws) continue;
      for (const w of ws) {
        if ((who === undefined || who.includes(w)) && (out.get(w) ?? 0) < j + 1) {
          out.set(w, j + 1);
          left--;
        }
      }
      if (who === undefined) return;
    }
  }
}
