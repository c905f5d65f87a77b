/** The shim's one options type; `kvgate shim` flags and KVGATE_* env vars map onto it. */
import { KvgateError, TOKEN_RE, type WorkerRole } from '@kvgate/protocol';
import { parseLoraMap } from './lora.js';

export interface ShimOptions {
  /** worker id, unique in the namespace; a subject token ([A-Za-z0-9_-:@]). Required. */
  worker: string;
  /** model name the engine serves; roots every prefix hash. Required. */
  model: string;
  /** default 'both' */
  role?: WorkerRole;
  /** engine's HTTP base URL (OpenAI API and /metrics), e.g. http://127.0.0.1:8000. Required. */
  engineUrl: string;
  /** engine's ZMQ PUB endpoint, e.g. tcp://127.0.0.1:5557. Required. */
  kvEvents: string;
  /** engine's ZMQ ROUTER replay endpoint; absent = gaps are never replayed (cleared instead) */
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
}

export type ResolvedShimOptions = Required<Omit<ShimOptions, 'kvReplay' | 'advertiseUrl' | 'loraMap'>> & {
  kvReplay: string | undefined;
  advertiseUrl: string | undefined;
  loraMap: Map<number, string>;
};

function positive(v: number, name: string, allowZero = false): number {
  if (!Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) throw new KvgateError('KVG_CONFIG', `${name} must be a positive number, got ${v}`);
  return v;
}

export function resolveOptions(o: ShimOptions): ResolvedShimOptions {
  if (!o.worker || !TOKEN_RE.test(o.worker)) throw new KvgateError('KVG_CONFIG', `worker id ${JSON.stringify(o.worker)} must match ${TOKEN_RE}`);
  if (!o.model) throw new KvgateError('KVG_CONFIG', 'model is required');
  if (!o.engineUrl) throw new KvgateError('KVG_CONFIG', 'engine URL is required');
  if (!o.kvEvents) throw new KvgateError('KVG_CONFIG', 'KV events endpoint is required');
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
    kvEvents: o.kvEvents,
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
  };
}
