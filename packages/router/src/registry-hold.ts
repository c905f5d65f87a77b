/**
 * The router's last-known registry through a bus outage. No I/O, clock injected; the cluster view (cluster-view.ts) feeds it.
 *
 * A registration that lapses (its TTL ran out with no re-put) is either a dead shim or a bus the shims could not
 * reach — or that this router could not hear: during a NATS outage every watcher lapses every key by itself. So a
 * lapse does not drop the worker at once: the worker is *held* (still routed to; passive health guards it) and
 * dropped only once the bus has been heard for `confirmMs` since both the lapse and the end of the last silence,
 * without the worker re-registering or reporting load. An explicit delete (a shim deregistering) drops it at once.
 *
 * The bus is heard while anything arrives on it: the router's own in-flight heartbeat (published each second on
 * `…router.active` and echoed back), load reports, registry entries, peers. Silent for more than `busGapMs`, it is
 * down. Silent for more than `staleViewMs`, the view is *stale*: still used while the engines answer, but flagged
 * (metric, log, `/readyz`).
 *
 * Why confirmMs > busGapMs: a key lapses no sooner than the outage began; a lapse confirmed `confirmMs` later by a
 * bus heard within `busGapMs` means something arrived after the lapse — the bus was up when the re-put was due.
 */

export interface RegistryHoldOptions {
  /** the bus counts as down after this long without a message; default 2000 ms (two missed heartbeats) */
  busGapMs?: number;
  /** a lapsed registration is dropped after the bus was up this long since the lapse; default 2500 ms (> busGapMs) */
  confirmMs?: number;
  /** bus silent longer than this: the view is marked stale (still used); default 60000 ms */
  staleViewMs?: number;
  /** clock; default Date.now */
  now?: () => number;
}

export class RegistryHold {
  readonly busGapMs: number;
  readonly confirmMs: number;
  readonly staleViewMs: number;
  readonly #now: () => number;
  #lastHeard: number;
  #upSince: number;
  /** held workers → when they lapsed (or last reported load since) */
  #lapsed = new Map<string, number>();

  constructor(o: RegistryHoldOptions = {}) {
    this.busGapMs = Math.max(1, o.busGapMs ?? 2000);
    this.confirmMs = Math.max(this.busGapMs + 1, o.confirmMs ?? 2500);
    this.staleViewMs = Math.max(1, o.staleViewMs ?? 60_000);
    this.#now = o.now ?? Date.now;
    // the router starts on a bus it just opened
    this.#lastHeard = this.#upSince = this.#now();
  }

  /** Something arrived on the bus. True when it ended a silence (the bus is back: re-read the registry). */
  heard(): boolean {
    const now = this.#now();
    const back = now - this.#lastHeard > this.busGapMs;
    if (back) this.#upSince = now;
    this.#lastHeard = now;
    return back;
  }

  busUp(): boolean {
    return this.#now() - this.#lastHeard <= this.busGapMs;
  }

  /** ms since the bus was last heard */
  silentMs(): number {
    return Math.max(0, this.#now() - this.#lastHeard);
  }

  /** Silent past staleViewMs: the registry and load view may be out of date. */
  stale(): boolean {
    return this.silentMs() > this.staleViewMs;
  }

  /** The worker's registration lapsed (TTL, or missing from a fresh listing). */
  lapsed(worker: string): void {
    if (!this.#lapsed.has(worker)) this.#lapsed.set(worker, this.#now());
  }

  /** The worker re-registered. */
  renewed(worker: string): void {
    this.#lapsed.delete(worker);
  }

  /** A load report from the worker: its shim is alive, so a held worker's clock starts again. */
  reported(worker: string): void {
    if (this.#lapsed.has(worker)) this.#lapsed.set(worker, this.#now());
  }

  /** The worker left for good (explicit delete, or dropped). */
  removed(worker: string): void {
    this.#lapsed.delete(worker);
  }

  isHeld(worker: string): boolean {
    return this.#lapsed.has(worker);
  }

  held(): string[] {
    return [...this.#lapsed.keys()];
  }

  /** Held workers to drop now (removed from the hold). Nothing while the bus is down. */
  due(): string[] {
    if (this.#lapsed.size === 0 || !this.busUp()) return [];
    const now = this.#now();
    const out: string[] = [];
    for (const [w, at] of this.#lapsed) {
      if (now - Math.max(at, this.#upSince) >= this.confirmMs) out.push(w);
    }
    for (const w of out) this.#lapsed.delete(w);
    return out;
  }
}
