/**
 * `kvgate doctor --router URL`: where a gap between the predicted and the actual cache hits comes from (issue 17).
 * Per worker, token-weighted since the processes started:
 *   predicted  Σ kvgate_router_predicted_cached_tokens_total / Σ kvgate_router_prompt_tokens_total (every router given)
 *   actual     Σ kvgate_router_actual_cached_tokens_total   / the same prompt tokens (the engine's usage)
 *   engine     the engine's own prefix cache: kvgate_shim_engine_prefix_cache_hits_total / …queries_total from the
 *              worker's /metrics (the shim front), or vllm:prefix_cache_{hits,queries}_total / SGLang's when the
 *              registered URL is the engine itself; all traffic, not only the routers'
 * and the router's signals beside them: the index fallbacks, the per-worker cache-prediction-mismatch gauge, the
 * engine's KV usage. `explainGap` (pure, @kvgate/router/cache-gap) judges; `scrapeCacheFacts` reads the /metrics pages.
 */
import { request } from 'undici';
import { parsePrometheusText, type Sample } from '@kvgate/worker-shim/prom-text';
import type { CacheFacts, GapVerdict } from '@kvgate/router/cache-gap';

// the judge is the router's (the dashboard uses it too); doctor gathers the facts
export { explainGap, GAP_POINTS, type CacheFacts, type GapCause, type GapVerdict } from '@kvgate/router/cache-gap';

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
