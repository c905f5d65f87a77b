/**
 * Predicted vs actual cached prompt tokens, token-weighted (issue 17). Per proxied request answered 200:
 *   predicted  the routing decision's GPU overlap on the chosen worker (select.ts: the larger of the index's and
 *              the router's own in-flight prediction) × block size, never the last prompt token (an engine always
 *              computes it: protocol diag.ts predictedCachedTokens);
 *   actual     the engine's `usage.prompt_tokens_details.cached_tokens` (streams: the final usage chunk, asked for
 *              by the router, usage-strip.ts).
 * Counted in `kvgate_router_{predicted,actual}_cached_tokens_total{worker,model}` and
 * `kvgate_router_prompt_tokens_total`, with the per-request difference in `kvgate_router_cached_tokens_delta`.
 * Not compared (nothing counted but `kvgate_router_usage_missing_total` when usage lacks the cached tokens):
 * batches (usage sums several prompts, the decision saw the first), P/D splits (the decode engine's cached tokens
 * include the KV transferred from the prefill worker), answers without usage.
 */
import { predictedCachedTokens } from '@kvgate/protocol';
import type { EngineUsage } from './diag.js';
import type { RouterMetrics } from './metrics.js';

/** what the decision knew when the request went out */
export interface Prediction {
  worker: string;
  model: string;
  /** GPU overlap blocks of the chosen worker (Decision.overlap) */
  overlapBlocks: number;
  blockSize: number;
  /** the router's prompt token count, or null (routed without token ids) */
  routerTokens: number | null;
  /** a batch or a P/D split: not comparable */
  comparable: boolean;
}

export interface CacheTotals {
  predicted: number;
  actual: number;
  prompt: number;
  requests: number;
}

export class CacheAccounting {
  readonly #m: RouterMetrics;
  readonly #totals: CacheTotals = { predicted: 0, actual: 0, prompt: 0, requests: 0 };

  constructor(metrics: RouterMetrics) {
    this.#m = metrics;
  }

  /** one finished 200 answer */
  record(p: Prediction, usage: EngineUsage | null): void {
    if (!p.comparable) return;
    const labels = { worker: p.worker, model: p.model };
    if (!usage || usage.cachedTokens === null) {
      this.#m.usageMissing.inc(labels);
      return;
    }
    const promptTokens = usage.promptTokens ?? p.routerTokens ?? 0;
    const predicted = predictedCachedTokens(p.overlapBlocks, p.blockSize, promptTokens);
    const actual = usage.cachedTokens;
    this.#m.predictedCachedTokens.inc(labels, predicted);
    this.#m.actualCachedTokens.inc(labels, actual);
    this.#m.promptTokens.inc(labels, promptTokens);
    this.#m.cachedTokensDelta.observe(labels, actual - predicted);
    const t = this.#totals;
    t.predicted += predicted;
    t.actual += actual;
    t.prompt += promptTokens;
    t.requests++;
  }

  /** this router's totals since start (the dashboard's feed) */
  totals(): CacheTotals {
    return { ...this.#totals };
  }
}
