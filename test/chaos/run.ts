/**
 * `npm run chaos [-- --json] [--keep] [--only SUBSTR] [--budget-s N]`: the chaos suite on a real multi-process cluster (deploy/local/up.sh: a
 * 3-node JetStream NATS cluster, 2 indexers, 4 simulated engines with shims, 2 routers, each its own process).
 * Under a steady load it applies one fault at a time, revives what it killed, and measures: requests sent during
 * the fault and after it until reconvergence, how they ended (judge.ts), and the time from recovery until every
 * indexer's per-worker block count equals its engine's own (`/sim/stats` cachedBlocks). It prints a table (and with
 * --json one line `{"faults": [...]}`) and exits 1 when a row misses the bar, 2 when the cluster does not start.
 * About 2–3 minutes on a 2-core machine. `--budget-s N` bounds the whole run (CI: .ci/run): past it, or on
 * SIGTERM/SIGINT, the cluster is stopped (deploy/local/down.sh), the rows measured so far are printed with the
 * reason, and the run fails. The cluster lives in a fresh temporary directory that is removed at the end; nothing
 * it started is left running (unless --keep).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect } from 'nats';
import { subjects } from '../../packages/protocol/src/subjects.js';
import { classify, problems, row, table, type FaultRow, type Outcome } from './judge.js';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const args = process.argv.slice(2);
const asJson = args.includes('--json');
const keep = args.includes('--keep');
/** --only SUBSTR: run only the faults whose name contains it (debugging one fault) */
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] ?? '' : '';
/** --budget-s N: the whole run, cluster start to teardown, within N seconds (0: unbounded) */
const budgetS = args.includes('--budget-s') ? Number(args[args.indexOf('--budget-s') + 1]) : 0;
if (!Number.isFinite(budgetS) || budgetS < 0) {
  console.error(`chaos: --budget-s wants a number of seconds, got ${JSON.stringify(args[args.indexOf('--budget-s') + 1] ?? '')}`);
  process.exit(2);
}
if (args.includes('--help') || args.includes('-h')) {
  console.log('npm run chaos [-- --json] [--keep] [--only SUBSTR] [--budget-s N]: the chaos suite on deploy/local (see test/chaos/run.ts)');
  process.exit(0);
}
const say = (m: string) => process.stderr.write(`[chaos] ${m}\n`);

const dir = mkdtempSync(join(tmpdir(), 'kvgate-chaos-'));
const base = 20000 + Math.floor(Math.random() * 40) * 200; // ports base+90 … base+3224 (see up.sh)
const routerPort = base + 80;
const ENGINES = 4;
const env = { ...process.env, KVGATE_LOCAL_DIR: dir, KVGATE_PORT: String(routerPort), KVGATE_LOCAL_BASE: String(base), KVGATE_LOCAL_ENGINES: String(ENGINES), KVGATE_LOCAL_SPEEDUP: '20', KVGATE_LOG_LEVEL: process.env.KVGATE_LOG_LEVEL ?? 'warn' };
/** ctl.sh; once the run is being torn down nothing is started or revived (it would outlive down.sh) */
const ctlEnv = async (extra: Record<string, string>, ...a: string[]) => {
  if (tornDown && (a[0] === 'start' || a[0] === 'revive')) throw new Error(`not reviving ${a[1]}: the cluster is being stopped`);
  const p = run('bash', [join(root, 'deploy/local/ctl.sh'), ...a], { env: { ...env, ...extra } });
  ctlRunning.add(p);
  try {
    return (await p).stdout.trim();
  } finally {
    ctlRunning.delete(p);
  }
};
/** ctl.sh calls under way (teardown lets them finish, so a process they start is one down.sh sees) */
const ctlRunning = new Set<Promise<unknown>>();
const ctl = (...a: string[]) => ctlEnv({}, ...a);
const alive = async (name: string) => ctl('pid', name).then(() => true, () => false);
const routers = [0, 1].map((i) => `http://127.0.0.1:${routerPort + i}`);
const indexers = [0, 1].map((i) => `http://127.0.0.1:${base + 90 + i}`);
const engines = Array.from({ length: ENGINES }, (_, i) => `http://127.0.0.1:${base + 100 + i}`);

async function json(url: string): Promise<any> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

/** every indexer holds, per worker, as many blocks as that worker's engine caches */
async function converged(): Promise<boolean> {
  try {
    const want = await Promise.all(engines.map(async (e) => (await json(`${e}/sim/stats`)).cachedBlocks as number));
    for (const ix of indexers) {
      const w = (await json(`${ix}/debug/workers`)).workers as Record<string, { blocks: number }>;
      for (let i = 0; i < ENGINES; i++) if ((w[`sim-${i}`]?.blocks ?? -1) !== want[i]) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** the URL that answers 200 once the process NAME serves again (its port as up.sh assigns it) */
function readyUrl(name: string): string {
  const [kind, n] = [name.replace(/-\d+$/, ''), Number(/\d+$/.exec(name)?.[0])];
  if (kind === 'nats') return `http://127.0.0.1:${base + 3221 + n}/healthz`; // JetStream current, not just up
  if (kind === 'indexer') return `${indexers[n]}/readyz`;
  if (kind === 'engine') return `${engines[n]}/health`;
  if (kind === 'shim') return `http://127.0.0.1:${base + 400 + n}/healthz`;
  if (kind === 'router') return `${routers[n]}/readyz`;
  throw new Error(`no readiness URL for ${name}`);
}

/** NAME answers its readiness URL within `ms` */
async function waitReady(name: string, ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    const ok = await fetch(readyUrl(name), { signal: AbortSignal.timeout(2000) }).then((r) => (void r.body?.cancel(), r.status === 200), () => false);
    if (ok) return true;
    await sleep(250);
  }
  return false;
}

/** one line per worker where an indexer and the engine disagree (printed when a fault never reconverges) */
async function diagnose(): Promise<string[]> {
  const out: string[] = [];
  const ix = await Promise.all(indexers.map((u) => json(`${u}/debug/workers`).then((j) => j.workers as Record<string, { blocks: number; seq: number }>, (e) => String(e))));
  for (let i = 0; i < ENGINES; i++) {
    const engine = await json(`${engines[i]}/sim/stats`).then((j) => String(j.cachedBlocks), (e) => String(e));
    const shim = await json(`http://127.0.0.1:${base + 400 + i}/healthz`).then((j) => `seq ${j.eventSeq} map ${j.mapEntries}`, (e) => String(e));
    const seen = ix.map((w, k) => `indexer-${k} ${typeof w === 'string' ? w : `${w[`sim-${i}`]?.blocks ?? '-'} blocks seq ${w[`sim-${i}`]?.seq ?? '-'}`}`);
    if (ix.some((w) => typeof w === 'string' || String(w[`sim-${i}`]?.blocks) !== engine)) out.push(`sim-${i}: engine ${engine} blocks, shim ${shim}, ${seen.join(', ')}`);
  }
  return out;
}

// ---- load: 8 req/s over both routers, shared prefixes (so placement matters), half of them streamed ---------
const PREFIXES = Array.from({ length: 12 }, (_, p) => Array.from({ length: 192 }, (_, i) => 1000 + p * 500 + i));
let sink: Outcome[] | null = null;
/** the processes the current fault killed (a request cut by one of them is its fault's, judge.classify) */
const killedNow = new Set<string>();
let inflight = 0, reqNo = 0;
/** requests not yet answered, by the sink they will report to: a fault's row waits for all of its own */
const open = new Map<Outcome[], Set<Promise<void>>>();
function one(): void {
  const out = sink;
  const p = request(out);
  if (!out) return;
  const mine = open.get(out) ?? new Set();
  open.set(out, mine);
  mine.add(p);
  void p.finally(() => mine.delete(p));
}
/** every request reporting to `out` has its outcome (each ends within its 20 s timeout) */
async function settled(out: Outcome[]): Promise<void> {
  await Promise.all([...(open.get(out) ?? [])]);
  open.delete(out);
}
async function request(out: Outcome[] | null): Promise<void> {
  const n = reqNo++;
  const stream = n % 2 === 1;
  const prompt = [...PREFIXES[n % PREFIXES.length]!, ...Array.from({ length: 24 }, (_, i) => 20_000 + ((n * 31 + i) % 9000))];
  const url = `${routers[n % 2]}/v1/completions`;
  const target = `router-${n % 2}`;
  inflight++;
  let o: Outcome;
  try {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-8b', prompt, max_tokens: 4, stream }), signal: AbortSignal.timeout(20_000) });
    o = classify(res.status, await res.text());
  } catch (e) {
    const err = e as { name?: string; cause?: { code?: string } };
    o = classify(0, '', err.name === 'TimeoutError' || err.name === 'AbortError' ? 'timeout' : err.cause?.code ?? String(e), killedNow.has(target));
  } finally {
    inflight--;
  }
  out?.push(o);
}
const loadTimer = setInterval(one, 125);
loadTimer.unref();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Fault {
  name: string;
  /** processes the fault kills (they may be down during it) */
  victims: string[];
  apply(): Promise<void>;
  recover(): Promise<void>;
  /** after its row is measured (undo what recover leaves on purpose) */
  cleanup?(): Promise<void>;
}
const killRevive = (name: string, victims: string[], downMs = 3000): Fault => ({
  name,
  victims,
  async apply() {
    for (const v of victims) {
      killedNow.add(v);
      await ctl('kill', v);
    }
    await sleep(downMs);
  },
  async recover() {
    for (const v of victims) await ctl('revive', v);
  },
});

async function garbage(): Promise<void> {
  const nc = await connect({ servers: readFileSync(join(dir, 'nats-url'), 'utf8').trim().split(',') });
  const junk = [Buffer.from([0xc1]), Buffer.from('not msgpack'), Buffer.from([0x82, 0xa1]), Buffer.alloc(0), Buffer.from([0xdf, 0xff, 0xff, 0xff, 0xff])];
  for (let k = 0; k < 20; k++) {
    for (const j of junk) {
      // sim-0's real event subject (its hash bits in it), so that its shard's filtered reader gets the junk too
      for (const s of [subjects('default').events('sim-0').slice('kvgate.default.'.length), 'load.sim-1', 'index.gossip', 'router.active', 'index.sync.indexer-0', 'shim.resync.sim-2']) nc.publish(`kvgate.default.${s}`, j);
      nc.request('kvgate.default.index.match', j, { timeout: 500 }).catch(() => undefined);
    }
  }
  await nc.flush();
  await nc.close();
  // malformed HTTP at the routers: bad JSON, a wrong type, a raw non-HTTP line
  for (const r of routers) {
    await fetch(`${r}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model": ' }).then((x) => x.text(), () => '');
    await fetch(`${r}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-8b', prompt: { x: 1 } }) }).then((x) => x.text(), () => '');
  }
  await sleep(2000);
}

/** a counter summed over both indexers' /metrics (every label) */
async function indexerCounter(name: string): Promise<number> {
  let sum = 0;
  for (const ix of indexers) {
    const text = await fetch(`${ix}/metrics`, { signal: AbortSignal.timeout(2000) }).then((r) => r.text(), () => '');
    for (const line of text.split('\n')) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
let resyncsBefore = 0;

const FAULTS: Fault[] = [
  killRevive('engine kill -9 + restart', ['engine-1']),
  killRevive('shim kill -9 + restart', ['shim-2']),
  killRevive('indexer kill -9 + restart', ['indexer-0']),
  killRevive('router kill -9 + restart', ['router-1']),
  killRevive('nats: one node of 3 killed', ['nats-2']),
  killRevive('nats: all 3 down for 5 s', ['nats-1', 'nats-2', 'nats-3'], 5000),
  {
    // shim-3 restarted with a FaultyBus (KVGATE_BUS_FAULTS): some of its event batches never reach the stream,
    // some twice, some swapped with the next; it stays so while reconvergence is measured (the indexers must
    // repair the holes themselves), then runs clean again
    name: 'events dropped, duplicated, reordered (shim-3)',
    victims: ['shim-3'],
    async apply() {
      resyncsBefore = await indexerCounter('kvgate_indexer_resyncs_requested_total');
      await ctl('kill', 'shim-3');
      await ctlEnv({ KVGATE_BUS_FAULTS: 'events.>:drop=0.15,dup=0.1,reorder=0.1,seed=11' }, 'revive', 'shim-3');
      await sleep(10_000);
    },
    recover: async () => undefined,
    async cleanup() {
      say(`  (the indexers asked shims for ${(await indexerCounter('kvgate_indexer_resyncs_requested_total')) - resyncsBefore} resyncs meanwhile)`);
      await ctl('kill', 'shim-3');
      await ctl('revive', 'shim-3');
      await waitConverged(30_000);
    },
  },
  { name: 'garbage on every subject and at the routers', victims: [], apply: garbage, recover: async () => undefined },
];

const rows: FaultRow[] = [];
/** the up.sh run while the cluster starts (stopped first when the run is cut short) */
let starting: { kill(sig?: NodeJS.Signals): boolean } | undefined;
let tornDown: Promise<string[]> | undefined;
/** stop the load and the cluster, once; resolves with the processes that needed SIGKILL after 10 s of SIGTERM */
function teardown(): Promise<string[]> {
  return (tornDown ??= (async () => {
    clearInterval(loadTimer);
    starting?.kill('SIGKILL');
    await Promise.allSettled([...ctlRunning]);
    if (keep) {
      say(`cluster left running in ${dir}`);
      return [];
    }
    // every process must exit within 10 s of SIGTERM (down.sh kills and reports the ones that did not)
    const down = await run('bash', [join(root, 'deploy/local/down.sh')], { env }).then((x) => x.stdout, (e: { stdout?: string }) => e.stdout ?? '');
    rmSync(dir, { recursive: true, force: true });
    return down.split('\n').filter((l) => /: killed$/.test(l)).map((l) => l.split(':')[0]!);
  })());
}

let reported = false;
function report(slowToStop: string[], aborted?: string): number {
  if (reported) return 1; // an abort printed already
  reported = true;
  if (asJson) console.log(JSON.stringify({ faults: rows, ...(keep ? {} : { sigtermOver10s: slowToStop }), ...(aborted ? { aborted } : {}) }));
  else {
    console.log(table(rows));
    if (!keep) console.log(slowToStop.length ? `SIGTERM: ${slowToStop.join(', ')} did not exit within 10 s (killed)` : 'SIGTERM: every process exited within 10 s');
    if (aborted) console.log(`FAIL: ${aborted}`);
  }
  return aborted || rows.some((r) => problems(r).length > 0) || slowToStop.length > 0 ? 1 : 0;
}

/** cut the run short: the cluster stopped, what was measured printed, exit non-zero */
function abort(why: string, code: number): void {
  say(why);
  void teardown().then((slow) => {
    report(slow, why);
    process.exit(code);
  });
}
if (budgetS > 0) setTimeout(() => abort(`the run took longer than its budget of ${budgetS} s (--budget-s): stopped after ${rows.length} fault(s)`, 1), budgetS * 1000).unref();
process.once('SIGTERM', () => abort('stopped by SIGTERM', 143));
process.once('SIGINT', () => abort('stopped by SIGINT', 130));

async function main(): Promise<number> {
  say(`starting the local cluster in ${dir} (routers :${routerPort}, :${routerPort + 1})`);
  try {
    const up = run('bash', [join(root, 'deploy/local/up.sh')], { env, timeout: 120_000 });
    starting = up.child;
    await up;
    starting = undefined;
  } catch (e) {
    console.error(`chaos: the local cluster did not start: ${String((e as { stderr?: string }).stderr ?? e).trim().split('\n').pop()}`);
    await teardown(); // what did start stops
    return 2;
  }
  const names = (await ctl('names')).split('\n').filter(Boolean);
  try {
    sink = [];
    await sleep(4000); // warm: prefixes spread, index filled
    if (!(await waitConverged(30_000))) say('warning: not converged before the first fault');
    for (const f of FAULTS.filter((x) => x.name.includes(only))) {
      say(`fault: ${f.name}`);
      const outcomes: Outcome[] = [];
      sink = outcomes;
      await f.apply();
      await f.recover();
      const t0 = Date.now();
      const ok = await waitConverged(45_000);
      const reconvergeMs = ok ? Date.now() - t0 : null;
      if (!ok) for (const l of await diagnose()) say(`  not converged: ${l}`);
      // the next fault starts only once what was revived serves again (a router still starting when the next
      // fault hits measures that fault, not this one)
      const notReady = (await Promise.all(f.victims.map(async (v) => ((await waitReady(v, 30_000)) ? null : v)))).filter((v) => v !== null);
      sink = [];
      killedNow.clear();
      // requests sent during the fault count when they end (a hung one only after its 20 s timeout)
      await settled(outcomes);
      const exited: string[] = [];
      for (const n of names) if (!f.victims.includes(n) && !(await alive(n))) exited.push(n);
      for (const v of f.victims) if (!(await alive(v))) exited.push(`${v} (did not come back)`);
        else if (notReady.includes(v)) exited.push(`${v} (not ready 30 s after its restart)`);
      const r = row(f.name, outcomes, reconvergeMs, exited);
      rows.push(r);
      await f.cleanup?.();
      say(`  sent ${r.sent}, ok ${r.succeeded}, clear ${r.failedClear}, hung ${r.hung}, 5xx ${r.fivexxWhileEnginesUp}, reconverge ${reconvergeMs === null ? 'never' : `${(reconvergeMs / 1000).toFixed(1)} s`}${failures(outcomes)}`);
      // a fault whose cluster did not recover would colour the next rows: revive anything down before going on
      for (const n of names) if (!(await alive(n))) await ctl('revive', n).catch(() => undefined);
    }
  } finally {
    clearInterval(loadTimer);
    while (inflight > 0) await sleep(100);
  }
  return report(await teardown());
}

/** what the failed requests were, by kind and code (`; 5xx: 502 KVG_UPSTREAM ×2, …`), for the log */
function failures(outcomes: Outcome[]): string {
  const n = new Map<string, number>();
  for (const o of outcomes) {
    if (o.kind === 'ok') continue;
    const k = o.kind === 'hung' ? 'hung' : `${o.kind}: ${o.status ? `${o.status} ` : ''}${o.code}`;
    n.set(k, (n.get(k) ?? 0) + 1);
  }
  return n.size === 0 ? '' : `; ${[...n].map(([k, c]) => `${k} ×${c}`).join(', ')}`;
}

async function waitConverged(ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await converged()) return true;
    await sleep(250);
  }
  return false;
}

process.exitCode = await main().catch(async (e: unknown) => {
  const why = `the run failed: ${String((e as Error)?.message ?? e).split('\n')[0]}`;
  say(why);
  return report(await teardown(), why);
});
