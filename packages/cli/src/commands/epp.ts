/**
 * `kvgate epp`: one endpoint-picker replica for a Kubernetes gateway (Gateway API Inference Extension): Envoy's
 * ext_proc on --port (9002), gRPC health on --health-port (9003), and an HTTP port (--metrics-port, 9090) with
 * /metrics, /healthz, /readyz and /v1/route (the decision without proxying) — not the OpenAI API: requests go
 * through the gateway, which sends them to the endpoint picked here. The routing core is the router's (the same
 * flags, selection, in-flight sharing between replicas over NATS and decision record).
 */
import { randomBytes } from 'node:crypto';
import { createBus } from '@kvgate/protocol/bus/index';
import { initTracing, logger } from '@kvgate/protocol';
import { loadTokenizer } from '@kvgate/protocol/tokenizer';
import { startRouter } from '@kvgate/router';
import { intFlag, numberFlag, parseFlags, type FlagSpec } from '../flags.js';
import { HTTP_LIMITS_SPEC, httpLimitsFrom } from '../http-flags.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { FlagError } from '../fatal.js';
import { drainMs, LIFECYCLE_SPEC, NATS_CONNECT_SPEC, natsConnectTimeoutMs, serveUntilSignal, within } from '../lifecycle.js';
import { FLOW_SPEC, flowOptionsFrom, ROUTING_SPEC, routingOptionsFrom } from '../routing-flags.js';

export { parseObjectives } from '../routing-flags.js';

export const summary = 'gateway endpoint picker (Envoy ext_proc, Gateway API Inference Extension) over the router\'s routing core';

/** the conventional ports of a GIE endpoint picker (the deploy/ manifests and the tests read these) */
export const EPP_DEFAULTS = { port: 9002, healthPort: 9003, metricsPort: 9090 } as const;

const USAGE = `kvgate epp --nats URL [--port ${EPP_DEFAULTS.port}] [--health-port ${EPP_DEFAULTS.healthPort}] [--pool NAME] [--objectives FILE | name=priority,…]

The gateway (Envoy Gateway, kgateway, Istio, GKE, or a plain Envoy: deploy/envoy/) asks this process, per request,
which endpoint (engine address ip:port, as registered by the shims) should serve it; the answer is an ordered list
in x-gateway-destination-endpoint. Objectives map x-llm-d-inference-objective to a priority (InferenceObjective
semantics: integer, unset 0, negative = sheddable: 429 at once on a saturated pool); the others wait in a bounded
per-priority queue (--queue-max) for at most --queue-timeout-ms (then 503).`;

const SPEC = {
  port: { type: 'string', default: String(EPP_DEFAULTS.port), help: 'ext_proc gRPC port (the InferencePool endpointPickerRef port)' },
  'health-port': { type: 'string', default: String(EPP_DEFAULTS.healthPort), help: 'gRPC health port (services liveness, readiness, envoy.service.ext_proc.v3.ExternalProcessor)' },
  'metrics-port': { type: 'string', default: String(EPP_DEFAULTS.metricsPort), help: 'HTTP port for /metrics, /healthz, /readyz and /v1/route' },
  host: { type: 'string', default: '127.0.0.1', help: 'bind address of all three ports (in a pod: 0.0.0.0)' },
  pool: { type: 'string', help: 'the model of requests whose body names none (or that have no body)' },
  'body-limit': { type: 'string', default: String(10 * 1024 * 1024), help: 'buffered request body cap, bytes (past it: 413)' },
  'max-endpoints': { type: 'string', default: '0', help: 'endpoints in the answer, first choice included (a plain Envoy ORIGINAL_DST cluster reads one: 1); 0 = all eligible, the rest as fallbacks' },
  scores: { type: 'boolean', help: 'send per-endpoint scores in envoy.lb x-gateway-destination-endpoint-scores' },
  'engine-api-key': { type: 'string', help: 'sent to the engines\' /tokenize as Authorization: Bearer (prefer KVGATE_ENGINE_API_KEY)' },
  ...ROUTING_SPEC,
  nats: { type: 'string', help: 'NATS URL (required: the workers, their load, the index and the other replicas are on the bus)' },
  ...FLOW_SPEC,
  ...NATS_CONNECT_SPEC,
  ...NATS_AUTH_SPEC,
  ...LIFECYCLE_SPEC,
  ...HTTP_LIMITS_SPEC,
} as const satisfies Record<string, FlagSpec>;

function portFlag(v: string | undefined, name: string, def: number): number {
  const n = intFlag(v, name, def);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new FlagError(`--${name} must be a port 0..65535, got ${JSON.stringify(v)}`);
  return n;
}

export async function run(argv: string[]): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  // flags first (a bad one fails before anything starts), then the bus, then the picker (fatal.ts: one line)
  if (!f.nats) throw new FlagError('--nats URL is required (the workers, their load and the index are on the bus)');
  const routing = routingOptionsFrom(f);
  const drain = drainMs(f);
  const connectTimeoutMs = natsConnectTimeoutMs(f);
  const natsAuth = natsOptionsFrom(f);
  const host = f.host ?? '127.0.0.1';
  const port = portFlag(f.port, 'port', EPP_DEFAULTS.port);
  const healthPort = portFlag(f['health-port'], 'health-port', EPP_DEFAULTS.healthPort);
  const metricsPort = portFlag(f['metrics-port'], 'metrics-port', EPP_DEFAULTS.metricsPort);
  const nonZero = [port, healthPort, metricsPort].filter((p) => p !== 0);
  if (new Set(nonZero).size !== nonZero.length) throw new FlagError(`--port, --health-port and --metrics-port must differ (${port}, ${healthPort}, ${metricsPort})`);
  const flow = flowOptionsFrom(f);
  const options = {
    ...routing,
    id: routing.id ?? `epp-${randomBytes(4).toString('hex')}`,
    httpLimits: httpLimitsFrom(f),
    port: metricsPort,
    host,
    openaiApi: false,
    ...(f['engine-api-key'] ? { engineApiKey: f['engine-api-key'] } : {}),
    epp: {
      port,
      healthPort,
      host,
      ...(f.pool ? { pool: f.pool } : {}),
      bodyLimitBytes: numberFlag(f['body-limit'], 'body-limit', 10 * 1024 * 1024, { min: 1, integer: true }),
      scores: f.scores === true,
      maxEndpoints: numberFlag(f['max-endpoints'], 'max-endpoints', 0, { min: 0, integer: true }),
    },
    ...flow,
  };
  await initTracing('kvgate-epp');
  const tokenizer = f.tokenizer ? await loadTokenizer(f.tokenizer) : undefined;
  const bus = await createBus({ nats: f.nats, connectTimeoutMs, ...natsAuth });
  let router;
  try {
    router = await startRouter(bus, { ...options, ...(tokenizer ? { tokenizer } : {}) });
  } catch (e) {
    await within(1500, 'bus close', bus.close());
    throw e;
  }
  logger('cli').info(
    { id: router.id, extProc: `${host}:${router.epp!.port}`, health: `${host}:${router.epp!.healthPort}`, metrics: router.url, policy: routing.policy, objectives: Object.keys(flow.objectives).length, pool: f.pool ?? null },
    'epp ready',
  );
  const r = router;
  return serveUntilSignal('epp', drain, async (ms) => {
    await within(ms + 2000, 'epp close', r.close({ drainMs: ms }));
    await within(1500, 'bus close', bus.close());
  });
}
