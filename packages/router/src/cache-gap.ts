/**
 * Where a gap between the predicted and the actual cache hits comes from (issue 17), judged from token-weighted
 * facts about one worker: the pure judge behind `kvgate doctor --router` (which gathers the facts from every
 * router's and worker's /metrics, packages/cli/src/commands/cache-gap.ts) and the dashboard's per-worker "cache"
 * column (which uses this router's own totals, cache-accounting.ts).
 */
export interface CacheFacts {
  worker: string;
  promptTokens: number;
  predictedTokens: number;
  actualTokens: number;
  /** requests compared (kvgate_router_cached_tokens_delta_count) and those with fewer cached than predicted */
  requests: number;
  shortRequests: number;
  /** the engine's own counters (tokens), when its /metrics was read */
  engine?: { queries: number; hits: number };
  /** kvgate_router_worker_cache_prediction_mismatch is 1 on some router */
  predictionMismatch: boolean;
  /** decisions made without the index (all workers of the routers read) */
  indexFallbacks: number;
  /** the engine's KV cache usage 0..1, when known */
  kvUsage?: number;
}

export type GapCause = 'holds' | 'no-traffic' | 'no-usage' | 'hash-mismatch' | 'evicted-after-routing' | 'index-lag' | 'index-fallback';

export interface GapVerdict {
  worker: string;
  cause: GapCause;
  /** rates 0..1 over the routers' prompt tokens (null without traffic) */
  predicted: number | null;
  actual: number | null;
  engine: number | null;
  /** predicted − actual, in points of the prompt tokens */
  gapPoints: number | null;
  problem: boolean;
  message: string;
}

/** below this the prediction holds (points of the prompt tokens) */
export const GAP_POINTS = 5;

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function explainGap(f: CacheFacts): GapVerdict {
  const base = { worker: f.worker, engine: f.engine && f.engine.queries > 0 ? f.engine.hits / f.engine.queries : null };
  if (f.promptTokens <= 0) {
    return { ...base, cause: 'no-traffic', predicted: null, actual: null, gapPoints: null, problem: false, message: 'no request with engine usage proxied to it yet (nothing to compare)' };
  }
  const predicted = f.predictedTokens / f.promptTokens;
  const actual = f.actualTokens / f.promptTokens;
  const gapPoints = (predicted - actual) * 100;
  const head = `predicted ${pct(predicted)}, actual ${pct(actual)}${base.engine !== null ? `, engine's own ${pct(base.engine)}` : ''} of ${f.promptTokens} prompt tokens over ${f.requests} requests`;
  const v = (cause: GapCause, problem: boolean, why: string): GapVerdict => ({ ...base, cause, predicted, actual, gapPoints, problem, message: `${head}: ${why}` });
  if (Math.abs(gapPoints) < GAP_POINTS) return v('holds', false, 'the prediction holds');
  if (gapPoints > 0) {
    // fewer cached than predicted
    if (f.predictionMismatch || (actual < 0.02 && predicted > 0.2)) {
      return v('hash-mismatch', true, `the engine finds almost none of what the index says it holds — a hash mismatch (check: the engine's PYTHONHASHSEED / --prefix-caching-hash-algo, the block size, the tokenizer and chat template the router uses)`);
    }
    const pressure = f.kvUsage !== undefined && f.kvUsage >= 0.9 ? ` (its KV cache is ${pct(f.kvUsage)} full)` : '';
    return v('evicted-after-routing', true, `${f.shortRequests} of ${f.requests} requests found less cached than predicted: blocks evicted between the index's view and the request's prefill${pressure} (check: KV capacity, the shim's KV event lag kvgate_shim_lag_seconds, how many requests share a prefix at once)`);
  }
  // more cached than predicted
  if (f.indexFallbacks > 0) {
    return v('index-fallback', true, `${f.indexFallbacks} decisions were made without the index (it did not answer within its budget): their overlap counted 0 (check: kvgate_router_index_query_seconds against --index-timeout-ms, the indexers' health)`);
  }
  return v('index-lag', true, 'the engine held more than the index knew: its KV events reach the index late or are lost (check: kvgate_shim_lag_seconds, kvgate_shim_gaps_total, the indexer\'s lag)');
}
