/**
 * Predicted vs actual cached prompt tokens, token-weighted (issue 17). Per proxied request answered 200:
 *   predicted  the routing decision's GPU overlap on the chosen worker (select.ts: the larger of the index's and
 *              the router's own in-flight prediction) × block size, never the last prompt token (an engine always
 *              computes it: protocol diag.ts predictedCachedTokens);
 *   actual     the engine's `usage.prompt_tokens_details.cached_tokens` (streams: the final usage chunk, asked for
 *              by the router, usage-strip.ts).
 * Counted in `kvgate_router_{predicted,actual}_cached_tokens_total{worker,model}` and
 * `kvgate_router_prompt_tokens_total`, with the per-request difference in `kvgate_router_cached_tokens_delta`.
 *
 * P/D splits: the prediction is the prefill worker's overlap, so the actual is the prefill engine's own hit — the
 * prefill leg's usage, which the decode worker's shim relays on its answer (`x-kvgate-prefill-cached-tokens`,
 * `x-kvgate-prefill-prompt-tokens`; worker-shim pd.ts) — counted under the prefill worker. The decode leg's own
 * usage is not the actual: its cached tokens include the KV transferred from the prefill worker (vLLM's
 * PromptTokenStats: cached = local_cache_hit + external_kv_transfer − recomputed), near the whole prompt.
 *
 * Not compared, counted in `kvgate_router_cache_uncompared_total{reason}` instead: `batch` (usage sums several
 * prompts, the decision saw the first), `pd_local_prefill` (the decode worker's shim fell back to a local prefill,
 * x-kvgate-prefill: local), `pd_no_prefill_usage` (a split answered without the prefill leg's usage: no kvgate shim
 * in front of the decode engine, or the prefill engine reported no cached tokens), `epp_no_response_body` (the EPP
 * picker got a 200's headers but never its body). Answers whose usage lacks the cached tokens count in
 * `kvgate_router_usage_missing_total{worker,model}`.
 *
 * Both edges: the HTTP edge reads the answer it relays; the EPP picker (epp/stream.ts) reads the response body the
 * proxy streams through it (ext_proc `response_body_mode: FULL_DUPLEX_STREAMED`, as deploy/gateway/envoy.yaml
 * sets it), by the worker that served (the proxy may have retried elsewhere). The picker passes the request body
 * unchanged, so a stream carries usage only when its client asked for it (`stream_options.include_usage`); the
 * HTTP edge asks the engine itself and strips the chunk.
 */
import { predictedCachedTokens } from '@kvgate/protocol';
import type { EngineUsage } from './diag.js';
import type { RouterMetrics } from './metrics.js';
import type { Route } from './routing-core.js';

export type UncomparedReason = 'batch' | 'pd_local_prefill' | 'pd_no_prefill_usage' | 'epp_no_response_body';

/** the prefill leg's usage as the decode worker's shim relayed it */
export interface PrefillLegUsage {
  promptTokens: number | null;
  cachedTokens: number;
}

/** what the decision knew when the request went out */
export interface Prediction {
  /** the worker the prediction is about: the chosen worker, the prefill worker of a P/D split */
  worker: string;
  model: string;
  /** GPU overlap blocks of the chosen worker (Decision.overlap) */
  overlapBlocks: number;
  blockSize: number;
  /** the router's prompt token count, or null (routed without token ids) */
  routerTokens: number | null;
  /** set: not comparable, and why */
  uncompared?: UncomparedReason;
  /** a P/D split's actual: the prefill leg's usage (then the decode leg's usage is not used) */
  prefillLeg?: PrefillLegUsage;
}

/** a completions `prompt` that is a batch (several strings or token-id lists) */
export function isBatchPrompt(p: unknown): boolean {
  return Array.isArray(p) && p.length > 1 && (typeof p[0] === 'string' || Array.isArray(p[0]));
}

/**
 * What the decision predicted cached for one answered request, from its route and the upstream answer's headers.
 * `served`: the worker that really answered when it is not the chosen one (the EPP: the proxy retried elsewhere);
 * its own overlap is the prediction then. A P/D split is about its prefill worker: the actual is the prefill leg's
 * usage, which the decode worker's shim puts on its answer (x-kvgate-prefill-cached-tokens / -prompt-tokens).
 */
export function predictionFor(r: Route, batch: boolean, header: (name: string) => string | undefined, served?: string): Prediction {
  const d = r.decision;
  const worker = d.prefill?.worker ?? served ?? d.worker.worker;
  const out: Prediction = {
    worker,
    model: r.model,
    overlapBlocks: d.prefill || worker === d.worker.worker ? d.overlap : (d.scored.find((s) => s.worker === worker)?.overlap ?? 0),
    blockSize: r.pool.blockSize,
    routerTokens: r.tokens?.length ?? null,
  };
  if (batch) out.uncompared = 'batch';
  else if (d.prefill) {
    const count = (v: string | undefined) => (v !== undefined && /^\d{1,9}$/.test(v) ? Number(v) : null);
    const cached = count(header('x-kvgate-prefill-cached-tokens'));
    if (header('x-kvgate-prefill') === 'local') out.uncompared = 'pd_local_prefill';
    else if (cached === null) out.uncompared = 'pd_no_prefill_usage';
    else out.prefillLeg = { cachedTokens: cached, promptTokens: count(header('x-kvgate-prefill-prompt-tokens')) };
  }
  return out;
}

export interface CacheTotals {
  predicted: number;
  actual: number;
  prompt: number;
  requests: number;
}

/** one worker's totals since start, and how many of its answers had fewer cached tokens than predicted */
export interface WorkerCacheTotals extends CacheTotals {
  short: number;
}

export class CacheAccounting {
  readonly #m: RouterMetrics;
  readonly #byWorker = new Map<string, WorkerCacheTotals>();

  constructor(metrics: RouterMetrics) {
    this.#m = metrics;
  }

  /** an answer left out of the comparison */
  uncompared(reason: UncomparedReason): void {
    this.#m.cacheUncompared.inc({ reason });
  }

  /** one finished 200 answer */
  record(p: Prediction, usage: EngineUsage | null): void {
    if (p.uncompared) {
      this.uncompared(p.uncompared);
      return;
    }
    const labels = { worker: p.worker, model: p.model };
    let promptTokens: number, actual: number;
    if (p.prefillLeg) {
      promptTokens = p.prefillLeg.promptTokens ?? usage?.promptTokens ?? p.routerTokens ?? 0;
      actual = p.prefillLeg.cachedTokens;
    } else {
      if (!usage || usage.cachedTokens === null) {
        this.#m.usageMissing.inc(labels);
        return;
      }
      promptTokens = usage.promptTokens ?? p.routerTokens ?? 0;
      actual = usage.cachedTokens;
    }
    const predicted = predictedCachedTokens(p.overlapBlocks, p.blockSize, promptTokens);
    this.#m.predictedCachedTokens.inc(labels, predicted);
    this.#m.actualCachedTokens.inc(labels, actual);
    this.#m.promptTokens.inc(labels, promptTokens);
    this.#m.cachedTokensDelta.observe(labels, actual - predicted);
    let w = this.#byWorker.get(p.worker);
    if (!w) this.#byWorker.set(p.worker, (w = { predicted: 0, actual: 0, prompt: 0, requests: 0, short: 0 }));
    w.predicted += predicted;
    w.actual += actual;
    w.prompt += promptTokens;
    w.requests++;
    if (actual < predicted) w.short++;
  }

  /** one worker's totals since start (the dashboard's cache column); undefined before its first compared answer */
  ofWorker(worker: string): Readonly<WorkerCacheTotals> | undefined {
    return this.#byWorker.get(worker);
  }

  /** this router's totals since start (the dashboard's feed): the sum over its workers */
  totals(): CacheTotals {
    const t: CacheTotals = { predicted: 0, actual: 0, prompt: 0, requests: 0 };
    for (const w of this.#byWorker.values()) {
      t.predicted += w.predicted;
      t.actual += w.actual;
      t.prompt += w.prompt;
      t.requests += w.requests;
    }
    return t;
  }
}
