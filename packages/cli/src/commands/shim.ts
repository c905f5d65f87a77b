import { createBus, initTracing, type WorkerRole } from '@kvgate/protocol';
import { startShim } from '@kvgate/worker-shim';
import { parseFlags, intFlag, numberFlag } from '../flags.js';
import { CLUSTER_SECRET_SPEC, clusterSecretFrom } from '../auth-flags.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { FlagError } from '../fatal.js';
import { HTTP_LIMITS_SPEC, httpLimitsFrom } from '../http-flags.js';
import { drainMs, LIFECYCLE_SPEC, NATS_CONNECT_SPEC, natsConnectTimeoutMs, serveUntilSignal, within } from '../lifecycle.js';

export const summary = "run beside an engine: put its KV cache and load on the bus, front it for P/D";

const USAGE = `kvgate shim --engine-url http://127.0.0.1:8000 --kv-events tcp://127.0.0.1:5557 [--kv-replay tcp://127.0.0.1:5558]
            --worker-id ID --model NAME [--role both|prefill|decode] [--nats URL] [--port P]`;
const SPEC = {
  'engine-url': { type: 'string', help: "engine's HTTP base URL (OpenAI API, /metrics)", default: 'http://127.0.0.1:8000' },
  'kv-events': { type: 'string', help: "engine's ZMQ KV event PUB endpoint (default tcp://127.0.0.1:5557 unless --kv-events-bind)" },
  'kv-events-bind': { type: 'string', help: 'bind the SUB socket here instead, for engines whose publisher connects (e.g. tcp://*:5557)' },
  'data-parallel-size': { type: 'string', help: 'engine DP ranks behind --engine-url: rank r publishes on port + r, worker <id>-dp<r>' },
  'dp-rank': { type: 'string', help: 'serve this one DP rank only (worker <id>-dp<R>, events on port + R)' },
  'kv-replay': { type: 'string', help: "engine's ZMQ replay (ROUTER) endpoint; absent: gaps clear the worker instead" },
  topic: { type: 'string', help: 'ZMQ topic prefix to subscribe to (empty: all)', default: '' },
  'worker-id': { type: 'string', help: 'worker id, unique in the namespace ([A-Za-z0-9_-:@])' },
  model: { type: 'string', help: 'model name the engine serves (roots every prefix hash)' },
  role: { type: 'string', help: 'both | prefill | decode', default: 'both' },
  nats: { type: 'string', help: 'NATS URL (absent: in-memory bus, useful only for trying it out)' },
  namespace: { type: 'string', help: 'bus namespace', default: 'default' },
  port: { type: 'string', help: 'HTTP front port (P/D proxy, /healthz, /metrics); -1 = none', default: '8100' },
  host: { type: 'string', help: 'HTTP front bind address (in a pod: 0.0.0.0, with --cluster-secret)', default: '127.0.0.1' },
  'advertise-url': { type: 'string', help: 'URL routers use for this worker (default: http://<host>:<port> of the front)' },
  'block-size': { type: 'string', help: 'engine block size until the engine reports it', default: '16' },
  'lora-map': { type: 'string', help: 'LoRA int id → name for engines that send only lora_id, e.g. 1=sql-lora,2=chat' },
  'max-map-entries': { type: 'string', help: 'cap of the engine-hash map (LRU)', default: '1000000' },
  'scrape-ms': { type: 'string', help: 'engine /metrics scrape period', default: '100' },
  'load-ms': { type: 'string', help: 'load report period (also sent on change)', default: '250' },
  'ttl-ms': { type: 'string', help: 'registration TTL in the workers bucket', default: '3000' },
  'heartbeat-ms': { type: 'string', help: 'registration heartbeat period', default: '1000' },
  'replay-timeout-ms': { type: 'string', help: 'wait per replay reply', default: '1000' },
  'replay-probe-ms': { type: 'string', help: 'ask the replay socket for missed batches this often', default: '5000' },
  'stale-events-s': { type: 'string', help: 'warn (and tell kvgate doctor) when the engine serves this long without one KV event', default: '60' },
  'engine-probe-ms': { type: 'string', help: "probe the engine's GET /health this often (a failed probe: load reports say healthy: false, /healthz 503)", default: '1000' },
  'engine-down-deregister-ms': { type: 'string', help: 'an engine down this long is deregistered (registered again once it answers)', default: '30000' },
  'publish-buffer-batches': { type: 'string', help: 'event batches kept per worker while the bus cannot store them (past it: dropped, resync)', default: '10000' },
  'nixl-side-channel-port': { type: 'string', help: "the prefill engines' VLLM_NIXL_SIDE_CHANNEL_PORT (a P/D descriptor's remote_port must be it + DP rank, or the worker's registered port)", default: '5600' },
  'publish-buffer-bytes': { type: 'string', help: 'bytes of event batches kept per worker while the bus cannot store them', default: String(64 * 1024 * 1024) },
  'engine-api-key': { type: 'string', help: "the engine's own --api-key, for the shim's /v1/models calls (prefer KVGATE_ENGINE_API_KEY)" },
  ...CLUSTER_SECRET_SPEC,
  ...NATS_CONNECT_SPEC,
  ...NATS_AUTH_SPEC,
  ...LIFECYCLE_SPEC,
  ...HTTP_LIMITS_SPEC,
} as const;

export async function run(argv: string[]): Promise<number> {
  // a bad flag throws; main.ts prints it in one line (exit 2)
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  if (!f['worker-id'] || !f.model) throw new FlagError('--worker-id and --model are required');
  // flags first (a bad one fails before anything starts); a start-up failure throws and main.ts prints it in one
  // line (fatal.ts), after the bus is closed
  const drain = drainMs(f);
  const connectTimeoutMs = natsConnectTimeoutMs(f);
  const port = intFlag(f.port, 'port', 8100);
  const natsAuth = natsOptionsFrom(f);
  const clusterSecret = clusterSecretFrom(f['cluster-secret']);
  const publishBufferBatches = numberFlag(f['publish-buffer-batches'], 'publish-buffer-batches', 10_000, { min: 1, integer: true });
  const publishBufferBytes = numberFlag(f['publish-buffer-bytes'], 'publish-buffer-bytes', 64 * 1024 * 1024, { min: 1, integer: true });
  let advertiseUrl = f['advertise-url'];
  if (!advertiseUrl && (f.host === '0.0.0.0' || f.host === '::') && port > 0) {
    const { hostname } = await import('node:os');
    advertiseUrl = `http://${hostname()}:${port}`;
  }
  await initTracing('kvgate-shim');
  const bus = await createBus({ nats: f.nats, connectTimeoutMs, ...natsAuth });
  let shim;
  try {
    shim = await startShim(bus, {
      worker: f['worker-id'],
      model: f.model,
      role: f.role as WorkerRole,
      engineUrl: f['engine-url']!,
      ...(f['kv-events-bind'] ? { kvEventsBind: f['kv-events-bind'] } : { kvEvents: f['kv-events'] ?? 'tcp://127.0.0.1:5557' }),
      ...(f['data-parallel-size'] !== undefined ? { dataParallelSize: intFlag(f['data-parallel-size'], 'data-parallel-size', 1) } : {}),
      ...(f['dp-rank'] !== undefined ? { dpRank: intFlag(f['dp-rank'], 'dp-rank', 0) } : {}),
      kvReplay: f['kv-replay'],
      topic: f.topic ?? '',
      namespace: f.namespace,
      port,
      host: f.host,
      advertiseUrl,
      blockSize: intFlag(f['block-size'], 'block-size', 16),
      loraMap: f['lora-map'],
      maxMapEntries: intFlag(f['max-map-entries'], 'max-map-entries', 1_000_000),
      scrapeIntervalMs: intFlag(f['scrape-ms'], 'scrape-ms', 100),
      loadIntervalMs: intFlag(f['load-ms'], 'load-ms', 250),
      registryTtlMs: intFlag(f['ttl-ms'], 'ttl-ms', 3000),
      heartbeatMs: intFlag(f['heartbeat-ms'], 'heartbeat-ms', 1000),
      replayTimeoutMs: intFlag(f['replay-timeout-ms'], 'replay-timeout-ms', 1000),
      replayProbeMs: intFlag(f['replay-probe-ms'], 'replay-probe-ms', 5000),
      staleEventsMs: intFlag(f['stale-events-s'], 'stale-events-s', 60) * 1000,
      engineProbeMs: intFlag(f['engine-probe-ms'], 'engine-probe-ms', 1000),
      engineDownDeregisterMs: intFlag(f['engine-down-deregister-ms'], 'engine-down-deregister-ms', 30_000),
      publishBufferBatches,
      httpLimits: httpLimitsFrom(f),
      nixlSideChannelPort: numberFlag(f['nixl-side-channel-port'], 'nixl-side-channel-port', 5600, { min: 1, integer: true }),
      publishBufferBytes,
      ...(clusterSecret ? { clusterSecret } : {}),
      ...(f['engine-api-key'] ? { engineApiKey: f['engine-api-key'] } : {}),
    });
  } catch (e) {
    await within(1500, 'bus close', bus.close());
    throw e;
  }
  console.error(`kvgate shim: worker ${shim.worker} up${shim.url ? ` at ${shim.url}` : ''}`);
  if (!clusterSecret && port >= 0 && f.host !== '127.0.0.1' && f.host !== 'localhost' && f.host !== '::1') {
    console.error(`kvgate shim: warning: the HTTP front on ${f.host} takes unsigned calls from anyone who reaches it; give every router and shim --cluster-secret`);
  }
  const s = shim;
  return serveUntilSignal('shim', drain, async (ms) => {
    await within(ms + 3000, 'shim stop', s.stop({ drainMs: ms }));
    await within(1500, 'bus close', bus.close());
  });
}
