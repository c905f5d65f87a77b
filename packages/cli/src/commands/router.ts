/** `kvgate router`: one router replica (OpenAI-compatible HTTP in front of the workers in the registry). */
import { createBus } from '@kvgate/protocol/bus/index';
import { initTracing, logger } from '@kvgate/protocol';
import { loadTokenizer } from '@kvgate/protocol/tokenizer';
import { DEFAULT_TIER_WEIGHTS, DEFAULT_WEIGHTS, isPolicy, parseTierWeights, startRouter, type TierWeights } from '@kvgate/router';
import { intFlag, parseFlags } from '../flags.js';
import { ROUTER_AUTH_SPEC, routerAuthFrom } from '../auth-flags.js';
import { HTTP_LIMITS_SPEC, httpLimitsFrom } from '../http-flags.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { FlagError } from '../fatal.js';
import { drainMs, LIFECYCLE_SPEC, NATS_CONNECT_SPEC, natsConnectTimeoutMs, serveUntilSignal, within } from '../lifecycle.js';

export const summary = 'OpenAI-compatible router: cache- and load-aware, horizontally scaled (run N replicas)';

const USAGE = `kvgate router [--port 8080] [--nats URL] [--tokenizer path/to/tokenizer.json] [--policy kv]

Score per live worker of the request's pool (lower wins; see packages/router/README.md):
  uncached-weight · (prompt blocks − cached blocks) + prefill-weight · queued prefill blocks + decode-weight · active blocks
  + queue-weight · waiting requests; workers over a busy threshold are skipped unless all are busy.
Cached blocks are weighed by the tier holding them (--tier-weights): gpu·w_gpu + (cpu − gpu)·w_cpu + (disk − cpu)·w_disk,
where gpu ≤ cpu ≤ disk are the prompt's prefix reachable on GPU, then through host memory, then through disk.`;

const SPEC = {
  port: { type: 'string', default: '8080', help: 'HTTP port' },
  host: { type: 'string', default: '127.0.0.1', help: 'bind address (in a pod or behind a load balancer: 0.0.0.0, with --api-key)' },
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
  'pd-min-prefill-tokens': { type: 'string', default: '512', help: 'P/D pools: prefill on the decode worker (no remote prefill) when it lacks fewer prompt tokens than this' },
  'body-limit': { type: 'string', default: String(32 * 1024 * 1024), help: 'request body limit, bytes' },
  'registry-ttl-ms': { type: 'string', default: '3000', help: 'workers bucket TTL (must match the shims)' },
  'stale-view-ms': { type: 'string', default: '60000', help: 'bus silent this long: the last-known registry and load view are marked stale (metric, log, /readyz) and still used' },
  'suspect-backoff-ms': { type: 'string', default: '1000', help: 'a worker failing before its first byte is skipped this long, doubled per failed probe' },
  'suspect-max-backoff-ms': { type: 'string', default: '30000', help: 'ceiling of that back-off' },
  ...ROUTER_AUTH_SPEC,
  ...NATS_CONNECT_SPEC,
  ...NATS_AUTH_SPEC,
  ...LIFECYCLE_SPEC,
  ...HTTP_LIMITS_SPEC,
} as const;

export async function run(argv: string[]): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  const policy = f.policy ?? 'kv';
  if (!isPolicy(policy)) throw new FlagError(`unknown --policy ${JSON.stringify(policy)}: kv, round-robin, least-loaded or random`);
  let tierWeights: TierWeights;
  try {
    tierWeights = parseTierWeights(f['tier-weights'] ?? '');
  } catch (e) {
    throw new FlagError(`${(e as Error).message} (from --tier-weights or KVGATE_TIER_WEIGHTS)`);
  }
  // flags first (a bad one fails before anything starts), then the bus, then the router; a failure throws and
  // main.ts prints it in one line (fatal.ts), after what was started is closed
  const drain = drainMs(f);
  const connectTimeoutMs = natsConnectTimeoutMs(f);
  const natsAuth = natsOptionsFrom(f);
  const auth = routerAuthFrom(f);
  const options = {
    ...auth,
    httpLimits: httpLimitsFrom(f),
    port: intFlag(f.port, 'port', 8080),
    host: f.host ?? '127.0.0.1',
    namespace: f.namespace ?? 'default',
    ...(f.id ? { id: f.id } : {}),
    policy,
    indexTimeoutMs: intFlag(f['index-timeout-ms'], 'index-timeout-ms', 5),
    pdMinPrefillTokens: intFlag(f['pd-min-prefill-tokens'], 'pd-min-prefill-tokens', 512),
    bodyLimitBytes: intFlag(f['body-limit'], 'body-limit', 32 * 1024 * 1024),
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
  await initTracing('kvgate-router');
  const tokenizer = f.tokenizer ? await loadTokenizer(f.tokenizer) : undefined;
  const bus = await createBus(f.nats ? { nats: f.nats, connectTimeoutMs, ...natsAuth } : {});
  let router;
  try {
    router = await startRouter(bus, { ...options, ...(tokenizer ? { tokenizer } : {}) });
  } catch (e) {
    await within(1500, 'bus close', bus.close());
    throw e;
  }
  const log = logger('cli');
  log.info(
    { url: router.url, id: router.id, policy, bus: bus.kind, apiKeys: auth.apiKeys?.length ?? 0, rateLimited: auth.rateLimit !== undefined, clusterSigned: auth.clusterSecret !== undefined },
    'router ready',
  );
  const r = router;
  return serveUntilSignal('router', drain, async (ms) => {
    await within(ms + 2000, 'router close', r.close({ drainMs: ms }));
    await within(1500, 'bus close', bus.close());
  });
}
