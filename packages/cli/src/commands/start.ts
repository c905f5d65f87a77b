/**
 * `kvgate start`: the whole system in one process — K simulated engines with shims, an indexer, two router
 * replicas — driven by a workload once per routing policy (engines restarted between policies: cold caches).
 * Prints one table (or --json) with each policy's prefix-cache hit rate and latencies, and two bounds: the
 * infinite-cache hit rate and the pooled hit rate (one LRU with the engines' total capacity).
 */
import { initHashing } from '@kvgate/protocol';
import { loadTokenizer } from '@kvgate/protocol/tokenizer';
import { isPolicy, PromptTokenizer, type Policy } from '@kvgate/router';
import { infiniteHitRate, pooledHitRate } from '@kvgate/router/workload/bounds';
import { buildPlan, runPlanInThread, type PlanSpec } from '@kvgate/router/workload/plan';
import { startStack } from '@kvgate/router/workload/stack';
import { summarize, type PolicyResult } from '@kvgate/router/workload/stats';
import { intFlag, parseFlags } from '../flags.js';

export const summary = 'everything in one process (simulated engines, shims, indexer, 2 routers), a workload per policy, one table';

const USAGE = `kvgate start [options]

Runs the built-in workload (multi-turn chats over shared system prompts), or --trace (Mooncake JSONL:
timestamp ms, input_length, output_length, hash_ids of 512-token blocks), once per policy, on fresh engines.`;

const SPEC = {
  engines: { type: 'string', default: '4', help: 'simulated engines (one shim each)' },
  routers: { type: 'string', default: '2', help: 'router replicas (requests alternate between them)' },
  policy: { type: 'string', default: 'kv,round-robin,least-loaded', help: 'policies to compare: kv, round-robin, least-loaded, random' },
  trace: { type: 'string', help: 'Mooncake trace (JSONL) to replay instead of the built-in workload' },
  compress: { type: 'string', help: 'trace time compression: timestamps divided by this (default 8)' },
  limit: { type: 'string', help: 'replay only the first N trace requests' },
  speedup: { type: 'string', help: 'engine simulated-ms per wall-ms (default: trace 2, built-in 1)' },
  'block-size': { type: 'string', help: 'engine KV block size in tokens (default: trace 128, built-in 16)' },
  'num-blocks': { type: 'string', help: 'engine KV capacity in blocks (default: trace 16384, built-in 2048)' },
  'index-timeout-ms': { type: 'string', default: '50', help: 'router budget for the index answer before routing by load alone' },
  'uncached-weight': { type: 'string', help: 'kv score: weight of uncached prompt blocks (router default 4)' },
  'decode-weight': { type: 'string', help: 'kv score: weight of active decode blocks (router default 0.1)' },
  model: { type: 'string', default: 'qwen3-8b', help: 'served model name' },
  conversations: { type: 'string', default: '48', help: 'built-in workload: conversations' },
  turns: { type: 'string', default: '6', help: 'built-in workload: turns per conversation' },
  warmup: { type: 'string', default: '80', help: 'requests sent to a throwaway deployment first (0 = none)' },
  port: { type: 'string', default: '0', help: 'HTTP port of the first router (0 = any; it lives only during the run)' },
  nats: { type: 'string', help: 'run over NATS (nats://host:port) instead of the in-memory bus' },
  json: { type: 'boolean', help: 'print {infiniteCacheHitRate, pooledHitRate, policies:[…]} as JSON' },
} as const;

function progressBar(label: string, total: number): { tick(done: number): void; end(): void } {
  const tty = process.stderr.isTTY;
  const t0 = Date.now();
  let last = -1;
  let lastDraw = 0;
  const draw = (done: number, force = false) => {
    const now = Date.now();
    if (!force && now - lastDraw < 200) return;
    lastDraw = now;
    const pct = total > 0 ? done / total : 1;
    const secs = ((now - t0) / 1000).toFixed(0);
    if (tty) {
      const width = 30;
      const fill = Math.round(pct * width);
      process.stderr.write(`\r${label.padEnd(16)} [${'█'.repeat(fill)}${'░'.repeat(width - fill)}] ${done}/${total} ${(pct * 100).toFixed(0)}% ${secs}s `);
    } else {
      const decile = Math.floor(pct * 10);
      if (decile !== last) {
        last = decile;
        process.stderr.write(`${label}: ${done}/${total} (${decile * 10}%) ${secs}s\n`);
      }
    }
  };
  return {
    tick: (done) => draw(done),
    end: () => {
      draw(total, true);
      if (tty) process.stderr.write('\n');
    },
  };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const ms = (x: number) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : '—');

export async function run(argv: string[]): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  const policies = (f.policy ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const p of policies) {
    if (!isPolicy(p)) {
      console.error(`kvgate start: unknown policy ${JSON.stringify(p)} (kv, round-robin, least-loaded, random)`);
      return 2;
    }
  }
  const engines = intFlag(f.engines, 'engines', 4);
  const routers = intFlag(f.routers, 'routers', 2);
    const traceMode = f.trace !== undefined;
  const blockSize = intFlag(f['block-size'], 'block-size', traceMode ? 128 : 16);
  const speedup = intFlag(f.speedup, 'speedup', traceMode ? 2 : 1);
  const numBlocks = intFlag(f['num-blocks'], 'num-blocks', traceMode ? 16_384 : 2048);
  const model = f.model ?? 'qwen3-8b';
  await initHashing();
  const tokenizer = await loadTokenizer();
  const pt = new PromptTokenizer({ tokenizer });

  const spec: PlanSpec = traceMode
    ? { kind: 'trace', path: f.trace!, limit: intFlag(f.limit, 'limit', 0), compress: intFlag(f.compress, 'compress', 8), model }
    : { kind: 'chat', model, blockSize, options: { conversations: intFlag(f.conversations, 'conversations', 48), turns: intFlag(f.turns, 'turns', 6) } };
  const plan = buildPlan(spec, pt);
  const capacityTokens = engines * numBlocks * blockSize;
  const infinite = infiniteHitRate(plan.blocks());
  const pooled = pooledHitRate(plan.blocks(), capacityTokens, plan.blockTokens);
  const lastAt = plan.requests.at(-1)?.atMs ?? 0;
  process.stderr.write(
    `kvgate start: ${plan.requests.length} ${plan.name} requests over ${(lastAt / 1000).toFixed(1)} s, ${engines} engines × ${numBlocks} blocks of ${blockSize} tokens, speedup ${speedup}, ${routers} routers, ${f.nats ? `NATS ${f.nats}` : 'in-memory bus'}\n`,
  );

  // One throwaway pass over the first requests: JIT, connection pools and thread start-up would otherwise all
  // be charged to whichever policy runs first.
  const warmup = intFlag(f.warmup, 'warmup', 80);
  if (warmup > 0) {
    const stack = await startStack({ engines, routers, model, ...(f.nats ? { nats: f.nats } : {}), tokenizer, engineThreads: true, engine: { blockSize, numBlocks, speedup, maxModelLen: numBlocks * blockSize }, router: { policy: 'round-robin' } });
    const bar = progressBar('warm-up', Math.min(warmup, plan.requests.length));
    try {
      await runPlanInThread({ ...spec, warmup }, stack.routers.map((r) => r.url), (d) => bar.tick(d));
      bar.end();
    } finally {
      await stack.close();
    }
  }

  const results: PolicyResult[] = [];
  for (const policy of policies as Policy[]) {
    const stack = await startStack({
      engines,
      routers,
      model,
      ...(f.nats ? { nats: f.nats } : {}),
      tokenizer,
      routerPort: intFlag(f.port, 'port', 0),
      engineThreads: true,
      engine: { blockSize, numBlocks, speedup, maxModelLen: numBlocks * blockSize, maxNumSeqs: 256 },
      router: {
        policy,
        indexTimeoutMs: intFlag(f['index-timeout-ms'], 'index-timeout-ms', 50),
        weights: {
          ...(f['uncached-weight'] ? { uncachedWeight: intFlag(f['uncached-weight'], 'uncached-weight', 4) } : {}),
          ...(f['decode-weight'] ? { decodeWeight: intFlag(f['decode-weight'], 'decode-weight', 0.1) } : {}),
        },
      },
    });
    const bar = progressBar(policy, plan.requests.length);
    try {
      const { results: rs, wallMs } = await runPlanInThread(spec, stack.routers.map((r) => r.url), (d) => bar.tick(d));
      bar.end();
      const s = summarize(policy, rs, wallMs);
      const fallbacks = stack.routers.reduce((a, r) => a + r.stats().indexFallbacks, 0);
      if (s.errors > 0) process.stderr.write(`  ${policy}: ${s.errors} failed requests, e.g. ${s.sampleErrors.join(' | ')}\n`);
      process.stderr.write(`  ${policy}: per worker ${JSON.stringify(s.perWorker)}, index fallbacks ${fallbacks}\n`);
      results.push(s);
    } finally {
      await stack.close();
    }
  }

  if (f.json) {
    console.log(
      JSON.stringify({
        infiniteCacheHitRate: infinite,
        pooledHitRate: pooled,
        policies: results.map((r) => ({ policy: r.policy, hitRate: r.hitRate, ttftP50Ms: r.ttftP50Ms, ttftP99Ms: r.ttftP99Ms, itlP50Ms: r.itlP50Ms, e2eP50Ms: r.e2eP50Ms, throughputRps: r.throughputRps, errors: r.errors })),
      }),
    );
  } else {
    const head = ['policy', 'hit rate', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'e2e p50 ms', 'req/s', 'errors'];
    const rows = results.map((r) => [r.policy, pct(r.hitRate), ms(r.ttftP50Ms), ms(r.ttftP99Ms), ms(r.itlP50Ms), ms(r.e2eP50Ms), r.throughputRps.toFixed(1), String(r.errors)]);
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
    console.log(line(head));
    for (const r of rows) console.log(line(r));
    console.log(`\nbounds: infinite-cache hit rate ${pct(infinite)}, pooled hit rate ${pct(pooled)} (one LRU of ${capacityTokens} tokens)`);
    console.log(`latencies are wall-clock ms; engines run ${speedup}× faster than the modelled GPU`);
  }
  return results.every((r) => r.errors < r.requests) ? 0 : 1;
}
