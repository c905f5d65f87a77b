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
import { Scheduler, resolveProfile, type BlockDigest, formatCapacity, type ProfileSpec, type SimProfile, type TimingModel, type TokenOutput } from '@kvgate/sim-engine';
import { DEFAULT_WEIGHTS, score, pick, isPolicy, type Candidate, type Policy } from '@kvgate/router';
import { readTrace, blockTokens, TRACE_BLOCK, type TraceRecord } from '@kvgate/workload/trace';
import { infiniteHitRate, pooledHitRate } from '@kvgate/workload/bounds';
import { percentile, type PolicyResult } from '@kvgate/workload/stats';
import { readFileSync, writeFileSync } from 'node:fs';

export interface WhatifOptions {
  trace: string | undefined;
  policies: string[];
  engines: number;
  /**
   * router replicas (default 2, as `kvgate start`): requests alternate between them and each keeps its own
   * round-robin cursor and random stream, as real replicas do; load and in-flight work are shared (peer in-flight)
   */
  routers?: number;
  json: boolean;
  /** engines' simulation profile (model, GPU, TP, gpu-memory-utilization; default qwen3-8b on one H100 80 GB) */
  profile?: ProfileSpec;
  /**
   * KV blocks per engine (default: derived from the profile) and tokens per block (default 128, as start --trace:
   * a size vLLM accepts, the same tokens of KV as 16-token blocks at an eighth of the per-block work)
   */
  numBlocks?: number;
  blockSize?: number;
  /** divide arrival times by this (default 1: the trace's own pace) */
  compress?: number;
  /** replay only the first N requests */
  limit?: number;
  /** write a self-contained HTML report with plots per policy to this path (report.ts) */
  report?: string;
}

/** The same figures `kvgate start` reports per policy (router workload stats), plus requests per engine. */
export type WhatifPolicyResult = Pick<PolicyResult, 'policy' | 'hitRate' | 'ttftP50Ms' | 'ttftP99Ms' | 'itlP50Ms' | 'e2eP50Ms' | 'throughputRps'> & {
  perEngine: number[];
  /** what the report plots (only when asked for: simulatePolicy's `series`) */
  series?: WhatifSeries;
};

/**
 * One policy's run over (virtual) time, in buckets of `bucketMs` from `t0Ms`: the prompt and cached tokens of the
 * requests whose first token came out in each bucket, and each engine's time-weighted mean of requests in flight
 * (queued or running) — at most MAX_BUCKETS buckets (the width doubles when the run outlasts them); plus the TTFT
 * distribution as 101 quantiles (0, 1 %, …, 100 %).
 */
export interface WhatifSeries {
  t0Ms: number;
  bucketMs: number;
  promptTokens: number[];
  cachedTokens: number[];
  /** [engine][bucket] mean requests in flight */
  load: number[][];
  ttftQuantilesMs: number[];
}

const MAX_BUCKETS = 120;

/** Bucketed counters on a virtual clock: O(1) per token count, O(buckets spanned) per in-flight change. */
class Timeline {
  bucketMs: number;
  readonly prompt: number[] = [];
  readonly cached: number[] = [];
  /** per engine: in-flight × ms per bucket */
  readonly area: number[][];
  readonly #inflight: number[];
  readonly #since: number[];
  constructor(readonly t0: number, spanMs: number, engines: number) {
    this.bucketMs = Math.max(1, spanMs / 60);
    this.area = Array.from({ length: engines }, () => []);
    this.#inflight = new Array<number>(engines).fill(0);
    this.#since = new Array<number>(engines).fill(t0);
  }
  #bucket(t: number): number {
    let i = Math.max(0, Math.floor((t - this.t0) / this.bucketMs));
    while (i >= MAX_BUCKETS) {
      // twice as wide: sum neighbours
      for (const a of [this.prompt, this.cached, ...this.area]) {
        for (let j = 0; j < a.length; j += 2) a[j >> 1] = (a[j] ?? 0) + (a[j + 1] ?? 0);
        a.length = Math.ceil(a.length / 2);
      }
      this.bucketMs *= 2;
      i = Math.max(0, Math.floor((t - this.t0) / this.bucketMs));
    }
    return i;
  }
  tokens(t: number, prompt: number, cached: number): void {
    const i = this.#bucket(t);
    this.prompt[i] = (this.prompt[i] ?? 0) + prompt;
    this.cached[i] = (this.cached[i] ?? 0) + cached;
  }
  /** engine e's requests in flight change by `delta` at t */
  inflight(e: number, t: number, delta: number): void {
    this.#bucket(t); // widen first, so the buckets below are final
    const n = this.#inflight[e]!;
    if (n > 0) {
      const a = this.area[e]!;
      let from = this.#since[e]!;
      while (from < t) {
        let i = Math.max(0, Math.floor((from - this.t0) / this.bucketMs));
        let end = Math.min(t, this.t0 + (i + 1) * this.bucketMs);
        if (end <= from) end = Math.min(t, this.t0 + (++i + 1) * this.bucketMs); // `from` on a boundary, rounded down
        a[i] = (a[i] ?? 0) + n * (end - from);
        from = end;
      }
    }
    this.#inflight[e] = n + delta;
    this.#since[e] = t;
  }
  finish(ttft: readonly number[]): WhatifSeries {
    const len = Math.max(this.prompt.length, ...this.area.map((a) => a.length));
    const fill = (a: number[]) => Array.from({ length: len }, (_, i) => a[i] ?? 0);
    const sorted = Float64Array.from(ttft).sort();
    return {
      t0Ms: this.t0,
      bucketMs: this.bucketMs,
      promptTokens: fill(this.prompt),
      cachedTokens: fill(this.cached),
      load: this.area.map((a) => fill(a).map((x) => x / this.bucketMs)),
      ttftQuantilesMs: sorted.length ? Array.from({ length: 101 }, (_, q) => sorted[Math.min(sorted.length - 1, Math.round((q / 100) * (sorted.length - 1)))]!) : [],
    };
  }
}

export interface WhatifResult {
  requests: number;
  engines: number;
  /** router replicas the requests alternated between */
  routers: number;
  /** what each engine was sized as */
  capacity: { model: string; gpu: string; tensorParallelSize: number; numBlocks: number; blockSize: number; tokens: number; line: string };
  infiniteCacheHitRate: number;
  pooledHitRate: number;
  policies: WhatifPolicyResult[];
}

interface SimRequest {
  arrivalMs: number;
  /** the prompt, built when the request arrives (12 k long prompts held at once would be gigabytes) */
  tokens: () => number[];
  maxTokens: number;
}

/**
 * A record's prompt (recordTokens' tokens), from each hash id's 512 tokens generated once: a trace repeats its
 * shared blocks many times, and every policy replays every request.
 */
function promptBuilder(): (r: TraceRecord) => number[] {
  const blocks = new Map<number, number[]>();
  return (r) => {
    const out = new Array<number>(r.inputLength);
    for (let i = 0; i < r.hashIds.length; i++) {
      const h = r.hashIds[i]!;
      let b = blocks.get(h);
      if (!b) blocks.set(h, (b = blockTokens(h)));
      const at = i * TRACE_BLOCK;
      const n = Math.min(TRACE_BLOCK, r.inputLength - at);
      for (let j = 0; j < n; j++) out[at + j] = b[j]!;
    }
    return out;
  };
}

/** Requests from a Mooncake trace, or the prompts recorded in a .kvlog's routing decisions (by block count). */
function loadRequests(path: string, compress: number, limit: number): { reqs: SimRequest[]; records: TraceRecord[] } {
  const prompt = promptBuilder();
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
    return { reqs: trace.map((r) => ({ arrivalMs: r.timestamp / compress, tokens: () => prompt(r), maxTokens: Math.max(1, r.outputLength) })), records: trace };
  }
  const records = readTrace(path).slice(0, limit);
  return { reqs: records.map((r) => ({ arrivalMs: r.timestamp / compress, tokens: () => prompt(r), maxTokens: Math.max(1, r.outputLength) })), records };
}

interface EngineSim {
  sched: Scheduler;
  /** virtual time the engine's current step ends (≤ now: idle) */
  busyUntil: number;
  inflightPrefillTokens: number;
  inflightDecodeBlocks: number;
  served: number;
  index: number;
}

export function simulatePolicy(
  reqs: readonly SimRequest[],
  policy: Policy,
  opts: { engines: number; routers?: number; numBlocks: number; blockSize: number; timing?: TimingModel; seed?: number; series?: boolean },
  onProgress?: (done: number) => void,
): WhatifPolicyResult {
  const B = opts.blockSize;
  const engines: EngineSim[] = Array.from({ length: opts.engines }, (_, i) => ({
    // one hash seed for every engine (their caches are separate anyway): a prompt is hashed once, not per engine
    sched: new Scheduler({ numBlocks: opts.numBlocks, blockSize: B, hashSeed: 'whatif', hashAlgo: 'xxhash', recordEvents: false, ...(opts.timing ? { timing: opts.timing } : {}) }),
    busyUntil: 0,
    inflightPrefillTokens: 0,
    inflightDecodeBlocks: 0,
    served: 0,
    index: i,
  }));
  const t0 = reqs[0]?.arrivalMs ?? 0;
  const tl = opts.series ? new Timeline(t0, (reqs[reqs.length - 1]?.arrivalMs ?? t0) - t0, opts.engines) : undefined;
  // per router replica: its round-robin cursor and its random stream (request i goes to replica i mod routers)
  const routers = Math.max(1, Math.floor(opts.routers ?? 1));
  const rngs = Array.from({ length: routers }, (_, i) => ((opts.seed ?? 42) + i * 7919) >>> 0);
  const rr = new Array<number>(routers).fill(0);
  let router = 0;
  const random = () => ((rngs[router] = (Math.imul(rngs[router]!, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const meta = new Map<string, { arrival: number; engine: EngineSim; newPrefill: number; blocks: number; lastAt: number; first: number }>();
  const ttft: number[] = [], itl: number[] = [], e2e: number[] = [];
  let prompt = 0, cached = 0, done = 0, lastEnd = 0;

  const choose = (digests: readonly BlockDigest[]): EngineSim => {
    if (policy === 'round-robin') return engines[rr[router]!++ % engines.length]!;
    if (policy === 'random') return engines[Math.floor(random() * engines.length)]!;
    const promptBlocks = digests.length;
    const candidates: Candidate[] = engines.map((e, i) => {
      const st = e.sched.stats();
      return {
        worker: String(i),
        overlap: policy === 'kv' ? e.sched.cachedDigestBlocks(digests) : 0,
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
      tl?.tokens(o.atMs, o.promptTokens, o.cachedTokens);
      m.engine.inflightPrefillTokens -= m.newPrefill;
    } else itl.push(o.atMs - m.lastAt);
    m.lastAt = o.atMs;
    if (o.finishReason) {
      e2e.push(o.atMs - m.arrival);
      m.engine.inflightDecodeBlocks -= m.blocks;
      tl?.inflight(m.engine.index, o.atMs, -1);
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
      router = next % routers;
      const id = `r${next++}`;
      const tokens = r.tokens();
      const digests = engines[0]!.sched.prefixDigests(tokens);
      const e = choose(digests);
      const overlap = e.sched.cachedDigestBlocks(digests);
      const newPrefill = tokens.length - overlap * B;
      const blocks = Math.ceil((tokens.length + r.maxTokens) / B);
      e.inflightPrefillTokens += newPrefill;
      e.inflightDecodeBlocks += blocks;
      e.served++;
      tl?.inflight(e.index, r.arrivalMs, +1);
      meta.set(id, { arrival: r.arrivalMs, engine: e, newPrefill, blocks, lastAt: r.arrivalMs, first: 0 });
      e.sched.submit({ id, promptTokens: tokens, digests, maxTokens: r.maxTokens, arrivalMs: r.arrivalMs });
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
    ...(tl ? { series: tl.finish(ttft) } : {}),
  };
}

export async function whatif(o: WhatifOptions, progress: (msg: string) => void = () => {}): Promise<WhatifResult> {
  if (!o.trace) throw new Error('whatif needs --trace trace.jsonl or f.kvlog');
  const bad = o.policies.filter((p) => !isPolicy(p));
  if (bad.length) throw new Error(`unknown policy ${bad.join(', ')} (kv, least-loaded, round-robin, random)`);
  if (!Number.isInteger(o.engines) || o.engines < 1) throw new Error('--engines must be a positive integer');
  await initHashing();
  const profile: SimProfile = resolveProfile({
    ...o.profile,
    blockSize: o.blockSize ?? 128,
    ...(o.numBlocks !== undefined ? { numBlocksOverride: o.numBlocks } : {}),
  });
  const { numBlocks, blockSize } = profile;
  progress(`engines: ${formatCapacity(profile)}`);
  const { reqs, records } = loadRequests(o.trace, o.compress ?? 1, o.limit ?? Infinity);
  const boundBlocks = records.map((r) => r.hashIds.map((h, i) => ({ key: h, tokens: Math.min(TRACE_BLOCK, r.inputLength - i * TRACE_BLOCK) })));
  const routers = o.routers ?? 2;
  const result: WhatifResult = {
    requests: reqs.length,
    engines: o.engines,
    routers,
    capacity: { model: profile.model, gpu: profile.gpu, tensorParallelSize: profile.tensorParallelSize, numBlocks, blockSize, tokens: profile.tokens, line: formatCapacity(profile) },
    infiniteCacheHitRate: infiniteHitRate(boundBlocks),
    pooledHitRate: pooledHitRate(boundBlocks, o.engines * numBlocks * blockSize, TRACE_BLOCK),
    policies: [],
  };
  for (const p of o.policies as Policy[]) {
    result.policies.push(simulatePolicy(reqs, p, { engines: o.engines, routers, numBlocks, blockSize, timing: profile.timing, series: o.report !== undefined }, (n) => progress(`${p}: ${n}/${reqs.length} requests`)));
  }
  return result;
}

/** The table's columns and one policy's cells, as formatWhatif prints them and the HTML report shows them. */
export const WHATIF_COLUMNS = ['policy', 'hit rate', 'TTFT p50', 'TTFT p99', 'ITL p50', 'e2e p50', 'req/s', 'per engine'] as const;
export function whatifCells(p: WhatifPolicyResult): string[] {
  const f = (n: number) => (Number.isFinite(n) ? n.toFixed(n >= 100 ? 0 : 1) : '-');
  return [p.policy, (p.hitRate * 100).toFixed(1) + '%', f(p.ttftP50Ms), f(p.ttftP99Ms), f(p.itlP50Ms), f(p.e2eP50Ms), p.throughputRps.toFixed(2), p.perEngine.join('/')];
}

export function formatWhatif(r: WhatifResult): string {
  const pad = [14, 8, 9, 9, 8, 8, 7];
  const row = (cells: readonly string[]) => cells.slice(0, 7).map((c, i) => (i ? c.padStart(pad[i]!) : c.padEnd(pad[i]!))).join(' ') + `  ${cells[7]}`;
  const lines = [
    `${r.requests} requests on ${r.engines} simulated engines behind ${r.routers} router replicas (virtual clock)`,
    `engines: ${r.capacity.line}`,
    `bounds: infinite-cache hit rate ${(r.infiniteCacheHitRate * 100).toFixed(1)}%, pooled hit rate ${(r.pooledHitRate * 100).toFixed(1)}%`,
    row(WHATIF_COLUMNS),
  ];
  for (const p of r.policies) lines.push(row(whatifCells(p)));
  lines.push('(times in ms of simulated engine time)');
  return lines.join('\n');
}

export async function runWhatif(o: WhatifOptions): Promise<number> {
  const r = await whatif(o, (m) => process.stderr.write(`\r[whatif] ${m}   `));
  process.stderr.write('\n');
  if (o.report) {
    const { renderReport } = await import('./report.js');
    writeFileSync(o.report, renderReport(r, { ...(o.trace ? { trace: o.trace } : {}), generatedAt: new Date() }));
    process.stderr.write(`[whatif] wrote ${o.report}\n`);
    // the series went into the report; --json keeps its usual shape
    for (const p of r.policies) delete p.series;
  }
  console.log(o.json ? JSON.stringify(r) : formatWhatif(r));
  return 0;
}
