/**
 * The routing flags `kvgate router` and `kvgate epp` share (one routing core, two edges): policy, score weights,
 * busy thresholds, tier weights, the index budget, P/D, and the cluster-view timings; and priority and flow
 * control (both edges: objectives, the queue's bound and deadline). Parsed into the RouterOptions fields they set;
 * a bad value is a FlagError (one fatal line, exit 2).
 */
import { DEFAULT_TIER_WEIGHTS, DEFAULT_WEIGHTS, isPolicy, parseTierWeights, type RouterOptions, type TierWeights } from '@kvgate/router';
import { readFileSync } from 'node:fs';
import { FlagError } from './fatal.js';
import { intFlag, numberFlag, type FlagSpec } from './flags.js';

export const ROUTING_SPEC = {
  nats: { type: 'string', help: 'NATS URL (absent: in-memory bus, useful only with in-process workers)' },
  namespace: { type: 'string', default: 'default', help: 'subject namespace' },
  id: { type: 'string', help: 'replica id (default router-<random>)' },
  tokenizer: { type: 'string', help: 'local tokenizer.json (or "qwen3" for the bundled one); default: ask the engines (/tokenize)' },
  policy: { type: 'string', default: 'kv', help: 'kv | round-robin | least-loaded | random' },
  'uncached-weight': { type: 'string', default: String(DEFAULT_WEIGHTS.uncachedWeight), help: "score weight of the prompt's blocks the worker does not cache" },
  'prefill-weight': { type: 'string', default: String(DEFAULT_WEIGHTS.prefillWeight), help: 'score weight of prefill blocks queued on the worker' },
  'decode-weight': { type: 'string', default: String(DEFAULT_WEIGHTS.decodeWeight), help: 'score weight of active decode blocks' },
  'queue-weight': { type: 'string', default: String(DEFAULT_WEIGHTS.queueWeight), help: 'score weight of one waiting request (in blocks)' },
  'busy-kv': { type: 'string', default: String(DEFAULT_WEIGHTS.busyKvUsage), help: 'skip workers at or above this KV usage (0..1)' },
  'busy-waiting': { type: 'string', default: String(DEFAULT_WEIGHTS.busyWaiting), help: 'skip workers with this many waiting requests' },
  temperature: { type: 'string', default: '0', help: 'softmax temperature over scores (0 = always the best)' },
  'tier-weights': {
    type: 'string',
    default: `gpu=${DEFAULT_TIER_WEIGHTS.gpu},cpu=${DEFAULT_TIER_WEIGHTS.cpu},disk=${DEFAULT_TIER_WEIGHTS.disk}`,
    help: 'worth of a cached block per tier, each in [0, 1] (a CPU or disk block must be reloaded first)',
  },
  'index-timeout-ms': { type: 'string', default: '5', help: 'index answer budget before routing by load alone' },
  'index-shards': { type: 'string', default: '1', help: 'index shards N (indexers run --shard i/N): ask all N in parallel within the budget and merge; 1 = unsharded' },
  'pd-min-prefill-tokens': { type: 'string', default: '512', help: 'P/D pools: prefill on the decode worker (no remote prefill) when it lacks fewer prompt tokens than this' },
  'registry-ttl-ms': { type: 'string', default: '3000', help: 'workers bucket TTL (must match the shims)' },
  'stale-view-ms': { type: 'string', default: '60000', help: 'bus silent this long: the last-known registry and load view are marked stale (metric, log, /readyz) and still used' },
  'suspect-backoff-ms': { type: 'string', default: '1000', help: 'a worker failing before its first byte is skipped this long, doubled per failed probe' },
  'suspect-max-backoff-ms': { type: 'string', default: '30000', help: 'ceiling of that back-off' },
} as const satisfies Record<string, FlagSpec>;

export type RoutingFlags = { [K in keyof typeof ROUTING_SPEC]?: string | undefined };

type RoutingOptions = Pick<
  RouterOptions,
  'namespace' | 'id' | 'policy' | 'indexTimeoutMs' | 'indexShards' | 'pdMinPrefillTokens' | 'registryTtlMs' | 'staleViewMs' | 'suspectBackoffMs' | 'suspectMaxBackoffMs' | 'weights'
>;

/** The routing core's options from the parsed flags (the tokenizer and the bus are the command's). */
export function routingOptionsFrom(f: RoutingFlags): RoutingOptions & { policy: NonNullable<RouterOptions['policy']> } {
  const policy = f.policy ?? 'kv';
  if (!isPolicy(policy)) throw new FlagError(`unknown --policy ${JSON.stringify(policy)}: kv, round-robin, least-loaded or random`);
  let tierWeights: TierWeights;
  try {
    tierWeights = parseTierWeights(f['tier-weights'] ?? '');
  } catch (e) {
    throw new FlagError(`${(e as Error).message} (from --tier-weights or KVGATE_TIER_WEIGHTS)`);
  }
  return {
    namespace: f.namespace ?? 'default',
    ...(f.id ? { id: f.id } : {}),
    policy,
    indexTimeoutMs: intFlag(f['index-timeout-ms'], 'index-timeout-ms', 5),
    indexShards: indexShardsFrom(f['index-shards']),
    pdMinPrefillTokens: intFlag(f['pd-min-prefill-tokens'], 'pd-min-prefill-tokens', 512),
    registryTtlMs: intFlag(f['registry-ttl-ms'], 'registry-ttl-ms', 3000),
    staleViewMs: intFlag(f['stale-view-ms'], 'stale-view-ms', 60_000),
    suspectBackoffMs: intFlag(f['suspect-backoff-ms'], 'suspect-backoff-ms', 1000),
    suspectMaxBackoffMs: intFlag(f['suspect-max-backoff-ms'], 'suspect-max-backoff-ms', 30_000),
    weights: {
      uncachedWeight: intFlag(f['uncached-weight'], 'uncached-weight', DEFAULT_WEIGHTS.uncachedWeight),
      prefillWeight: intFlag(f['prefill-weight'], 'prefill-weight', DEFAULT_WEIGHTS.prefillWeight),
      decodeWeight: intFlag(f['decode-weight'], 'decode-weight', DEFAULT_WEIGHTS.decodeWeight),
      queueWeight: intFlag(f['queue-weight'], 'queue-weight', DEFAULT_WEIGHTS.queueWeight),
      busyKvUsage: intFlag(f['busy-kv'], 'busy-kv', DEFAULT_WEIGHTS.busyKvUsage),
      busyWaiting: intFlag(f['busy-waiting'], 'busy-waiting', DEFAULT_WEIGHTS.busyWaiting),
      temperature: intFlag(f.temperature, 'temperature', 0),
      tierWeights,
    },
  };
}

export const FLOW_SPEC = {
  objectives: { type: 'string', help: 'x-llm-d-inference-objective → priority: name=priority,… or a file (JSON {"name": priority} or name=priority lines); negative = sheddable' },
  'queue-max': { type: 'string', default: '1024', help: 'requests waiting per priority and pool when every worker is busy (past it: 429)' },
  'queue-timeout-ms': { type: 'string', default: '30000', help: 'longest wait for a saturated pool (past it: 503 KVG_QUEUE_TIMEOUT)' },
} as const satisfies Record<string, FlagSpec>;

export type FlowFlags = { [K in keyof typeof FLOW_SPEC]?: string | undefined };

export function flowOptionsFrom(f: FlowFlags): { objectives: Record<string, number>; flow: { maxQueue: number; maxWaitMs: number } } {
  return {
    objectives: f.objectives ? parseObjectives(f.objectives) : {},
    flow: {
      maxQueue: numberFlag(f['queue-max'], 'queue-max', 1024, { min: 0, integer: true }),
      maxWaitMs: numberFlag(f['queue-timeout-ms'], 'queue-timeout-ms', 30_000, { min: 0, integer: true }),
    },
  };
}

/**
 * `--objectives`: `name=priority,…` inline, or a file of the same pairs (one per line or comma-separated, `#`
 * comments) or a JSON object. Priorities are integers (negative = sheddable).
 */
export function parseObjectives(v: string, readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): Record<string, number> {
  const inline = v.includes('=') && !v.trimStart().startsWith('{');
  const text = inline ? v : readFile(v);
  const where = inline ? '--objectives' : `--objectives file ${v}`;
  const out: Record<string, number> = {};
  const put = (name: string, prio: unknown) => {
    const p = typeof prio === 'string' && prio.trim() !== '' ? Number(prio) : prio;
    if (name === '' || /\s/.test(name)) throw new FlagError(`${where}: objective name ${JSON.stringify(name)} is empty or has whitespace`);
    if (typeof p !== 'number' || !Number.isSafeInteger(p)) throw new FlagError(`${where}: priority of ${JSON.stringify(name)} must be an integer, got ${JSON.stringify(prio)}`);
    if (name in out) throw new FlagError(`${where}: objective ${JSON.stringify(name)} given twice`);
    out[name] = p;
  };
  if (text.trimStart().startsWith('{')) {
    let j: unknown;
    try {
      j = JSON.parse(text);
    } catch (e) {
      throw new FlagError(`${where}: not JSON: ${(e as Error).message}`);
    }
    if (j === null || typeof j !== 'object' || Array.isArray(j)) throw new FlagError(`${where}: want a JSON object {"name": priority}`);
    for (const [k, p] of Object.entries(j)) put(k, p);
  } else {
    for (const item of text.split(/[\n,]/)) {
      const s = item.replace(/#.*$/, '').trim();
      if (s === '') continue;
      const eq = s.indexOf('=');
      if (eq < 0) throw new FlagError(`${where}: ${JSON.stringify(s)} is not name=priority`);
      put(s.slice(0, eq).trim(), s.slice(eq + 1).trim());
    }
  }
  return out;
}


/** `--index-shards N`: an integer 1 … 1024 (the indexers' `--shard i/N` bound) */
function indexShardsFrom(v: string | undefined): number {
  const n = intFlag(v, 'index-shards', 1);
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new FlagError(`--index-shards must be an integer 1 … 1024 (the indexers' --shard i/N), got ${JSON.stringify(v)}`);
  return n;
}
