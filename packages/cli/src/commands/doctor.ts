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

export const summary = 'check every registered worker for misconfiguration (stale KV events, block size, tokenizer, hash mismatch)';

const USAGE = `kvgate doctor --nats URL [--namespace default] [--wait-ms 3000] [--json]

One line per registered worker: "ok", or each problem with what it means and what to check. Exit 0 when every
worker is ok, 1 on any problem, 2 when the bus cannot be reached.`;

const SPEC = {
  nats: { type: 'string', help: 'NATS URL the shims and routers use' },
  namespace: { type: 'string', default: 'default', help: 'subject namespace' },
  'wait-ms': { type: 'string', default: '3000', help: 'listen this long for the shims\' and routers\' reports' },
  'registry-ttl-ms': { type: 'string', default: '3000', help: 'workers bucket TTL (must match the shims)' },
  json: { type: 'boolean', help: 'one JSON object per worker line' },
  ...NATS_AUTH_SPEC,
} as const;

export interface Examination {
  verdicts: WorkerVerdict[];
  /** the latest report of each shim and router heard */
  reports: DiagReport[];
  namespace: string;
  waitMs: number;
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
    return { verdicts: verdicts(registered, [...latest.values()]), reports: [...latest.values()], namespace, waitMs };
  } finally {
    sub.unsubscribe();
  }
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
    for (const v of ex.verdicts) console.log(f.json ? jsonLine(v) : formatLine(v, ex));
    return ex.verdicts.every((v) => v.ok) ? 0 : 1;
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
