/**
 * `kvgate replay whatif`: the same traffic under each routing policy, on simulated engines, on a virtual clock.
 *
 * Engines are the simulator's pure core (sim-engine Scheduler: paged KV cache, continuous batching, timing model),
 * stepped by a discrete-event loop instead of timers, so a 17-minute trace runs in seconds and every policy sees
 * identical arrivals. Routing uses the router's own scorer (score/pick) with what a router would know: each
 * engine's prefix overlap (read straight from the engine's cache: an index with zero lag), its queue, KV usage, and
 * the prefill tokens and decode blocks in flight to it.
 */
import { parseKvlog, initHashing } from '@kvgate/protocol';
import { Scheduler, type TokenOutput } from '@kvgate/sim-engine';
import { DEFAULT_WEIGHTS, score, pick, isPolicy, type Candidate, type Policy } from '@kvgate/router';
import { readTrace, recordTokens, TRACE_BLOCK, type TraceRecord } from '@kvgate/router/workload/trace';
import { infiniteHitRate, pooledHitRate } from '@kvgate/router/workload/bounds';
import { percentile, type PolicyResult } from '@kvgate/router/workload/stats';
import { readFileSync } from 'node:fs';

export interface WhatifOptions {
  trace: string | undefined;
  policies: string[];
  engines: number;
  json: boolean;
  /** KV blocks per engine (default 16384) and tokens per block (default 16) */
  numBlocks?: number;
  blockSize?: number;
  /** divide arrival times by this (default 1: the trace's own pace) */
  compress?: number;
  /** replay only the first N requests */
  limit?: number;
}

/** The same figures `kvgate start` reports per policy (router workload stats), plus requests per engine. */
export type WhatifPolicyResult = Pick<PolicyResult, 'policy' | 'hitRate' | 'ttftP50Ms' | 'ttftP99Ms' | 'itlP50Ms' | 'e2eP50Ms' | 'throughputRps'> & {
  perEngine: number[];
};

export interface WhatifResult {
  requests: number;
  engines: number;
  infiniteCacheHitRate: number;
  pooledHitRate: number;
  policies: WhatifPolicyResult[];
}

interface SimRequest {
  arrivalMs: number;
  tokens: number[];
  maxTokens: number;
}

/** Requests from a Mooncake trace, or the prompts recorded in a .kvlog's routing decisions (by block count). */
function loadRequests(path: string, compress: number, limit: number): { reqs: SimRequest[]; records: TraceRecord[] } {
  if (path.endsWith('.kvlog')) {
    // A recording holds prefix hashes, not tokens: rebuild prompts whose block structure is the same (one synthetic
    // block per recorded prefix hash), which is what prefix caching and routing depend on.
    const { records } = parseKvlog(readFileSync(path));
    const routes = records.flatMap((r) => (r.kind === 'route' ? [r] : []));
    if (routes.length === 0) throw new Error(`${path} holds no routing decisions to replay`);
    const t0 = routes[0]!.time;
    const ids = new Map<bigint, number>();
    const trace: TraceRecord[] = routes.slice(0, limit).map((r) => {
      const hashIds = r.decision.hashes.map((h) => ids.get(h) ?? (ids.set(h, ids.size), ids.size - 1));
      return { timestamp: r.time - t0, inputLength: Math.max(1, hashIds.length) * TRACE_BLOCK, outputLength: 16, hashIds: hashIds.length ? hashIds : [ids.size + 1_000_000] };
    });
    return { reqs: trace.map((r) => ({ arrivalMs: r.timestamp / compress, tokens: recordTokens(r), maxTokens: Math.max(1, r.outputLength) })), records: trace };
  }
  const records = readTrace(path).slice(0, limit);
  return { reqs: records.map((r) => ({ arrivalMs: r.timestamp / compress, tokens: recordTokens(r), maxTokens: Math.max(1, r.outputLength) })), records };
}

interface EngineSim {
  sched: Scheduler;
  /** virtual time the engine's current step ends (≤ now: idle) */
  busyUntil: number;
  inflightPrefillTokens: number;
  inflightDecodeBlocks: number;
  served: number;
}

export function simulatePolicy(reqs: readonly SimRequest[], policy: Policy, opts: { engines: number; numBlocks: number; blockSize: number; seed?: number }, onProgress?: (done: number) => void): WhatifPolicyResult {
  const B = opts.blockSize;
  const engines: EngineSim[] = Array.from({ length: opts.engines }, (_, i) => ({
    sched: new Scheduler({ numBlocks: opts.numBlocks, blockSize: B, hashSeed: `whatif-${i}`, hashAlgo: 'xxhash' }),
    busyUntil: 0,
    inflightPrefillTokens: 0,
    inflightDecodeBlocks: 0,
    served: 0,
  }));
  let rng = opts.seed ?? 42;
  const random = () => ((rng = (Math.imul(rng, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  let rr = 0;
  const meta = new Map<string, { arrival: number; engine: EngineSim; newPrefill: number; blocks: number; lastAt: number; first: number }>();
  const ttft: number[] = [], itl: number[] = [], e2e: number[] = [];
  let prompt = 0, cached = 0, done = 0, lastEnd = 0;

  const choose = (tokens: number[]): EngineSim => {
    if (policy === 'round-robin') return engines[rr++ % engines.length]!;
    if (policy === 'random') return engines[Math.floor(random() * engines.length)]!;
    const promptBlocks = Math.floor(tokens.length / B);
    const candidates: Candidate[] = engines.map((e, i) => {
      const st = e.sched.stats();
      return {
        worker: String(i),
        overlap: policy === 'kv' ? e.sched.cachedPrefixBlocks(tokens) : 0,
        inflightPrefillTokens: e.inflightPrefillTokens,
        inflightDecodeBlocks: e.inflightDecodeBlocks,
        waiting: st.waiting,
        running: st.running,
        kvUsage: st.kvUsage,
        capacityBlocks: st.numBlocks,
      };
    });
    const chosen = pick(score({ promptBlocks, blockSize: B, candidates }, DEFAULT_WEIGHTS), DEFAULT_WEIGHTS, random);
    return engines[Number(chosen!.worker)]!;
  };

  const onOutput = (o: TokenOutput) => {
    const m = meta.get(o.id)!;
    if (o.index === 0) {
      ttft.push(o.atMs - m.arrival);
      m.first = o.atMs;
      prompt += o.promptTokens;
      cached += o.cachedTokens;
      m.engine.inflightPrefillTokens -= m.newPrefill;
    } else itl.push(o.atMs - m.lastAt);
    m.lastAt = o.atMs;
    if (o.finishReason) {
      e2e.push(o.atMs - m.arrival);
      m.engine.inflightDecodeBlocks -= m.blocks;
      meta.delete(o.id);
      lastEnd = Math.max(lastEnd, o.atMs);
      if (++done % 200 === 0) onProgress?.(done);
    }
  };

  // Event loop: the next thing to happen is either an arrival or the end of some engine's step.
  let next = 0;
  let now = 0;
  const stepIdle = (t: number) => {
    for (const e of engines) {
      if (e.busyUntil > t) continue;
      const r = e.sched.step(Math.max(t, e.busyUntil));
      if (!r) continue;
      e.busyUntil = r.endMs;
      for (const o of r.outputs) onOutput(o);
    }
  };
  while (next < reqs.length || meta.size > 0) {
    const arrival = next < reqs.length ? reqs[next]!.arrivalMs : Infinity;
    let stepEnd = Infinity;
    for (const e of engines) if (e.busyUntil > now && e.busyUntil < stepEnd) stepEnd = e.busyUntil;
    if (arrival === Infinity && stepEnd === Infinity) {
      // nothing running and nothing arriving, yet requests unfinished: engines idle with queued work
      stepIdle(now);
      if (engines.every((e) => e.busyUntil <= now)) break;
      continue;
    }
    now = Math.min(arrival, stepEnd);
    while (next < reqs.length && reqs[next]!.arrivalMs <= now) {
      const r = reqs[next]!;
      const id = `r${next++}`;
      const e = choose(r.tokens);
      const overlap = e.sched.cachedPrefixBlocks(r.tokens);
      const newPrefill = r.tokens.length - overlap * B;
      const blocks = Math.ceil((r.tokens.length + r.maxTokens) / B);
      e.inflightPrefillTokens += newPrefill;
      e.inflightDecodeBlocks += blocks;
      e.served++;
      meta.set(id, { arrival: r.arrivalMs, engine: e, newPrefill, blocks, lastAt: r.arrivalMs, first: 0 });
      e.sched.submit({ id, promptTokens: r.tokens, maxTokens: r.maxTokens, arrivalMs: r.arrivalMs });
    }
    stepIdle(now);
  }
  const span = Math.max(1e-9, lastEnd - (reqs[0]?.arrivalMs ?? 0));
  return {
    policy,
    hitRate: prompt > 0 ? cached / prompt : 0,
    ttftP50Ms: percentile(ttft, 50),
    ttftP99Ms: percentile(ttft, 99),
    itlP50Ms: percentile(itl, 50),
    e2eP50Ms: percentile(e2e, 50),
    throughputRps: done / (span / 1000),
    perEngine: engines.map((e) => e.served),
  };
}

export async function whatif(o: WhatifOptions, progress: (msg: string) => void = () => {}): Promise<WhatifResult> {
  if (!o.trace) throw new Error('whatif needs --trace trace.jsonl or f.kvlog');
  const bad = o.policies.filter((p) => !isPolicy(p));
  if (bad.length) throw new Error(`unknown policy ${bad.join(', ')} (kv, least-loaded, round-robin, random)`);
  if (!Number.isInteger(o.engines) || o.engines < 1) throw new Error('--engines must be a positive integer');
  await initHashing();
  const numBlocks = o.numBlocks ?? 16384, blockSize = o.blockSize ?? 16;
  const { reqs, records } = loadRequests(o.trace, o.compress ?? 1, o.limit ?? Infinity);
  const boundBlocks = records.map((r) => r.hashIds.map((h, i) => ({ key: h, tokens: Math.min(TRACE_BLOCK, r.inputLength - i * TRACE_BLOCK) })));
  const result: WhatifResult = {
    requests: reqs.length,
    engines: o.engines,
    infiniteCacheHitRate: infiniteHitRate(boundBlocks),
    pooledHitRate: pooledHitRate(boundBlocks, o.engines * numBlocks * blockSize, TRACE_BLOCK),
    policies: [],
  };
  for (const p of o.policies as Policy[]) {
    result.policies.push(simulatePolicy(reqs, p, { engines: o.engines, numBlocks, blockSize }, (n) => progress(`${p}: ${n}/${reqs.length} requests`)));
  }
  return result;
}

export function formatWhatif(r: WhatifResult): string {
  const f = (n: number) => (Number.isFinite(n) ? n.toFixed(n >= 100 ? 0 : 1) : '-');
  const lines = [
    `${r.requests} requests on ${r.engines} simulated engines (virtual clock)`,
    `bounds: infinite-cache hit rate ${(r.infiniteCacheHitRate * 100).toFixed(1)}%, pooled hit rate ${(r.pooledHitRate * 100).toFixed(1)}%`,
    `${'policy'.padEnd(14)} ${'hit rate'.padStart(8)} ${'TTFT p50'.padStart(9)} ${'TTFT p99'.padStart(9)} ${'ITL p50'.padStart(8)} ${'e2e p50'.padStart(8)} ${'req/s'.padStart(7)}  per engine`,
  ];
  for (const p of r.policies) {
    lines.push(`${p.policy.padEnd(14)} ${((p.hitRate * 100).toFixed(1) + '%').padStart(8)} ${f(p.ttftP50Ms).padStart(9)} ${f(p.ttftP99Ms).padStart(9)} ${f(p.itlP50Ms).padStart(8)} ${f(p.e2eP50Ms).padStart(8)} ${p.throughputRps.toFixed(2).padStart(7)}  ${p.perEngine.join('/')}`);
  }
  lines.push('(times in ms of simulated engine time)');
  return lines.join('\n');
}

export async function runWhatif(o: WhatifOptions): Promise<number> {
  const r = await whatif(o, (m) => process.stderr.write(`\r[whatif] ${m}   `));
  process.stderr.write('\n');
  console.log(o.json ? JSON.stringify(r) : formatWhatif(r));
  return 0;
}
