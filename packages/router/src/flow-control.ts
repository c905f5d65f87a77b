/**
 * Priority and flow control for requests that meet a saturated pool (every worker over its busy thresholds).
 *
 *   priority   from the request's objective (InferenceObjective semantics: an integer, unset = 0, negative =
 *              sheddable). A sheddable request on a saturated pool is refused at once (429); others wait here.
 *   queue      one per pool, bounded per priority band (`maxQueue`, past it: 429). The highest band goes first;
 *              inside a band the fairness ids (tenants) take turns, FIFO within each id.
 *   deadline   a wait past `maxWaitMs` is refused (503): never an unbounded wait.
 *
 * The queue itself (FlowQueue) is a pure structure with an injected clock; FlowGate adds one coarse timer per pool
 * while anything waits (not one per request) that releases heads while the pool has room and expires the overdue.
 */

export interface FlowOptions {
  /** waiting requests per priority band and pool; default 1024 */
  maxQueue?: number;
  /** longest wait before a 503; default 30000 ms */
  maxWaitMs?: number;
  /** how often a waiting pool is re-checked; default 5 ms */
  pollMs?: number;
}

export type FlowOutcome = 'admitted' | 'expired' | 'full' | 'closed';

interface Waiter {
  since: number;
  deadline: number;
  resolve(o: FlowOutcome, waitedMs: number): void;
}

class Band {
  readonly priority: number;
  /** fairness id → its FIFO; Map order = the turn order */
  readonly byTenant = new Map<string, Waiter[]>();
  size = 0;
  constructor(priority: number) {
    this.priority = priority;
  }
}

export class FlowQueue {
  readonly #bands: Band[] = []; // highest priority first
  readonly #maxQueue: number;
  readonly #now: () => number;

  constructor(maxQueue: number, now: () => number = Date.now) {
    this.#maxQueue = maxQueue;
    this.#now = now;
  }

  get size(): number {
    let n = 0;
    for (const b of this.#bands) n += b.size;
    return n;
  }

  /** priority → waiting, every band that has been used */
  depths(): Map<number, number> {
    return new Map(this.#bands.map((b) => [b.priority, b.size]));
  }

  depth(priority: number): number {
    return this.#bands.find((b) => b.priority === priority)?.size ?? 0;
  }

  /** false when the band is full (the caller answers 429) */
  push(priority: number, tenant: string, deadline: number, resolve: Waiter['resolve']): boolean {
    let band = this.#bands.find((b) => b.priority === priority);
    if (!band) {
      band = new Band(priority);
      const i = this.#bands.findIndex((b) => b.priority < priority);
      this.#bands.splice(i < 0 ? this.#bands.length : i, 0, band);
    }
    if (band.size >= this.#maxQueue) return false;
    let q = band.byTenant.get(tenant);
    if (!q) band.byTenant.set(tenant, (q = []));
    q.push({ since: this.#now(), deadline, resolve });
    band.size++;
    return true;
  }

  /** Admits the head (highest band, the tenant whose turn it is, its oldest); false when empty. */
  admitOne(): boolean {
    for (const band of this.#bands) {
      for (const [tenant, q] of band.byTenant) {
        const w = q.shift()!;
        band.size--;
        band.byTenant.delete(tenant);
        // the tenant goes to the back of the turn order, with what it has left
        if (q.length > 0) band.byTenant.set(tenant, q);
        w.resolve('admitted', this.#now() - w.since);
        return true;
      }
    }
    return false;
  }

  /** Refuses every waiter past its deadline. */
  expire(): void {
    const now = this.#now();
    for (const band of this.#bands) {
      for (const [tenant, q] of band.byTenant) {
        let kept = 0;
        for (const w of q) {
          if (w.deadline <= now) w.resolve('expired', now - w.since);
          else q[kept++] = w;
        }
        band.size -= q.length - kept;
        q.length = kept;
        if (kept === 0) band.byTenant.delete(tenant);
      }
    }
  }

  /** Every waiter refused (closing). */
  drain(): void {
    for (const band of this.#bands) {
      for (const q of band.byTenant.values()) for (const w of q) w.resolve('closed', this.#now() - w.since);
      band.byTenant.clear();
      band.size = 0;
    }
  }
}

/** One FlowQueue per pool, released while `hasRoom(pool)` holds; the timer runs only while something waits. */
export class FlowGate {
  readonly #queues = new Map<string, FlowQueue>();
  readonly #hasRoom: (pool: string) => boolean;
  readonly #maxQueue: number;
  readonly #maxWaitMs: number;
  readonly #pollMs: number;
  readonly #onDepth: (pool: string, q: FlowQueue) => void;
  /** pools with an admitted request still being picked: the next waits for it (admission order = pick order) */
  readonly #picking = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(o: FlowOptions, hasRoom: (pool: string) => boolean, onDepth: (pool: string, q: FlowQueue) => void = () => {}) {
    this.#hasRoom = hasRoom;
    this.#maxQueue = o.maxQueue ?? 1024;
    this.#maxWaitMs = o.maxWaitMs ?? 30_000;
    this.#pollMs = o.pollMs ?? 5;
    this.#onDepth = onDepth;
  }

  waiting(pool: string, priority?: number): number {
    const q = this.#queues.get(pool);
    if (!q) return 0;
    return priority === undefined ? q.size : q.depth(priority);
  }

  /** Waits for room in `pool`: 'admitted', 'expired' (past maxWaitMs), 'full' (the band is at maxQueue) or 'closed' (the gate closed). */
  wait(pool: string, priority: number, tenant: string): Promise<{ outcome: FlowOutcome; waitedMs: number }> {
    if (this.#closed) return Promise.resolve({ outcome: 'closed', waitedMs: 0 });
    let q = this.#queues.get(pool);
    if (!q) this.#queues.set(pool, (q = new FlowQueue(this.#maxQueue)));
    return new Promise((resolve) => {
      const ok = q.push(priority, tenant, Date.now() + this.#maxWaitMs, (outcome, waitedMs) => resolve({ outcome, waitedMs }));
      if (!ok) return resolve({ outcome: 'full', waitedMs: 0 });
      this.#onDepth(pool, q);
      this.#arm();
    });
  }

  /** The admitted request of `pool` has been picked: the next may go. */
  picked(pool: string): void {
    this.#picking.delete(pool);
    this.poke();
  }

  /** Something finished: release what fits now rather than at the next tick. */
  poke(): void {
    if (this.#queues.size > 0) this.#tick();
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    for (const q of this.#queues.values()) q.drain();
    this.#queues.clear();
  }

  #arm(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.#tick(), this.#pollMs);
    this.#timer.unref();
  }

  #tick(): void {
    for (const [pool, q] of this.#queues) {
      q.expire();
      // one admission per check: the admitted request's own load shows in the next check
      if (q.size > 0 && !this.#picking.has(pool) && this.#hasRoom(pool) && q.admitOne()) this.#picking.add(pool);
      this.#onDepth(pool, q);
      if (q.size === 0) this.#queues.delete(pool);
    }
    if (this.#queues.size === 0 && this.#timer) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
}
