/**
 * The worker shim: runs beside one engine, puts its KV cache and load on the bus, fronts it for P/D.
 *
 *   const shim = await startShim(bus, { worker, model, engineUrl, kvEvents, kvReplay });
 *   … shim.url (HTTP front) …
 *   await shim.stop();      // deregisters, drains the HTTP front, publishes `cleared` (every step bounded)
 *
 * With data parallelism (`dataParallelSize` / `dpRank`) one shim publishes each rank of the engine server as
 * its own worker `<worker>-dp<r>` (rank-worker.ts: its own event socket on port + r, relay, load report and
 * registration with `dpRank`); the HTTP front, the /metrics scrape and the LoRA names are shared.
 *
 * The engine is probed (engine-health.ts): while it fails, load reports say `healthy: false` and /healthz answers
 * 503; down past `engineDownDeregisterMs` the workers are deregistered, and registered again when it answers.
 *
 * Wiring only: the event relay (relay.ts) is the actor that owns the KV state; sockets live in
 * zmq-edge.ts, load-scraper.ts, registry.ts and http.ts.
 */
import { request } from 'undici';
import { AggregatorRegistry } from 'prom-client';
import { ClusterVerifier, initHashing, KvgateError, logger, startDiagPublisher, subjects, type Bus, eventStreamConfig } from '@kvgate/protocol';
import { createMetrics, type ShimMetrics } from './metrics.js';
import { resolveOptions, type ResolvedShimOptions, type ShimOptions } from './options.js';
import { LoraNames, lorasFromModels, maxModelLenFromModels } from './lora.js';
import { LoadScraper } from './load-scraper.js';
import { registryKey } from './registry.js';
import { HttpFront } from './http.js';
import { PrefillTargets, watchPrefillTargets } from './prefill-targets.js';
import { engineLoad, enginePrefixCache } from './engine-load.js';
import { offsetEndpoint } from './dp.js';
import { RankWorker, type SharedShape } from './rank-worker.js';
import { EngineHealth, EngineProber, type EngineHealthEvent } from './engine-health.js';
import type { Sample } from './prom-text.js';

export type { ShimOptions } from './options.js';
export { registryKey } from './registry.js';

const log = logger('shim');

/** one published worker (an engine, or one data-parallel rank) */
export interface RankHandle {
  readonly worker: string;
  /** undefined without data parallelism */
  readonly dpRank: number | undefined;
  readonly metrics: ShimMetrics;
  readonly capacityBlocks: number;
  readonly eventSeq: number;
  readonly mapSize: number;
  /** the last load reading of this worker (`split`: an even share of the server's totals) */
  readonly load: import('./engine-load.js').EngineLoad;
  dropNextFrames(n: number): void;
}

export interface ShimHandle {
  /** the worker id given; without data parallelism the one worker published, else the ranks' ids' stem */
  readonly worker: string;
  /** the workers published, in rank order (one without data parallelism) */
  readonly ranks: readonly RankHandle[];
  /** the shim's HTTP front (empty when port = -1) */
  readonly url: string;
  /** without data parallelism the worker's metrics; with it the server-wide ones (scrapes, proxied requests) */
  readonly metrics: ShimMetrics;
  /** block size and capacity as currently known (capacity: the first rank's) */
  readonly blockSize: number;
  readonly capacityBlocks: number;
  /** last outgoing event batch sequence (the first rank's) */
  readonly eventSeq: number;
  /** entries in the engine-hash maps (all ranks) */
  readonly mapSize: number;
  /** resolves once every engine message received so far is relayed and stored in the event stream (all ranks; the wait for the stream is bounded by 5 s) */
  idle(): Promise<void>;
  /** test hook: drop the next `n` engine messages (the first rank's) as if the network lost them */
  dropNextFrames(n: number): void;
  /**
   * clean shutdown: deregister, stop accepting and let proxied requests finish for `drainMs` (default 0) before
   * they are cut, publish `cleared`, close sockets. Every step is bounded: a bus or engine that is gone does not
   * hold it for more than a few seconds past the drain.
   */
  stop(opts?: { drainMs?: number }): Promise<void>;
  /** the pod died: stop everything without deregistering or publishing anything (the TTL expires the worker) */
  kill(): Promise<void>;
}

const LORA_REFRESH_MS = 5_000;
/** each step of a shutdown waits at most this long (a bus or an engine that is gone must not hold it) */
const STEP_MS = 2_000;

function within(ms: number, p: Promise<unknown>): Promise<unknown> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise((r) => (t = setTimeout(r, ms)))]).finally(() => clearTimeout(t));
}

export async function startShim(bus: Bus, options: ShimOptions): Promise<ShimHandle> {
  const o: ResolvedShimOptions = resolveOptions(options);
  await initHashing();
  const s = subjects(o.namespace);
  const dp = o.dp;
  // Without data parallelism the one worker's metrics are the shim's (as always); with it each rank has its
  // own registry (default label worker=<id>-dp<r>) beside the server's, and /metrics serves them all.
  const metrics = createMetrics(o.worker);
  const loras = new LoraNames(o.loraMap);

  // the durable stream every indexer reads; create it if nobody has yet
  const stream = await bus.stream(s.eventStream, eventStreamConfig(s));
  const kv = await bus.kv(s.workersBucket, { ttlMs: o.registryTtlMs });

  let lastLoraRefresh = 0;
  const refreshLoras = async (): Promise<void> => {
    const now = Date.now();
    if (now - lastLoraRefresh < LORA_REFRESH_MS) return;
    lastLoraRefresh = now;
    try {
      const res = await request(`${o.engineUrl}/v1/models`, { headersTimeout: 2000, bodyTimeout: 2000, ...(o.engineApiKey ? { headers: { authorization: `Bearer ${o.engineApiKey}` } } : {}) });
      const body = await res.body.json();
      if (res.statusCode === 200) {
        loras.learnFromModels(lorasFromModels(body));
        // the engine's context length, for the routers' /v1/models (re-registered when it changes)
        const len = maxModelLenFromModels(body, o.model);
        if (len !== undefined && len !== shared.maxModelLen) {
          shared.maxModelLen = len;
          for (const r of ranks) r.putRegistration();
        }
      }
    } catch (e) {
      log.debug({ err: String(e) }, 'could not read /v1/models');
    }
  };

  let ranks: RankWorker[] = [];
  const shared = {
    blockSize: o.blockSize,
    loras: [] as string[],
    maxModelLen: undefined as number | undefined,
    advertised: o.engineUrl,
    stopped: false as boolean,
    engineUp: true as boolean,
    url: '',
    onBlockSize(b: number) {
      if (b === shared.blockSize) return;
      shared.blockSize = b;
      for (const r of ranks) {
        r.blockSizeChanged();
        r.putRegistration();
      }
    },
  } satisfies SharedShape;

  ranks = (dp ? dp.ranks : [{ rank: undefined, worker: o.worker }]).map(
    ({ rank, worker }) =>
      new RankWorker({
        bus,
        kv,
        stream,
        o,
        worker,
        dpRank: rank,
        metrics: dp ? createMetrics(worker) : metrics,
        loras,
        refreshLoras,
        events: { endpoint: offsetEndpoint(o.kvEvents.endpoint, rank ?? 0), bind: o.kvEvents.bind },
        replay: o.kvReplay ? offsetEndpoint(o.kvReplay, rank ?? 0) : undefined,
        shared,
      }),
  );

  // ---- load: one scrape serves every rank; each rank publishes its own reading ---------------------------
  const onSamples = (samples: Sample[]) => {
    let serverShape = false;
    for (const r of ranks) {
      const sel = dp && r.dpRank !== undefined ? { rank: r.dpRank, size: dp.dpSize } : undefined;
      const l = engineLoad(samples, sel);
      const pc = enginePrefixCache(samples, sel);
      if (pc) {
        r.metrics.enginePrefixQueries.set(pc.queries);
        r.metrics.enginePrefixHits.set(pc.hits);
      }
      if (l.blockSize !== undefined && l.blockSize !== shared.blockSize) {
        shared.blockSize = l.blockSize;
        for (const x of ranks) x.blockSizeChanged();
        serverShape = true;
      }
      if (l.loras && l.loras.join(',') !== shared.loras.join(',')) {
        shared.loras = l.loras;
        serverShape = true;
      }
      if (r.setLoad(l) && !serverShape) r.putRegistration();
      r.publishLoad(false);
    }
    if (serverShape) for (const r of ranks) r.putRegistration();
  };
  const scraper = new LoadScraper(o.engineUrl, o.scrapeIntervalMs, metrics, onSamples);
  const loadTimer = setInterval(() => {
    for (const r of ranks) r.publishLoad(true);
  }, o.loadIntervalMs);
  loadTimer.unref();

  // ---- HTTP front ------------------------------------------------------------------------------------
  let front: HttpFront | undefined;
  // where a P/D request may prefill: the registry's live prefill workers (a decode-capable front only)
  const prefillTargets = o.port >= 0 && o.role !== 'prefill' ? new PrefillTargets({ confirmMs: o.registryTtlMs }) : undefined;
  if (o.port >= 0) {
    front = new HttpFront({
      worker: o.worker,
      rankWorker: dp ? (r) => dp.ranks.find((x) => x.rank === r)?.worker : undefined,
      role: o.role,
      engineUrl: o.engineUrl,
      maxBodyBytes: o.maxBodyBytes,
      metrics,
      metricsText: dp ? () => metricsText([metrics, ...ranks.map((r) => r.metrics)]) : undefined,
      onServed: (w) => ranks.find((r) => r.worker === w)?.diag.serving(),
      ...(o.clusterSecret ? { clusterAuth: new ClusterVerifier(o.clusterSecret) } : {}),
      prefillTargets,
      nixlSideChannelPort: o.nixlSideChannelPort,
      prefillTimeoutMs: o.prefillTimeoutMs,
      ...(o.engineApiKey ? { engineApiKey: o.engineApiKey } : {}),
      httpLimits: o.httpLimits,
      unhealthy: () => (shared.engineUp ? undefined : new KvgateError('KVG_ENGINE_DOWN', `worker ${o.worker}: the engine at ${o.engineUrl} does not answer GET /health`)),
      health: () => ({
        status: shared.stopped ? 'stopping' : 'ok',
        worker: o.worker,
        model: o.model,
        role: o.role,
        blockSize: shared.blockSize,
        capacityBlocks: ranks[0]!.capacityBlocks,
        engineNextSeq: String(ranks[0]!.relay.engineNext),
        eventSeq: ranks[0]!.relay.outSeq,
        mapEntries: ranks.reduce((n, r) => n + r.relay.mapSize, 0),
        ...(dp
          ? {
              ranks: ranks.map((r) => ({
                worker: r.worker,
                dpRank: r.dpRank,
                capacityBlocks: r.capacityBlocks,
                engineNextSeq: String(r.relay.engineNext),
                eventSeq: r.relay.outSeq,
                mapEntries: r.relay.mapSize,
              })),
            }
          : {}),
      }),
    });
    shared.url = await front.listen(o.port, o.host);
  }
  const targetWatch = prefillTargets ? watchPrefillTargets(kv, prefillTargets) : undefined;
  shared.advertised = o.advertiseUrl ?? (shared.url || o.engineUrl);

  // ---- engine health: probe GET /health; report, withdraw and rejoin on what it says ------------------------
  const health = new EngineHealth(o.engineDownDeregisterMs);
  metrics.engineUp.set(1);
  const started: RankWorker[] = [];
  const onHealth = (ev: EngineHealthEvent, detail: string) => {
    if (ev === 'down' || ev === 'up') {
      shared.engineUp = ev === 'up';
      metrics.engineUp.set(ev === 'up' ? 1 : 0);
      if (ev === 'down') log.warn({ worker: o.worker, engine: o.engineUrl, detail }, 'engine down: load reports say healthy: false');
      else log.info({ worker: o.worker, engine: o.engineUrl }, 'engine answers again: healthy');
      for (const r of ranks) r.publishLoad(true);
    } else if (ev === 'withdraw') {
      log.warn({ worker: o.worker, downMs: o.engineDownDeregisterMs }, 'engine still down: deregistered until it answers');
      for (const r of started) void r.withdraw();
    } else if (!shared.stopped) {
      log.info({ worker: o.worker }, 'engine is back: registering again');
      for (const r of started) void r.rejoin();
    }
  };
  const prober = new EngineProber({
    engineUrl: o.engineUrl,
    intervalMs: o.engineProbeMs,
    timeoutMs: o.engineProbeTimeoutMs,
    onResult: (ok, detail, timedOut) => {
      if (shared.stopped) return;
      for (const ev of health.observe(ok, Date.now(), timedOut)) onHealth(ev, detail);
    },
  });

  // Learn the engine's shape before registering (best effort: an engine still starting answers later).
  await Promise.all([scraper.scrape(), refreshLoras(), prober.probe()]);
  scraper.start();
  prober.start();

  let diag: { stop(): void } | undefined;
  const shutdown = async (clean: boolean, drainMs = 0) => {
    if (shared.stopped) return;
    shared.stopped = true;
    clearInterval(loadTimer);
    diag?.stop();
    prober.stop();
    // deregister first (routers stop sending here), then drain what is in flight, then the event side
    if (clean) await within(STEP_MS, Promise.all(started.map((r) => r.withdraw())));
    await front?.close(drainMs);
    await within(STEP_MS, targetWatch?.stop() ?? Promise.resolve());
    await within(STEP_MS, scraper.stop());
    await within(STEP_MS, Promise.all(started.map((r) => r.stop(clean))));
    if (clean) await within(STEP_MS, bus.flush().catch(() => undefined));
    for (const r of ranks) r.relay.stop();
    log.info({ worker: o.worker, clean }, 'shim stopped');
  };
  try {
    for (const r of ranks) {
      started.push(r);
      await r.start();
    }
  } catch (e) {
    // a bind that failed (port in use) must not leave the other ranks registered and their sockets open
    await shutdown(true);
    throw e;
  }
  // misconfiguration signals (diag.ts), for `kvgate doctor`
  diag = startDiagPublisher({ bus, subjects: s, source: 'shim', id: o.worker, intervalMs: o.diagIntervalMs, check: () => ranks.map((r) => r.diag.check(shared.blockSize)) });
  log.info(
    {
      worker: o.worker,
      workers: ranks.map((r) => r.worker),
      model: o.model,
      role: o.role,
      url: shared.url,
      events: o.kvEvents.endpoint,
      bind: o.kvEvents.bind,
      replay: o.kvReplay,
      key: registryKey(o.worker),
      clusterSigned: o.clusterSecret !== undefined,
    },
    'shim started',
  );

  const rankHandle = (r: RankWorker): RankHandle => ({
    worker: r.worker,
    dpRank: r.dpRank,
    metrics: r.metrics,
    get capacityBlocks() {
      return r.capacityBlocks;
    },
    get eventSeq() {
      return r.relay.outSeq;
    },
    get mapSize() {
      return r.relay.mapSize;
    },
    get load() {
      return r.load;
    },
    dropNextFrames: (n) => r.dropNextFrames(n),
  });
  const first = ranks[0]!;
  return {
    worker: o.worker,
    ranks: ranks.map(rankHandle),
    get url() {
      return shared.url;
    },
    metrics,
    get blockSize() {
      return shared.blockSize;
    },
    get capacityBlocks() {
      return first.capacityBlocks;
    },
    get eventSeq() {
      return first.relay.outSeq;
    },
    get mapSize() {
      return ranks.reduce((n, r) => n + r.relay.mapSize, 0);
    },
    idle: async () => {
      await Promise.all(ranks.map((r) => r.relay.idle()));
      await Promise.all(ranks.map((r) => r.publisher.drained(5000)));
    },
    dropNextFrames(n: number) {
      first.dropNextFrames(n);
    },
    stop: (opts) => shutdown(true, opts?.drainMs ?? 0),
    kill: () => shutdown(false),
  };
}

/**
 * One exposition of several registries whose metrics share names: each family once, with every registry's
 * series (they differ by their default `worker` label). Concatenating the texts would repeat HELP/TYPE lines,
 * which Prometheus rejects.
 */
async function metricsText(all: ShimMetrics[]): Promise<string> {
  return AggregatorRegistry.aggregate(await Promise.all(all.map((m) => m.registry.getMetricsAsJSON()))).metrics();
}
