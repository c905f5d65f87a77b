import { createBus, initTracing, logger, type Bus } from '@kvgate/protocol';
import { parseShard, startIndexer } from '@kvgate/indexer';
import { parseFlags, intFlag } from '../flags.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { redactNatsUrl } from '@kvgate/protocol/bus/index';
import { FlagError } from '../fatal.js';
import { HTTP_LIMITS_SPEC, httpLimitsFrom } from '../http-flags.js';
import { drainMs, LIFECYCLE_SPEC, NATS_CONNECT_SPEC, natsConnectTimeoutMs, serveUntilSignal, within } from '../lifecycle.js';

export const summary = 'run an indexer replica: the global prefix → worker index (sharded, gossip-replicated)';

const USAGE = 'kvgate indexer --port P [--nats URL] [--id NAME] [--shards N] [--shard i/N] [--snapshot-dir D] [--max-entries N]';
const SPEC = {
  port: { type: 'string', help: 'HTTP port (/healthz, /readyz, /metrics, /debug/workers, /debug/match)', default: '8090' },
  host: { type: 'string', help: 'HTTP bind address (in a pod: 0.0.0.0)', default: '127.0.0.1' },
  nats: { type: 'string', help: 'NATS URL (nats://host:port); absent = in-memory bus (only useful for a smoke test)' },
  namespace: { type: 'string', help: 'subject namespace', default: 'default' },
  id: { type: 'string', help: 'replica id, unique among indexers (default indexer-<random>)' },
  shards: { type: 'string', help: 'index shards as worker threads (0 = one inline shard)', default: '0' },
  shard: { type: 'string', help: 'index shard i of N processes (0 ≤ i < N): holds the workers whose id hashes to i, answers …index.match.<N>.<i> (routers: --index-shards N), snapshots in <snapshot-dir>/shard-<N>-<i>; 0/1 = the whole index', default: '0/1' },
  'snapshot-dir': { type: 'string', help: 'directory for index snapshots (may be shared by replicas)' },
  'snapshot-ms': { type: 'string', help: 'snapshot period in ms', default: '30000' },
  'max-entries': { type: 'string', help: 'cap on (block, worker) entries, evicting least recently used prefixes (0 = none)', default: '0' },
  'gossip-ms': { type: 'string', help: 'gossip period in ms', default: '1000' },
  'ttl-ms': { type: 'string', help: 'worker registry TTL in ms (must match the shims)', default: '3000' },
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
  let opts;
  try {
    const int = (name: keyof typeof SPEC, def: number, min = 0) => {
      const v = intFlag(f[name] as string | undefined, name, def);
      if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer ≥ ${min}`);
      return v;
    };
    opts = {
      port: int('port', 8090),
      host: f.host ?? '127.0.0.1',
      namespace: f.namespace ?? 'default',
      ...(f.id ? { id: f.id } : {}),
      shards: int('shards', 0),
      shard: parseShard(f.shard ?? '0/1'),
      ...(f['snapshot-dir'] ? { snapshotDir: f['snapshot-dir'] } : {}),
      snapshotIntervalMs: int('snapshot-ms', 30_000, 1),
      maxEntries: int('max-entries', 0),
      gossipIntervalMs: int('gossip-ms', 1000, 1),
      registryTtlMs: int('ttl-ms', 3000, 1),
      httpLimits: httpLimitsFrom(f),
    };
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
  const drain = drainMs(f);
  const connectTimeoutMs = natsConnectTimeoutMs(f);
  const natsAuth = natsOptionsFrom(f);
  const log = logger('cli.indexer');
  await initTracing('kvgate-indexer');
  // a start-up failure throws: main.ts prints it in one line (fatal.ts); what was started is closed first
  let bus: Bus | null = null;
  let ix: Awaited<ReturnType<typeof startIndexer>> | null = null;
  try {
    bus = await createBus({ nats: f.nats, name: `kvgate-indexer${f.id ? `-${f.id}` : ''}`, connectTimeoutMs, ...natsAuth });
    ix = await startIndexer(bus, opts);
  } catch (e) {
    await within(2000, 'bus close', bus?.close() ?? Promise.resolve());
    throw e;
  }
  log.info({ id: ix.indexer.id, port: ix.port, nats: f.nats ? redactNatsUrl(f.nats) : null, shards: opts.shards, shard: `${opts.shard.index}/${opts.shard.of}` }, 'indexer listening');
  const running = ix;
  const b = bus;
  // the indexer has no long requests to drain: it closes its HTTP edge, shards and subscriptions
  return serveUntilSignal('indexer', drain, async () => {
    await within(3000, 'indexer close', running.close());
    await within(1500, 'bus close', b.close());
  });
}
