/**
 * One worker the shim publishes: an engine, or one data-parallel rank of an engine server (dp.ts). Wiring only:
 * its own event socket → its own EventRelay (engine map, sequences) → `…events.<hash bits>.<worker>`; its own load report and
 * registration. What the ranks of one server share (HTTP front, /metrics scrape, LoRA names, block size) stays
 * in index.ts and is read through `shared`.
 */
import { Counter, Gauge } from 'prom-client';
import { decodeResyncRequest, encode, errorBody, logger, subjects, type Bus, type DurableStream, type KvStore, type LoadReport, type Msg, type ReplayMessage, type Subscription, type WorkerRegistration, eventStreamConfig } from '@kvgate/protocol';
import { EventRelay } from './relay.js';
import { EventPublisher } from './publisher.js';
import { EngineSubscriber, requestReplay, type SubscriberEndpoint } from './zmq-edge.js';
import { Registration } from './registry.js';
import { peekDpRank } from './dp.js';
import { ShimDiag } from './diag.js';
import type { EngineLoad } from './engine-load.js';
import type { LoraNames } from './lora.js';
import type { ShimMetrics } from './metrics.js';
import type { ResolvedShimOptions } from './options.js';

const log = logger('shim');

/** what the ranks of one engine server have in common (owned by index.ts) */
export interface SharedShape {
  readonly blockSize: number;
  readonly loras: string[];
  /** the engine's max_model_len from its /v1/models (undefined: not read yet) */
  readonly maxModelLen: number | undefined;
  /** URL routers send this worker's requests to */
  readonly advertised: string;
  readonly stopped: boolean;
  /** the engine answers its health probe (engine-health.ts); load reports carry it as `healthy` */
  readonly engineUp: boolean;
  /** the front's URL, for load reports (empty: none) */
  readonly url: string;
  /** an event showed the engine's block size */
  onBlockSize(b: number): void;
}

export interface RankWorkerDeps {
  bus: Bus;
  kv: KvStore;
  /** the event stream (opened by index.ts); batches are appended to it with an acknowledgement (publisher.ts) */
  stream: DurableStream;
  o: ResolvedShimOptions;
  worker: string;
  /** the data-parallel rank, or undefined without data parallelism (then batches' ranks are not checked) */
  dpRank: number | undefined;
  metrics: ShimMetrics;
  loras: LoraNames;
  refreshLoras(): Promise<void>;
  events: SubscriberEndpoint;
  replay: string | undefined;
  shared: SharedShape;
}

const MISMATCH_LOG_MS = 60_000;

export class RankWorker {
  readonly worker: string;
  readonly dpRank: number | undefined;
  readonly metrics: ShimMetrics;
  readonly relay: EventRelay;
  /** the relay's batches into the event stream, buffered while the bus cannot take them */
  readonly publisher: EventPublisher;
  /** misconfiguration signals of this worker (diag.ts) */
  readonly diag: ShimDiag;
  load: EngineLoad = { engine: 'unknown', waiting: 0, running: 0, kvUsage: 0 };
  capacityBlocks: number;
  readonly #d: RankWorkerDeps;
  readonly #subject: string;
  readonly #loadSubject: string;
  readonly #mismatches: Counter;
  readonly #split: Gauge;
  #capacityTokens = 0;
  #registration: Registration | undefined;
  #sub: EngineSubscriber | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  #lastKey = '';
  #lastSent = 0;
  #lastMismatchLog = 0;
  #dropN = 0;
  #stream: DurableStream;
  #resyncSub: Subscription | undefined;
  #unStatus: (() => void) | undefined;

  constructor(d: RankWorkerDeps) {
    this.#d = d;
    this.worker = d.worker;
    this.dpRank = d.dpRank;
    this.metrics = d.metrics;
    this.capacityBlocks = d.o.capacityBlocks;
    const s = subjects(d.o.namespace);
    this.#subject = s.events(d.worker);
    this.#loadSubject = s.load(d.worker);
    const registers = [d.metrics.registry];
    this.#mismatches = new Counter({
      name: 'kvgate_shim_dp_rank_mismatches_total',
      help: "engine batches dropped because their data_parallel_rank / attn_dp_rank is not the rank of the socket they came on (a port or --dp-rank misconfiguration, or two engines on one bound port)",
      registers,
    });
    this.#split = new Gauge({
      name: 'kvgate_shim_load_even_split',
      help: "1 when this rank's load is the engine server's totals split evenly (the engine's /metrics has no per-rank series)",
      registers,
    });
    this.diag = new ShimDiag({ worker: d.worker, registry: d.metrics.registry, staleEventsMs: d.o.staleEventsMs });
    const replay = d.replay;
    this.#stream = d.stream;
    this.publisher = new EventPublisher({
      worker: d.worker,
      metrics: d.metrics,
      append: (data) => this.#stream.append(this.#subject, data),
      reopen: async () => {
        this.#stream = await d.bus.stream(s.eventStream, eventStreamConfig(s));
      },
      connected: () => d.bus.connected !== false,
      requestResync: () => void this.relay.resync().catch(() => undefined),
      maxBatches: d.o.publishBufferBatches,
      maxBytes: d.o.publishBufferBytes,
    });
    this.relay = new EventRelay({
      worker: d.worker,
      model: d.o.model,
      metrics: d.metrics,
      loras: d.loras,
      maxMapEntries: d.o.maxMapEntries,
      maxMailbox: 100_000,
      publish: (batch, resync) => {
        this.diag.published(batch);
        this.publisher.publish(batch, resync);
      },
      replay: async (from) => (replay ? this.#ownRank(await requestReplay(replay, from, d.o.replayTimeoutMs)) : null),
      refreshLoras: d.refreshLoras,
      onBlockSize: (b) => {
        this.diag.eventBlockSize(b);
        d.shared.onBlockSize(b);
      },
    });
  }

  /** a new reading of this worker's load (capacity in tokens is turned into blocks with the shared block size) */
  setLoad(l: EngineLoad): boolean {
    this.load = l;
    if (l.running + l.waiting > 0) this.diag.serving();
    this.#split.set(l.split ? 1 : 0);
    if (l.capacityTokens !== undefined) this.#capacityTokens = l.capacityTokens;
    const cap = l.capacityBlocks ?? (this.#capacityTokens > 0 ? Math.floor(this.#capacityTokens / this.#d.shared.blockSize) : undefined);
    if (cap === undefined || cap === this.capacityBlocks) return false;
    this.capacityBlocks = cap;
    return true;
  }

  /** the block size changed: capacity known only in tokens changes with it */
  blockSizeChanged(): void {
    if (this.#capacityTokens > 0) this.capacityBlocks = Math.floor(this.#capacityTokens / this.#d.shared.blockSize);
  }

  report(): LoadReport {
    const { o, shared } = this.#d;
    return {
      worker: this.worker,
      model: o.model,
      role: o.role,
      waiting: this.load.waiting,
      running: this.load.running,
      kvUsage: this.load.kvUsage,
      capacityBlocks: this.capacityBlocks,
      url: shared.url || o.engineUrl,
      healthy: shared.engineUp,
      indexedBlocks: this.relay.tierCounts,
      ts: Date.now(),
    };
  }

  #failing = 0;

  publishLoad(force: boolean): void {
    if (this.#d.shared.stopped) return;
    const key = `${this.load.waiting}|${this.load.running}|${this.load.kvUsage}|${this.capacityBlocks}|${this.#d.shared.engineUp}`;
    const now = Date.now();
    if (!force && key === this.#lastKey && now - this.#lastSent < this.#d.o.loadIntervalMs) return;
    this.#lastKey = key;
    this.#lastSent = now;
    try {
      this.#d.bus.publish(this.#loadSubject, encode(this.report()));
      this.metrics.loadReports.inc();
      if (this.#failing) log.info({ worker: this.worker, failed: this.#failing }, 'load reports published again');
      this.#failing = 0;
    } catch (e) {
      // a closed or failing bus must not take the process down from a timer; the next tick retries.
      // Logged when it starts failing (and every 240th failure, about once a minute), not on every tick.
      if (this.#failing++ % 240 === 0) log.warn({ worker: this.worker, err: String(e), failed: this.#failing }, 'load report not published');
    }
  }

  registration(): WorkerRegistration {
    const { o, shared } = this.#d;
    return {
      worker: this.worker,
      model: o.model,
      role: o.role,
      url: shared.advertised,
      engineUrl: o.engineUrl,
      blockSize: shared.blockSize,
      capacityBlocks: this.capacityBlocks,
      loras: shared.loras,
      ...(this.dpRank !== undefined ? { dpRank: this.dpRank } : {}),
      ...(shared.maxModelLen !== undefined ? { maxModelLen: shared.maxModelLen } : {}),
      ts: Date.now(),
    };
  }

  /** re-put the registration (shape changed); a no-op before start */
  putRegistration(): void {
    void this.#registration?.put();
  }

  /** `cleared` (a new shim incarnation voids what an earlier one published), register, subscribe */
  async start(): Promise<void> {
    const d = this.#d;
    this.#unStatus = d.bus.onStatus?.((st) => {
      if (st === 'reconnected') this.publisher.busReconnected();
    });
    await this.relay.publishCleared();
    this.#resyncSub = d.bus.subscribe(subjects(d.o.namespace).shimResync(this.worker), { callback: (m) => this.#onResync(m) });
    this.#registration = new Registration(d.kv, this.worker, () => this.registration(), d.o.heartbeatMs);
    await this.#registration.start();
    this.#sub = await EngineSubscriber.open(d.events, d.o.topic, {
      onMessage: (frames) => {
        if (this.#dropN > 0) {
          this.#dropN--;
          this.metrics.droppedFrames.inc();
          return;
        }
        if (this.dpRank !== undefined && frames.length === 3) {
          const r = peekDpRank(frames[2]!);
          if (r !== undefined && r !== this.dpRank) return this.#mismatch(r);
        }
        this.relay.post(frames);
      },
      onDisconnect: () => this.relay.engineDisconnected(),
      // the subscription reaches the engine a moment after the TCP connect; probe a little later
      onConnect: () => setTimeout(() => this.relay.engineConnected(), 50).unref(),
    });
    // A batch lost at the end of a burst (PUB high-water mark, a late subscription) shows as a gap only when
    // the next batch arrives; an idle engine may send none for long. Probe the replay socket now and then.
    if (d.replay) {
      this.#probeTimer = setInterval(() => this.relay.engineConnected(), d.o.replayProbeMs);
      this.#probeTimer.unref();
    }
  }

  /** the engine stayed down: delete the registration (routers and indexers drop the worker) until `rejoin` */
  async withdraw(): Promise<void> {
    await this.#registration?.stop(true);
  }

  /** the engine answers again: register again (and keep the heartbeat) */
  async rejoin(): Promise<void> {
    await this.#registration?.start();
  }

  /** an indexer asks for the whole block set (after a gap or an outage): republish it, reply with its seq */
  #onResync(m: Msg): void {
    try {
      const req = decodeResyncRequest(m.data);
      log.info({ worker: this.worker, fromSeq: req.fromSeq ?? null }, 'resync requested');
    } catch (err) {
      m.respond(encode(errorBody(err).body));
      return;
    }
    if (!this.relay.resyncQueued) this.metrics.resyncs.inc({ reason: 'request' });
    this.relay.resync().then(
      (seq) => m.respond(encode({ seq })),
      (err) => m.respond(encode(errorBody(err).body)),
    );
  }

  dropNextFrames(n: number): void {
    this.#dropN += n;
  }

  /**
   * A batch from another rank belongs to another engine's numbering (two engines on one bound port, or a
   * port offset that does not match --dp-rank): it is dropped before the relay sees it, so this rank's
   * sequence stays its own, and counted; the log says so once a minute.
   */
  #mismatch(got: number): void {
    this.#mismatches.inc();
    const now = Date.now();
    if (now - this.#lastMismatchLog >= MISMATCH_LOG_MS) {
      this.#lastMismatchLog = now;
      log.warn({ worker: this.worker, expected: this.dpRank, got, endpoint: this.#d.events.endpoint }, 'engine batch names another data-parallel rank than its socket: dropped (check --kv-events / --dp-rank / --data-parallel-size)');
    }
  }

  #ownRank(got: ReplayMessage[]): ReplayMessage[] {
    if (this.dpRank === undefined) return got;
    return got.filter((m) => {
      if (m.end || m.batch.dpRank === undefined || m.batch.dpRank === this.dpRank) return true;
      this.#mismatch(m.batch.dpRank);
      return false;
    });
  }

  async stop(clean: boolean): Promise<void> {
    if (this.#probeTimer) clearInterval(this.#probeTimer);
    this.#resyncSub?.unsubscribe();
    this.#unStatus?.();
    await this.#sub?.close();
    await this.#registration?.stop(clean);
    if (clean) {
      await this.relay.idle();
      await this.relay.publishCleared();
      await this.publisher.drained(2000);
    }
    this.publisher.stop();
  }
}
