/**
 * Replica consistency by gossip (pure: digests and clock in, decisions out).
 *
 * Every replica publishes, each second, one digest per worker: last applied batch seq, block count, xor of
 * the block set (`…index.gossip`, plus `snapshotSeq`, the stream sequence of its newest snapshot). A replica
 * repairs worker w from a peer (`…index.sync.<peer>`) when, for longer than `graceMs`:
 *   - behind:   a live peer reported a higher seq for w than this replica has reached (lost batches, a stream
 *               trimmed past our snapshot, a worker we never saw); repair from the peer with the highest seq;
 *   - mismatch: at the *same* seq, (count, xor) differ, and this replica's value has fewer supporters among
 *               {itself} ∪ {peers at that seq} than another value (majority); on a tie (two replicas) the
 *               replica with the larger id repairs from the smaller, so exactly one side moves.
 * Different seqs alone are progress, not divergence. After asking, a worker is left alone for `graceMs`.
 * Workers dropped on purpose (registry expiry) are ignored for a while so a slower peer does not revive them.
 */
import type { GossipMsg, WorkerDigest } from '@kvgate/protocol';

export interface GossipOptions {
  /** how long a disagreement must last before repairing, ms. Default 3000. */
  graceMs?: number;
  /** a peer silent for this long is no longer live, ms. Default 5000. */
  peerTtlMs?: number;
}

export interface PeerGossip extends GossipMsg {
  /** stream seq of the peer's newest snapshot (0: none) */
  snapshotSeq?: number;
}

export interface RepairOrder {
  worker: string;
  from: string;
  reason: 'behind' | 'mismatch';
}

interface PeerView {
  at: number;
  digests: Record<string, WorkerDigest>;
  snapshotSeq: number;
}

export class GossipTracker {
  readonly #self: string;
  readonly #grace: number;
  readonly #ttl: number;
  readonly #peers = new Map<string, PeerView>();
  /** worker → since when it has disagreed (and how) */
  readonly #since = new Map<string, { at: number; reason: RepairOrder['reason'] }>();
  readonly #cooldown = new Map<string, number>();
  readonly #ignored = new Map<string, number>();

  constructor(self: string, opts: GossipOptions = {}) {
    this.#self = self;
    this.#grace = opts.graceMs ?? 3000;
    this.#ttl = opts.peerTtlMs ?? 5000;
  }

  observe(msg: PeerGossip, now: number): void {
    if (msg.indexer === this.#self) return;
    this.#peers.set(msg.indexer, { at: now, digests: msg.digests, snapshotSeq: msg.snapshotSeq ?? 0 });
  }

  /** a worker dropped on purpose: ignore peers' view of it for a while */
  forget(worker: string, now: number): void {
    this.#ignored.set(worker, now + 3 * this.#grace);
    this.#since.delete(worker);
  }

  livePeers(now: number): string[] {
    const out: string[] = [];
    for (const [id, p] of this.#peers) {
      if (now - p.at <= this.#ttl) out.push(id);
      else this.#peers.delete(id);
    }
    return out.sort();
  }

  decide(own: Record<string, WorkerDigest>, now: number): RepairOrder[] {
    const live = this.livePeers(now);
    const workers = new Set<string>(Object.keys(own));
    for (const id of live) for (const w of Object.keys(this.#peers.get(id)!.digests)) workers.add(w);
    const orders: RepairOrder[] = [];
    for (const w of workers) {
      const ig = this.#ignored.get(w);
      if (ig !== undefined) {
        if (now < ig) continue;
        this.#ignored.delete(w);
      }
      const cd = this.#cooldown.get(w);
      if (cd !== undefined && now < cd) continue;
      const verdict = this.#judge(w, own[w], live);
      if (!verdict) {
        this.#since.delete(w);
        continue;
      }
      const s = this.#since.get(w);
      if (!s || s.reason !== verdict.reason) {
        this.#since.set(w, { at: now, reason: verdict.reason });
        continue;
      }
      if (now - s.at >= this.#grace) {
        orders.push({ worker: w, ...verdict });
        this.#since.delete(w);
        this.#cooldown.set(w, now + this.#grace);
      }
    }
    return orders;
  }

  #judge(w: string, mine: WorkerDigest | undefined, live: string[]): { from: string; reason: RepairOrder['reason'] } | null {
    const mySeq = mine?.seq ?? -1;
    let best: { id: string; seq: number } | null = null;
    for (const id of live) {
      const d = this.#peers.get(id)!.digests[w];
      if (d && d.seq > mySeq && (!best || d.seq > best.seq)) best = { id, seq: d.seq };
    }
    if (best) return { from: best.id, reason: 'behind' };
    if (!mine) return null;
    // same-seq comparison: group {self} ∪ peers at my seq by (count, xor)
    const key = (d: WorkerDigest) => `${d.count}:${d.xor}`;
    const groups = new Map<string, string[]>();
    groups.set(key(mine), [this.#self]);
    for (const id of live) {
      const d = this.#peers.get(id)!.digests[w];
      if (!d || d.seq !== mySeq) continue;
      const k = key(d);
      const g = groups.get(k);
      if (g) g.push(id);
      else groups.set(k, [id]);
    }
    if (groups.size === 1) return null;
    const mineN = groups.get(key(mine))!.length;
    let winner: string[] | null = null;
    for (const [k, ids] of groups) {
      if (k === key(mine)) continue;
      if (ids.length > mineN) {
        if (!winner || ids.length > winner.length) winner = ids;
      } else if (ids.length === mineN) {
        // tie: the larger id yields to the smallest id holding another value
        const smallest = [...ids].sort()[0]!;
        if (smallest < this.#self && (!winner || (winner.length === mineN && smallest < [...winner].sort()[0]!))) winner = ids;
      }
    }
    if (!winner) return null;
    return { from: [...winner].sort()[0]!, reason: 'mismatch' };
  }

  /**
   * Stream trim rule: everything below the oldest snapshot any live replica (self included) may still load is
   * safe to purge; a replica without snapshots reports 0 and blocks trimming. Only the smallest live id trims.
   * Returns the sequence to keep from, or null when this replica should not trim.
   */
  purgeFrom(ownSnapshotSeq: number, now: number): number | null {
    const live = this.livePeers(now);
    if (live.length > 0 && live[0]! < this.#self) return null;
    let min = ownSnapshotSeq;
    for (const id of live) min = Math.min(min, this.#peers.get(id)!.snapshotSeq);
    return min > 0 ? min + 1 : null;
  }
}
