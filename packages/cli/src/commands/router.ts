/** `kvgate router`: one router replica (OpenAI-compatible HTTP in front of the workers in the registry). */
import { createBus } from '@kvgate/protocol/bus/index';
import { initTracing, logger } from '@kvgate/protocol';
import { loadTokenizer } from '@kvgate/protocol/tokenizer';
import { startRouter } from '@kvgate/router';
import { intFlag, parseFlags } from '../flags.js';
import { ROUTER_AUTH_SPEC, routerAuthFrom } from '../auth-flags.js';
import { HTTP_LIMITS_SPEC, httpLimitsFrom } from '../http-flags.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { FLOW_SPEC, flowOptionsFrom, ROUTING_SPEC, routingOptionsFrom } from '../routing-flags.js';
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
  ...ROUTING_SPEC,
  ...FLOW_SPEC,
  'body-limit': { type: 'string', default: String(32 * 1024 * 1024), help: 'request body limit, bytes' },
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
  const routing = routingOptionsFrom(f);
  const policy = routing.policy;
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
    ...routing,
    ...flowOptionsFrom(f),
    bodyLimitBytes: intFlag(f['body-limit'], 'body-limit', 32 * 1024 * 1024),
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
