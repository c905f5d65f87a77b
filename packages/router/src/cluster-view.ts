/**
 * The cluster view: what one router knows of the cluster, kept current by the bus. It owns the worker registry and
 * load reports (workers.ts), the in-flight ledger shared with peer routers (inflight.ts), passive health
 * (health.ts) and the registry held through a bus outage (registry-hold.ts), and it is their only writer from the
 * bus: the registry watch, `…load.*`, `…router.active` and `…router.suspect` are its mailbox; its timers publish
 * this router's in-flight batch (every `flushMs`) and keep the view (drop confirmed lapses, flag a stale view).
 * The routing core (routing-core.ts) reads it; the edges tell it how upstream calls went (`upstreamFailed`,
 * `upstreamAnswered`).
 *
 * The bus is not on the serving path: through an outage the last-known registry is kept (a lapse is not a worker
 * leaving until the bus confirms it; a broken registry watch is watched again), and the view is flagged stale after
 * `staleViewMs` but still used.
 */
import {
  decode,
  decodeActive,
  decodeLoad,
  decodeRegistration,
  encode,
  type Bus,
  type KvEntry,
  type KvWatcher,
  type Logger,
  type Subjects,
  type Subscription,
} from '@kvgate/protocol';
import { WorkerHealth, type FailureReason } from './health.js';
import { Inflight } from './inflight.js';
import type { RouterMetrics } from './metrics.js';
import { RegistryHold } from './registry-hold.js';
import { decodeSuspect, encodeSuspect, suspectSubject } from './suspect-wire.js';
import { WorkerView } from './workers.js';

export interface ClusterViewOptions {
  /** this router's id (its in-flight batches and suspect messages carry it) */
  id: string;
  subjects: Subjects;
  metrics: RouterMetrics;
  log: Logger;
  /** a worker whose last load report is older than this is not live; default 3000 ms */
  staleMs?: number;
  /** predicted-prefix credit lifetime; default 30000 ms */
  predictedTtlMs?: number;
  /** TTL the workers bucket is opened with (must match the shims'); default 3000 ms */
  registryTtlMs?: number;
  /** in-flight batch period on `…router.active`; default 20 ms */
  flushMs?: number;
  /** bus silent this long: the view is flagged stale (still used); default 60000 ms */
  staleViewMs?: number;
  /** back-off of a worker after an upstream failure; default 1000 ms */
  suspectBackoffMs?: number;
  /** ceiling of that back-off; default 30000 ms */
  suspectMaxBackoffMs?: number;
  /** called when a worker leaves the view (deregistered, or a lapse the bus confirmed) */
  onWorkerDropped?: (worker: string) => void;
}

export class ClusterView {
  readonly workers: WorkerView;
  readonly inflight: Inflight;
  readonly health: WorkerHealth;
  readonly hold: RegistryHold;
  readonly #bus: Bus;
  readonly #o: ClusterViewOptions;
  readonly #log: Logger;
  readonly #metrics: RouterMetrics;
  readonly #suspectSubj: string;
  #subs: Subscription[] = [];
  #keyToWorker = new Map<string, string>();
  /** per key, the revision of its last put: a delete carrying that revision is a lapse (TTL), any other a deregistration */
  #putRevision = new Map<string, number>();
  #watcher: KvWatcher | undefined;
  #watchLoop: Promise<void> = Promise.resolve();
  #rewatching = false;
  #wakeWatch: (() => void) | undefined;
  /** workers shown as unhealthy on the gauge (a flag also ends by age, without a report: upkeep looks again) */
  #unhealthyShown = new Set<string>();
  #waiters = new Set<() => void>();
  #registryLoaded = false;
  #closed = false;
  #busWasUp = true;
  #viewStale = false;
  #lastPublish = 0;
  #upkeep: NodeJS.Timeout | undefined;
  #flushTimer: NodeJS.Timeout | undefined;

  private constructor(bus: Bus, o: ClusterViewOptions) {
    this.#bus = bus;
    this.#o = o;
    this.#log = o.log;
    this.#metrics = o.metrics;
    this.#suspectSubj = suspectSubject(o.subjects);
    this.workers = new WorkerView({ staleMs: o.staleMs ?? 3000 });
    this.health = new WorkerHealth({ baseBackoffMs: o.suspectBackoffMs ?? 1000, maxBackoffMs: o.suspectMaxBackoffMs ?? 30_000, reportTtlMs: o.staleMs ?? 3000 });
    this.hold = new RegistryHold({ staleViewMs: o.staleViewMs ?? 60_000 });
    this.inflight = new Inflight({ routerId: o.id, predictedTtlMs: o.predictedTtlMs ?? 30_000 });
  }

  /** Subscribe, open the workers bucket and start watching it; resolves once the watch is set up. */
  static async open(bus: Bus, o: ClusterViewOptions): Promise<ClusterView> {
    const v = new ClusterView(bus, o);
    await v.#start();
    return v;
  }

  /** the registry's first listing has been applied (until then /readyz is not ready) */
  get registryLoaded(): boolean {
    return this.#registryLoaded;
  }

  /** workers live now */
  liveCount(): number {
    return this.workers.all().filter((r) => this.workers.isLive(r.worker)).length;
  }

  /** resolves once at least `n` live workers are known (or rejects after timeoutMs) */
  waitForWorkers(n: number, timeoutMs: number, onTimeout: (live: number) => Error): Promise<void> {
    if (this.liveCount() >= n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.liveCount() >= n) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(onTimeout(this.liveCount()));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }

  // ---- what the edges report about upstream calls -----------------------------------------------------------------

  /** A connect failure or a 5xx before the first byte: the worker turns suspect (shared with peers). */
  upstreamFailed(worker: string, reason: FailureReason, err: Error): void {
    const s = this.health.fail(worker);
    if (!s.changed) return;
    this.#metrics.suspect.set({ worker }, 1);
    this.#log.warn({ worker, reason, backoffMs: s.backoffMs, err: err.message }, s.newly ? 'worker suspect: skipped while others are available' : 'worker failed again after its back-off: back-off doubled');
    this.#publishSuspect(worker, true, reason, s.backoffMs);
  }

  /** The worker answered: a suspicion it carried is cleared (here and at the peers). */
  upstreamAnswered(worker: string): void {
    if (this.health.quiet || !this.health.succeed(worker)) return;
    this.#metrics.suspect.set({ worker }, 0);
    this.#log.info({ worker }, 'suspect worker answered: cleared');
    this.#publishSuspect(worker, false);
  }

  /** Stop the timers and subscriptions and end the registry watch. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#flushTimer);
    clearInterval(this.#upkeep);
    this.#wakeWatch?.();
    for (const s of this.#subs) s.unsubscribe();
    this.#watcher?.stop();
    await this.#watchLoop;
  }

  // ---- the mailbox: bus subscriptions and the registry watch --------------------------------------------------------

  async #start(): Promise<void> {
    const { subjects: subj } = this.#o;
    const log = this.#log;
    this.#subs.push(
      this.#bus.subscribe(subj.loadAll, {
        callback: (m) => {
          this.#heard();
          try {
            const report = decodeLoad(m.data);
            this.workers.load(report);
            this.hold.reported(report.worker);
            this.#healthReport(report.worker, healthyField(report, m.data));
            this.#notify();
          } catch (e) {
            log.warn({ err: (e as Error).message }, 'bad load report');
          }
        },
      }),
    );
    this.#subs.push(
      this.#bus.subscribe(subj.routerActive, {
        callback: (m) => {
          this.#heard(); // our own heartbeat, echoed, is the bus's pulse when nothing else moves
          try {
            this.inflight.applyPeer(decodeActive(m.data));
          } catch (e) {
            log.warn({ err: (e as Error).message }, 'bad active batch');
          }
        },
      }),
    );
    this.#subs.push(
      this.#bus.subscribe(this.#suspectSubj, {
        callback: (m) => {
          this.#heard();
          try {
            this.#peerHealth(decodeSuspect(m.data));
          } catch (e) {
            log.warn({ err: (e as Error).message }, 'bad suspect message');
          }
        },
      }),
    );
    try {
      const kv = await this.#bus.kv(subj.workersBucket, { ttlMs: this.#o.registryTtlMs ?? 3000 });
      this.#watcher = kv.watch();
      const initialKeys = new Set(await kv.keys());
      this.#watchLoop = this.#watch(kv, initialKeys);
      if (initialKeys.size === 0) this.#registryLoaded = true;
    } catch (e) {
      for (const s of this.#subs) s.unsubscribe();
      throw e;
    }
    this.#upkeep = setInterval(() => this.#keep(), 250);
    this.#upkeep.unref();
    this.#flushTimer = setInterval(() => this.#flush(), this.#o.flushMs ?? 20);
    this.#flushTimer.unref();
  }

  /** A watch that ends or breaks (a bus outage, a server restart) is watched again; the workers it knew stay. */
  async #watch(kv: { watch(): KvWatcher; keys(): Promise<string[]> }, initialKeys: Set<string>): Promise<void> {
    const log = this.#log;
    let delayMs = 250;
    for (;;) {
      try {
        for await (const e of this.#watcher!) {
          this.#applyEntry(e, initialKeys);
          delayMs = 250;
        }
        if (this.#closed) return;
        if (!this.#rewatching) log.warn('registry watch ended; watching again (known workers are kept)');
      } catch (err) {
        if (this.#closed) return;
        log.warn({ err: (err as Error).message }, 'registry watch broke; watching again (known workers are kept)');
      }
      if (!this.#rewatching) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, delayMs);
          this.#wakeWatch = () => {
            clearTimeout(t);
            r();
          };
        });
        this.#wakeWatch = undefined;
        delayMs = Math.min(delayMs * 2, 5000);
      }
      this.#rewatching = false;
      if (this.#closed) return;
      await this.#reconcile(kv);
      if (this.#closed) return;
      try {
        this.#watcher = kv.watch();
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'registry watch cannot restart (bus closed)');
        return;
      }
    }
  }

  #applyEntry(e: KvEntry, initialKeys: Set<string>): void {
    if (e.op === 'put' && e.value) {
      this.#heard();
      try {
        const reg = decodeRegistration(e.value);
        this.#keyToWorker.set(e.key, reg.worker);
        this.#putRevision.set(e.key, e.revision);
        this.workers.upsert(reg);
        this.hold.renewed(reg.worker);
      } catch (err) {
        this.#log.warn({ key: e.key, err: (err as Error).message }, 'bad worker registration');
      }
    } else {
      const w = this.#keyToWorker.get(e.key) ?? e.key;
      // a lapse is made by the watcher's own clock (also while the bus is down): held, not dropped (registry-hold.ts)
      if (this.#putRevision.get(e.key) === e.revision) this.hold.lapsed(w);
      else {
        this.#heard();
        this.#dropWorker(w);
      }
    }
    initialKeys.delete(e.key);
    if (initialKeys.size === 0) this.#registryLoaded = true;
    this.#notify();
  }

  /** After a watch broke: keys gone meanwhile are lapses too (held until the bus confirms). */
  async #reconcile(kv: { keys(): Promise<string[]> }): Promise<void> {
    try {
      const live = new Set(await kv.keys());
      for (const [key, w] of this.#keyToWorker) if (!live.has(key)) this.hold.lapsed(w);
    } catch {
      /* the bus is still away: the next watch settles it */
    }
  }

  #dropWorker(w: string): void {
    for (const [k, v] of this.#keyToWorker) {
      if (v === w) {
        this.#keyToWorker.delete(k);
        this.#putRevision.delete(k);
      }
    }
    this.workers.remove(w);
    this.inflight.dropWorker(w);
    this.#o.onWorkerDropped?.(w);
    if (this.health.isSuspect(w)) this.#metrics.suspect.remove({ worker: w });
    if (this.#unhealthyShown.delete(w)) this.#metrics.unhealthy.remove({ worker: w });
    this.health.forget(w);
    this.hold.removed(w);
  }

  /** Something arrived on the bus. After a silence, the registry watch is re-read (it may not have survived). */
  #heard(): void {
    if (!this.hold.heard() || this.#closed || !this.#watcher) return;
    this.#log.info('bus heard again after a silence; re-reading the registry');
    this.#rewatching = true;
    this.#watcher.stop();
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  // ---- passive health (health.ts) ---------------------------------------------------------------------------------

  #publishSuspect(worker: string, suspect: boolean, reason?: FailureReason, backoffMs?: number): void {
    try {
      this.#bus.publish(this.#suspectSubj, encodeSuspect({ router: this.#o.id, worker, suspect, ...(reason ? { reason } : {}), ...(backoffMs ? { backoffMs } : {}), ts: Date.now() }));
    } catch (e) {
      this.#log.warn({ err: (e as Error).message }, 'cannot publish a suspect message');
    }
  }

  #peerHealth(m: ReturnType<typeof decodeSuspect>): void {
    if (m.router === this.#o.id || !this.workers.registration(m.worker)) return;
    if (m.suspect) {
      if (this.health.peerSuspect(m.worker, m.backoffMs!)) {
        this.#metrics.suspect.set({ worker: m.worker }, 1);
        this.#log.info({ worker: m.worker, peer: m.router, reason: m.reason, backoffMs: m.backoffMs }, 'worker suspect at a peer router');
      }
    } else if (this.health.peerCleared(m.worker)) {
      this.#metrics.suspect.set({ worker: m.worker }, 0);
    }
  }

  #healthReport(worker: string, healthy: boolean | undefined): void {
    if (this.health.report(worker, healthy)) {
      this.#metrics.suspect.set({ worker }, 0);
      this.#log.info({ worker }, 'suspect worker cleared by a healthy load report');
    }
    this.#syncUnhealthy(worker);
  }

  #syncUnhealthy(worker: string): void {
    const now = this.health.isUnhealthy(worker);
    if (now === this.#unhealthyShown.has(worker)) return;
    this.#metrics.unhealthy.set({ worker }, now ? 1 : 0);
    if (now) {
      this.#unhealthyShown.add(worker);
      this.#log.warn({ worker }, 'load report says the engine is down: not picked');
    } else {
      this.#unhealthyShown.delete(worker);
      this.#log.info({ worker }, 'the engine is no longer reported down');
    }
  }

  // ---- timers: the view's upkeep and the in-flight batch ----------------------------------------------------------

  /** Drop confirmed lapses, flag a stale view, refresh the bus gauges. */
  #keep(): void {
    const { hold } = this;
    for (const w of hold.due()) {
      this.#log.info({ worker: w }, 'registration lapsed and the bus is up: worker dropped');
      this.#dropWorker(w);
      this.#notify();
    }
    const up = hold.busUp();
    if (up !== this.#busWasUp) {
      this.#busWasUp = up;
      if (!up) this.#log.warn({ silentMs: hold.silentMs() }, 'bus silent: serving from the last-known registry, routing by load where the index cannot answer');
    }
    const stale = hold.stale();
    if (stale !== this.#viewStale) {
      this.#viewStale = stale;
      this.#metrics.viewStale.set(stale ? 1 : 0);
      if (stale) this.#log.warn({ silentMs: hold.silentMs(), staleViewMs: hold.staleViewMs }, 'view is stale (bus silent past staleViewMs); still used while engines answer');
      else this.#log.info('view fresh again');
    }
    this.#metrics.busSilent.set(hold.silentMs() / 1000);
    this.#metrics.heldWorkers.set(hold.held().length);
    for (const w of [...this.#unhealthyShown]) this.#syncUnhealthy(w);
  }

  /** This router's in-flight deltas to its peers; an empty batch once a second is the heartbeat. */
  #flush(): void {
    const batch = this.inflight.takeBatch();
    const now = Date.now();
    if (batch || now - this.#lastPublish >= 1000) {
      this.#lastPublish = now;
      try {
        this.#bus.publish(this.#o.subjects.routerActive, encode(batch ?? { router: this.#o.id, deltas: [] }));
      } catch (e) {
        this.#log.warn({ err: (e as Error).message }, 'cannot publish in-flight batch');
      }
    }
  }
}

/**
 * Does the protocol's decodeLoad keep `healthy`? (Asked once. A decodeLoad that keeps only the fields it knew
 * before DESIGN.md §4 added `healthy` would drop it; the raw payload is then read again for it.)
 */
const DECODE_KEEPS_HEALTHY =
  (decodeLoad(encode({ worker: 'w', model: 'm', role: 'both', waiting: 0, running: 0, kvUsage: 0, capacityBlocks: 0, url: '', ts: 0, healthy: false })) as { healthy?: unknown }).healthy === false;

/** A load report's `healthy` (DESIGN.md §4; absent = unknown). */
function healthyField(report: object, bytes: Uint8Array): boolean | undefined {
  const v = DECODE_KEEPS_HEALTHY ? report : (decode(bytes) as object);
  const h = (v as { healthy?: unknown }).healthy;
  return typeof h === 'boolean' ? h : undefined;
}
