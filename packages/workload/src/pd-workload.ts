/**
 * The long-prompt workload of `kvgate start --disagg` and its figures. Prompts share nothing by default (every prompt
 * is a full prefill: the case P/D is for; a shared prefix, `sharedPrefixTokens`, gives the cache hits where colocated
 * wins), Poisson arrivals at a
 * fixed rate in modelled time, a fixed number of output tokens (ignore_eos). Figures per run, in modelled time:
 * TTFT p50/p99; ITL per request, the mean gap between its tokens after the first ((last − first) / (n − 1), as
 * GenAI-Perf's inter-token latency and vLLM's TPOT), p50/p99 over requests; the single gaps' p50/p99 too (vLLM
 * bench's ITL); output tokens and requests per second.
 */
import { mulberry32 } from '@kvgate/protocol';
import type { RequestData } from './plan.js';
import type { RequestResult } from './client.js';
import { percentile } from './stats.js';

export interface LongPromptWorkload {
  requests: number;
  promptTokens: number;
  outputTokens: number;
  /** arrivals per modelled second (Poisson) */
  ratePerS: number;
  /** leading tokens every prompt shares (a system prompt; default 0: nothing shared) */
  sharedPrefixTokens?: number;
  seed?: number;
}

/** The requests, their send times in wall ms (modelled ÷ speedup). `tag` makes every run's prompts its own. */
export function longPromptRequests(model: string, w: LongPromptWorkload, speedup: number, tag: number): RequestData[] {
  const r = mulberry32((w.seed ?? 7) * 1000 + tag);
  const shared = Math.min(w.sharedPrefixTokens ?? 0, w.promptTokens - 1);
  const rp = mulberry32((w.seed ?? 7) * 1000 + tag + 500);
  const prefix = Array.from({ length: shared }, () => 1000 + Math.floor(rp() * 140_000));
  const out: RequestData[] = [];
  let t = 0;
  for (let i = 0; i < w.requests; i++) {
    const ids = [...prefix, ...Array.from({ length: w.promptTokens - shared }, () => 1000 + Math.floor(r() * 140_000))];
    out.push({ atMs: t / speedup, path: '/v1/completions', body: `{"model":${JSON.stringify(model)},"max_tokens":${w.outputTokens},"ignore_eos":true,"prompt":[${ids.join(',')}]}` });
    t += (-Math.log(1 - r()) / w.ratePerS) * 1000;
  }
  return out;
}

export interface PdRunFigures {
  requests: number;
  errors: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  /** per request: mean gap after the first token */
  itlP50Ms: number;
  itlP99Ms: number;
  /** single gaps between token events */
  gapP50Ms: number;
  gapP99Ms: number;
  outputTokensPerS: number;
  requestsPerS: number;
  sampleErrors: string[];
}

/** A run's figures in modelled time (wall × speedup). */
export function pdFigures(results: readonly RequestResult[], wallMs: number, speedup: number): PdRunFigures {
  const ok = results.filter((r) => r.ok);
  const perRequest: number[] = [];
  const gaps: number[] = [];
  let tokens = 0;
  for (const r of ok) {
    tokens += r.itlMs.length + 1;
    for (const g of r.itlMs) gaps.push(g * speedup);
    if (r.itlMs.length > 0) perRequest.push((r.itlMs.reduce((a, b) => a + b, 0) / r.itlMs.length) * speedup);
  }
  const modelledS = (wallMs * speedup) / 1000;
  const errs = results.filter((r) => !r.ok);
  return {
    requests: results.length,
    errors: errs.length,
    ttftP50Ms: percentile(ok.map((r) => r.ttftMs * speedup), 50),
    ttftP99Ms: percentile(ok.map((r) => r.ttftMs * speedup), 99),
    itlP50Ms: percentile(perRequest, 50),
    itlP99Ms: percentile(perRequest, 99),
    gapP50Ms: percentile(gaps, 50),
    gapP99Ms: percentile(gaps, 99),
    outputTokensPerS: modelledS > 0 ? tokens / modelledS : 0,
    requestsPerS: modelledS > 0 ? ok.length / modelledS : 0,
    sampleErrors: [...new Set(errs.map((e) => `${e.status} ${e.error ?? ''}`.trim()))].slice(0, 3),
  };
}
