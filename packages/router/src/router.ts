/**
 * `startRouter(bus, options)`: one router replica, put together from its parts. It owns nothing but their wiring
 * and lifecycle: the options and their defaults, the order things start in, and `close`.
 *
 *   cluster-view.ts   the cluster as the bus tells it: registry, load, peer in-flight, passive health (an actor)
 *   routing-core.ts   request → decision: pool → tokens → hashes → index → select → credit → decision record
 *                     (no HTTP, no bus; its ports: index-query.ts, decision-log.ts, tokenize.ts)
 *   http-edge.ts      the OpenAI-compatible server: validate, proxy, relay (a gateway picker edge can sit beside it)
 *
 * The bus is not on the serving path: through an outage the last-known registry is kept, the index's silence means
 * routing by load, and the view is flagged stale after `staleViewMs` but still used (cluster-view.ts).
 */
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { decisionStreamConfig, initHashing, KvgateError, logger, startDiagPublisher, subjects, type Bus, type HttpLimits, type MatchReply, type Subjects } from '@kvgate/protocol';
import type { Tokenizer } from '@kvgate/protocol/tokenizer';
import { Admission } from './admission.js';
import { ApiKeys } from './api-keys.js';
import { ClusterView } from './cluster-view.js';
import { DecisionLog } from './decision-log.js';
import { EppEdge, type EppOptions } from './epp/epp-edge.js';
import { RouterDiag } from './diag.js';
import type { FlowOptions } from './flow-control.js';
import type { WorkerHealth } from './health.js';
import { HttpEdge } from './http-edge.js';
import { busIndexQuery, directIndexQuery } from './index-query.js';
import type { Inflight } from './inflight.js';
import { RouterMetrics } from './metrics.js';
import { createAgent } from './proxy.js';
import { RateLimiter, type RateLimitOptions } from './rate-limit.js';
import type { RegistryHold } from './registry-hold.js';
import { decisionRecord, RoutingCore } from './routing-core.js';
import { resolveWeights, type WeightOptions } from './scorer.js';
import { isPolicy, type Policy } from './select.js';
import { PromptTokenizer } from './tokenize.js';
import type { WorkerView } from './workers.js';

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
   * index shard count N (indexers run `--shard i/N`): the match is asked of all N `…index.match.<N>.<i>` in parallel
   * within indexTimeoutMs and merged; a silent shard's workers score 0 overlap (kvgate_router_index_shard_misses_total).
   * Default 1: the one `…index.match` subject.
   */
  indexShards?: number;
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
  /**
   * P/D pools: no remote prefill when the decode worker lacks fewer prompt tokens than this (default 512; CLI
   * --pd-min-prefill-tokens), or holds ≥ `pdDecodeHoldRatio` (default 0.8) of the prompt, or every prefill worker is busy
   */
  pdMinPrefillTokens?: number;
  pdDecodeHoldRatio?: number;
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
   * request without one of them gets 401 (kvg_code KVG_UNAUTHORIZED, code 401, OpenAI-shaped). Absent or empty: open (default).
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
  /** header/body timeouts (408 KVG_REQUEST_TIMEOUT), keep-alive (default 65 s) and connection cap of the client server (protocol http-limits.ts) */
  httpLimits?: HttpLimits;
  /**
   * objective name → priority, both edges (admission.ts: the request's `x-llm-d-inference-objective`; InferenceObjective
   * semantics: unset or unknown 0, negative = sheddable → 429 at once on a saturated pool); default none (all 0)
   */
  objectives?: Record<string, number>;
  /** the queue of requests meeting a saturated pool, both edges (flow-control.ts): default 1024 per priority and pool, 30 s deadline */
  flow?: FlowOptions;
  /** serve the OpenAI API (/v1/completions, /v1/chat/completions) on the HTTP port; default true (`kvgate epp`: false) */
  openaiApi?: boolean;
  /** also serve the gateway endpoint picker (Envoy ext_proc + gRPC health, epp/epp-edge.ts) over the same core; default off */
  epp?: EppOptions;
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
  /** the endpoint picker's ports, when `epp` was given */
  readonly epp?: { readonly port: number; readonly healthPort: number; status(service: string): number };
  stats(): RouterStats;
  /** resolves once at least `n` live workers are known (or rejects after timeoutMs) */
  waitForWorkers(n: number, timeoutMs?: number): Promise<void>;
  /** stop: with `drainMs`, in-flight responses get that long to finish before they are cut (http-drain.ts); default 0 */
  close(opts?: { drainMs?: number }): Promise<void>;
}

export async function startRouter(bus: Bus, options: RouterOptions = {}): Promise<RouterHandle> {
  await initHashing();
  const id = options.id ?? `router-${randomBytes(4).toString('hex')}`;
  const log = logger('router', { router: id });
  const subj: Subjects = subjects(options.namespace ?? 'default');
  const policy = options.policy ?? 'kv';
  if (!isPolicy(policy)) throw new KvgateError('KVG_CONFIG', `unknown policy ${JSON.stringify(policy)}`);
  const weights = resolveWeights(options.weights);
  const indexTimeoutMs = options.indexTimeoutMs ?? 5;
  const metrics = new RouterMetrics(id);
  const diag = new RouterDiag({ registry: metrics.registry, log });
  const agent = createAgent({ upstreamTimeoutMs: options.upstreamTimeoutMs ?? 600_000 });
  const engineAuth = options.engineApiKey ? `Bearer ${options.engineApiKey}` : undefined;
  const tokenizer = new PromptTokenizer({ ...(options.tokenizer ? { tokenizer: options.tokenizer } : {}), dispatcher: agent, ...(engineAuth ? { authorization: engineAuth } : {}) });
  const apiKeys = new ApiKeys(options.apiKeys ?? []);
  const limiter = new RateLimiter(options.rateLimit ?? {}, options.rateLimitClock);
  const clusterSecret = options.clusterSecret || undefined;

  // the cluster view: fed by the bus from here on
  const recordDecisions = options.recordDecisions ?? true;
  if (recordDecisions) await bus.stream(subj.decisionStream, decisionStreamConfig(subj));
  const cluster = await ClusterView.open(bus, {
    id,
    subjects: subj,
    metrics,
    log,
    ...pick(options, ['staleMs', 'predictedTtlMs', 'registryTtlMs', 'flushMs', 'staleViewMs', 'suspectBackoffMs', 'suspectMaxBackoffMs']),
    onWorkerDropped: (w) => diag.forget(w),
  });
  const diagPublisher = startDiagPublisher({ bus, subjects: subj, source: 'router', id, intervalMs: options.diagIntervalMs ?? 2000, check: () => diag.check() });

  // the routing core over it
  const decisions = recordDecisions ? new DecisionLog(bus, subj.decisions(id), log, (p) => decisionRecord(id, policy, p)) : undefined;
  const index = options.index ? directIndexQuery(options.index, indexTimeoutMs) : busIndexQuery(bus, subj, indexTimeoutMs, {
        shards: options.indexShards ?? 1,
        onShardMiss: (shard) => metrics.indexShardMisses.inc({ shard: String(shard) }),
      });
  const core = new RoutingCore({
    id,
    cluster,
    tokenizer,
    index,
    policy,
    weights,
    ...(decisions ? { decisions } : {}),
    metrics,
    defaultMaxTokens: options.defaultMaxTokens ?? 256,
    pd: { ...(options.pdMinPrefillTokens !== undefined ? { minPrefillTokens: options.pdMinPrefillTokens } : {}), ...(options.pdDecodeHoldRatio !== undefined ? { decodeHoldRatio: options.pdDecodeHoldRatio } : {}) },
    random: options.random ?? Math.random,
  });

  // priority and flow control in front of a saturated pool: one queue for both edges
  const admission = new Admission({ ...(options.objectives ? { objectives: options.objectives } : {}), ...(options.flow ? { flow: options.flow } : {}) }, { core, workers: cluster.workers, weights, registry: metrics.registry });

  // the HTTP edge in front
  const edge = new HttpEdge({
    id,
    core,
    cluster,
    admission,
    metrics,
    diag,
    log,
    agent,
    bodyLimit: options.bodyLimitBytes ?? 32 * 1024 * 1024,
    apiKeys,
    authHealth: options.authHealth === true && apiKeys.size > 0,
    limiter,
    engineAuth,
    forwardClientAuth: options.forwardClientAuth === true,
    trustClientPd: options.trustClientPd === true,
    clusterSecret,
    httpLimits: options.httpLimits,
    openaiApi: options.openaiApi !== false,
  });

  // the gateway edge beside it (optional)
  const epp = options.epp ? new EppEdge(options.epp, { core, cluster, index, admission, metrics, log, cache: edge.cache }) : undefined;

  let closed = false;
  async function stop(drainMs: number): Promise<void> {
    if (closed) return;
    closed = true;
    admission.close();
    await edge.close(drainMs);
    await epp?.close();
    diagPublisher.stop();
    decisions?.flush();
    await cluster.close();
    await agent.destroy().catch(() => undefined);
  }

  try {
    await edge.listen(options.port ?? 8080, options.host ?? '127.0.0.1');
    await epp?.listen();
  } catch (e) {
    // the port is taken (or not ours): nothing of this router may keep running
    await stop(0);
    throw e;
  }
  const port = (edge.server.address() as AddressInfo).port;
  const host = options.host && options.host !== '0.0.0.0' ? options.host : '127.0.0.1';
  log.info({ port, policy, apiKeys: apiKeys.size, clusterSigned: clusterSecret !== undefined, rateLimited: limiter.enabled }, 'router listening');
  if (apiKeys.size === 0 && !isLoopback(options.host ?? '127.0.0.1')) log.warn({ host: options.host }, 'listening beyond loopback without API keys: anyone who reaches this port can send requests (--api-key)');

  return {
    id,
    url: `http://${host}:${port}`,
    port,
    metrics,
    workers: cluster.workers,
    inflight: cluster.inflight,
    health: cluster.health,
    registryHold: cluster.hold,
    server: edge.server,
    ...(epp ? { epp: { get port() { return epp.port; }, get healthPort() { return epp.healthPort; }, status: (s: string) => epp.status(s) } } : {}),
    stats: () => {
      const c = core.stats();
      const e = edge.stats();
      return { requests: e.requests, indexFallbacks: c.indexFallbacks, retries: e.retries, noWorker: c.noWorker };
    },
    waitForWorkers: (n, timeoutMs = 10_000) => cluster.waitForWorkers(n, timeoutMs, (live) => new KvgateError('KVG_TIMEOUT', `router ${id}: ${live} of ${n} workers live after ${timeoutMs} ms`)),
    close: (opts) => stop(opts?.drainMs ?? 0),
  };
}

function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}
