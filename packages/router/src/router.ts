/**
 * `startRouter(bus, options)`: one router replica. The edges live here — the HTTP server, the bus subscriptions
 * (registry watch, load reports, peer in-flight batches), index requests and upstream calls — around the pure
 * parts (workers.ts, select.ts, scorer.ts, inflight.ts).
 *
 * Request path: read + validate (http.ts) → pool by model → token ids (tokenize.ts) → prefix hashes (under the
 * request's `cache_salt` when it has one) → index match with per-tier overlaps (budget `indexTimeoutMs`, else load
 * only) → select → credit in-flight load and predicted prefix →
 * proxy (on a connect failure or a 5xx before the first byte: the worker turns suspect, health.ts, and the request
 * goes to the next worker not yet tried, until one answers or none is left) → relay chunk by chunk.
 *
 * The bus is not on the serving path: through an outage the last-known registry is kept (registry-hold.ts: a lapse
 * is not a worker leaving until the bus confirms it; a broken registry watch is watched again), the index's
 * silence means routing by load, and the view is flagged stale after `staleViewMs` but still used.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import {
  decodeActive,
  decodeLoad,
  decodeMatchReply,
  decodeRegistration,
  encode,
  extractTraceContext,
  HttpDrain,
  initHashing,
  injectTraceHeaders,
  KvgateError,
  logger,
  packHashes,
  prefixHashesU64,
  SpanStatusCode,
  subjects,
  tracer,
  type Bus,
  type Span,
  type Subjects,
  type Subscription,
  type KvWatcher,
  type MatchReply,
  type TierOverlap,
  decisionStreamConfig,
  startDiagPublisher,
  decode,
  signRequest,
  type KvEntry,
  type RouteDecisionWire,
} from '@kvgate/protocol';
import type { Tokenizer } from '@kvgate/protocol/tokenizer';
import type { Agent } from 'undici';
import { readBody, sendError, sendJson, validateApiRequest, type ApiRequest } from './http.js';
import { Inflight, type Ticket } from './inflight.js';
import { RouterMetrics } from './metrics.js';
import { createAgent, openUpstream, relay, UpstreamAbort, UpstreamError } from './proxy.js';
import { RouterDiag, UsageTap, type SentRequest } from './diag.js';
import { isPolicy, Selector, type Decision, type Policy } from './select.js';
import { resolveWeights, type ScoreWeights, type WeightOptions } from './scorer.js';
import { PromptTokenizer } from './tokenize.js';
import { WorkerView, type Pool } from './workers.js';
import { WorkerHealth, type FailureReason } from './health.js';
import { RegistryHold } from './registry-hold.js';
import { decodeSuspect, encodeSuspect, suspectSubject } from './suspect-wire.js';
import { ApiKeys } from './api-keys.js';
import { RateLimiter, type RateLimitOptions } from './rate-limit.js';

export interface RouterOptions {
  /** HTTP port; 0 = any free port. Default 8080. */
  port?: number;
  /** bind address; default 127.0.0.1 */
  host?: string;
  /** publish every routing decision on `…decisions.<router>` (the replay/debug recording); default true */
  recordDecisions?: boolean;
  /** subject namespace; default 'default' */
  namespace?: string;
  /** replica id (stamped on in-flight batches); default `router-<random>` */
  id?: string;
  /** routing policy; default 'kv' */
  policy?: Policy;
  /** score weights, tier weights and busy thresholds (scorer.ts); defaults DEFAULT_WEIGHTS */
  weights?: WeightOptions;
  /** how long to wait for the index before routing by load alone; default 5 ms */
  indexTimeoutMs?: number;
  /**
   * an indexer in the same process (its IndexClient): matched by direct call instead of a bus request, still
   * within indexTimeoutMs. Default: ask `…index.match` on the bus.
   */
  index?: { match(model: string, lora: string | null | undefined, hashes: ArrayLike<bigint>): Promise<MatchReply> };
  /** local tokenizer (instance, or a tokenizer.json path); absent = the engines' /tokenize */
  tokenizer?: Tokenizer;
  /** request body limit; default 32 MiB */
  bodyLimitBytes?: number;
  /** in-flight batch period on `…router.active`; default 20 ms */
  flushMs?: number;
  /** a worker whose last load report is older than this is not live; default 3000 ms */
  staleMs?: number;
  /** predicted-prefix credit lifetime; default 30000 ms */
  predictedTtlMs?: number;
  /** TTL the workers bucket is opened with: the bus applies it to the bucket, so it must match the shims' (default 3000 ms, the shim default) */
  registryTtlMs?: number;
  /** upstream header / inter-chunk timeout; default 600000 ms */
  upstreamTimeoutMs?: number;
  /** decode tokens assumed when a request gives no max_tokens; default 256 */
  defaultMaxTokens?: number;
  /** random source for tie-breaks and sampling; default Math.random */
  random?: () => number;
  /** misconfiguration report (diag.ts) on `…diag.router.<id>` this often; default 2000 ms */
  diagIntervalMs?: number;
  /**
   * the bus silent this long (nothing heard, not even this router's own heartbeat): the registry and load view are
   * marked stale (`kvgate_router_view_stale`, a warning, `/readyz` `viewStale`) and still used; default 60000 ms
   */
  staleViewMs?: number;
  /** passive health: back-off of a worker after an upstream failure, doubled by each failed probe; default 1000 ms */
  suspectBackoffMs?: number;
  /** ceiling of that back-off; default 30000 ms */
  suspectMaxBackoffMs?: number;
  /**
   * API keys clients present as `Authorization: Bearer <key>` on every /v1/* request (as vLLM's --api-key); a
   * request without one of them gets 401 invalid_api_key. Absent or empty: open (default).
   */
  apiKeys?: readonly string[];
  /** with apiKeys: /healthz, /readyz and /metrics need a key too (default false: they stay open) */
  authHealth?: boolean;
  /** per-key token buckets on requests/s and prompt tokens/s (per client address without keys); default none */
  rateLimit?: RateLimitOptions;
  /** the clock of the rate limits, ms (default Date.now; tests) */
  rateLimitClock?: () => number;
  /** sent upstream (engines, shims, their prefill leg, /tokenize) as `Authorization: Bearer …`; default none */
  engineApiKey?: string;
  /** forward the client's own Authorization upstream instead of dropping it (default false) */
  forwardClientAuth?: boolean;
  /**
   * keep client-supplied `kv_transfer_params` (body) and `x-prefiller-host-port` (header), for a gateway in front
   * that does the P/D pairing itself (default false: both are stripped before routing)
   */
  trustClientPd?: boolean;
  /** sign every upstream call with this cluster secret (x-kvgate-signature, cluster-auth.ts); default none */
  clusterSecret?: string;
}

export interface RouterStats {
  requests: number;
  indexFallbacks: number;
  retries: number;
  noWorker: number;
}

export interface RouterHandle {
  readonly id: string;
  readonly url: string;
  readonly port: number;
  readonly metrics: RouterMetrics;
  /** the router's worker view (read-only use) */
  readonly workers: WorkerView;
  /** the in-flight ledger (read-only use) */
  readonly inflight: Inflight;
  /** passive health per worker (read-only use) */
  readonly health: WorkerHealth;
  /** lapsed registrations kept through a bus outage, and the bus's liveness (read-only use) */
  readonly registryHold: RegistryHold;
  /** the HTTP server (for instrumentation listeners; the router owns it) */
  readonly server: Server;
  stats(): RouterStats;
  /** resolves once at least `n` live workers are known (or rejects after timeoutMs) */
  waitForWorkers(n: number, timeoutMs?: number): Promise<void>;
  /** stop: with `drainMs`, in-flight responses get that long to finish before they are cut (http-drain.ts); default 0 */
  close(opts?: { drainMs?: number }): Promise<void>;
}

const NO_HASHES = new BigUint64Array(0);

interface Routed {
  decision: Decision;
  pool: Pool;
  hashes: BigUint64Array;
  tokens: number[] | null;
  indexAnswered: boolean;
  overlaps: Record<string, number> | null;
  /** the index's per-tier overlaps, when its reply carried them */
  tiers: Record<string, TierOverlap> | null;
  salted: boolean;
}

export async function startRouter(bus: Bus, options: RouterOptions = {}): Promise<RouterHandle> {
  await initHashing();
  const id = options.id ?? `router-${randomBytes(4).toString('hex')}`;
  const log = logger('router', { router: id });
  const subj: Subjects = subjects(options.namespace ?? 'default');
  const policy = options.policy ?? 'kv';
  if (!isPolicy(policy)) throw new KvgateError('KVG_CONFIG', `unknown policy ${JSON.stringify(policy)}`);
  const weights: ScoreWeights = resolveWeights(options.weights);
  const indexTimeoutMs = options.indexTimeoutMs ?? 5;
  const bodyLimit = options.bodyLimitBytes ?? 32 * 1024 * 1024;
  const defaultMaxTokens = options.defaultMaxTokens ?? 256;
  const metrics = new RouterMetrics(id);
  const diag = new RouterDiag({ registry: metrics.registry, log });
  const view = new WorkerView({ staleMs: options.staleMs ?? 3000 });
  const health = new WorkerHealth({
    baseBackoffMs: options.suspectBackoffMs ?? 1000,
    maxBackoffMs: options.suspectMaxBackoffMs ?? 30_000,
    reportTtlMs: options.staleMs ?? 3000,
  });
  const hold = new RegistryHold({ staleViewMs: options.staleViewMs ?? 60_000 });
  const inflight = new Inflight({ routerId: id, predictedTtlMs: options.predictedTtlMs ?? 30_000 });
  const selector = new Selector(view, inflight, policy, weights, options.random ?? Math.random);
  const agent: Agent = createAgent({ upstreamTimeoutMs: options.upstreamTimeoutMs ?? 600_000 });
  const engineAuth = options.engineApiKey ? `Bearer ${options.engineApiKey}` : undefined;
  const tokenizer = new PromptTokenizer({ ...(options.tokenizer ? { tokenizer: options.tokenizer } : {}), dispatcher: agent, ...(engineAuth ? { authorization: engineAuth } : {}) });
  const apiKeys = new ApiKeys(options.apiKeys ?? []);
  const authHealth = options.authHealth === true && apiKeys.size > 0;
  const limiter = new RateLimiter(options.rateLimit ?? {}, options.rateLimitClock);
  const forwardClientAuth = options.forwardClientAuth === true;
  const trustClientPd = options.trustClientPd === true;
  const clusterSecret = options.clusterSecret || undefined;
  const stats: RouterStats = { requests: 0, indexFallbacks: 0, retries: 0, noWorker: 0 };
  const openPerWorker = new Map<string, number>();
  const waiters = new Set<() => void>();
  let registryLoaded = false;
  let closed = false;

  // ---- bus edges ------------------------------------------------------------------------------------------------
  const recordDecisions = options.recordDecisions ?? true;
  if (recordDecisions) await bus.stream(subj.decisionStream, decisionStreamConfig(subj));
  const subs: Subscription[] = [];
  // registry and health state, declared before any bus callback can run
  const keyToWorker = new Map<string, string>();
  /** per key, the revision of its last put: a delete carrying that revision is a lapse (TTL), any other a deregistration */
  const putRevision = new Map<string, number>();
  let watcher: KvWatcher | undefined;
  let rewatching = false;
  let wakeWatch: (() => void) | undefined;
  /** workers shown as unhealthy on the gauge (a flag also ends by age, without a report: upkeep looks again) */
  const unhealthyShown = new Set<string>();
  subs.push(
    bus.subscribe(subj.loadAll, {
      callback: (m) => {
        heard();
        try {
          const report = decodeLoad(m.data);
          view.load(report);
          hold.reported(report.worker);
          healthReport(report.worker, healthyField(report, m.data));
          notify();
        } catch (e) {
          log.warn({ err: (e as Error).message }, 'bad load report');
        }
      },
    }),
  );
  subs.push(
    bus.subscribe(subj.routerActive, {
      callback: (m) => {
        heard(); // our own heartbeat, echoed, is the bus's pulse when nothing else moves
        try {
          inflight.applyPeer(decodeActive(m.data));
        } catch (e) {
          log.warn({ err: (e as Error).message }, 'bad active batch');
        }
      },
    }),
  );
  subs.push(
    bus.subscribe(suspectSubject(subj), {
      callback: (m) => {
        heard();
        try {
          peerHealth(decodeSuspect(m.data));
        } catch (e) {
          log.warn({ err: (e as Error).message }, 'bad suspect message');
        }
      },
    }),
  );
  const kv = await bus.kv(subj.workersBucket, { ttlMs: options.registryTtlMs ?? 3000 });
  watcher = kv.watch();
  const initialKeys = new Set(await kv.keys());
  function applyEntry(e: KvEntry): void {
    if (e.op === 'put' && e.value) {
      heard();
      try {
        const reg = decodeRegistration(e.value);
        keyToWorker.set(e.key, reg.worker);
        putRevision.set(e.key, e.revision);
        view.upsert(reg);
        hold.renewed(reg.worker);
      } catch (err) {
        log.warn({ key: e.key, err: (err as Error).message }, 'bad worker registration');
      }
    } else {
      const w = keyToWorker.get(e.key) ?? e.key;
      // a lapse is made by the watcher's own clock (also while the bus is down): held, not dropped (registry-hold.ts)
      if (putRevision.get(e.key) === e.revision) hold.lapsed(w);
      else {
        heard();
        dropWorker(w);
      }
    }
    initialKeys.delete(e.key);
    if (initialKeys.size === 0) registryLoaded = true;
    notify();
  }
  /** After a watch broke: keys gone meanwhile are lapses too (held until the bus confirms). */
  async function reconcile(): Promise<void> {
    try {
      const live = new Set(await kv.keys());
      for (const [key, w] of keyToWorker) if (!live.has(key)) hold.lapsed(w);
    } catch {
      /* the bus is still away: the next watch settles it */
    }
  }
  // A watch that ends or breaks (a bus outage, a server restart) is watched again; the workers it knew stay.
  const watchLoop = (async () => {
    let delayMs = 250;
    for (;;) {
      try {
        for await (const e of watcher!) {
          applyEntry(e);
          delayMs = 250;
        }
        if (closed) return;
        if (!rewatching) log.warn('registry watch ended; watching again (known workers are kept)');
      } catch (err) {
        if (closed) return;
        log.warn({ err: (err as Error).message }, 'registry watch broke; watching again (known workers are kept)');
      }
      if (!rewatching) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, delayMs);
          wakeWatch = () => {
            clearTimeout(t);
            r();
          };
        });
        wakeWatch = undefined;
        delayMs = Math.min(delayMs * 2, 5000);
      }
      rewatching = false;
      if (closed) return;
      await reconcile();
      if (closed) return;
      try {
        watcher = kv.watch();
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'registry watch cannot restart (bus closed)');
        return;
      }
    }
  })();
  if (initialKeys.size === 0) registryLoaded = true;

  function dropWorker(w: string): void {
    for (const [k, v] of keyToWorker) {
      if (v === w) {
        keyToWorker.delete(k);
        putRevision.delete(k);
      }
    }
    view.remove(w);
    inflight.dropWorker(w);
    diag.forget(w);
    if (health.isSuspect(w)) metrics.suspect.remove({ worker: w });
    if (unhealthyShown.delete(w)) metrics.unhealthy.remove({ worker: w });
    health.forget(w);
    hold.removed(w);
  }

  /** Something arrived on the bus. After a silence, the registry watch is re-read (it may not have survived). */
  function heard(): void {
    if (!hold.heard() || closed || !watcher) return;
    log.info('bus heard again after a silence; re-reading the registry');
    rewatching = true;
    watcher.stop();
  }

  // ---- passive health (health.ts) -------------------------------------------------------------------------------
  const suspectSubj = suspectSubject(subj);
  function publishSuspect(worker: string, suspect: boolean, reason?: FailureReason, backoffMs?: number): void {
    try {
      bus.publish(suspectSubj, encodeSuspect({ router: id, worker, suspect, ...(reason ? { reason } : {}), ...(backoffMs ? { backoffMs } : {}), ts: Date.now() }));
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'cannot publish a suspect message');
    }
  }
  function upstreamFailed(worker: string, reason: FailureReason, err: Error): void {
    const s = health.fail(worker);
    if (!s.changed) return;
    metrics.suspect.set({ worker }, 1);
    log.warn({ worker, reason, backoffMs: s.backoffMs, err: err.message }, s.newly ? 'worker suspect: skipped while others are available' : 'worker failed again after its back-off: back-off doubled');
    publishSuspect(worker, true, reason, s.backoffMs);
  }
  function upstreamAnswered(worker: string): void {
    if (health.quiet || !health.succeed(worker)) return;
    metrics.suspect.set({ worker }, 0);
    log.info({ worker }, 'suspect worker answered: cleared');
    publishSuspect(worker, false);
  }
  function peerHealth(m: ReturnType<typeof decodeSuspect>): void {
    if (m.router === id || !view.registration(m.worker)) return;
    if (m.suspect) {
      if (health.peerSuspect(m.worker, m.backoffMs!)) {
        metrics.suspect.set({ worker: m.worker }, 1);
        log.info({ worker: m.worker, peer: m.router, reason: m.reason, backoffMs: m.backoffMs }, 'worker suspect at a peer router');
      }
    } else if (health.peerCleared(m.worker)) {
      metrics.suspect.set({ worker: m.worker }, 0);
    }
  }
  function healthReport(worker: string, healthy: boolean | undefined): void {
    if (health.report(worker, healthy)) {
      metrics.suspect.set({ worker }, 0);
      log.info({ worker }, 'suspect worker cleared by a healthy load report');
    }
    syncUnhealthy(worker);
  }
  function syncUnhealthy(worker: string): void {
    const now = health.isUnhealthy(worker);
    if (now === unhealthyShown.has(worker)) return;
    metrics.unhealthy.set({ worker }, now ? 1 : 0);
    if (now) {
      unhealthyShown.add(worker);
      log.warn({ worker }, 'load report says the engine is down: not picked');
    } else {
      unhealthyShown.delete(worker);
      log.info({ worker }, 'the engine is no longer reported down');
    }
  }

  // ---- the view's upkeep: drop confirmed lapses, flag a stale view --------------------------------------------------
  let busWasUp = true;
  let viewStale = false;
  const upkeep = setInterval(() => {
    for (const w of hold.due()) {
      log.info({ worker: w }, 'registration lapsed and the bus is up: worker dropped');
      dropWorker(w);
      notify();
    }
    const up = hold.busUp();
    if (up !== busWasUp) {
      busWasUp = up;
      if (!up) log.warn({ silentMs: hold.silentMs() }, 'bus silent: serving from the last-known registry, routing by load where the index cannot answer');
    }
    const stale = hold.stale();
    if (stale !== viewStale) {
      viewStale = stale;
      metrics.viewStale.set(stale ? 1 : 0);
      if (stale) log.warn({ silentMs: hold.silentMs(), staleViewMs: hold.staleViewMs }, 'view is stale (bus silent past staleViewMs); still used while engines answer');
      else log.info('view fresh again');
    }
    metrics.busSilent.set(hold.silentMs() / 1000);
    metrics.heldWorkers.set(hold.held().length);
    for (const w of [...unhealthyShown]) syncUnhealthy(w);
  }, 250);
  upkeep.unref();

  const diagPublisher = startDiagPublisher({ bus, subjects: subj, source: 'router', id, intervalMs: options.diagIntervalMs ?? 2000, check: () => diag.check() });

  let lastPublish = 0;
  const flushTimer = setInterval(() => {
    const batch = inflight.takeBatch();
    const now = Date.now();
    if (batch || now - lastPublish >= 1000) {
      lastPublish = now;
      try {
        bus.publish(subj.routerActive, encode(batch ?? { router: id, deltas: [] }));
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'cannot publish in-flight batch');
      }
    }
  }, options.flushMs ?? 20);
  flushTimer.unref();

  function notify(): void {
    for (const w of [...waiters]) w();
  }

  async function matchIndex(pool: Pool, hashes: BigUint64Array): Promise<MatchReply | null> {
    try {
      if (options.index) {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('index timeout')), indexTimeoutMs)));
        try {
          return await Promise.race([options.index.match(pool.model, pool.lora, hashes), late]);
        } finally {
          clearTimeout(timer);
        }
      }
      // the hashes as one packed buffer: msgpack of 128 BigInts costs more on both ends (DESIGN.md §4 allows Buffer)
      const reply = await bus.request(subj.indexMatch, encode({ model: pool.model, lora: pool.lora, hashes: packHashes(hashes) }), { timeoutMs: indexTimeoutMs });
      return decodeMatchReply(reply.data);
    } catch {
      stats.indexFallbacks++;
      metrics.indexFallbacks.inc();
      return null;
    }
  }

  // ---- routing --------------------------------------------------------------------------------------------------
  function poolFor(model: string): Pool {
    const pool = view.pool(model);
    if (!pool && view.empty) {
      stats.noWorker++;
      metrics.noWorker.inc();
      throw new KvgateError('KVG_NO_WORKER', 'no live worker is registered');
    }
    if (!pool) throw new KvgateError('KVG_UNKNOWN_MODEL', `The model \`${model}\` does not exist (served: ${view.models().map((m) => m.id).join(', ') || 'none'})`);
    if (pool.both.length + pool.prefill.length + pool.decode.length === 0) {
      stats.noWorker++;
      metrics.noWorker.inc();
      throw new KvgateError('KVG_NO_WORKER', `no live worker serves model \`${model}\``);
    }
    return pool;
  }

  async function tokensOf(req: ApiRequest, pool: Pool): Promise<number[] | null> {
    if (req.promptIds) return req.promptIds;
    const any = pool.both[0] ?? pool.prefill[0] ?? pool.decode[0];
    const engineUrl = any?.engineUrl;
    let ids: number[] | null = null;
    if (req.kind === 'chat') {
      ids = await tokenizer.chat({ messages: req.messages!, ...(req.tools ? { tools: req.tools } : {}), ...(req.templateKwargs ? { kwargs: req.templateKwargs } : {}) }, pool.model, engineUrl);
    } else if (req.prompt !== undefined) ids = await tokenizer.prompt(req.prompt, pool.model, engineUrl);
    if (!ids) metrics.tokenizeFailures.inc();
    return ids;
  }

  async function route(req: ApiRequest, exclude?: Set<string>, prior?: Routed): Promise<Routed> {
    const pool = prior?.pool ?? poolFor(req.model);
    const tokens = prior ? prior.tokens : await tokensOf(req, pool);
    // as a BigUint64Array: no BigInt per block, and it packs for the index query by swapping bytes. A salted
    // request's chain starts at the salted root, as the engine's does: its blocks match only the same salt.
    const hashes = prior ? prior.hashes : tokens && pool.blockSize > 0 ? prefixHashesU64(pool.model, pool.lora, pool.blockSize, tokens, undefined, req.cacheSalt) : NO_HASHES;
    let overlaps = prior?.overlaps ?? null;
    let tiers = prior?.tiers ?? null;
    let indexAnswered = prior?.indexAnswered ?? false;
    if (!prior && selector.policy === 'kv' && hashes.length > 0) {
      const reply = await matchIndex(pool, hashes);
      overlaps = reply?.overlaps ?? null;
      tiers = reply?.tiers ?? null;
      indexAnswered = reply !== null;
    }
    const decision = selector.select({ pool, hashes, indexOverlaps: overlaps, indexTiers: tiers, ...healthFilter(pool, exclude) });
    if (!decision) {
      stats.noWorker++;
      metrics.noWorker.inc();
      throw new KvgateError('KVG_NO_WORKER', `no live worker left for model \`${req.model}\`${health.quiet ? '' : ' (engines reported down are not picked)'}`);
    }
    return { decision, pool, hashes, tokens, indexAnswered, overlaps, tiers, salted: req.cacheSalt !== undefined };
  }

  /**
   * Passive health for one pick: engines reported down are excluded (with the workers already tried), suspect ones
   * avoided while others are left. Nothing is built while every worker is healthy (the common case).
   */
  function healthFilter(pool: Pool, tried: ReadonlySet<string> | undefined): { exclude?: ReadonlySet<string>; avoid?: ReadonlySet<string> } {
    if (health.quiet) return tried ? { exclude: tried } : {};
    const exclude = new Set(tried);
    const avoid = new Set<string>();
    for (const list of [pool.both, pool.prefill, pool.decode]) {
      for (const r of list) {
        if (health.isUnhealthy(r.worker)) exclude.add(r.worker);
        else if (!health.usable(r.worker)) avoid.add(r.worker);
      }
    }
    return { exclude, avoid };
  }

  /**
   * Decisions wait here for a 1 ms timer: building and encoding one (128 hashes) and appending it to the stream
   * then runs after the upstream request went out, not between request in and upstream first byte. (A
   * setImmediate ran before undici's own deferred write of the upstream request on a reused connection: in the
   * path.) Everything a record is built from is fixed once the decision is made; only the time is taken now.
   */
  interface PendingDecision {
    r: Routed;
    model: string;
    requestId: string;
    ts: number;
  }
  let decisionQueue: PendingDecision[] = [];
  function flushDecisions(): void {
    const q = decisionQueue;
    decisionQueue = [];
    for (const p of q) {
      try {
        bus.publish(subj.decisions(id), encode(decisionRecord(p)));
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'could not record a routing decision');
      }
    }
  }

  function decisionRecord({ r, model, requestId, ts }: PendingDecision): RouteDecisionWire {
    const { decision } = r;
    const overlaps: Record<string, number> = {};
    const scores: Record<string, number> = {};
    let tiers: Record<string, TierOverlap> | undefined;
    for (const sc of decision.scored) {
      overlaps[sc.worker] = sc.overlap;
      scores[sc.worker] = sc.cost;
      // only workers reaching past their GPU prefix: a GPU-only record stays the size it was
      if (sc.tiers.disk > sc.tiers.gpu) (tiers ??= {})[sc.worker] = { ...sc.tiers };
    }
    return {
      router: id,
      requestId,
      model,
      lora: r.pool.lora || null,
      promptTokens: r.tokens?.length ?? 0,
      hashes: packHashes(r.hashes),
      overlaps,
      ...(tiers ? { tiers } : {}),
      ...(r.salted ? { salted: true } : {}),
      scores,
      chosen: decision.prefillWorker.worker,
      ...(decision.prefill ? { prefill: decision.prefill.worker } : {}),
      policy: selector.policy,
      ...(selector.policy === 'kv' && !r.indexAnswered ? { degraded: true } : {}),
      ts,
    };
  }

  /** What this router saw and chose, onto the decision stream (fire and forget; `kvgate replay inspect --request`). */
  function recordDecision(r: Routed, req: ApiRequest, requestId: string): void {
    if (!recordDecisions) return;
    if (decisionQueue.push({ r, model: req.model, requestId, ts: Date.now() }) === 1) setTimeout(flushDecisions, 1);
  }

  // label children resolved once (prom-client hashes the label set on every labelled inc)
  const decisionsPd = metrics.decisions.labels({ policy: selector.policy, mode: 'pd' });
  const decisionsSingle = metrics.decisions.labels({ policy: selector.policy, mode: 'single' });

  function credit(r: Routed, req: ApiRequest): Ticket[] {
    const { decision, pool } = r;
    const B = pool.blockSize || 16;
    const promptTokens = r.tokens?.length ?? Math.ceil(req.raw.length / 4);
    // blocks on a lower tier still cost their reload: credited at their tier weight, as the scorer counts them
    const prefillTokens = Math.max(0, Math.round(promptTokens - decision.cached * B));
    const decodeBlocks = Math.ceil((promptTokens + (req.maxTokens ?? defaultMaxTokens)) / B);
    if (selector.policy === 'kv' && r.hashes.length > 0) inflight.predict(decision.prefillWorker.worker, r.hashes);
    (decision.prefill ? decisionsPd : decisionsSingle).inc();
    if (r.decision.promptBlocks > 0) metrics.overlapRatio.observe(decision.overlap / decision.promptBlocks);
    if (decision.prefill) return [inflight.start(decision.prefill.worker, prefillTokens, 0), inflight.start(decision.worker.worker, 0, decodeBlocks)];
    return [inflight.start(decision.worker.worker, prefillTokens, decodeBlocks)];
  }

  /** parsed worker URLs (a handful of distinct ones; parsing each request's costs a few µs and garbage) */
  const urls = new Map<string, { origin: string; basePath: string; host: string }>();
  function parsedUrl(url: string): { origin: string; basePath: string; host: string } {
    let p = urls.get(url);
    if (!p) {
      const u = new URL(url);
      p = { origin: u.origin, basePath: u.pathname.replace(/\/$/, ''), host: u.host };
      if (urls.size >= 1024) urls.clear();
      urls.set(url, p);
    }
    return p;
  }
  function hostPort(url: string): string {
    return parsedUrl(url).host;
  }

  function setOpen(worker: string, d: number): void {
    const n = (openPerWorker.get(worker) ?? 0) + d;
    if (n <= 0) openPerWorker.delete(worker);
    else openPerWorker.set(worker, n);
    metrics.inflight.set({ worker }, Math.max(0, n));
  }

  async function proxy(req: ApiRequest, path: string, inReq: IncomingMessage, res: ServerResponse, span: Span, client: string): Promise<void> {
    const t0 = performance.now();
    let routed = await route(req);
    // the prompt-token bucket: charged once the prompt's tokens are known (a raw-size estimate without them)
    if (limiter.enabled) {
      const wait = limiter.tokens(client, routed.tokens?.length ?? Math.ceil(req.raw.length / 4));
      if (wait > 0) throw rateLimited(client, wait, 'prompt tokens per second');
    }
    const rid = inReq.headers['x-request-id'];
    const requestId = typeof rid === 'string' && rid.length > 0 && rid.length <= 200 ? rid : randomUUID();
    const abort = new UpstreamAbort();
    const onClose = () => {
      if (!res.writableFinished) abort.abort();
    };
    res.on('close', onClose);
    /** workers this request already failed on (never tried twice) */
    const tried = new Set<string>();
    for (let attempt = 0; ; attempt++) {
      const { decision } = routed;
      const tickets = credit(routed, req);
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      const tp = inReq.headers.traceparent;
      if (typeof tp === 'string') headers.traceparent = tp;
      // the client's credentials stay here: upstream gets the engine's own key (unless told to forward the client's)
      const auth = forwardClientAuth ? inReq.headers.authorization : undefined;
      if (typeof auth === 'string') headers.authorization = auth;
      else if (engineAuth) headers.authorization = engineAuth;
      headers['x-request-id'] = requestId;
      // a data-parallel rank of one engine server: vLLM's API server reads this hint (X-data-parallel-rank)
      if (decision.worker.dpRank !== undefined) headers['x-data-parallel-rank'] = String(decision.worker.dpRank);
      recordDecision(routed, req, requestId);
      if (decision.prefill) headers['x-prefiller-host-port'] = hostPort(decision.prefill.engineUrl);
      else if (trustClientPd && typeof inReq.headers['x-prefiller-host-port'] === 'string') headers['x-prefiller-host-port'] = inReq.headers['x-prefiller-host-port'];
      injectTraceHeaders(headers, span);
      const extra: Record<string, string> = { 'x-kvgate-worker': decision.worker.worker, 'x-request-id': requestId };
      if (decision.prefill) extra['x-kvgate-prefill'] = decision.prefill.worker;
      span.setAttribute('kvgate.worker', decision.worker.worker);
      span.setAttribute('kvgate.overlap_blocks', decision.overlap);
      if (attempt === 0) metrics.routeSeconds.observe((performance.now() - t0) / 1000);
      const u = parsedUrl(decision.worker.url);
      const worker = decision.worker.worker;
      if (clusterSecret) Object.assign(headers, signRequest(clusterSecret, 'POST', u.basePath + path, req.raw));
      setOpen(worker, 1);
      health.sent(worker);
      let up;
      try {
        up = await openUpstream(agent, u.origin, u.basePath + path, req.raw, headers, abort);
      } catch (e) {
        for (const t of tickets) inflight.finish(t);
        setOpen(worker, -1);
        if (abort.aborted) {
          health.abandoned(worker);
          span.end();
          return;
        }
        if (e instanceof UpstreamError && e.beforeFirstByte) {
          const reason: FailureReason = e.status !== undefined ? 'status' : 'connect';
          upstreamFailed(worker, reason, e);
          tried.add(worker);
          if (decision.prefill) tried.add(decision.prefill.worker);
          try {
            routed = await route(req, tried, routed);
          } catch (again) {
            // no other worker to try: the upstream failure is the better answer
            if (again instanceof KvgateError && again.code === 'KVG_NO_WORKER') throw e;
            throw again;
          }
          stats.retries++;
          metrics.retries.inc({ reason });
          log.warn({ worker, next: routed.decision.worker.worker, reason, err: e.message }, 'upstream failed before the first byte; retrying on another worker');
          continue;
        }
        throw e;
      }
      upstreamAnswered(worker);
      // the engine's usage, read off the chunks as they pass: misconfiguration signals (diag.ts)
      const tap = up.statusCode === 200 ? new UsageTap(req.stream) : undefined;
      const sent = routed;
      drain.onCut(res, relay(up, res, extra, {
        onFirstByte: () => {
          for (const t of tickets) inflight.prefillDone(t);
        },
        ...(tap ? { onChunk: (c: Buffer) => tap.push(c) } : {}),
        onDone: (ok) => {
          for (const t of tickets) inflight.finish(t);
          setOpen(worker, -1);
          if (!ok) abort.abort();
          else if (tap) diag.observe(worker, sentRequest(sent, req), tap.usage());
          span.end();
        },
      }));
      return;
    }
  }

  async function routeOnly(req: ApiRequest, res: ServerResponse): Promise<void> {
    const r = await route(req);
    const { decision } = r;
    const load = (w: string) => {
      const l = view.lastLoad(w);
      const f = inflight.total(w);
      return { waiting: l?.waiting ?? 0, running: l?.running ?? 0, kvUsage: l?.kvUsage ?? 0, inflightPrefillTokens: f.prefillTokens, inflightDecodeBlocks: f.decodeBlocks };
    };
    sendJson(res, 200, {
      worker: decision.worker.worker,
      url: decision.worker.url,
      ...(decision.prefill ? { prefill: decision.prefill.worker, prefillHostPort: hostPort(decision.prefill.engineUrl) } : {}),
      model: r.pool.model,
      lora: r.pool.lora,
      blockSize: r.pool.blockSize,
      promptTokens: r.tokens?.length ?? null,
      promptBlocks: decision.promptBlocks,
      overlap: decision.overlap,
      cached: decision.cached,
      ...(r.salted ? { salted: true } : {}),
      indexAnswered: r.indexAnswered,
      policy: selector.policy,
      tierWeights: selector.weights.tierWeights,
      // per worker, the cumulative per-tier overlap the score used (gpu ≤ cpu ≤ disk; gpu only: all three equal)
      tiers: Object.fromEntries(decision.scored.map((s) => [s.worker, s.tiers])),
      candidates: decision.scored.map((s) => ({
        worker: s.worker,
        overlap: s.overlap,
        indexOverlap: r.overlaps?.[s.worker] ?? 0,
        tiers: s.tiers,
        ...(r.tiers?.[s.worker] ? { indexTiers: r.tiers[s.worker] } : {}),
        cached: s.cached,
        score: s.cost,
        busy: s.busy,
        load: load(s.worker),
      })),
    });
  }

  // ---- HTTP -----------------------------------------------------------------------------------------------------
  const server: Server = createServer({ noDelay: true, keepAliveTimeout: 65_000 }, (inReq, res) => {
    const path = (inReq.url ?? '/').split('?')[0]!;
    stats.requests++;
    res.on('finish', () => metrics.requests.inc({ endpoint: endpointLabel(path), status: String(res.statusCode) }));
    handle(path, inReq, res).catch((e) => {
      if (!(e instanceof KvgateError)) log.error({ err: (e as Error).stack }, 'request failed');
      if (e instanceof RateLimited && !res.headersSent) res.setHeader('retry-after', String(e.retryAfterS));
      sendError(res, e);
    });
  });
  /** SIGTERM: stop accepting, let responses finish, cut the rest cleanly */
  const drain = new HttpDrain(server, 'router');

  /**
   * The API key check (before the body is read) and the request bucket: the key's label names the caller, or its
   * address when the router has no keys. undefined = already answered 401.
   */
  function admit(path: string, inReq: IncomingMessage, res: ServerResponse): string | undefined {
    let client: string;
    if (apiKeys.size > 0) {
      const label = apiKeys.check(inReq.headers.authorization);
      if (label === undefined) {
        sendJson(res, 401, { error: { message: 'Invalid or missing API key: send Authorization: Bearer <key>', type: 'invalid_request_error', code: 'invalid_api_key' } }, { 'www-authenticate': 'Bearer' });
        return undefined;
      }
      client = label;
    } else client = `addr:${inReq.socket.remoteAddress ?? '?'}`;
    if (limiter.enabled && path.startsWith('/v1/')) {
      const wait = limiter.request(client);
      if (wait > 0) throw rateLimited(client, wait, 'requests per second');
    }
    return client;
  }

  function rateLimited(client: string, waitS: number, what: string): RateLimited {
    log.debug({ client, retryAfterS: waitS }, `rate limited: ${what}`);
    return new RateLimited(`rate limit reached (${what}); retry after ${waitS} s`, waitS);
  }

  async function handle(path: string, inReq: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = inReq.method ?? 'GET';
    const guarded = path.startsWith('/v1/') || (authHealth && (path === '/healthz' || path === '/readyz' || path === '/metrics'));
    const client = guarded ? admit(path, inReq, res) : '';
    if (client === undefined) return;
    if (method === 'GET') {
      if (path === '/healthz') return sendJson(res, 200, { status: 'ok', router: id });
      if (path === '/readyz') {
        const live = view.all().filter((r) => view.isLive(r.worker)).length;
        const ready = registryLoaded && live > 0;
        // a stale view stays ready: it is still used while the engines answer (the detail says so)
        return sendJson(res, ready ? 200 : 503, {
          ready,
          liveWorkers: live,
          registryLoaded,
          busUp: hold.busUp(),
          busSilentMs: hold.silentMs(),
          viewStale: hold.stale(),
          heldWorkers: hold.held(),
          suspectWorkers: health.suspects(),
          unhealthyWorkers: health.unhealthy(),
        });
      }
      if (path === '/metrics') {
        const text = await metrics.registry.metrics();
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(text);
        return;
      }
      if (path === '/v1/models') {
        return sendJson(res, 200, { object: 'list', data: view.models().map((m) => ({ id: m.id, object: 'model', created: 0, owned_by: 'kvgate', root: m.root, parent: m.lora ? m.root : null })) });
      }
    }
    if (method === 'POST' && (path === '/v1/completions' || path === '/v1/chat/completions' || path === '/v1/route')) {
      const raw = await readBody(inReq, bodyLimit);
      const kind = path === '/v1/completions' ? 'completion' : path === '/v1/chat/completions' ? 'chat' : 'either';
      const req = validateApiRequest(kind, raw);
      if (!trustClientPd && req.body.kv_transfer_params !== undefined) {
        // a client must not choose where KV blocks come from (or go): only the router's own P/D pairing sets this
        delete req.body.kv_transfer_params;
        req.raw = Buffer.from(JSON.stringify(req.body));
      }
      if (path === '/v1/route') return routeOnly(req, res);
      const span = tracer().startSpan('kvgate.route', { attributes: { 'kvgate.model': req.model, 'kvgate.router': id } }, extractTraceContext(inReq.headers));
      try {
        await proxy(req, path, inReq, res, span, client);
      } catch (e) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
        span.end();
        throw e;
      }
      return;
    }
    throw new KvgateError('KVG_NOT_FOUND', `no route for ${method} ${path}`);
  }

  async function stop(drainMs: number): Promise<void> {
    if (closed) return;
    closed = true;
    await drain.close(server, drainMs);
    clearInterval(flushTimer);
    clearInterval(upkeep);
    wakeWatch?.();
    diagPublisher.stop();
    if (decisionQueue.length > 0) flushDecisions();
    for (const s of subs) s.unsubscribe();
    watcher?.stop();
    await watchLoop;
    await agent.destroy().catch(() => undefined);
  }

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 8080, options.host ?? '127.0.0.1', () => resolve());
    });
  } catch (e) {
    // the port is taken (or not ours): nothing of this router may keep running
    await stop(0);
    throw e;
  }
  const port = (server.address() as AddressInfo).port;
  const host = options.host && options.host !== '0.0.0.0' ? options.host : '127.0.0.1';
  log.info({ port, policy, apiKeys: apiKeys.size, clusterSigned: clusterSecret !== undefined, rateLimited: limiter.enabled }, 'router listening');
  if (apiKeys.size === 0 && !isLoopback(options.host ?? '127.0.0.1')) log.warn({ host: options.host }, 'listening beyond loopback without API keys: anyone who reaches this port can send requests (--api-key)');

  return {
    id,
    url: `http://${host}:${port}`,
    port,
    metrics,
    workers: view,
    inflight,
    health,
    registryHold: hold,
    server,
    stats: () => ({ ...stats }),
    waitForWorkers(n: number, timeoutMs = 10_000): Promise<void> {
      const live = () => view.all().filter((r) => view.isLive(r.worker)).length;
      if (live() >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = () => {
          if (live() >= n) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new KvgateError('KVG_TIMEOUT', `router ${id}: ${live()} of ${n} workers live after ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    close: (opts) => stop(opts?.drainMs ?? 0),
  };
}

/** 429 KVG_RATE_LIMITED; the HTTP edge adds `Retry-After: retryAfterS` */
class RateLimited extends KvgateError {
  readonly retryAfterS: number;
  constructor(message: string, retryAfterS: number) {
    super('KVG_RATE_LIMITED', message);
    this.retryAfterS = retryAfterS;
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

/** What diag.ts compares the engine's usage with: the router's token count and, single-worker only, the index's overlap. */
function sentRequest(r: Routed, req: ApiRequest): SentRequest {
  const p = req.body.prompt;
  const worker = r.decision.worker.worker;
  return {
    routerTokens: r.tokens?.length ?? null,
    overlapBlocks: r.indexAnswered && !r.decision.prefill ? (r.overlaps?.[worker] ?? 0) : null,
    blockSize: r.pool.blockSize,
    batch: Array.isArray(p) && p.length > 1 && (typeof p[0] === 'string' || Array.isArray(p[0])),
  };
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

function endpointLabel(path: string): string {
  switch (path) {
    case '/v1/completions':
    case '/v1/chat/completions':
    case '/v1/route':
    case '/v1/models':
    case '/healthz':
    case '/readyz':
    case '/metrics':
      return path;
    default:
      return 'other';
  }
}
