/**
 * Engine sequence tracking (pure). The engine numbers its batches 0, 1, 2, … per process.
 *   seq == next          → in order
 *   seq >  next          → gap [next, seq): ask the replay socket, or clear and relearn
 *   seq <  next          → the engine restarted (its numbering went down): clear, then relearn
 * Before the first batch, `next` is 0: a shim that starts beside a running engine sees a gap from 0,
 * and replays whatever the engine still holds.
 */

export type SeqVerdict =
  | { kind: 'next' }
  | { kind: 'gap'; from: bigint; to: bigint }
  | { kind: 'restart'; expected: bigint };

export class EngineSeq {
  #next = 0n;
  #seen = false;

  /** next sequence expected */
  get next(): bigint {
    return this.#next;
  }

  /** true once any batch was accepted */
  get seen(): boolean {
    return this.#seen;
  }

  judge(seq: bigint): SeqVerdict {
    if (seq === this.#next) return { kind: 'next' };
    if (seq > this.#next) return { kind: 'gap', from: this.#next, to: seq };
    return { kind: 'restart', expected: this.#next };
  }

  /** record that batch `seq` was applied */
  accept(seq: bigint): void {
    this.#next = seq + 1n;
    this.#seen = true;
  }

  /** forget the numbering (after a restart): the engine counts from 0 again */
  reset(): void {
    this.#next = 0n;
    this.#seen = false;
  }
}
