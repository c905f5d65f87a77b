/**
 * `kvgate doctor`: one line per registered worker, `ok` or each misconfiguration found (issue 11; the judges are
 * @kvgate/protocol diag.ts). It reads the workers bucket, asks every shim and router for its diag report
 * (`…diag.ask`), listens on `…diag.*.*` for --wait-ms, and prints the verdicts. Exit 0 all ok, 1 any problem
 * (or no worker registered), 2 the bus cannot be reached.
 */
import { BusError, decodeDiag, decodeRegistration, KvgateError, subjects, type Bus, type DiagReport, type WorkerRegistration, type WorkerVerdict, verdicts } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { intFlag, parseFlags } from '../flags.js';
import { classify, fatalLine } from '../fatal.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { explainGap, formatGap, scrapeCacheFacts, type GapVerdict } from './cache-gap.js';
import { formatIndexer, judgeIndexers, jsonIndexer, readIndexers } from './doctor-indexers.js';

export const summary = 'check every registered worker for misconfiguration (stale KV events, block size, tokenizer, hash mismatch)';

const USAGE = `kvgate doctor --nats URL [--namespace default] [--wait-ms 3000] [--router URL …] [--indexer URL …] [--json]

One line per registered worker: "ok", or each problem with what it means and what to check. With --router (each
router's HTTP URL), one cache line per worker more: predicted vs actual cache hits (token-weighted, from the
routers' /metrics), the engine's own hit rate (the worker's /metrics), and where a gap comes from (hash mismatch,
eviction after routing, index lag, index fallbacks). --router without --nats: the cache lines only. With --indexer
(each indexer replica's HTTP URL), one line per replica: its shard (--shard i/N) or unsharded, readiness, stream
position, workers held; problems: unreachable, shard counts that disagree, a worker in the wrong shard, a shard with
no replica given, registered workers a replica does not know (--nats). Exit 0 when
every worker is ok, 1 on any problem (a gap of 5 points or more is one), 2 when the bus cannot be reached.`;

const SPEC = {
  nats: { type: 'string', help: 'NATS URL the shims and routers use' },
  namespace: { type: 'string', default: 'default', help: 'subject namespace' },
  'wait-ms': { type: 'string', default: '3000', help: 'listen this long for the shims\' and routers\' reports' },
  'registry-ttl-ms': { type: 'string', default: '3000', help: 'workers bucket TTL (must match the shims)' },
  json: { type: 'boolean', help: 'one JSON object per worker line' },
  router: { type: 'string', multiple: true, help: "a router's HTTP URL: read its /metrics for the predicted vs actual cache hits (repeat for each)" },
  indexer: { type: 'string', multiple: true, help: "an indexer replica's HTTP URL: its shard, readiness and workers held (repeat for each; all shards' replicas)" },
  ...NATS_AUTH_SPEC,
} as const;

export interface Examination {
  verdicts: WorkerVerdict[];
  /** the latest report of each shim and router heard */
  reports: DiagReport[];
  namespace: string;
  waitMs: number;
  /** each registered worker's URL (its shim front, or the engine) */
  urls: Map<string, string>;
}

/** Asks for and collects the diag reports for `waitMs`, reads the registry, and judges each registered worker. */
export async function examine(bus: Bus, o: { namespace?: string; waitMs?: number; registryTtlMs?: number } = {}): Promise<Examination> {
  const namespace = o.namespace ?? 'default';
  const waitMs = o.waitMs ?? 3000;
  const s = subjects(namespace);
  const latest = new Map<string, DiagReport>();
  const bad: string[] = [];
  const sub = bus.subscribe(s.diagAll, {
    callback: (m) => {
      try {
        const r = decodeDiag(m.data);
        const key = `${r.source}|${r.id}`;
        const had = latest.get(key);
        if (!had || had.ts <= r.ts) latest.set(key, r);
      } catch (e) {
        bad.push(`${m.subject}: ${(e as Error).message}`);
      }
    },
  });
  try {
    const kv = await bus.kv(s.workersBucket, { ttlMs: o.registryTtlMs ?? 3000 });
    bus.publish(s.diagAsk, new Uint8Array(0));
    await bus.flush();
    await new Promise((r) => setTimeout(r, waitMs));
    const registered = new Map<string, WorkerRegistration>();
    for (const key of await kv.keys()) {
      const v = await kv.get(key);
      if (!v) continue;
      try {
        const reg = decodeRegistration(v);
        registered.set(reg.worker, reg);
      } catch {
        /* a registration this version cannot read: routers skip it too */
      }
    }
    const urls = new Map([...registered].map(([w, r]) => [w, r.url] as const));
    return { verdicts: verdicts(registered, [...latest.values()]), reports: [...latest.values()], namespace, waitMs, urls };
  } finally {
    sub.unsubscribe();
  }
}

/** the cache verdicts per worker (`workerUrls`: the registered URLs, whose /metrics carry the engine's counters) */
async function cacheLines(routers: string[], workerUrls: Map<string, string>): Promise<Map<string, GapVerdict>> {
  const { facts, errors } = await scrapeCacheFacts(routers, workerUrls);
  for (const e of errors) console.error(`kvgate doctor: could not read ${e}`);
  return new Map(facts.map((x) => [x.worker, explainGap(x)]));
}

/** --router without --nats: the cache lines of the workers the routers counted */
async function cacheOnly(routers: string[], json: boolean): Promise<number> {
  const gaps = await cacheLines(routers, new Map());
  if (gaps.size === 0) {
    const line = 'no router has proxied a request with engine usage yet (check: the --router URLs)';
    console.log(json ? JSON.stringify({ worker: null, ok: false, problems: [{ code: 'no-traffic', message: line }] }) : line);
    return 1;
  }
  for (const g of gaps.values()) console.log(json ? JSON.stringify({ worker: g.worker, ok: !g.problem, cache: g }) : formatGap(g));
  return [...gaps.values()].every((g) => !g.problem) ? 0 : 1;
}

/** the indexer lines (doctor-indexers.ts); 0 all ok, else 1 */
async function indexerLines(urls: string[], registered: string[] | null, json: boolean): Promise<number> {
  const verdicts = judgeIndexers(await readIndexers(urls), registered);
  for (const v of verdicts) console.log(json ? jsonIndexer(v) : formatIndexer(v));
  return verdicts.every((v) => v.ok) ? 0 : 1;
}

const ago = (ms: number) => `${(Math.max(0, ms) / 1000).toFixed(1)} s ago`;

/** The text line of one worker. */
export function formatLine(v: WorkerVerdict, e: Pick<Examination, 'namespace' | 'waitMs'>, now = Date.now()): string {
  const parts: string[] = [];
  if (v.noShim) {
    parts.push(
      `no-shim: registered, but no shim reported on it within ${e.waitMs} ms, so its KV events and block size were not checked (check: its shim runs a kvgate with diag reports, in namespace ${e.namespace}, on this NATS)`,
    );
  }
  for (const p of v.problems) parts.push(`${p.code}: ${p.message} (check: ${p.check}; seen by ${p.from.join(', ')})`);
  if (parts.length > 0) return `${v.worker}  PROBLEM  ${parts.join('  |  ')}`;
  const facts: string[] = [];
  const sh = v.shim;
  if (sh) {
    facts.push(sh.lastEventAt === null ? 'no KV event yet (idle)' : `last KV event ${ago(now - sh.lastEventAt)}`);
    facts.push(`block size ${sh.eventBlockSize ?? sh.registeredBlockSize}`);
  }
  const r = v.router;
  if (r) facts.push(`${r.promptCompared} prompt counts and ${r.cacheSamples} cache predictions checked by ${r.routers} router${r.routers === 1 ? '' : 's'}`);
  else facts.push('no router has proxied to it yet (tokenizer and cache checks need traffic)');
  return `${v.worker}  ok  (${facts.join('; ')})`;
}

/** The JSON line of one worker. */
export function jsonLine(v: WorkerVerdict): string {
  const problems = [
    ...(v.noShim ? [{ code: 'no-shim', message: 'registered, but no shim reported on it', check: 'its shim runs a kvgate with diag reports, in this namespace, on this NATS', from: [] as string[] }] : []),
    ...v.problems,
  ];
  return JSON.stringify({ worker: v.worker, ok: v.ok, problems, shim: v.shim ?? null, router: v.router ?? null });
}

export async function run(argv: string[]): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  const routers = f.router;
  const indexers = f.indexer;
  if (!f.nats && (routers.length > 0 || indexers.length > 0)) {
    const a = routers.length > 0 ? await cacheOnly(routers, f.json) : 0;
    const b = indexers.length > 0 ? await indexerLines(indexers, null, f.json) : 0;
    return Math.max(a, b);
  }
  if (!f.nats) {
    console.error('kvgate doctor: --nats URL (or KVGATE_NATS) is required: shims and routers report on a NATS bus');
    return 2;
  }
  const waitMs = intFlag(f['wait-ms'], 'wait-ms', 3000);
  const natsAuth = natsOptionsFrom(f);
  let bus: Bus;
  try {
    bus = await createBus({ nats: f.nats, ...natsAuth });
  } catch (e) {
    // refused credentials: the one fatal line with its code (KVG_NATS_AUTH); still exit 2, the bus cannot be used
    const fatal = classify('doctor', e);
    console.error(fatal.code === 'KVG_NATS_AUTH' ? fatalLine('doctor', fatal) : `kvgate doctor: cannot reach the bus: ${(e as Error).message}`);
    return 2;
  }
  try {
    const ex = await examine(bus, { namespace: f.namespace ?? 'default', waitMs, registryTtlMs: intFlag(f['registry-ttl-ms'], 'registry-ttl-ms', 3000) });
    if (ex.verdicts.length === 0) {
      const line = `no worker is registered in namespace ${ex.namespace} (check: the shims' --nats and --namespace)`;
      console.log(f.json ? JSON.stringify({ worker: null, ok: false, problems: [{ code: 'no-workers', message: line }] }) : line);
      return 1;
    }
    const gaps = routers.length > 0 ? await cacheLines(routers, ex.urls) : new Map<string, GapVerdict>();
    for (const v of ex.verdicts) {
      const g = gaps.get(v.worker);
      if (f.json) console.log(g ? JSON.stringify({ ...JSON.parse(jsonLine(v)), cache: g }) : jsonLine(v));
      else {
        console.log(formatLine(v, ex));
        if (g) console.log(formatGap(g));
      }
    }
    const ix = indexers.length > 0 ? await indexerLines(indexers, [...ex.urls.keys()], f.json) : 0;
    return ex.verdicts.every((v) => v.ok) && [...gaps.values()].every((g) => !g.problem) && ix === 0 ? 0 : 1;
  } catch (e) {
    if (e instanceof BusError || (e instanceof KvgateError && e.code.startsWith('KVG_BUS'))) {
      console.error(`kvgate doctor: cannot reach the bus: ${e.message}`);
      return 2;
    }
    throw e;
  } finally {
    await bus.close().catch(() => undefined);
  }
}
