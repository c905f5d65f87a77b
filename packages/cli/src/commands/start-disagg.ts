/**
 * `kvgate start --disagg`: prefill/decode disaggregation against colocated serving on the same number of simulated
 * GPUs, one long-prompt workload (packages/workload pd-workload.ts), one run per deployment, each on fresh engines:
 *   colocated        E engines of role both behind the kv router;
 *   disaggregated    P prefill + (E − P) decode engines, the router splitting per request (its P/D policy), once
 *                    per KV fabric (--fabrics; the decode engines' modelled link, sim-engine --kv-fabric).
 * Printed (or --json, rows `colocated` and `disaggregated`): TTFT p50/p99, ITL p50/p99 (per request, the mean gap
 * after the first token), output tokens/s, and the transfer-time share: the decode engines' modelled KV pull time
 * (vllm:nixl_xfer_time_seconds) over the requests' summed TTFT. All figures in modelled GPU time (wall × speedup).
 * The KV bytes are modelled: kvgate moves descriptors; a real engine's connector (NIXL over RDMA/UCX) moves bytes.
 */
import type { StackOptions } from '@kvgate/workload/stack';
import type { PdRunFigures } from '@kvgate/workload/pd-workload';
// pure modules only: this file loads with `kvgate start` before the log level is set (components log at import)
import { bytesPerBlock, KV_FABRICS, kvFabricLabel, parseKvFabric, type TransferModel } from '@kvgate/sim-engine/timing';
import { formatCapacity, resolveProfile, type ProfileSpec } from '@kvgate/sim-engine/profile';
import { FlagError } from '../fatal.js';
import { numberFlag } from '../flags.js';
import { progressBar } from '../progress.js';

export const DISAGG_SPEC = {
  disagg: { type: 'boolean', help: 'P/D: a long-prompt workload colocated and disaggregated on the same GPUs (one row each, per fabric)' },
  'prefill-engines': { type: 'string', help: '--disagg: prefill engines of --engines (default half, at least 1); the rest decode' },
  fabrics: { type: 'string', help: `--disagg: modelled KV fabrics to compare, comma-separated: ${Object.keys(KV_FABRICS).join(', ')} or Gb/s (default rdma-400g,tcp-25g)` },
  requests: { type: 'string', help: '--disagg: requests per run (default 64)' },
  'prompt-tokens': { type: 'string', help: '--disagg: prompt tokens per request, none shared (default 6000)' },
  'output-tokens': { type: 'string', help: '--disagg: output tokens per request (default 128)' },
  'shared-prefix-tokens': { type: 'string', help: '--disagg: leading prompt tokens every request shares, a system prompt (default 0: none; cache hits are where colocated wins)' },
  rate: { type: 'string', help: '--disagg: Poisson arrivals per modelled second (default 2.5 per engine)' },
  'pd-min-prefill-tokens': { type: 'string', help: '--disagg: router P/D threshold: shorter uncached prompts are prefilled on the decode worker (default 512)' },
} as const;

export interface DisaggFlags {
  engines?: string | undefined;
  'prefill-engines'?: string | undefined;
  fabrics?: string | undefined;
  requests?: string | undefined;
  'prompt-tokens'?: string | undefined;
  'output-tokens'?: string | undefined;
  'shared-prefix-tokens'?: string | undefined;
  rate?: string | undefined;
  'pd-min-prefill-tokens'?: string | undefined;
  speedup?: string | undefined;
  model?: string | undefined;
  json?: boolean;
  nats?: string | undefined;
}

export interface DisaggRow extends PdRunFigures {
  row: 'colocated' | 'disaggregated';
  /** null for colocated */
  fabric: string | null;
  bandwidthGBps: number | null;
  latencyMs: number | null;
  engines: { both: number; prefill: number; decode: number };
  /** modelled KV pull time / summed TTFT (0 colocated) */
  transferShare: number;
  /** mean modelled pull per transferred request, ms */
  transferMeanMs: number;
  /** requests whose KV came over the fabric (the decode engines' pulls) */
  transfers: number;
  /**
   * the engines' own modelled view, free of this host's lag (means over the run): TTFT = the prefill side's (arrival
   * to first token; colocated: the engine's) + the mean pull + the decode engine's (after its pull); ITL = the decode
   * side's vllm:inter_token_latency_seconds
   */
  engineTtftMeanMs: number;
  engineItlMeanMs: number;
}

const ms = (x: number) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : '—');
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export async function runDisagg(f: DisaggFlags, ctx: { profileSpec: ProfileSpec; stackConn: Partial<StackOptions>; apiKey?: string }): Promise<number> {
  const t0 = Date.now();
  const engines = numberFlag(f.engines, 'engines', 2, { min: 2, integer: true });
  const prefill = numberFlag(f['prefill-engines'], 'prefill-engines', Math.max(1, Math.floor(engines / 2)), { min: 1, integer: true });
  if (prefill >= engines) throw new FlagError(`--prefill-engines ${prefill} leaves no decode engine of --engines ${engines}`);
  let fabrics: TransferModel[];
  try {
    fabrics = (f.fabrics ?? 'rdma-400g,tcp-25g').split(',').map((s) => s.trim()).filter(Boolean).map(parseKvFabric);
  } catch (e) {
    throw new FlagError(`--fabrics: ${(e as Error).message}`);
  }
  if (fabrics.length === 0) throw new FlagError('--fabrics names no fabric');
  const workload = {
    requests: numberFlag(f.requests, 'requests', 64, { min: 1, integer: true }),
    promptTokens: numberFlag(f['prompt-tokens'], 'prompt-tokens', 6000, { min: 1, integer: true }),
    outputTokens: numberFlag(f['output-tokens'], 'output-tokens', 128, { min: 2, integer: true }),
    ratePerS: numberFlag(f.rate, 'rate', 2.5 * engines, { min: 0.001 }),
    sharedPrefixTokens: numberFlag(f['shared-prefix-tokens'], 'shared-prefix-tokens', 0, { min: 0, integer: true }),
  };
  if (workload.sharedPrefixTokens >= workload.promptTokens) throw new FlagError(`--shared-prefix-tokens ${workload.sharedPrefixTokens} must be below --prompt-tokens ${workload.promptTokens}`);
  // 1 by default: two more HTTP hops per request and 6,000-token bodies; at 2 and above this host's lag showed in the
  // client's clock (TTFT seconds above the engines' own, in one core's worth of proxying)
  const speedup = numberFlag(f.speedup, 'speedup', 1, { min: 0.001 });
  const pdMin = numberFlag(f['pd-min-prefill-tokens'], 'pd-min-prefill-tokens', 512, { min: 0, integer: true });
  const model = f.model ?? 'qwen3-8b';
  let profile;
  try {
    profile = resolveProfile({ ...ctx.profileSpec, blockSize: 16, maxNumSeqs: 256 });
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
  if (workload.promptTokens + workload.outputTokens > profile.tokens) throw new FlagError(`--prompt-tokens + --output-tokens (${workload.promptTokens + workload.outputTokens}) exceed an engine's KV (${profile.tokens} tokens)`);
  const kvPerToken = bytesPerBlock(profile.shape, 1);

  const [{ startStack }, { runPlanInThread }, { longPromptRequests, pdFigures }, { engineCounter }, { initHashing }] = await Promise.all([
    import('@kvgate/workload/stack'),
    import('@kvgate/workload/plan'),
    import('@kvgate/workload/pd-workload'),
    import('@kvgate/workload/engine-counters'),
    import('@kvgate/protocol'),
  ]);
  await initHashing();
  process.stderr.write(
    `kvgate start --disagg: engines: ${formatCapacity(profile)}\n` +
      `kvgate start --disagg: ${workload.requests} requests × ${workload.promptTokens} prompt tokens (${workload.sharedPrefixTokens > 0 ? `the first ${workload.sharedPrefixTokens} shared` : 'none shared'}; ${((workload.promptTokens * kvPerToken) / 1e6).toFixed(0)} MB of KV each) → ${workload.outputTokens} output tokens, Poisson ${workload.ratePerS} req/s; ${engines} GPUs: colocated ${engines} × both, disaggregated ${prefill} prefill + ${engines - prefill} decode on ${fabrics.map(kvFabricLabel).join(', ')}; speedup ${speedup}\n`,
  );

  const runs: Array<{ label: string; roles: ('both' | 'prefill' | 'decode')[]; fabric: TransferModel | null }> = [
    { label: 'colocated', roles: Array(engines).fill('both'), fabric: null },
    ...fabrics.map((fab) => ({ label: `disagg ${kvFabricLabel(fab)}`, roles: [...Array(prefill).fill('prefill'), ...Array(engines - prefill).fill('decode')] as ('prefill' | 'decode')[], fabric: fab })),
  ];
  const rows: DisaggRow[] = [];
  for (const [i, run] of runs.entries()) {
    const stack = await startStack({
      ...ctx.stackConn,
      model,
      roles: run.roles,
      routers: 1,
      engineThreads: true,
      engine: {
        profile: ctx.profileSpec,
        blockSize: 16,
        speedup,
        maxNumSeqs: 256,
        // the transferred request's prefix pull: one engine per GPU, its own link
        ...(run.fabric ? { transfer: run.fabric } : {}),
        kvLoadFailurePolicy: 'recompute',
      },
      router: { policy: 'kv', pdMinPrefillTokens: pdMin, indexTimeoutMs: 50 },
    });
    try {
      const urls = stack.routers.map((r) => r.url);
      const decodeUrls = stack.engines.filter((e) => e.role !== 'prefill').map((e) => e.url);
      // a few throwaway requests (JIT, connection pools), then cold caches
      const warm = longPromptRequests(model, { ...workload, requests: 6, promptTokens: Math.min(workload.promptTokens, 2048) }, speedup, 1000 + i).map((r, k) => ({ ...r, atMs: k * 30 }));
      await runPlanInThread({ kind: 'list', name: 'warm-up', blockTokens: 16, requests: warm }, urls, () => undefined, ctx.apiKey ? { apiKey: ctx.apiKey } : {});
      await stack.resetCaches();
      const xferBefore = await engineCounter(decodeUrls, 'vllm:nixl_xfer_time_seconds_sum');
      const countBefore = await engineCounter(decodeUrls, 'vllm:nixl_xfer_time_seconds_count');
      const prefillUrls = stack.engines.filter((e) => e.role === 'prefill').map((e) => e.url);
      /** the mean of histogram `name` over `us` across this run (sum and count deltas), ms */
      const histo = async (us: string[], name: string) => ({ sum: await engineCounter(us, `${name}_sum`), count: await engineCounter(us, `${name}_count`) });
      const before = { pTtft: await histo(prefillUrls, 'vllm:time_to_first_token_seconds'), dTtft: await histo(decodeUrls, 'vllm:time_to_first_token_seconds'), dItl: await histo(decodeUrls, 'vllm:inter_token_latency_seconds') };
      const meanSince = async (us: string[], name: string, b: { sum: number; count: number }) => {
        const a = await histo(us, name);
        return a.count > b.count ? ((a.sum - b.sum) / (a.count - b.count)) * 1000 : 0;
      };
      const bar = progressBar(run.label, workload.requests);
      const { results, wallMs } = await runPlanInThread(
        { kind: 'list', name: run.label, blockTokens: 16, requests: longPromptRequests(model, workload, speedup, i) },
        urls,
        (d) => bar.tick(d),
        ctx.apiKey ? { apiKey: ctx.apiKey } : {},
      );
      bar.end();
      const fig = pdFigures(results, wallMs, speedup);
      const xferMs = ((await engineCounter(decodeUrls, 'vllm:nixl_xfer_time_seconds_sum')) - xferBefore) * 1000;
      const transfers = (await engineCounter(decodeUrls, 'vllm:nixl_xfer_time_seconds_count')) - countBefore;
      const transferMeanMs = transfers > 0 ? xferMs / transfers : 0;
      const engineTtftMeanMs = (await meanSince(prefillUrls, 'vllm:time_to_first_token_seconds', before.pTtft)) + transferMeanMs + (await meanSince(decodeUrls, 'vllm:time_to_first_token_seconds', before.dTtft));
      const engineItlMeanMs = await meanSince(decodeUrls, 'vllm:inter_token_latency_seconds', before.dItl);
      const ttftSum = results.filter((r) => r.ok).reduce((a, r) => a + r.ttftMs * speedup, 0);
      const row: DisaggRow = {
        row: run.fabric ? 'disaggregated' : 'colocated',
        fabric: run.fabric ? kvFabricLabel(run.fabric) : null,
        bandwidthGBps: run.fabric?.bandwidthGBps ?? null,
        latencyMs: run.fabric?.latencyMs ?? null,
        engines: { both: run.fabric ? 0 : engines, prefill: run.fabric ? prefill : 0, decode: run.fabric ? engines - prefill : 0 },
        ...fig,
        transferShare: ttftSum > 0 ? xferMs / ttftSum : 0,
        transferMeanMs,
        transfers,
        engineTtftMeanMs,
        engineItlMeanMs,
      };
      if (fig.errors > 0) process.stderr.write(`  ${run.label}: ${fig.errors} failed requests, e.g. ${fig.sampleErrors.join(' | ')}\n`);
      process.stderr.write(`  ${run.label}: TTFT p50 ${ms(fig.ttftP50Ms)} ms, ITL p50 ${ms(fig.itlP50Ms)} ms${run.fabric ? `, ${transfers} transfers of ${ms(row.transferMeanMs)} ms` : ''}; the engines' own means: TTFT ${ms(engineTtftMeanMs)} ms, ITL ${ms(engineItlMeanMs)} ms\n`);
      rows.push(row);
    } finally {
      await stack.close();
    }
  }

  const base = rows[0]!;
  const workloadOut = { ...workload, kvBytesPerToken: kvPerToken, engines, prefillEngines: prefill, decodeEngines: engines - prefill, speedup, pdMinPrefillTokens: pdMin };
  if (f.json) {
    console.log(JSON.stringify({ mode: 'disagg', workload: workloadOut, capacity: { model: profile.model, gpu: profile.gpu, tensorParallelSize: profile.tensorParallelSize, numBlocks: profile.numBlocks, blockSize: profile.blockSize, line: formatCapacity(profile) }, rows }));
  } else {
    const head = ['row', 'fabric', 'GPUs', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'ITL p99 ms', 'gap p50/p99 ms', 'tok/s', 'transfer share', 'errors'];
    const cells = rows.map((r) => [
      r.row,
      r.fabric ?? '—',
      r.fabric ? `${r.engines.prefill}P+${r.engines.decode}D` : `${r.engines.both}×both`,
      ms(r.ttftP50Ms),
      ms(r.ttftP99Ms),
      ms(r.itlP50Ms),
      ms(r.itlP99Ms),
      `${ms(r.gapP50Ms)}/${ms(r.gapP99Ms)}`,
      r.outputTokensPerS.toFixed(0),
      r.fabric ? `${pct(r.transferShare)} (${ms(r.transferMeanMs)} ms)` : '—',
      String(r.errors),
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
    const line = (c: string[]) => c.map((x, i) => (i < 3 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ');
    console.log(line(head));
    for (const c of cells) console.log(line(c));
    console.log(`the engines' own means (modelled, free of this host's lag): ${rows.map((r) => `${r.fabric ?? 'colocated'} TTFT ${ms(r.engineTtftMeanMs)} / ITL ${ms(r.engineItlMeanMs)} ms`).join('; ')}`);
    for (const r of rows.slice(1)) {
      const rel = (a: number, b: number) => `${a >= b ? '+' : '−'}${Math.abs((a / b - 1) * 100).toFixed(0)}%`;
      console.log(`${r.fabric} against colocated: ITL p50 ${rel(r.itlP50Ms, base.itlP50Ms)} (${ms(r.itlP50Ms)} vs ${ms(base.itlP50Ms)} ms), TTFT p50 ${rel(r.ttftP50Ms, base.ttftP50Ms)} (${ms(r.ttftP50Ms)} vs ${ms(base.ttftP50Ms)} ms), tok/s ${rel(r.outputTokensPerS, base.outputTokensPerS)}`);
    }
    console.log(
      `ITL: per request, the mean gap after its first token (gap: single gaps between token events); transfer share: modelled KV pull time / summed TTFT. ` +
        `Modelled GPU time (wall × ${speedup}); KV bytes modelled (${(kvPerToken / 1024).toFixed(0)} KiB per token), kvgate moves descriptors only; ${((Date.now() - t0) / 1000).toFixed(0)} s in all`,
    );
  }
  return rows.every((r) => r.errors < r.requests) ? 0 : 1;
}
