/**
 * The worker shim: runs beside one engine, puts its KV cache and load on the bus, fronts it for P/D.
 *
 *   const shim = await startShim(bus, { worker, model, engineUrl, kvEvents, kvReplay });
 *   … shim.url (HTTP front) …
 *   await shim.stop();      // deregisters, publishes `cleared`
 *
 * Wiring only: the event relay (relay.ts) is the actor that owns the KV state; sockets live in
 * zmq-edge.ts, load-scraper.ts, registry.ts and http.ts.
 */
import { request } from 'undici';
import {
  encode,
  initHashing,
  logger,
  subjects,
  type Bus,
  type LoadReport,
  type WorkerRegistration, eventStreamConfig } from '@kvgate/protocol';
import { createMetrics, type ShimMetrics } from './metrics.js';
import { resolveOptions, type ResolvedShimOptions, type ShimOptions } from './options.js';
import { EventRelay } from './relay.js';
import { EngineSubscriber, requestReplay } from './zmq-edge.js';
import { LoraNames, lorasFromModels } from './lora.js';
import { LoadScraper } from './load-scraper.js';
import { Registration, registryKey } from './registry.js';
import { HttpFront } from './http.js';
import type { EngineLoad } from './engine-load.js';

export type { ShimOptions } from './options.js';
export { registryKey } from './registry.js';

const log = logger('shim');

export interface ShimHandle {
  readonly worker: string;
  /** the shim's HTTP front (empty when port = -1) */
  readonly url: string;
  readonly metrics: ShimMetrics;
  /** block size and capacity as currently known */
  readonly blockSize: number;
  readonly capacityBlocks: number;
  /** last outgoing event batch sequence */
  readonly eventSeq: number;
  /** entries in the engine-hash map */
  readonly mapSize: number;
  /** resolves once every engine message received so far is relayed */
  idle(): Promise<void>;
  /** test hook: drop the next `n` engine messages as if the network lost them */
  dropNextFrames(n: number): void;
  /** clean shutdown: deregister, publish `cleared`, close sockets */
  stop(): Promise<void>;
  /** the pod died: stop everything without deregistering or publishing anything (the TTL expires the worker) */
  kill(): Promise<void>;
}

const LORA_REFRESH_MS = 5_000;

export async function startShim(bus: Bus, options: ShimOptions): Promise<ShimHandle> {
  const o: ResolvedShimOptions = resolveOptions(options);
  await initHashing();
  const s = subjects(o.namespace);
  const metrics = createMetrics(o.worker);
  const loras = new LoraNames(o.loraMap);

  // the durable stream every indexer reads; create it if nobody has yet
  await bus.stream(s.eventStream, eventStreamConfig(s));
  const kv = await bus.kv(s.workersBucket, { ttlMs: o.registryTtlMs });

  let blockSize = o.blockSize;
  let capacityBlocks = o.capacityBlocks;
  let capacityTokens = 0;
  let engineLoras: string[] = [];
  let url = '';
  let stopped = false;

  const eventSubject = s.events(o.worker);
  let lastLoraRefresh = 0;
  const refreshLoras = async (): Promise<void> => {
    const now = Date.now();
    if (now - lastLoraRefresh < LORA_REFRESH_MS) return;
    lastLoraRefresh = now;
    try {
      const res = await request(`${o.engineUrl}/v1/models`, { headersTimeout: 2000, bodyTimeout: 2000 });
      const body = await res.body.json();
      if (res.statusCode === 200) loras.learnFromModels(lorasFromModels(body));
    } catch (e) {
      log.debug({ err: String(e) }, 'could not read /v1/models');
    }
  };

  let registration: Registration | undefined;
  const shapeChanged = () => void registration?.put();

  const relay = new EventRelay({
    worker: o.worker,
    model: o.model,
    metrics,
    loras,
    maxMapEntries: o.maxMapEntries,
    maxMailbox: 100_000,
    publish: (batch) => bus.publish(eventSubject, encode(batch)),
    replay: async (from) => (o.kvReplay ? requestReplay(o.kvReplay, from, o.replayTimeoutMs) : null),
    refreshLoras,
    onBlockSize: (b) => {
      if (b !== blockSize) {
        blockSize = b;
        if (capacityTokens > 0) capacityBlocks = Math.floor(capacityTokens / b);
        shapeChanged();
      }
    },
  });

  // ---- load: scrape, publish every loadIntervalMs and on change --------------------------------------
  let load: EngineLoad = { engine: 'unknown', waiting: 0, running: 0, kvUsage: 0 };
  let lastKey = '';
  let lastSent = 0;
  const report = (): LoadReport => ({
    worker: o.worker,
    model: o.model,
    role: o.role,
    waiting: load.waiting,
    running: load.running,
    kvUsage: load.kvUsage,
    capacityBlocks,
    url: url || o.engineUrl,
    ts: Date.now(),
  });
  const publishLoad = (force: boolean) => {
    if (stopped) return;
    const key = `${load.waiting}|${load.running}|${load.kvUsage}|${capacityBlocks}`;
    const now = Date.now();
    if (!force && key === lastKey && now - lastSent < o.loadIntervalMs) return;
    lastKey = key;
    lastSent = now;
    try {
      bus.publish(s.load(o.worker), encode(report()));
      metrics.loadReports.inc();
    } catch (e) {
      // a closed or failing bus must not take the process down from a timer; the next tick retries
      log.warn({ err: String(e) }, 'load report not published');
    }
  };
  const onLoad = (l: EngineLoad) => {
    load = l;
    let changed = false;
    if (l.blockSize !== undefined && l.blockSize !== blockSize) {
      blockSize = l.blockSize;
      changed = true;
    }
    if (l.capacityTokens !== undefined) capacityTokens = l.capacityTokens;
    const cap = l.capacityBlocks ?? (capacityTokens > 0 ? Math.floor(capacityTokens / blockSize) : undefined);
    if (cap !== undefined && cap !== capacityBlocks) {
      capacityBlocks = cap;
      changed = true;
    }
    if (l.loras && l.loras.join(',') !== engineLoras.join(',')) {
      engineLoras = l.loras;
      changed = true;
    }
    if (changed) shapeChanged();
    publishLoad(false);
  };
  const scraper = new LoadScraper(o.engineUrl, o.scrapeIntervalMs, metrics, onLoad);
  const loadTimer = setInterval(() => publishLoad(true), o.loadIntervalMs);
  loadTimer.unref();

  // ---- HTTP front ------------------------------------------------------------------------------------
  let front: HttpFront | undefined;
  if (o.port >= 0) {
    front = new HttpFront({
      worker: o.worker,
      role: o.role,
      engineUrl: o.engineUrl,
      maxBodyBytes: o.maxBodyBytes,
      metrics,
      health: () => ({
        status: stopped ? 'stopping' : 'ok',
        worker: o.worker,
        model: o.model,
        role: o.role,
        blockSize,
        capacityBlocks,
        engineNextSeq: String(relay.engineNext),
        eventSeq: relay.outSeq,
        mapEntries: relay.mapSize,
      }),
    });
    url = await front.listen(o.port, o.host);
  }
  const advertised = o.advertiseUrl ?? (url || o.engineUrl);

  // Learn the engine's shape before registering (best effort: an engine still starting answers later).
  await Promise.all([scraper.scrape(), refreshLoras()]);
  scraper.start();

  // A new shim incarnation starts its event numbering at 0 with `cleared`: whatever an earlier
  // incarnation published for this worker is void; replay (below) relearns what the engine holds.
  await relay.publishCleared();

  registration = new Registration(
    kv,
    o.worker,
    (): WorkerRegistration => ({
      worker: o.worker,
      model: o.model,
      role: o.role,
      url: advertised,
      engineUrl: o.engineUrl,
      blockSize,
      capacityBlocks,
      loras: engineLoras,
      ts: Date.now(),
    }),
    o.heartbeatMs,
  );
  await registration.start();

  let dropN = 0;
  const sub = new EngineSubscriber(o.kvEvents, o.topic, {
    onMessage: (frames) => {
      if (dropN > 0) {
        dropN--;
        metrics.droppedFrames.inc();
        return;
      }
      relay.post(frames);
    },
    onDisconnect: () => relay.engineDisconnected(),
    // the subscription reaches the engine a moment after the TCP connect; probe a little later
    onConnect: () => setTimeout(() => relay.engineConnected(), 50).unref(),
  });
  // A batch lost at the end of a burst (PUB high-water mark, a late subscription) shows as a gap only when
  // the next batch arrives; an idle engine may send none for long. Probe the replay socket now and then.
  const probeTimer = o.kvReplay ? setInterval(() => relay.engineConnected(), o.replayProbeMs) : undefined;
  probeTimer?.unref();
  log.info({ worker: o.worker, model: o.model, role: o.role, url, events: o.kvEvents, replay: o.kvReplay, key: registryKey(o.worker) }, 'shim started');

  const shutdown = async (clean: boolean) => {
    if (stopped) return;
    stopped = true;
    clearInterval(loadTimer);
    if (probeTimer) clearInterval(probeTimer);
    await sub.close();
    await scraper.stop();
    await registration!.stop(clean);
    if (clean) {
      await relay.idle();
      await relay.publishCleared();
      await bus.flush().catch(() => undefined);
    }
    relay.stop();
    await front?.close();
    log.info({ worker: o.worker, clean }, 'shim stopped');
  };

  return {
    worker: o.worker,
    get url() {
      return url;
    },
    metrics,
    get blockSize() {
      return blockSize;
    },
    get capacityBlocks() {
      return capacityBlocks;
    },
    get eventSeq() {
      return relay.outSeq;
    },
    get mapSize() {
      return relay.mapSize;
    },
    idle: () => relay.idle(),
    dropNextFrames(n: number) {
      dropN += n;
    },
    stop: () => shutdown(true),
    kill: () => shutdown(false),
  };
}
