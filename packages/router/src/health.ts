/**
 * Passive health: what the router learned about each worker's engine from its own upstream calls, its peers and
 * the shims' load reports. No I/O, clock injected; the cluster view feeds it, the routing core asks it before each pick.
 *
 * Suspicion (one state machine per worker):
 *   healthy ──fail──▶ suspect(back-off b) ──b elapses──▶ probation ──request sent──▶ probing
 *   probing ──success──▶ healthy      probing ──fail──▶ suspect(2b, at most maxBackoffMs)
 *   probation ──success──▶ healthy    (any request that succeeds clears, whoever sent it)
 * - An upstream connect failure or 5xx before the first byte is a failure. A failure while the back-off still runs
 *   (requests that were already on their way) does not double it: only a failed probe does.
 * - While suspect, or while its one probe is out, the worker is not `usable`: the selector skips it while other
 *   workers are available (a soft exclusion: when every worker is suspect, they are still tried).
 * - Peers' suspicions (`…router.suspect`) start or extend a local back-off of the length the peer gave, without
 *   escalating it; a peer's success clears it as a local one does.
 *
 * Load reports (DESIGN.md §4 `healthy`):
 * - `healthy: false`: the shim says its engine is down. The worker is `unhealthy` (never picked) until a report
 *   without it arrives or the flag is older than `reportTtlMs` (no news is not bad news: passive health covers it).
 * - `healthy: true` clears a suspicion when it is news about the failure: right after a report that said false
 *   (the shim saw the engine go down and come back), or when it arrived at least `reportGraceMs` after the last
 *   failure (the shim probes its engine within 2 s, so such a report comes from a probe made after the failure).
 *   A report without `healthy` (an older shim that does not probe) clears nothing.
 */

export type FailureReason = 'connect' | 'status';

export interface HealthOptions {
  /** back-off after the first failure; default 1000 ms */
  baseBackoffMs?: number;
  /** back-off ceiling (doubling stops here); default 30000 ms */
  maxBackoffMs?: number;
  /** a `healthy: false` report counts for this long without a fresher one; default 3000 ms (the view's staleMs) */
  reportTtlMs?: number;
  /** a `healthy: true` report clears a suspicion at least this much younger; default 2500 ms */
  reportGraceMs?: number;
  /** clock; default Date.now */
  now?: () => number;
}

/** What a failure did, for the edges (metrics, logs, the peer message). */
export interface Suspicion {
  worker: string;
  /** the back-off now running */
  backoffMs: number;
  /** the worker was not suspect before this failure */
  newly: boolean;
  /** false when the failure fell inside a running back-off (nothing changed) */
  changed: boolean;
}

interface State {
  /** consecutive failed rounds (1 after the first failure) */
  failures: number;
  backoffMs: number;
  /** not usable before this time */
  until: number;
  lastFailureAt: number;
  probing: boolean;
}

interface Reported {
  healthy: boolean | undefined;
  at: number;
}

export class WorkerHealth {
  readonly #base: number;
  readonly #max: number;
  readonly #reportTtl: number;
  readonly #grace: number;
  readonly #now: () => number;
  #states = new Map<string, State>();
  #reports = new Map<string, Reported>();
  /** workers whose last report said healthy: false (the hot path asks `quiet` first) */
  #unhealthy = new Set<string>();

  constructor(o: HealthOptions = {}) {
    this.#base = Math.max(1, o.baseBackoffMs ?? 1000);
    this.#max = Math.max(this.#base, o.maxBackoffMs ?? 30_000);
    this.#reportTtl = o.reportTtlMs ?? 3000;
    this.#grace = o.reportGraceMs ?? 2500;
    this.#now = o.now ?? Date.now;
  }

  /** Nothing suspect or unhealthy: every worker is usable (the request path's fast check). */
  get quiet(): boolean {
    return this.#states.size === 0 && this.#unhealthy.size === 0;
  }

  /** An upstream call to `worker` failed before its first byte. */
  fail(worker: string): Suspicion {
    const now = this.#now();
    const s = this.#states.get(worker);
    if (!s) {
      this.#states.set(worker, { failures: 1, backoffMs: this.#base, until: now + this.#base, lastFailureAt: now, probing: false });
      return { worker, backoffMs: this.#base, newly: true, changed: true };
    }
    s.lastFailureAt = now;
    if (now < s.until && !s.probing) return { worker, backoffMs: s.backoffMs, newly: false, changed: false };
    s.failures++;
    s.backoffMs = Math.min(this.#max, this.#base * 2 ** (s.failures - 1));
    s.until = now + s.backoffMs;
    s.probing = false;
    return { worker, backoffMs: s.backoffMs, newly: false, changed: true };
  }

  /** An upstream call to `worker` answered (not 5xx). True when this cleared a suspicion. */
  succeed(worker: string): boolean {
    return this.#states.delete(worker);
  }

  /** A request is about to go to `worker`: past its back-off, it is the probe (one at a time). */
  sent(worker: string): void {
    const s = this.#states.get(worker);
    if (s && this.#now() >= s.until) s.probing = true;
  }

  /** The call to `worker` ended with no verdict (the client went away first): its probe slot is free again. */
  abandoned(worker: string): void {
    const s = this.#states.get(worker);
    if (s) s.probing = false;
  }

  /** A peer router found `worker` failing, with this back-off. True when that made it suspect here. */
  peerSuspect(worker: string, backoffMs: number): boolean {
    const now = this.#now();
    const b = Math.min(this.#max, Math.max(1, backoffMs));
    const s = this.#states.get(worker);
    if (!s) {
      this.#states.set(worker, { failures: 1, backoffMs: b, until: now + b, lastFailureAt: now, probing: false });
      return true;
    }
    if (now + b > s.until) {
      s.until = now + b;
      s.backoffMs = Math.max(s.backoffMs, b);
      s.probing = false;
    }
    s.lastFailureAt = now;
    return false;
  }

  /** A peer's request to `worker` succeeded. True when this cleared a suspicion. */
  peerCleared(worker: string): boolean {
    return this.#states.delete(worker);
  }

  /** A load report arrived; `healthy` as it carried it (undefined: the field was absent). True when it cleared a suspicion. */
  report(worker: string, healthy: boolean | undefined): boolean {
    const now = this.#now();
    const prev = this.#reports.get(worker);
    this.#reports.set(worker, { healthy, at: now });
    if (healthy === false) {
      this.#unhealthy.add(worker);
      return false;
    }
    this.#unhealthy.delete(worker);
    if (healthy !== true) return false;
    const s = this.#states.get(worker);
    if (!s) return false;
    const cameBack = prev?.healthy === false;
    if (cameBack || now - s.lastFailureAt >= this.#grace) return this.#states.delete(worker);
    return false;
  }

  /** The shim says the engine is down (a `healthy: false` report younger than reportTtlMs). */
  isUnhealthy(worker: string): boolean {
    if (!this.#unhealthy.has(worker)) return false;
    const r = this.#reports.get(worker);
    if (r && this.#now() - r.at <= this.#reportTtl) return true;
    this.#unhealthy.delete(worker);
    return false;
  }

  /** Suspect (back-off running, or on probation until a request succeeds). */
  isSuspect(worker: string): boolean {
    return this.#states.has(worker);
  }

  /** May a request go to `worker` now (not unhealthy; not inside its back-off; no probe of it out)? */
  usable(worker: string): boolean {
    if (this.isUnhealthy(worker)) return false;
    const s = this.#states.get(worker);
    return !s || (this.#now() >= s.until && !s.probing);
  }

  /** the worker's current back-off length (0 when not suspect) */
  backoffMs(worker: string): number {
    return this.#states.get(worker)?.backoffMs ?? 0;
  }

  /** ms left of the worker's back-off (0 when none runs). */
  backoffLeft(worker: string): number {
    const s = this.#states.get(worker);
    return s ? Math.max(0, s.until - this.#now()) : 0;
  }

  /** Every suspect worker. */
  suspects(): string[] {
    return [...this.#states.keys()];
  }

  /** Every worker a fresh report says is down. */
  unhealthy(): string[] {
    return [...this.#unhealthy].filter((w) => this.isUnhealthy(w));
  }

  /** The worker left the registry. */
  forget(worker: string): void {
    this.#states.delete(worker);
    this.#reports.delete(worker);
    this.#unhealthy.delete(worker);
  }
}
