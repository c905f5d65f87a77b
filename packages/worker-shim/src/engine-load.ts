/**
 * An engine's load and cache shape, read from its Prometheus samples (pure).
 *
 * vLLM:   vllm:num_requests_waiting, vllm:num_requests_running,
 *         vllm:kv_cache_usage_perc (older: vllm:gpu_cache_usage_perc; a fraction 0..1),
 *         vllm:cache_config_info{block_size, num_gpu_blocks} (value 1; labels carry the config),
 *         vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora} (value = time; the
 *         newest series is current).
 * SGLang: sglang:num_queue_reqs, sglang:num_running_reqs, sglang:token_usage (fraction 0..1),
 *         sglang:max_total_num_tokens (KV capacity in tokens; blocks = tokens / page size).
 * Series are summed over label sets (several models or ranks behind one endpoint); usage takes the max.
 *
 * One data-parallel rank (`engineLoad(samples, { rank, size })`): one /metrics serves every rank of a server.
 * vLLM labels each engine core's series `engine="<index>"` (= the DP rank; vllm/v1/metrics/loggers.py,
 * labelnames ["model_name", "engine"], cache_config_info included); SGLang adds `dp_rank="<r>"` to its scheduler
 * series when DP is on. Per metric: if any series carries the rank label, only the series of this rank count;
 * otherwise the server's totals are split evenly over `size` ranks (counts and capacities divided by size,
 * usage fractions kept) and `split` says so. Without `size` (one rank behind this URL) totals are the rank's.
 */
import type { Sample } from './prom-text.js';

export interface EngineLoad {
  engine: 'vllm' | 'sglang' | 'unknown';
  waiting: number;
  running: number;
  /** KV cache usage, fraction 0..1 */
  kvUsage: number;
  /** from vllm:cache_config_info */
  blockSize?: number;
  /** KV capacity in blocks (vllm:cache_config_info num_gpu_blocks) */
  capacityBlocks?: number;
  /** KV capacity in tokens (sglang:max_total_num_tokens) */
  capacityTokens?: number;
  /** LoRA adapters running or waiting (vllm:lora_requests_info) */
  loras?: string[];
  maxLoras?: number;
  /** one rank's reading made by splitting unlabelled server totals evenly (engine exports no per-rank series) */
  split?: boolean;
}

export interface RankSelect {
  rank: number;
  /** the server's data-parallel size; null = this URL serves this rank only */
  size: number | null;
}

/** vLLM's and SGLang's per-rank label names */
const RANK_LABEL = { vllm: 'engine', sglang: 'dp_rank' } as const;

/**
 * The samples of `name` that count for the selected rank, and the divisor for totals (1 when labelled or
 * no rank is selected).
 */
interface Selector {
  pick(name: string): { samples: Sample[]; divisor: number };
}

function wholeServer(samples: Sample[]): Selector {
  return { pick: (name) => ({ samples: samples.filter((x) => x.name === name), divisor: 1 }) };
}

function oneRank(samples: Sample[], label: string, r: RankSelect, onSplit: () => void): Selector {
  const want = String(r.rank);
  return {
    pick(name) {
      const all = samples.filter((x) => x.name === name);
      if (all.some((x) => x.labels[label] !== undefined)) return { samples: all.filter((x) => x.labels[label] === want), divisor: 1 };
      if (all.length > 0 && r.size !== null && r.size > 1) onSplit();
      return { samples: all, divisor: r.size ?? 1 };
    },
  };
}

function sumOf(sel: Selector, name: string): number | undefined {
  const { samples, divisor } = sel.pick(name);
  const s = sum(samples, name);
  return s === undefined ? undefined : s / divisor;
}

function maxOf(sel: Selector, name: string): number | undefined {
  return max(sel.pick(name).samples, name);
}

function sum(samples: Sample[], name: string): number | undefined {
  let found = false;
  let s = 0;
  for (const x of samples) {
    if (x.name === name && Number.isFinite(x.value)) {
      found = true;
      s += x.value;
    }
  }
  return found ? s : undefined;
}

function max(samples: Sample[], name: string): number | undefined {
  let m: number | undefined;
  for (const x of samples) if (x.name === name && Number.isFinite(x.value)) m = m === undefined ? x.value : Math.max(m, x.value);
  return m;
}

function posInt(s: string | undefined): number | undefined {
  if (s === undefined || !/^\d+$/.test(s)) return undefined;
  const n = Number(s);
  return n > 0 && Number.isSafeInteger(n) ? n : undefined;
}

function names(s: string | undefined): string[] {
  return (s ?? '').split(',').map((x) => x.trim()).filter((x) => x !== '');
}

export function engineLoad(samples: Sample[], rank?: RankSelect): EngineLoad {
  const isVllm = samples.some((s) => s.name.startsWith('vllm:'));
  const isSglang = !isVllm && samples.some((s) => s.name.startsWith('sglang:'));
  let split = false;
  const sel = rank && (isVllm || isSglang) ? oneRank(samples, RANK_LABEL[isVllm ? 'vllm' : 'sglang'], rank, () => (split = true)) : wholeServer(samples);
  const out: EngineLoad = {
    engine: isVllm ? 'vllm' : isSglang ? 'sglang' : 'unknown',
    waiting: (isVllm ? sumOf(sel, 'vllm:num_requests_waiting') : sumOf(sel, 'sglang:num_queue_reqs')) ?? 0,
    running: (isVllm ? sumOf(sel, 'vllm:num_requests_running') : sumOf(sel, 'sglang:num_running_reqs')) ?? 0,
    kvUsage: (isVllm ? maxOf(sel, 'vllm:kv_cache_usage_perc') ?? maxOf(sel, 'vllm:gpu_cache_usage_perc') : maxOf(sel, 'sglang:token_usage')) ?? 0,
  };
  if (isVllm) {
    const cfg = sel.pick('vllm:cache_config_info');
    let blocks = 0;
    for (const s of cfg.samples) {
      const bs = posInt(s.labels.block_size);
      if (bs !== undefined) out.blockSize = bs;
      const nb = posInt(s.labels.num_gpu_blocks);
      if (nb !== undefined) blocks += nb;
    }
    if (blocks > 0) out.capacityBlocks = Math.floor(blocks / cfg.divisor);
    let newest: Sample | undefined;
    for (const s of sel.pick('vllm:lora_requests_info').samples) if (!newest || s.value >= newest.value) newest = s;
    if (newest) {
      out.loras = [...new Set([...names(newest.labels.running_lora_adapters), ...names(newest.labels.waiting_lora_adapters)])];
      const ml = posInt(newest.labels.max_lora);
      if (ml !== undefined) out.maxLoras = ml;
    }
  } else if (isSglang) {
    const t = sumOf(sel, 'sglang:max_total_num_tokens');
    if (t !== undefined && t > 0) out.capacityTokens = Math.floor(t);
  }
  if (split) out.split = true;
  return out;
}

/**
 * The engine's own prefix-cache counters, cumulative prompt tokens (what the router's predicted and actual cached
 * tokens are held against, issue 17):
 *   vLLM    vllm:prefix_cache_queries_total / vllm:prefix_cache_hits_total (v1 loggers.py; the GPU prefix cache;
 *           older releases: vllm:gpu_prefix_cache_queries_total / …_hits_total, deprecated since);
 *   SGLang  sglang:prompt_tokens_total (every prompt token is looked up in the radix cache) /
 *           sglang:cached_tokens_total (newer releases label it cache_source="device|host|storage": all summed).
 * Per data-parallel rank as `engineLoad` selects it. undefined when the engine exports neither.
 */
export interface EnginePrefixCache {
  queries: number;
  hits: number;
}

export function enginePrefixCache(samples: Sample[], rank?: RankSelect): EnginePrefixCache | undefined {
  const isVllm = samples.some((s) => s.name.startsWith('vllm:'));
  const isSglang = !isVllm && samples.some((s) => s.name.startsWith('sglang:'));
  if (!isVllm && !isSglang) return undefined;
  const sel = rank ? oneRank(samples, RANK_LABEL[isVllm ? 'vllm' : 'sglang'], rank, () => undefined) : wholeServer(samples);
  const [q, h] = isVllm
    ? [sumOf(sel, 'vllm:prefix_cache_queries_total') ?? sumOf(sel, 'vllm:gpu_prefix_cache_queries_total'), sumOf(sel, 'vllm:prefix_cache_hits_total') ?? sumOf(sel, 'vllm:gpu_prefix_cache_hits_total')]
    : [sumOf(sel, 'sglang:prompt_tokens_total'), sumOf(sel, 'sglang:cached_tokens_total')];
  if (q === undefined || h === undefined) return undefined;
  return { queries: q, hits: h };
}
