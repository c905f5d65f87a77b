/**
 * The fleet simulation (issue 18: `kvgate bench fleet`): a sharded index under a fleet's event load while a router
 * queries it, over a real nats-server (JetStream), for each shard count N asked.
 *
 * Per N: a fresh nats-server (test/harness/nats-server.ts); N indexer processes `kvgate indexer --shard i/N`; a
 * publisher process playing W engine shims (bench/fleet-publisher.ts: the shim's subjects, wire format and
 * acknowledged appends) registers them and fills each to B blocks; once every shard has applied the whole fill,
 * steady churn for S seconds at the fleet's rate (each engine storing and evicting at the sim engine's measured
 * churn, bench/fleet-churn.ts) while a router process (bench/fleet-querier.ts: the router's busIndexQuery with
 * `shards: N`) queries at a steady rate. Then the publisher stops and the shards are given time to drain.
 *
 * Measured: events absorbed (block events applied by the shards, from each shard's /metrics, during the steady
 * window, per second; and how far behind the published stream the slowest shard was at its end), match p50/p99
 * as the router process saw them, and each shard process's resident memory (/proc/<pid>/status VmRSS).
 */
import { spawn, fork, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { shardOf } from '@kvgate/indexer/shards';
import { eventStreamConfig, subjects, type Bus } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startNatsServer, freePort, type NatsServerHandle } from '../test/harness/nats-server.js';
import { measureEngineChurn, type EngineChurn } from './fleet-churn.js';
import { workerName } from './fleet-model.js';
import { percentile, type Figure } from './figure.js';

const KVGATE = fileURLToPath(new URL('../bin/kvgate.js', import.meta.url));
const PUBLISHER = fileURLToPath(new URL('./fleet-publisher.ts', import.meta.url));
const QUERIER = fileURLToPath(new URL('./fleet-querier.ts', import.meta.url));
const ECHO = fileURLToPath(new URL('./nats-echo.ts', import.meta.url));
const NAMESPACE = 'fleet';
/** the registry TTL the publisher's registrations get (registered once, not heartbeated: see the README) */
const TTL_MS = 3_600_000;

export interface FleetOptions {
  workers: number;
  blocks: number;
  shards: number[];
  /** steady churn seconds per N */
  seconds: number;
  /** router queries per second */
  qps: number;
  /** prompt blocks per query (default 256) */
  qlen?: number;
  /** the router's index budget the p99 is held against, ms (default 5, the router's default) */
  budgetMs?: number;
  /** the per-engine churn; absent: measured on the sim engine's scheduler at `blocks` */
  churn?: EngineChurn;
  /** append every batch with a stream acknowledgement (as one shim does) instead of publishing it (see fleet-publisher.ts) */
  acks?: boolean;
  /** how long the shards may take to apply everything after the publisher stops, ms (default 60 s) */
  drainTimeoutMs?: number;
  progress(msg: string): void;
}

export interface ShardResult {
  shard: number;
  pid: number;
  rssMb: number;
  hwmMb: number;
  entries: number;
  /** engines this shard owns × B: what it holds once it applied everything */
  expectedEntries: number;
  appliedSeq: number;
  /** the stream seq of the last batch this shard's subject filter matches (its workers'; N = 1: the stream's last) */
  streamEnd: number;
  gaps: number;
  /** batches of other shards' workers read and skipped (0 with a subject filter: N a power of two ≤ 64) */
  foreignSkipped: number;
  workers: number;
  /** CPU seconds this shard process spent during the steady window */
  steadyCpuSecs: number;
}

export interface FleetRun {
  shards: number;
  fillSecs: number;
  /** block events (stored + removed) per second the fleet produces at the churn rate */
  offeredEventsPerS: number;
  /** block events per second the stream took (acknowledged appends) during the steady window */
  publishedEventsPerS: number;
  /** block events per second the shards applied during the steady window (summed over shards) */
  absorbedEventsPerS: number;
  steadySecs: number;
  /** stream seqs the slowest shard was behind its last event (its filter's) when the steady window ended */
  lagAtEnd: number;
  /** seconds after the publisher stopped until every shard had applied the last batch (NaN: not within the timeout) */
  drainSecs: number;
  lastSeq: number;
  /** batches sent that the stream did not take (core publishing; 0 expected) or whose append failed (acks) */
  lost: number;
  /** CPU seconds of the publisher, the router process and nats-server during the steady window */
  otherCpuSecs: { publisher: number; router: number; nats: number };
  /** the same N-way scatter to N echo processes in the same window (fleet-querier.ts echoOne): the machine's floor */
  floor: { p50: number; p99: number; overBudget: number; failures: number };
  match: { p50: number; p99: number; overBudget: number; queries: number; hitsExpected: number; hitsExact: number; shardMisses: number; failures: number };
  perShard: ShardResult[];
}

export interface FleetResult {
  churn: EngineChurn;
  /** blocks stored (and as many evicted) per step of one engine */
  k: number;
  runs: FleetRun[];
}

interface Metrics { [name: string]: number }

async function metricsOf(url: string): Promise<Metrics> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Metrics = {};
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith('kvgate_indexer_')) continue;
    const m = /^(kvgate_indexer_[a-z_]+)(?:\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
  }
  return out;
}

/** user + system CPU seconds of a process so far (/proc/<pid>/stat, clock ticks of 1/100 s) */
function cpuSecs(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/** the pid of the nats-server listening on `port` (the harness does not expose it): its command line names the port */
function natsServerPid(port: number): number | undefined {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (args[0]?.endsWith('nats-server') && args.includes(String(port))) return Number(d);
    } catch {
      /* gone */
    }
  }
  return undefined;
}

function procMb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function until(ok: () => Promise<boolean>, timeoutMs: number, what: string, every = 200): Promise<void> {
  const t0 = Date.now();
  while (!(await ok().catch(() => false))) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function onceMessage<T>(child: ChildProcess, ev: string, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onMsg = (m: { ev: string }) => {
      if (m.ev === ev) {
        child.off('message', onMsg);
        child.off('exit', onExit);
        resolve(m as T);
      }
    };
    const onExit = (c: number | null) => reject(new Error(`${what} exited (${c}) before '${ev}'`));
    child.on('message', onMsg);
    child.once('exit', onExit);
  });
}

/** an IPC message to a child that may be exiting: a closed channel is not an error here */
function tell(c: ChildProcess | undefined, msg: unknown): void {
  if (c?.connected) c.send(msg as object, () => undefined);
}

async function stopChild(c: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise((r) => c.once('exit', r));
  c.kill(signal);
  const t = setTimeout(() => c.kill('SIGKILL'), 8000);
  await gone;
  clearTimeout(t);
}

interface Progress { phase: string; batches: number; blocks: number; lastSeq: number; failed: number; sent: number; lost: number; stored: number; evicted: number }

async function runOne(o: FleetOptions, n: number, churn: EngineChurn, k: number): Promise<FleetRun> {
  const W = o.workers, B = o.blocks;
  let nats: NatsServerHandle | undefined;
  let bus: Bus | undefined;
  const indexers: ChildProcess[] = [];
  let publisher: ChildProcess | undefined, querier: ChildProcess | undefined;
  const echoes: ChildProcess[] = [];
  // a coordinator that dies (a fatal error, ^C) leaves no shard process behind
  const onExit = () => {
    for (const c of [...indexers, ...echoes, publisher, querier]) {
      try {
        c?.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  process.once('exit', onExit);
  try {
    nats = await startNatsServer();
    const urls: string[] = [];
    for (let i = 0; i < n; i++) {
      const port = await freePort();
      const args = [KVGATE, 'indexer', '--nats', nats.url, '--namespace', NAMESPACE, '--port', String(port), '--id', `fleet-${n}-${i}`, '--shard', `${i}/${n}`, '--ttl-ms', String(TTL_MS)];
      // KVGATE_BENCH_INDEXER_NODE_ARGS: node flags for the shard processes (e.g. --cpu-prof), as bench/router-nats.ts
      const nodeArgs = process.env.KVGATE_BENCH_INDEXER_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
      indexers.push(spawn(process.execPath, [...nodeArgs, ...args], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, KVGATE_LOG_LEVEL: process.env.KVGATE_LOG_LEVEL ?? 'warn' } }));
      urls.push(`http://127.0.0.1:${port}`);
    }
    await Promise.all(urls.map((u, i) => until(async () => (await fetch(`${u}/readyz`)).status === 200, 60_000, `shard ${i}/${n} /readyz`)));
    const shardMetrics = () => Promise.all(urls.map(metricsOf));
    // a shard is done at the last batch its subject filter matches (of its workers alone for N a power of two)
    const subj = subjects(NAMESPACE);
    bus = await createBus({ nats: nats.url, name: 'kvgate-bench-fleet' });
    const stream = await bus.stream(subj.eventStream, eventStreamConfig(subj));
    const ends = () => Promise.all(urls.map((_, i) => stream.lastSeqOf(subj.eventsShard(i, n))));
    /** stream seqs each shard is behind its last event */
    const behind = async (ms: Metrics[]) => (await ends()).map((e, i) => Math.max(0, e - (ms[i]!.kvgate_indexer_stream_seq ?? 0)));
    o.progress(`N=${n}: nats-server and ${n} shard process(es) up`);

    publisher = fork(PUBLISHER, [JSON.stringify({ nats: nats.url, namespace: NAMESPACE, workers: W, blocks: B, ttlMs: TTL_MS, acks: o.acks ?? false })], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let pub: Progress = { phase: 'start', batches: 0, blocks: 0, lastSeq: 0, failed: 0, sent: 0, lost: 0, stored: B, evicted: 0 };
    publisher.on('message', (m: { ev: string } & Progress) => {
      if (m.ev === 'progress') {
        pub = m;
        tell(querier, { cmd: 'window', stored: m.stored, evicted: m.evicted });
      }
    });
    publisher.on('error', () => undefined); // a send racing its exit (tell() swallows those too)
    await onceMessage(publisher, 'ready', 'fleet publisher');
    // every shard sees its workers' registrations (their capacity sizes its index) before the fill
    const owned = Array.from({ length: n }, () => 0);
    for (let w = 0; w < W; w++) owned[n === 1 ? 0 : shardOf(workerName(w), n)]!++;
    await new Promise((r) => setTimeout(r, 1000)); // the registry watch delivers them within milliseconds

    // ---- fill ----------------------------------------------------------------------------------------
    const tFill = performance.now();
    tell(publisher, { cmd: 'fill' });
    const filled = onceMessage(publisher, 'filled', 'fleet publisher');
    let fillDone = false;
    void filled.then(() => (fillDone = true), () => undefined);
    let lastLog = 0;
    await until(async () => {
      const ms = await shardMetrics();
      const late = Math.max(...(await behind(ms)));
      if (performance.now() - lastLog > 5000) {
        lastLog = performance.now();
        const entries = ms.reduce((a, m) => a + (m.kvgate_indexer_entries ?? 0), 0);
        o.progress(`N=${n}: fill ${((pub.blocks / (W * B)) * 100).toFixed(0)} % published (${(pub.blocks / 1e6).toFixed(1)} M blocks, stream seq ${pub.lastSeq}), slowest shard ${late} seqs behind its last event, ${(entries / 1e6).toFixed(1)} M entries held, ${((performance.now() - tFill) / 1000).toFixed(0)} s`);
      }
      return fillDone && late === 0;
    }, 3_600_000, 'the fill to be applied', 250);
    await filled;
    const fillSecs = (performance.now() - tFill) / 1000;
    o.progress(`N=${n}: filled ${W} × ${B} blocks in ${fillSecs.toFixed(1)} s (published and applied by every shard)`);

    // ---- steady churn + queries -------------------------------------------------------------------------
    const qlen = o.qlen ?? 256;
    const echoSubjects = Array.from({ length: n }, (_, i) => `bench.fleet.echo.${i}`);
    for (const subject of echoSubjects) {
      const e = fork(ECHO, [nats.url, subject], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      echoes.push(e);
      await new Promise<void>((resolve, reject) => {
        e.once('message', () => resolve());
        e.once('exit', (c) => reject(new Error(`echo process exited (${c})`)));
      });
    }
    querier = fork(QUERIER, [JSON.stringify({ nats: nats.url, namespace: NAMESPACE, shards: n, workers: W, blocks: B, qps: o.qps, qlen, timeoutMs: 1000, k, batchesPerS: churn.batchesPerS, echo: echoSubjects })], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    querier.on('error', () => undefined);
    await onceMessage(querier, 'ready', 'fleet querier');
    tell(querier, { cmd: 'window', stored: pub.stored, evicted: pub.evicted });
    const before = await shardMetrics();
    const pubBefore = { ...pub };
    const natsPid = natsServerPid(nats.port);
    const cpuBefore = [...indexers.map((c) => cpuSecs(c.pid!)), cpuSecs(publisher.pid!), cpuSecs(querier.pid!), natsPid ? cpuSecs(natsPid) : NaN];
    const stepsPerS = W * churn.batchesPerS;
    const t0 = performance.now();
    tell(publisher, { cmd: 'churn', seconds: o.seconds, stepsPerS, k });
    tell(querier, { cmd: 'start', evicted: pubBefore.evicted });
    const churned = onceMessage<{ secs: number }>(publisher, 'churned', 'fleet publisher');
    let done = false;
    void churned.then(() => (done = true), () => undefined);
    while (!done) {
      await Promise.race([churned.catch(() => undefined), new Promise((r) => setTimeout(r, 5000))]);
      if (done) break;
      const ms = await shardMetrics().catch(() => null);
      const late = ms ? Math.max(...(await behind(ms).catch(() => [NaN]))) : NaN;
      if (ms) o.progress(`N=${n}: churn ${((performance.now() - t0) / 1000).toFixed(0)}/${o.seconds} s, published seq ${pub.lastSeq}, slowest shard ${late} seqs behind its last event`);
    }
    await churned;
    const steadySecs = (performance.now() - t0) / 1000;
    const after = await shardMetrics();
    const lagAtEnd = Math.max(...(await behind(after)));
    const pubAfter = { ...pub };
    const cpuAfter = [...indexers.map((c) => cpuSecs(c.pid!)), cpuSecs(publisher.pid!), cpuSecs(querier.pid!), natsPid ? cpuSecs(natsPid) : NaN];
    const cpu = cpuAfter.map((x, i) => x - cpuBefore[i]!);
    const result = onceMessage<{ latencies: number[]; echoLatencies: number[]; echoFailures: number; hitsExpected: number; hitsExact: number; shardMisses: number; failures: number; sent: number }>(querier, 'result', 'fleet querier');
    tell(querier, { cmd: 'stop' });
    const q = await result;
    const tDrain = performance.now();
    let drainSecs = NaN;
    try {
      await until(async () => (await behind(await shardMetrics())).every((b) => b === 0), o.drainTimeoutMs ?? 60_000, 'the shards to drain');
      drainSecs = (performance.now() - tDrain) / 1000;
    } catch {
      o.progress(`N=${n}: the shards did not apply everything within ${(o.drainTimeoutMs ?? 60_000) / 1000} s`);
    }
    const final = await shardMetrics();
    const finalEnds = await ends();
    const applied = (m: Metrics) => (m.kvgate_indexer_stored_blocks ?? 0) + (m.kvgate_indexer_removed_blocks ?? 0);
    const absorbed = after.reduce((a, m, i) => a + applied(m) - applied(before[i]!), 0);
    const budget = o.budgetMs ?? 5;
    const run: FleetRun = {
      shards: n,
      fillSecs,
      offeredEventsPerS: stepsPerS * 2 * k,
      publishedEventsPerS: (pubAfter.blocks - pubBefore.blocks) / steadySecs,
      absorbedEventsPerS: absorbed / steadySecs,
      steadySecs,
      lagAtEnd,
      drainSecs,
      lastSeq: pub.lastSeq,
      lost: pub.lost + pub.failed,
      otherCpuSecs: { publisher: cpu[n]!, router: cpu[n + 1]!, nats: cpu[n + 2]! },
      floor: { p50: percentile(q.echoLatencies, 50), p99: percentile(q.echoLatencies, 99), overBudget: q.echoLatencies.filter((x) => x > budget).length, failures: q.echoFailures },
      match: {
        p50: percentile(q.latencies, 50),
        p99: percentile(q.latencies, 99),
        overBudget: q.latencies.filter((x) => x > budget).length,
        queries: q.sent,
        hitsExpected: q.hitsExpected,
        hitsExact: q.hitsExact,
        shardMisses: q.shardMisses,
        failures: q.failures,
      },
      perShard: indexers.map((c, i) => ({
        shard: i,
        pid: c.pid!,
        rssMb: procMb(c.pid!, 'VmRSS'),
        hwmMb: procMb(c.pid!, 'VmHWM'),
        entries: final[i]!.kvgate_indexer_entries ?? 0,
        expectedEntries: owned[i]! * B,
        appliedSeq: final[i]!.kvgate_indexer_stream_seq ?? 0,
        streamEnd: finalEnds[i]!,
        gaps: final[i]!.kvgate_indexer_seq_gaps ?? 0,
        foreignSkipped: final[i]!.kvgate_indexer_foreign_batches_skipped_total ?? 0,
        workers: final[i]!.kvgate_indexer_workers ?? 0,
        steadyCpuSecs: cpu[i]!,
      })),
    };
    o.progress(`N=${n}: ${(run.absorbedEventsPerS / 1e3).toFixed(0)} k events/s absorbed (offered ${(run.offeredEventsPerS / 1e3).toFixed(0)} k, published ${(run.publishedEventsPerS / 1e3).toFixed(0)} k), match p50 ${run.match.p50.toFixed(2)} ms p99 ${run.match.p99.toFixed(2)} ms, RSS per shard ${run.perShard.map((s) => s.rssMb.toFixed(0)).join('/')} MB`);
    return run;
  } finally {
    tell(querier, { cmd: 'stop' });
    await stopChild(querier);
    tell(publisher, { cmd: 'exit' });
    await stopChild(publisher);
    for (const e of echoes) if (e.connected) e.disconnect();
    await Promise.all([...indexers, ...echoes].map((c) => stopChild(c)));
    await bus?.close().catch(() => undefined);
    await nats?.stop();
    process.off('exit', onExit);
  }
}

export async function runFleet(o: FleetOptions): Promise<FleetResult> {
  const churn = o.churn ?? (await measureEngineChurn({ numBlocks: Math.max(1024, o.blocks), seconds: 90 }));
  if (!(churn.batchesPerS > 0)) throw new Error('fleet: the churn model has no batches')
  const k = Math.max(1, Math.round(churn.storedPerS / churn.batchesPerS));
  o.progress(`engine churn used (${churn.numBlocks}-block engines): ${churn.storedPerS.toFixed(0)} blocks/s stored, ${churn.removedPerS.toFixed(0)} evicted, ${churn.batchesPerS.toFixed(1)} batches/s → ${k} + ${k} blocks per batch; fleet of ${o.workers}: ${((o.workers * churn.batchesPerS * 2 * k) / 1e3).toFixed(0)} k block events/s offered`);
  const runs: FleetRun[] = [];
  for (const n of o.shards) runs.push(await runOne(o, n, churn, k));
  return { churn, k, runs };
}

/** the bench figures of a fleet result: per N events/s absorbed, match p50 / p99, RSS per shard */
export function fleetFigures(res: FleetResult, o: Pick<FleetOptions, 'workers' | 'blocks' | 'budgetMs' | 'qlen'>): Figure[] {
  const out: Figure[] = [];
  const one = res.runs.find((r) => r.shards === 1);
  const size = `${o.workers} engines × ${o.blocks} blocks`;
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  for (const r of res.runs) {
    const N = r.shards;
    const rss = r.perShard.map((s) => s.rssMb);
    const base = N > 1 && one ? one : undefined;
    out.push({ bench: `fleet.${N}.events_per_s`, value: r.absorbedEventsPerS, unit: 'events/s', baseline: r.offeredEventsPerS, note: `block events (stored + evicted) applied over the ${N} shard(s) in ${r.steadySecs.toFixed(0)} s of steady churn, ${size}; baseline: the fleet's offered rate (${res.churn.batchesPerS.toFixed(1)} batches/s × ${res.k}+${res.k} blocks per engine); the stream took ${(r.publishedEventsPerS / 1e3).toFixed(0)} k/s${r.lost ? ` (${r.lost} batches lost)` : ''}; slowest shard ${r.lagAtEnd} batches behind at the end, drained in ${Number.isNaN(r.drainSecs) ? 'not within the timeout' : `${r.drainSecs.toFixed(1)} s`}; fill ${r.fillSecs.toFixed(0)} s; CPU s in the window: shards ${r.perShard.map((x) => x.steadyCpuSecs.toFixed(1)).join(' / ')}, publisher ${r.otherCpuSecs.publisher.toFixed(1)}, router ${r.otherCpuSecs.router.toFixed(1)}, nats-server ${r.otherCpuSecs.nats.toFixed(1)}` });
    const floor = `baseline: the same ${N}-way scatter to ${N} echo process(es) in the same window (the machine's floor)`;
    out.push({ bench: `fleet.${N}.match.p50`, value: r.match.p50, unit: 'ms', baseline: r.floor.p50, note: `router-observed scatter/merge over NATS to ${N} shard(s), ${r.match.queries} queries of ${o.qlen ?? 256}-block prompts during the churn${base ? ` (N=1: ${base.match.p50.toFixed(2)} ms)` : ''}; ${floor}` });
    out.push({ bench: `fleet.${N}.match.p99`, value: r.match.p99, unit: 'ms', baseline: r.floor.p99, note: `${r.match.overBudget} of ${r.match.queries} over the ${o.budgetMs ?? 5} ms index budget (echo floor: ${r.floor.overBudget}); ${r.match.shardMisses} shard misses, ${r.match.failures} failed; ${r.match.hitsExact}/${r.match.hitsExpected} cached prompts matched exactly${base ? ` (N=1: ${base.match.p99.toFixed(2)} ms)` : ''}; ${floor}` });
    out.push({ bench: `fleet.${N}.rss_mb_per_shard`, value: mean(rss), unit: 'MB', ...(base ? { baseline: mean(base.perShard.map((s) => s.rssMb)) } : {}), note: `VmRSS of each shard process after the churn: ${rss.map((x) => x.toFixed(0)).join(' / ')} MB (peak ${r.perShard.map((s) => s.hwmMb.toFixed(0)).join(' / ')}), entries ${r.perShard.map((s) => s.entries).join(' / ')}${base ? '; baseline: N=1 in this run' : ''}` });
  }
  return out;
}
