/** Summaries of one policy run: hit rate, latency percentiles, throughput. */
import type { RequestResult } from './client.js';

export interface PolicyResult {
  policy: string;
  requests: number;
  errors: number;
  /** prompt tokens served from the engines' prefix caches / prompt tokens */
  hitRate: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  itlP50Ms: number;
  e2eP50Ms: number;
  /** completed requests per wall second */
  throughputRps: number;
  /** requests per worker */
  perWorker: Record<string, number>;
  /** first few error messages */
  sampleErrors: string[];
}

/** Nearest-rank percentile of an unsorted sample (NaN when empty). */
export function percentile(xs: ArrayLike<number>, p: number): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export function summarize(policy: string, results: readonly RequestResult[], wallMs: number): PolicyResult {
  const ok = results.filter((r) => r.ok);
  let prompt = 0;
  let cached = 0;
  const itl: number[] = [];
  const perWorker: Record<string, number> = {};
  for (const r of ok) {
    prompt += r.promptTokens;
    cached += r.cachedTokens;
    for (const g of r.itlMs) itl.push(g);
    if (r.worker) perWorker[r.worker] = (perWorker[r.worker] ?? 0) + 1;
  }
  const errs = results.filter((r) => !r.ok);
  return {
    policy,
    requests: results.length,
    errors: errs.length,
    hitRate: prompt > 0 ? cached / prompt : 0,
    ttftP50Ms: percentile(ok.map((r) => r.ttftMs), 50),
    ttftP99Ms: percentile(ok.map((r) => r.ttftMs), 99),
    itlP50Ms: percentile(itl, 50),
    e2eP50Ms: percentile(ok.map((r) => r.e2eMs), 50),
    throughputRps: wallMs > 0 ? ok.length / (wallMs / 1000) : 0,
    perWorker,
    sampleErrors: [...new Set(errs.map((e) => `${e.status} ${e.error ?? ''}`.trim()))].slice(0, 3),
  };
}
