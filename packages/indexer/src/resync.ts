/**
 * Which workers to ask for a resync, and when (pure: clock in, decisions out).
 *
 * A worker is *wanted* when its batch sequence had a gap the reorder window did not fill (sequencer flush),
 * or after the bus came back from an outage. Wanted workers are asked on `…shim.resync.<worker>` at most once
 * per `minIntervalMs` each, one request in flight per worker: several gaps in a row, or a gap and a reconnect
 * together, cost one resync. A shim that does not answer (no responders, timeout) is asked again after a
 * back-off that doubles up to `maxBackoffMs`, at most `maxAttempts` times in a row; after that the worker is
 * left to peer repair (gossip) until it is wanted again.
 */
export type ResyncReason = 'gap' | 'reconnect';

export interface ResyncGateOptions {
  /** least time between two requests for one worker, ms. Default 5000. */
  minIntervalMs?: number;
  /** longest wait before asking a shim that did not answer again, ms. Default 60000. */
  maxBackoffMs?: number;
  /** requests in a row without an answer before giving up on a worker, until it is wanted again. Default 5. */
  maxAttempts?: number;
}

export interface ResyncOrder {
  worker: string;
  reason: ResyncReason;
}

interface WorkerGate {
  /** pending reason, or null when nothing is wanted */
  want: ResyncReason | null;
  /** earliest time of the next request */
  next: number;
  inFlight: boolean;
  /** failed requests in a row */
  failures: number;
}

export class ResyncGate {
  readonly #min: number;
  readonly #maxBackoff: number;
  readonly #maxAttempts: number;
  readonly #w = new Map<string, WorkerGate>();

  constructor(opts: ResyncGateOptions = {}) {
    this.#min = opts.minIntervalMs ?? 5000;
    this.#maxBackoff = Math.max(this.#min, opts.maxBackoffMs ?? 60_000);
    this.#maxAttempts = opts.maxAttempts ?? 5;
  }

  #gate(worker: string): WorkerGate {
    let g = this.#w.get(worker);
    if (!g) this.#w.set(worker, (g = { want: null, next: 0, inFlight: false, failures: 0 }));
    return g;
  }

  /** ask for a resync of `worker` as soon as its rate limit allows (a gap outranks a reconnect) */
  want(worker: string, reason: ResyncReason): void {
    const g = this.#gate(worker);
    if (g.want !== 'gap') g.want = reason;
    if (g.failures >= this.#maxAttempts) g.failures = 0; // wanted anew: try again
  }

  /** the requests to send now; each is in flight until `answered` */
  due(now: number): ResyncOrder[] {
    const out: ResyncOrder[] = [];
    for (const [worker, g] of this.#w) {
      if (g.want === null || g.inFlight || now < g.next) continue;
      out.push({ worker, reason: g.want });
      g.want = null;
      g.inFlight = true;
      g.next = now + this.#min;
    }
    return out;
  }

  /** the shim answered (`ok`) or not (no responders, timeout, an error reply) */
  answered(worker: string, ok: boolean, now: number, reason: ResyncReason = 'gap'): void {
    const g = this.#w.get(worker);
    if (!g) return;
    g.inFlight = false;
    if (ok) {
      g.failures = 0;
      g.next = Math.max(g.next, now + this.#min);
      return;
    }
    g.failures++;
    if (g.failures >= this.#maxAttempts) {
      g.next = now + this.#maxBackoff;
      return; // left to peer repair until wanted again
    }
    g.next = now + Math.min(this.#maxBackoff, this.#min * 2 ** (g.failures - 1));
    if (g.want === null) g.want = reason;
  }

  /** the worker left the registry */
  forget(worker: string): void {
    this.#w.delete(worker);
  }

  /** workers wanted and not yet asked (tests, metrics) */
  get pending(): number {
    let n = 0;
    for (const g of this.#w.values()) if (g.want !== null) n++;
    return n;
  }
}
