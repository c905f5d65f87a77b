/** The shim's one options type; `kvgate shim` flags and KVGATE_* env vars map onto it. */
import { KvgateError, resolveHttpLimits, TOKEN_RE, type HttpLimits, type ResolvedHttpLimits, type WorkerRole } from '@kvgate/protocol';
import { parseLoraMap } from './lora.js';
import { offsetEndpoint, rankWorkerId } from './dp.js';

export interface ShimOptions {
  /** worker id, unique in the namespace; a subject token ([A-Za-z0-9_-:@]). Required. */
  worker: string;
  /** model name the engine serves; roots every prefix hash. Required. */
  model: string;
  /** default 'both' */
  role?: WorkerRole;
  /** engine's HTTP base URL (OpenAI API and /metrics), e.g. http://127.0.0.1:8000. Required. */
  engineUrl: string;
  /**
   * engine's ZMQ PUB endpoint the shim connects to, e.g. tcp://127.0.0.1:5557. Required unless `kvEventsBind`.
   * With data parallelism: rank 0's endpoint, as in the engine's own config (rank r is offset by r, see dp.ts).
   */
  kvEvents?: string;
  /**
   * bind the shim's SUB socket here instead, e.g. tcp://*:5557, for engines whose publisher connects to a central
   * subscriber (vLLM/SGLang connect when their endpoint has no `*`, `::`, ipc or inproc). Rank r binds port + r.
   */
  kvEventsBind?: string;
  /**
   * the engine server's data-parallel size N: one relay, registration and load report per rank, each rank its
   * own worker `<worker>-dp<r>`. Absent: no data parallelism (the worker id is used as it is).
   */
  dataParallelSize?: number;
  /**
   * serve this one rank only (worker `<worker>-dp<R>`, events on port + R). Without `dataParallelSize` the
   * engine URL is taken to serve this rank alone (vLLM external load balancing: one API server per rank).
   */
  dpRank?: number;
  /** engine's ZMQ ROUTER replay endpoint (always connected to; rank r: port + r); absent = gaps are never replayed (cleared instead) */
  kvReplay?: string;
  /** ZMQ topic prefix to subscribe to (default '' = all) */
  topic?: string;
  /** bus namespace (default 'default') */
  namespace?: string;
  /** HTTP front (P/D proxy, /healthz, /metrics): port (default 0 = any free port; -1 = no HTTP front) */
  port?: number;
  /** HTTP bind address (default 127.0.0.1) */
  host?: string;
  /** URL routers send this worker's requests to (default: the shim's HTTP front, else engineUrl) */
  advertiseUrl?: string;
  /** block size until the engine tells (cache_config_info or events); default 16 */
  blockSize?: number;
  /** KV capacity in blocks until the engine tells; default 0 (unknown) */
  capacityBlocks?: number;
  /** LoRA int id → name, e.g. '1=sql-lora,2=chat' (see lora.ts) */
  loraMap?: string | Map<number, string>;
  /** engine-hash map cap (default 1,000,000 entries) */
  maxMapEntries?: number;
  /** engine /metrics scrape period, ms (default 100) */
  scrapeIntervalMs?: number;
  /** a LoadReport at least this often, ms, and whenever load changes (default 250) */
  loadIntervalMs?: number;
  /** worker registration TTL in the workers bucket, ms (default 3000) */
  registryTtlMs?: number;
  /** registration re-put period, ms (default 1000) */
  heartbeatMs?: number;
  /** wait for each replay reply, ms (default 1000) */
  replayTimeoutMs?: number;
  /** ask the replay socket for batches past the last one seen this often, ms (default 5000) */
  replayProbeMs?: number;
  /** largest HTTP request body accepted, bytes (default 16 MiB) */
  maxBodyBytes?: number;
  /** events-stale: the engine served requests this long without one KV event published, ms (default 60000; diag.ts) */
  staleEventsMs?: number;
  /** misconfiguration report on `…diag.shim.<worker>` this often, ms (default 2000) */
  diagIntervalMs?: number;
  /**
   * event batches kept per worker while the bus cannot store them, replayed in order once it can (default 10,000);
   * past this or `publishBufferBytes` the buffer is dropped and the worker resyncs instead (publisher.ts)
   */
  publishBufferBatches?: number;
  /** bytes of event batches kept per worker while the bus cannot store them (default 64 MiB) */
  publishBufferBytes?: number;
  /** probe the engine's GET /health this often, ms (default 1000; engine-health.ts) */
  engineProbeMs?: number;
  /** a health probe without an answer this long fails, ms (default 1000) */
  engineProbeTimeoutMs?: number;
  /** an engine down this long is deregistered (registered again once it answers), ms (default 30000) */
  engineDownDeregisterMs?: number;
  /**
   * the cluster secret: the HTTP front's P/D/proxy routes then take only router calls signed with it
   * (x-kvgate-signature, ±30 s; /healthz and /metrics stay open); absent = unsigned calls accepted. Never logged.
   */
  clusterSecret?: string;
  /**
   * the engine's own API key (vLLM --api-key), sent as `Authorization: Bearer …` on the shim's own /v1 calls to it
   * (GET /v1/models for LoRA names; /health and /metrics need none). Proxied requests carry the router's. Never logged.
   */
  engineApiKey?: string;
  /**
   * the prefill engines' NIXL side-channel base port (vLLM `VLLM_NIXL_SIDE_CHANNEL_PORT`, default 5600): a transfer
   * descriptor's `remote_port` must be this + the prefill worker's DP rank (or the port it registered)
   */
  nixlSideChannelPort?: number;
  /**
   * P/D: how long the prefill leg may take (headers and body, ms; default 60,000); past it, or when the prefill
   * worker fails, the decode worker prefills locally (the request still succeeds; counted)
   */
  prefillTimeoutMs?: number;
  /** header/body timeouts, keep-alive and connection cap of the HTTP front (protocol http-limits.ts) */
  httpLimits?: HttpLimits;
}

export type ResolvedShimOptions = Required<Omit<ShimOptions, 'kvReplay' | 'advertiseUrl' | 'loraMap' | 'kvEvents' | 'kvEventsBind' | 'dataParallelSize' | 'dpRank' | 'clusterSecret' | 'engineApiKey' | 'httpLimits'>> & {
  httpLimits: ResolvedHttpLimits;
  clusterSecret: string | undefined;
  engineApiKey: string | undefined;
  kvReplay: string | undefined;
  advertiseUrl: string | undefined;
  loraMap: Map<number, string>;
  /** rank 0's event endpoint, and whether the shim binds it (connect mode engines) or connects to it */
  kvEvents: { endpoint: string; bind: boolean };
  /**
   * the data-parallel ranks this shim serves, each with its worker id; null = no data parallelism (one worker,
   * id unchanged). `dpSize` is the server's size when known (even split of unlabelled load), else null.
   */
  dp: { ranks: { rank: number; worker: string }[]; dpSize: number | null } | null;
};

function rankNumber(v: number, name: string, min: number): number {
  if (!Number.isSafeInteger(v) || v < min) throw new KvgateError('KVG_CONFIG', `${name} must be an integer ≥ ${min}, got ${v}`);
  return v;
}

function positive(v: number, name: string, allowZero = false): number {
  if (!Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) throw new KvgateError('KVG_CONFIG', `${name} must be a positive number, got ${v}`);
  return v;
}

export function resolveOptions(o: ShimOptions): ResolvedShimOptions {
  if (!o.worker || !TOKEN_RE.test(o.worker)) throw new KvgateError('KVG_CONFIG', `worker id ${JSON.stringify(o.worker)} must match ${TOKEN_RE}`);
  if (!o.model) throw new KvgateError('KVG_CONFIG', 'model is required');
  if (!o.engineUrl) throw new KvgateError('KVG_CONFIG', 'engine URL is required');
  if (o.kvEvents && o.kvEventsBind) throw new KvgateError('KVG_CONFIG', 'give either a KV events endpoint to connect to or one to bind, not both');
  if (!o.kvEvents && !o.kvEventsBind) throw new KvgateError('KVG_CONFIG', 'KV events endpoint is required (connect, or bind for engines in connect mode)');
  const kvEvents = o.kvEventsBind ? { endpoint: o.kvEventsBind, bind: true } : { endpoint: o.kvEvents!, bind: false };
  let dp: ResolvedShimOptions['dp'] = null;
  // size 1 alone is no data parallelism: the worker keeps its id (templated deployments pass it everywhere)
  if (o.dpRank !== undefined || (o.dataParallelSize !== undefined && o.dataParallelSize !== 1)) {
    const size = o.dataParallelSize === undefined ? null : rankNumber(o.dataParallelSize, 'data-parallel size', 1);
    const one = o.dpRank === undefined ? null : rankNumber(o.dpRank, 'data-parallel rank', 0);
    if (size !== null && one !== null && one >= size) throw new KvgateError('KVG_CONFIG', `data-parallel rank ${one} is not below data-parallel size ${size}`);
    const ranks = one !== null ? [one] : Array.from({ length: size! }, (_, r) => r);
    dp = { dpSize: size, ranks: ranks.map((rank) => ({ rank, worker: rankWorkerId(o.worker, rank) })) };
    for (const r of dp.ranks) {
      // fails early, with the flag named, on an endpoint no engine rank could use
      offsetEndpoint(kvEvents.endpoint, r.rank);
      if (o.kvReplay) offsetEndpoint(o.kvReplay, r.rank);
      if (!TOKEN_RE.test(r.worker)) throw new KvgateError('KVG_CONFIG', `worker id ${JSON.stringify(r.worker)} must match ${TOKEN_RE}`);
    }
  }
  const role = o.role ?? 'both';
  if (role !== 'both' && role !== 'prefill' && role !== 'decode') throw new KvgateError('KVG_CONFIG', `role must be both, prefill or decode, got ${role}`);
  let loraMap: Map<number, string>;
  try {
    loraMap = o.loraMap instanceof Map ? o.loraMap : parseLoraMap(o.loraMap);
  } catch (e) {
    throw new KvgateError('KVG_CONFIG', (e as Error).message);
  }
  return {
    worker: o.worker,
    model: o.model,
    role,
    engineUrl: o.engineUrl.replace(/\/+$/, ''),
    kvEvents,
    dp,
    kvReplay: o.kvReplay || undefined,
    topic: o.topic ?? '',
    namespace: o.namespace ?? 'default',
    port: o.port ?? 0,
    host: o.host ?? '127.0.0.1',
    advertiseUrl: o.advertiseUrl,
    blockSize: positive(o.blockSize ?? 16, 'block size'),
    capacityBlocks: positive(o.capacityBlocks ?? 0, 'capacity', true),
    loraMap,
    maxMapEntries: positive(o.maxMapEntries ?? 1_000_000, 'max map entries'),
    scrapeIntervalMs: positive(o.scrapeIntervalMs ?? 100, 'scrape interval'),
    loadIntervalMs: positive(o.loadIntervalMs ?? 250, 'load interval'),
    registryTtlMs: positive(o.registryTtlMs ?? 3000, 'registry TTL'),
    heartbeatMs: positive(o.heartbeatMs ?? 1000, 'heartbeat'),
    replayTimeoutMs: positive(o.replayTimeoutMs ?? 1000, 'replay timeout'),
    replayProbeMs: positive(o.replayProbeMs ?? 5000, 'replay probe period'),
    maxBodyBytes: positive(o.maxBodyBytes ?? 16 * 1024 * 1024, 'max body bytes'),
    staleEventsMs: positive(o.staleEventsMs ?? 60_000, 'stale events threshold'),
    diagIntervalMs: positive(o.diagIntervalMs ?? 2000, 'diag interval'),
    publishBufferBatches: positive(o.publishBufferBatches ?? 10_000, 'publish buffer batches'),
    publishBufferBytes: positive(o.publishBufferBytes ?? 64 * 1024 * 1024, 'publish buffer bytes'),
    engineProbeMs: positive(o.engineProbeMs ?? 1000, 'engine probe period'),
    nixlSideChannelPort: rankNumber(o.nixlSideChannelPort ?? 5600, 'NIXL side-channel port', 1),
    prefillTimeoutMs: positive(o.prefillTimeoutMs ?? 60_000, 'prefill timeout'),
    httpLimits: resolveHttpLimits(o.httpLimits),
    engineProbeTimeoutMs: positive(o.engineProbeTimeoutMs ?? 1000, 'engine probe timeout'),
    engineDownDeregisterMs: positive(o.engineDownDeregisterMs ?? 30_000, 'engine-down deregistration bound', true),
    clusterSecret: o.clusterSecret || undefined,
    engineApiKey: o.engineApiKey || undefined,
  };
}
