/**
 * Per-worker batch sequencing (pure). Batches carry a gap-free per-worker `seq` assigned by the shim.
 *
 *   seq ≤ last            duplicate: dropped (counted), except seq 0 after a higher seq = the shim restarted
 *                         (its sequence starts again; the shim sends `cleared` itself)
 *   seq = last + 1        applied, then any buffered successors
 *   seq > last + 1        held in a reorder buffer; when it holds more than `window` batches, or on `flush()`
 *                         (the indexer calls it every second), the gap is skipped (counted) and the buffer drains
 *   first batch of a worker is applied whatever its seq.
 * A batch that starts with `cleared` needs no predecessors: the caller skips to it (skipTo) without a gap.
 */
export interface Sequenced<B> {
  seq: number;
  batch: B;
}

export interface SequencerStats {
  duplicates: number;
  gaps: number;
  restarts: number;
}

export class WorkerSequencer<B> {
  #last: number | null;
  readonly #pending = new Map<number, B>();
  readonly #window: number;
  readonly stats: SequencerStats = { duplicates: 0, gaps: 0, restarts: 0 };

  constructor(window = 64, last: number | null = null) {
    this.#window = window;
    this.#last = last;
  }

  get last(): number | null {
    return this.#last;
  }

  /** set after a snapshot load or a peer repair */
  reset(last: number | null): void {
    this.#last = last;
    this.#pending.clear();
  }

  /**
   * The batch at `seq` voids everything before it (it starts with `cleared`): batches still missing before it
   * are not waited for, and not counted as a gap. Buffered batches from `seq` on stay.
   */
  skipTo(seq: number): void {
    if (this.#last !== null && seq <= this.#last + 1) return;
    for (const k of [...this.#pending.keys()]) if (k < seq) this.#pending.delete(k);
    this.#last = seq - 1;
  }

  get pending(): number {
    return this.#pending.size;
  }

  /**
   * The common case without allocating: when `seq` is the next one (or the first) and nothing is buffered,
   * take it and return true — the caller applies the batch itself. Otherwise change nothing, return false
   * (then call offer).
   */
  takeInOrder(seq: number): boolean {
    if (this.#pending.size !== 0 || (this.#last !== null && seq !== this.#last + 1)) return false;
    this.#last = seq;
    return true;
  }

  /** Offer one batch; returns the batches to apply now, in order. */
  offer(seq: number, batch: B): B[] {
    const last = this.#last;
    if (last === null) {
      this.#last = seq;
      return this.#drain([batch]);
    }
    if (seq <= last) {
      if (seq === 0 && last > 0) {
        this.stats.restarts++;
        this.#pending.clear();
        this.#last = 0;
        return [batch];
      }
      this.stats.duplicates++;
      return [];
    }
    if (seq === last + 1) {
      this.#last = seq;
      return this.#drain([batch]);
    }
    if (this.#pending.has(seq)) {
      this.stats.duplicates++;
      return [];
    }
    this.#pending.set(seq, batch);
    return this.#pending.size > this.#window ? this.flush() : [];
  }

  /** Skip the gap before the lowest buffered batch; returns what becomes applicable. */
  flush(): B[] {
    if (this.#pending.size === 0) return [];
    let min = Infinity;
    for (const s of this.#pending.keys()) if (s < min) min = s;
    this.stats.gaps++;
    this.#last = min - 1;
    return this.#drain([]);
  }

  #drain(out: B[]): B[] {
    for (;;) {
      const next = this.#last! + 1;
      const b = this.#pending.get(next);
      if (b === undefined) return out;
      this.#pending.delete(next);
      this.#last = next;
      out.push(b);
    }
  }
}
