/**
 * `kvgate start`: the whole system in one process — K simulated engines with shims, an indexer, two router
 * replicas — driven by a workload once per routing policy (fresh routers and emptied prefix caches each time).
 * Prints one table (or --json) with each policy's prefix-cache hit rate and latencies, and two bounds: the
 * infinite-cache hit rate and the pooled hit rate (one LRU with the engines' total capacity).
 *
 * `--cpu-offload-blocks N` runs the same workload a second time, on a fresh deployment whose engines also have a
 * CPU offload tier of N blocks (vLLM's OffloadingConnector, simulated): rows `<policy>+cpu` beside the GPU-only
 * rows, their share of prompt tokens served from CPU (the engines' vllm:external_prefix_cache_hits_total), and
 * what the tier gained per policy (hit rate, TTFT p50).
 */
import type { Policy, RouterOptions } from '@kvgate/router';
import type { ChatWorkloadOptions, PlanSpec } from '@kvgate/workload/plan';
import type { PolicyResult } from '@kvgate/workload/stats';
import type { RequestResult } from '@kvgate/workload/client';
import { intFlag, parseFlags } from '../flags.js';
import { FlagError } from '../fatal.js';
import { PROFILE_SPEC, profileFrom } from '../profile-flags.js';
import { formatCapacity, resolveProfile, type SimProfile } from '@kvgate/sim-engine/profile';
import { API_KEY_SPEC, apiKeysFrom, CLUSTER_SECRET_SPEC, clusterSecretFrom } from '../auth-flags.js';
import { NATS_AUTH_SPEC, natsOptionsFrom } from '../nats-flags.js';
import { progressBar } from '../progress.js';
import { untilSignal } from '../lifecycle.js';
import { DISAGG_SPEC } from './start-disagg.js';

/**
 * Built-in workload: per-engine KV blocks of 16 tokens (49k tokens). A quarter of the 16 shared contexts plus their
 * conversations fit (the kv policy's partition); all 16 (round-robin's replicated working set, ≈ 100k) do not.
 */
const BUILTIN_NUM_BLOCKS = 3072;
/**
 * Suggested CPU tier for the built-in workload: twice the GPU blocks (hosts usually have several times the GPU's
 * memory). GPU + CPU then hold the 16 shared contexts a load-only policy spreads over every engine.
 */
const BUILTIN_CPU_BLOCKS = 2 * BUILTIN_NUM_BLOCKS;

export const summary = 'everything in one process (simulated engines, shims, indexer, 2 routers), a workload per policy, one table';

const USAGE = `kvgate start [options]

Runs the built-in workload (RAG-style multi-turn chats over a few long shared contexts), or --trace (Mooncake
JSONL: timestamp ms, input_length, output_length, hash_ids of 512-token blocks), once per policy, on cold caches.`;

const SPEC = {
  engines: { type: 'string', help: 'simulated engines (one shim each; default 4, --disagg 2)' },
  routers: { type: 'string', default: '2', help: 'router replicas (requests alternate between them)' },
  policy: { type: 'string', default: 'kv,round-robin,least-loaded', help: 'policies to compare: kv, round-robin, least-loaded, random' },
  trace: { type: 'string', help: 'Mooncake trace (JSONL) to replay instead of the built-in workload' },
  compress: { type: 'string', help: 'trace pace in modelled time, as whatif --compress: timestamps divided by this (default 1); the run takes trace time ÷ (compress × speedup) of wall time' },
  limit: { type: 'string', help: 'replay only the first N trace requests' },
  speedup: { type: 'string', help: 'engine simulated-ms per wall-ms (default: trace 8, built-in 1); latencies are reported in simulated ms' },
  'block-size': { type: 'string', help: 'engine KV block size in tokens (default: trace 128, as whatif; built-in 16, as vLLM)' },
  'num-blocks': { type: 'string', help: `engine KV capacity in blocks (default: trace: derived from the profile, as vLLM; built-in workload: ${BUILTIN_NUM_BLOCKS})` },
  ...PROFILE_SPEC,
  'index-timeout-ms': { type: 'string', default: '50', help: 'router budget for the index answer before routing by load alone' },
  'uncached-weight': { type: 'string', help: 'kv score: weight of uncached prompt blocks (router default 4)' },
  'decode-weight': { type: 'string', help: 'kv score: weight of active decode blocks (router default 0.1)' },
  model: { type: 'string', default: 'qwen3-8b', help: 'served model name' },
  conversations: { type: 'string', default: '56', help: 'built-in workload: conversations' },
  turns: { type: 'string', default: '5', help: 'built-in workload: turns per conversation' },
  contexts: { type: 'string', default: '16', help: 'built-in workload: shared contexts (system prompt + reference document)' },
  'context-words': { type: 'string', default: '6000', help: 'built-in workload: words per shared context (≈ 1 token each)' },
  'chat-text': { type: 'boolean', help: 'built-in workload: send chat messages (tokenized by routers and engines) instead of token ids' },
  warmup: { type: 'string', default: '80', help: 'requests of a throwaway pass first (caches are emptied after it; 0 = none)' },
  port: { type: 'string', default: '0', help: 'HTTP port of the first router (0 = any; it lives only during the run)' },
  nats: { type: 'string', help: 'run over NATS (nats://host:port) instead of the in-memory bus' },
  'cpu-offload-blocks': {
    type: 'string',
    help: `also run every policy on engines with a CPU offload tier of N blocks and show what it gains (0 = off; built-in workload: try ${BUILTIN_CPU_BLOCKS})`,
  },
  'offload-bandwidth': { type: 'string', help: 'modelled GPU ↔ host link of the offload tier, GB/s (default 25, PCIe 4.0 ×16)' },
  ui: { type: 'boolean', help: "print the first router's live dashboard URL (/dashboard) and keep the last deployment serving after the workload, until Ctrl-C (use --port for a URL that stays the same across policies)" },
  json: { type: 'boolean', help: 'print {infiniteCacheHitRate, pooledHitRate, policies:[…], capacity, cpuOffload?} as JSON (--disagg: {mode, workload, capacity, rows:[{row: colocated|disaggregated, fabric, …}]})' },
  ...DISAGG_SPEC,
  ...API_KEY_SPEC,
  ...CLUSTER_SECRET_SPEC,
  ...NATS_AUTH_SPEC,
} as const;

/** A run's figures in the engines' modelled time: wall-clock latencies × speedup, throughput ÷ speedup. */
function modelled(r: PolicyResult, speedup: number): PolicyResult {
  return { ...r, ttftP50Ms: r.ttftP50Ms * speedup, ttftP99Ms: r.ttftP99Ms * speedup, itlP50Ms: r.itlP50Ms * speedup, e2eP50Ms: r.e2eP50Ms * speedup, throughputRps: r.throughputRps / speedup };
}

/**
 * TTFT, ITL (the gaps between tokens) and end-to-end latency on the engines' own clocks (arrival at the engine →
 * first / last token, simulated ms, free of this host's lag), in place of the client's wall ms × speedup, which also scales every wall ms the
 * client, routers, shims and event loops spend (8× at --speedup 8). Needs the engines' figure for at least 99% of
 * the requests that succeeded (else the client's figures stay); the client's TTFT p50 is kept as clientTtftP50Ms.
 */
function onEngineClocks(r: PolicyResult, rs: readonly RequestResult[], timings: ReadonlyMap<string, EngineTiming>, percentileOf: (xs: number[], p: number) => number): PolicyResult & { clientTtftP50Ms: number; clock: 'engine' | 'client' } {
  const ttft: number[] = [];
  const e2e: number[] = [];
  const gaps: number[] = [];
  let ok = 0;
  for (const q of rs) {
    if (!q.ok) continue;
    ok++;
    const t = q.requestId !== undefined ? timings.get(q.requestId) : undefined;
    if (!t) continue;
    ttft.push(t[0]);
    e2e.push(t[1]);
    for (const g of t[2]) gaps.push(g);
  }
  if (ok === 0 || ttft.length < 0.99 * ok) return { ...r, clientTtftP50Ms: r.ttftP50Ms, clock: 'client' };
  return { ...r, ttftP50Ms: percentileOf(ttft, 50), ttftP99Ms: percentileOf(ttft, 99), itlP50Ms: gaps.length ? percentileOf(gaps, 50) : r.itlP50Ms, e2eP50Ms: percentileOf(e2e, 50), clientTtftP50Ms: r.ttftP50Ms, clock: 'engine' };
}

/** one request's modelled TTFT, e2e and gaps between tokens (simulated ms), from its engine */
type EngineTiming = readonly [number, number, readonly number[]];

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const ms = (x: number) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : '—');

export async function run(argv: string[]): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  // the table is the output; component info logs (shims leaving, …) would bury it (KVGATE_LOG_LEVEL=info shows
  // them). Set before the components' modules load: some create their logger at import.
  process.env.KVGATE_LOG_LEVEL ??= 'warn';
  const [{ initHashing, redactNatsUrl }, { loadTokenizer }, { isPolicy, PromptTokenizer }, { infiniteHitRate, pooledHitRate }, { buildPlan, planData, runPlanInThread }, { startStack }, { summarize, percentile }, { engineCounter }] =
    await Promise.all([
      import('@kvgate/protocol'),
      import('@kvgate/protocol/tokenizer'),
      import('@kvgate/router'),
      import('@kvgate/workload/bounds'),
      import('@kvgate/workload/plan'),
      import('@kvgate/workload/stack'),
      import('@kvgate/workload/stats'),
      import('@kvgate/workload/engine-counters'),
    ]);
  // auth (issue 13): the routers require these keys (the load client sends the first), routers sign every call
  // to a shim with the cluster secret (every shim then gets an HTTP front that checks it), NATS credentials/TLS
  const apiKeys = apiKeysFrom(f);
  const clusterSecret = clusterSecretFrom(f['cluster-secret']);
  const natsAuth = natsOptionsFrom(f);
  const clientAuth = apiKeys.length > 0 ? { apiKey: apiKeys[0]! } : {};
  if (f.disagg) {
    const { runDisagg } = await import('./start-disagg.js');
    return runDisagg(f, {
      profileSpec: profileFrom(f),
      stackConn: { ...(f.nats ? { nats: f.nats, natsAuth } : {}), ...(apiKeys.length ? { apiKeys } : {}), ...(clusterSecret ? { clusterSecret, shimFronts: true } : {}) },
      ...(apiKeys.length ? { apiKey: apiKeys[0]! } : {}),
    });
  }
  const policies = (f.policy ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const p of policies) {
    if (!isPolicy(p)) {
      console.error(`kvgate start: unknown policy ${JSON.stringify(p)} (kv, round-robin, least-loaded, random)`);
      return 2;
    }
  }
  const t0 = Date.now();
  const engines = intFlag(f.engines, 'engines', 4);
  const routers = intFlag(f.routers, 'routers', 2);
  const traceMode = f.trace !== undefined;
  const speedup = intFlag(f.speedup, 'speedup', traceMode ? 8 : 1);
  // engines sized by the simulation profile (as vLLM sizes num_gpu_blocks); the built-in workload keeps its own
  // small cache unless --num-blocks is given (it is sized so that a quarter of its shared contexts fits)
  const profileSpec = profileFrom(f);
  let profile: SimProfile;
  try {
    profile = resolveProfile({
      ...profileSpec,
      // trace replays: 128-token blocks (a size vLLM accepts; the same tokens of KV): 16-token blocks of 20k-token
      // prompts are 8× the per-block work (hashes, events, index) and a small machine falls behind the wall clock
      blockSize: intFlag(f['block-size'], 'block-size', traceMode ? 128 : 16),
      maxNumSeqs: 256,
      ...(f['num-blocks'] !== undefined || !traceMode ? { numBlocksOverride: intFlag(f['num-blocks'], 'num-blocks', BUILTIN_NUM_BLOCKS) } : {}),
    });
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
  const { blockSize, numBlocks } = profile;
  const model = f.model ?? 'qwen3-8b';
  await initHashing();
  const tokenizer = await loadTokenizer();
  const pt = new PromptTokenizer({ tokenizer });

  const chatOptions: ChatWorkloadOptions = {
    conversations: intFlag(f.conversations, 'conversations', 56),
    turns: intFlag(f.turns, 'turns', 5),
    systemPrompts: intFlag(f.contexts, 'contexts', 16),
    systemWords: intFlag(f['context-words'], 'context-words', 6000),
    format: f['chat-text'] ? 'chat' : 'tokens',
  };
  const traceSpec: PlanSpec | undefined = traceMode ? { kind: 'trace', path: f.trace!, limit: intFlag(f.limit, 'limit', 0), compress: intFlag(f.compress, 'compress', 1) * speedup, model } : undefined;
  const plan = buildPlan(traceSpec ?? { kind: 'chat', model, blockSize, options: chatOptions }, pt);
  // the built-in plan is rendered here once (its prompts need the tokenizer) and handed to the client as data;
  // a trace is read again by the client thread (its bodies are built as they are sent)
  const spec: PlanSpec = traceSpec ?? { kind: 'list', name: plan.name, blockTokens: plan.blockTokens, requests: planData(plan) };
  const capacityTokens = engines * numBlocks * blockSize;
  const infinite = infiniteHitRate(plan.blocks());
  const pooled = pooledHitRate(plan.blocks(), capacityTokens, plan.blockTokens);
  const lastAt = plan.requests.at(-1)?.atMs ?? 0;
  const what = traceMode
    ? `${plan.requests.length} trace requests`
    : `${plan.requests.length} chat requests (${chatOptions.conversations} conversations × ${chatOptions.turns} turns over ${chatOptions.systemPrompts} shared ${chatOptions.systemWords}-word contexts, sent as ${chatOptions.format === 'chat' ? 'chat messages' : 'token ids'})`;
  process.stderr.write(
    `kvgate start: engines: ${formatCapacity(profile)}${!traceMode && f['num-blocks'] === undefined ? ' — the built-in workload\'s own size' : ''}\n` +
    `kvgate start: ${what} over ${(lastAt / 1000).toFixed(1)} s, ${engines} engines × ${numBlocks} blocks of ${blockSize} tokens, speedup ${speedup}, ${routers} routers, ${f.nats ? `NATS ${redactNatsUrl(f.nats)}` : 'in-memory bus'}${apiKeys.length ? ', API keys on' : ''}${clusterSecret ? ', cluster secret on' : ''}\n`,
  );

  // the control loops keep their modelled period: a load report every 250 ms, a metrics scrape every 100 ms and a
  // peer in-flight batch every 20 ms of *modelled* time, as in a deployment at 1×. At --speedup 8 their wall-clock
  // defaults would be 8× staler against the engines' work (a 2 s old load view for the kv score), which is not what
  // whatif or a real fleet sees (bounded below: a small host cannot scrape 4 engines every millisecond)
  const paced = (modelledMs: number, floorMs: number) => Math.max(floorMs, Math.round(modelledMs / speedup));
  const shimPacing = { loadIntervalMs: paced(250, 10), scrapeIntervalMs: paced(100, 10) };
  const routerOptions = (policy: Policy): RouterOptions => ({
    policy,
    flushMs: paced(20, 2),
    indexTimeoutMs: intFlag(f['index-timeout-ms'], 'index-timeout-ms', 50),
    weights: {
      ...(f['uncached-weight'] ? { uncachedWeight: intFlag(f['uncached-weight'], 'uncached-weight', 4) } : {}),
      ...(f['decode-weight'] ? { decodeWeight: intFlag(f['decode-weight'], 'decode-weight', 0.1) } : {}),
    },
  });
  const cpuBlocks = intFlag(f['cpu-offload-blocks'], 'cpu-offload-blocks', 0);
  if (!Number.isInteger(cpuBlocks) || cpuBlocks < 0) {
    console.error(`kvgate start: --cpu-offload-blocks must be a non-negative integer, got ${f['cpu-offload-blocks']}`);
    return 2;
  }
  const offloadBandwidth = intFlag(f['offload-bandwidth'], 'offload-bandwidth', 25);
  if (!(offloadBandwidth > 0)) {
    console.error(`kvgate start: --offload-bandwidth must be positive, got ${f['offload-bandwidth']}`);
    return 2;
  }
  const warmupN = Math.min(intFlag(f.warmup, 'warmup', 80), plan.requests.length);

  /** --ui: the last deployment, kept serving after the workload (closed on Ctrl-C) */
  let kept: { close(): Promise<void>; routers: { url: string }[] } | undefined;
  const showDashboard = (url: string) => process.stderr.write(`dashboard: ${url}/dashboard\n`);
  /** One deployment, every policy on it; `cpu` > 0 gives its engines a CPU tier of that many blocks. */
  type Row = PolicyResult & { cpuHitRate: number; clientTtftP50Ms: number; clock: 'engine' | 'client' };
  const runDeployment = async (cpu: number, keep: boolean): Promise<Row[]> => {
    // the engines' own latencies per request (x-request-id → [TTFT, e2e] simulated ms)
    const timings = new Map<string, EngineTiming>();
    const tag = cpu > 0 ? `+cpu` : '';
    process.stderr.write(
      `starting ${engines} engines (worker threads${cpu > 0 ? `, CPU offload tier ${cpu} blocks at ${offloadBandwidth} GB/s` : ''}), ${engines} shims, the indexer and ${routers} routers…\n`,
    );
    // One deployment for all policies: between policies the routers are replaced and the engines' prefix caches
    // (CPU tier included) emptied (POST /reset_prefix_cache, the index drained). Engine threads, shims and
    // indexer stay warm, so the first policy pays no start-up cost the others do not.
    const stack = await startStack({
      engines,
      routers,
      model,
      ...(f.nats ? { nats: f.nats, natsAuth } : {}),
      ...(apiKeys.length ? { apiKeys } : {}),
      ...(clusterSecret ? { clusterSecret, shimFronts: true } : {}),
      tokenizer,
      routerPort: intFlag(f.port, 'port', 0),
      engineThreads: true,
      engine: {
        profile: profileSpec,
        blockSize,
        numBlocks,
        speedup,
        maxModelLen: numBlocks * blockSize,
        maxNumSeqs: 256,
        ...(cpu > 0 ? { cpuOffloadBlocks: cpu, offloadLink: { bandwidthGBps: offloadBandwidth } } : {}),
      },
      router: routerOptions('round-robin'),
      shim: shimPacing,
      onRequestDone: (id, ttft, e2e, gaps) => void timings.set(id, [ttft, e2e, gaps]),
    });
    const engineUrls = stack.engines.map((e) => e.url);
    const out: Row[] = [];
    if (f.ui) showDashboard(stack.routers[0]!.url);
    try {
      // a short throwaway pass (JIT in every thread, connection pools) so no policy is charged for it
      if (warmupN > 0) {
        const bar = progressBar(`warm-up${tag}`, warmupN);
        await runPlanInThread({ ...spec, warmup: warmupN, warmupGapMs: 20 }, stack.routers.map((r) => r.url), (d) => bar.tick(d), clientAuth);
        bar.end();
      }
      for (const policy of policies as Policy[]) {
        const before = stack.routers[0]!.url;
        await stack.replaceRouters(routerOptions(policy));
        await stack.resetCaches();
        if (f.ui && stack.routers[0]!.url !== before) showDashboard(stack.routers[0]!.url);
        const name = policy + tag;
        const cpuBefore = cpu > 0 ? await engineCounter(engineUrls, 'vllm:external_prefix_cache_hits_total') : 0;
        const bar = progressBar(name, plan.requests.length);
        const { results: rs, wallMs } = await runPlanInThread({ ...spec, requestIdPrefix: `${name}-${process.pid}-${out.length}` }, stack.routers.map((r) => r.url), (d) => bar.tick(d), clientAuth);
        bar.end();
        await stack.flushTimings();
        // the engines' modelled time, as whatif reports it: TTFT, ITL and e2e on the engines' clocks, req/s from
        // the client (÷ speedup)
        const s = onEngineClocks(modelled(summarize(name, rs, wallMs), speedup), rs, timings, percentile);
        timings.clear();
        // prompt tokens the CPU tier served in this run / prompt tokens (the engines' own count of CPU hits)
        const cpuHits = cpu > 0 ? (await engineCounter(engineUrls, 'vllm:external_prefix_cache_hits_total')) - cpuBefore : 0;
        const promptTokens = rs.reduce((a, r) => a + (r.ok ? r.promptTokens : 0), 0);
        const cpuHitRate = promptTokens > 0 ? cpuHits / promptTokens : 0;
        const fallbacks = stack.routers.reduce((a, r) => a + r.stats().indexFallbacks, 0);
        if (s.errors > 0) process.stderr.write(`  ${name}: ${s.errors} failed requests, e.g. ${s.sampleErrors.join(' | ')}\n`);
        process.stderr.write(
          `  ${name}: hit rate ${pct(s.hitRate)}${cpu > 0 ? ` (${pct(cpuHitRate)} from CPU)` : ''}, TTFT p50 ${ms(s.ttftP50Ms)} ms; per worker ${JSON.stringify(s.perWorker)}, index fallbacks ${fallbacks}\n`,
        );
        out.push({ ...s, cpuHitRate });
      }
    } finally {
      if (keep && f.ui) kept = stack;
      else await stack.close();
    }
    return out;
  };

  const results = await runDeployment(0, cpuBlocks === 0);
  const cpuResults = cpuBlocks > 0 ? await runDeployment(cpuBlocks, true) : [];
  const row = (r: Row) => ({ policy: r.policy, hitRate: r.hitRate, ttftP50Ms: r.ttftP50Ms, ttftP99Ms: r.ttftP99Ms, itlP50Ms: r.itlP50Ms, e2eP50Ms: r.e2eP50Ms, throughputRps: r.throughputRps, errors: r.errors, clientTtftP50Ms: r.clientTtftP50Ms, latencyClock: r.clock });
  // per policy: the CPU-tier run against the GPU-only run of the same workload
  const gains = cpuResults.map((c, i) => {
    const g = results[i]!;
    return { policy: policies[i]!, hitRateGain: c.hitRate - g.hitRate, cpuHitRate: c.cpuHitRate, ttftP50Ms: { gpuOnly: g.ttftP50Ms, withCpu: c.ttftP50Ms }, ttftP50GainMs: g.ttftP50Ms - c.ttftP50Ms };
  });

  if (f.json) {
    console.log(
      JSON.stringify({
        infiniteCacheHitRate: infinite,
        pooledHitRate: pooled,
        policies: results.map(row),
        capacity: { model: profile.model, gpu: profile.gpu, tensorParallelSize: profile.tensorParallelSize, numBlocks, blockSize, tokens: profile.tokens, line: formatCapacity(profile) },
        ...(cpuBlocks > 0
          ? { cpuOffload: { blocksPerEngine: cpuBlocks, bandwidthGBps: offloadBandwidth, policies: cpuResults.map((r) => ({ ...row(r), cpuHitRate: r.cpuHitRate })), gains } }
          : {}),
      }),
    );
  } else {
    const all = [...results, ...cpuResults];
    const head = ['policy', 'hit rate', ...(cpuBlocks > 0 ? ['from CPU'] : []), 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'e2e p50 ms', 'req/s', 'errors', 'client TTFT p50'];
    const rows = all.map((r) => [
      r.policy,
      pct(r.hitRate),
      ...(cpuBlocks > 0 ? [r.policy.endsWith('+cpu') ? pct(r.cpuHitRate) : '—'] : []),
      ms(r.ttftP50Ms),
      ms(r.ttftP99Ms),
      ms(r.itlP50Ms),
      ms(r.e2eP50Ms),
      r.throughputRps.toFixed(1),
      String(r.errors),
      ms(r.clientTtftP50Ms),
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
    console.log(line(head));
    for (const r of rows) console.log(line(r));
    console.log(`\nbounds: infinite-cache hit rate ${pct(infinite)}, pooled hit rate ${pct(pooled)} (one LRU of ${capacityTokens} tokens)`);
    if (cpuBlocks > 0) {
      console.log(`CPU offload tier: ${cpuBlocks} blocks (${cpuBlocks * blockSize} tokens) per engine, reloads at ${offloadBandwidth} GB/s; gained over GPU only:`);
      for (const g of gains) {
        const pp = (g.hitRateGain * 100).toFixed(1);
        console.log(`  ${g.policy.padEnd(Math.max(...policies.map((p) => p.length)))}  hit rate ${g.hitRateGain >= 0 ? '+' : ''}${pp} pp (${pct(g.cpuHitRate)} of prompt tokens from CPU), TTFT p50 ${ms(g.ttftP50Ms.gpuOnly)} → ${ms(g.ttftP50Ms.withCpu)} ms`);
      }
    }
    const clocks = all.every((r) => r.clock === 'engine');
    console.log(
      `latencies and req/s in modelled-GPU time${speedup !== 1 ? ` (engines ran ${speedup}× faster than the modelled GPU)` : ''}: ` +
        (clocks
          ? `TTFT, ITL and e2e on the engines' own clocks (arrival → first / last token, free of this host's lag); req/s and client TTFT as the client saw them${speedup !== 1 ? ` (wall-clock ms × ${speedup}: the host's own ms count ${speedup}×)` : ''}`
          : `as the client saw them${speedup !== 1 ? ` (wall-clock ms × ${speedup})` : ' (= wall clock)'}`) +
        `; ${((Date.now() - t0) / 1000).toFixed(0)} s in all`,
    );
  }
  const code = [...results, ...cpuResults].every((r) => r.errors < r.requests) ? 0 : 1;
  if (kept) {
    // --ui: the routers, engines and shims stay up (idle) with the dashboard open until the user stops it
    const stack = kept;
    process.stderr.write(`serving the dashboard at ${stack.routers[0]!.url}/dashboard (Ctrl-C to stop)\n`);
    await untilSignal();
    await stack.close();
  }
  return code;
}
