/**
 * `kvgate doctor --router URL`: where a gap between the predicted and the actual cache hits comes from (issue 17).
 * Per worker, token-weighted since the processes started:
 *   predicted  Σ kvgate_router_predicted_cached_tokens_total / Σ kvgate_router_prompt_tokens_total (every router given)
 *   actual     Σ kvgate_router_actual_cached_tokens_total   / the same prompt tokens (the engine's usage)
 *   engine     the engine's own prefix cache: kvgate_shim_engine_prefix_cache_hits_total / …queries_total from the
 *              worker's /metrics (the shim front), or vllm:prefix_cache_{hits,queries}_total / SGLang's when the
 *              registered URL is the engine itself; all traffic, not only the routers'
 * and the router's signals beside them: the index fallbacks, the per-worker cache-prediction-mismatch gauge, the
 * engine's KV usage. `explainGap` is pure; `scrapeCacheFacts` reads the /metrics pages.
 */
import { request } from 'undici';
import { parsePrometheusText, type Sample } from '@kvgate/worker-shim/prom-text';

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

function sum(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  let s = 0;
  for (const x of samples) if (x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v) && Number.isFinite(x.value)) s += x.value;
  return s;
}

async function scrape(url: string, timeoutMs: number): Promise<Sample[]> {
  const res = await request(`${url.replace(/\/$/, '')}/metrics`, { headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`${url}/metrics answered ${res.statusCode}`);
  return parsePrometheusText(text).samples;
}

/**
 * Reads every router's /metrics and, for each worker given a URL, the worker's own. Workers: those the routers
 * counted, plus `workerUrls`' keys. A page that cannot be read is reported in `errors` and left out.
 */
export async function scrapeCacheFacts(routerUrls: string[], workerUrls: Map<string, string>, timeoutMs = 3000): Promise<{ facts: CacheFacts[]; errors: string[] }> {
  const errors: string[] = [];
  const routers: Sample[][] = [];
  for (const u of routerUrls) {
    try {
      routers.push(await scrape(u, timeoutMs));
    } catch (e) {
      errors.push(`router ${u}: ${(e as Error).message}`);
    }
  }
  const workers = new Set(workerUrls.keys());
  for (const s of routers) for (const x of s) if (x.name === 'kvgate_router_prompt_tokens_total' && x.labels.worker) workers.add(x.labels.worker);
  const fallbacks = routers.reduce((a, s) => a + sum(s, 'kvgate_router_index_fallback_total'), 0);
  const facts: CacheFacts[] = [];
  for (const worker of [...workers].sort()) {
    const w = { worker };
    const f: CacheFacts = {
      worker,
      promptTokens: routers.reduce((a, s) => a + sum(s, 'kvgate_router_prompt_tokens_total', w), 0),
      predictedTokens: routers.reduce((a, s) => a + sum(s, 'kvgate_router_predicted_cached_tokens_total', w), 0),
      actualTokens: routers.reduce((a, s) => a + sum(s, 'kvgate_router_actual_cached_tokens_total', w), 0),
      requests: routers.reduce((a, s) => a + sum(s, 'kvgate_router_cached_tokens_delta_count', w), 0),
      shortRequests: routers.reduce((a, s) => a + sum(s, 'kvgate_router_cached_tokens_delta_bucket', { ...w, le: '-1' }), 0),
      predictionMismatch: routers.some((s) => sum(s, 'kvgate_router_worker_cache_prediction_mismatch', w) > 0),
      indexFallbacks: fallbacks,
    };
    const url = workerUrls.get(worker);
    if (url) {
      try {
        const s = await scrape(url, timeoutMs);
        const shim = s.some((x) => x.name === 'kvgate_shim_engine_prefix_cache_queries_total');
        const vllm = s.some((x) => x.name === 'vllm:prefix_cache_queries_total');
        const sglang = s.some((x) => x.name === 'sglang:prompt_tokens_total');
        if (shim) f.engine = { queries: sum(s, 'kvgate_shim_engine_prefix_cache_queries_total', w), hits: sum(s, 'kvgate_shim_engine_prefix_cache_hits_total', w) };
        else if (vllm) f.engine = { queries: sum(s, 'vllm:prefix_cache_queries_total'), hits: sum(s, 'vllm:prefix_cache_hits_total') };
        else if (sglang) f.engine = { queries: sum(s, 'sglang:prompt_tokens_total'), hits: sum(s, 'sglang:cached_tokens_total') };
        const usage = s.filter((x) => x.name === 'vllm:kv_cache_usage_perc' || x.name === 'sglang:token_usage').map((x) => x.value);
        if (usage.length > 0) f.kvUsage = Math.max(...usage);
      } catch (e) {
        errors.push(`worker ${worker} ${url}: ${(e as Error).message}`);
      }
    }
    facts.push(f);
  }
  return { facts, errors };
}

export function formatGap(v: GapVerdict): string {
  return `${v.worker}  cache ${v.problem ? 'GAP' : 'ok'}  ${v.message}`;
}
