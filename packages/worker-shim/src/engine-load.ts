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

export function engineLoad(samples: Sample[]): EngineLoad {
  const vWaiting = sum(samples, 'vllm:num_requests_waiting');
  const vRunning = sum(samples, 'vllm:num_requests_running');
  const sWaiting = sum(samples, 'sglang:num_queue_reqs');
  const sRunning = sum(samples, 'sglang:num_running_reqs');
  const isVllm = vWaiting !== undefined || vRunning !== undefined || samples.some((s) => s.name.startsWith('vllm:'));
  const isSglang = !isVllm && (sWaiting !== undefined || sRunning !== undefined || samples.some((s) => s.name.startsWith('sglang:')));
  const out: EngineLoad = {
    engine: isVllm ? 'vllm' : isSglang ? 'sglang' : 'unknown',
    waiting: (isVllm ? vWaiting : sWaiting) ?? 0,
    running: (isVllm ? vRunning : sRunning) ?? 0,
    kvUsage: (isVllm ? max(samples, 'vllm:kv_cache_usage_perc') ?? max(samples, 'vllm:gpu_cache_usage_perc') : max(samples, 'sglang:token_usage')) ?? 0,
  };
  if (isVllm) {
    let blocks = 0;
    for (const s of samples) {
      if (s.name !== 'vllm:cache_config_info') continue;
      const bs = posInt(s.labels.block_size);
      if (bs !== undefined) out.blockSize = bs;
      const nb = posInt(s.labels.num_gpu_blocks);
      if (nb !== undefined) blocks += nb;
    }
    if (blocks > 0) out.capacityBlocks = blocks;
    let newest: Sample | undefined;
    for (const s of samples) if (s.name === 'vllm:lora_requests_info' && (!newest || s.value >= newest.value)) newest = s;
    if (newest) {
      out.loras = [...new Set([...names(newest.labels.running_lora_adapters), ...names(newest.labels.waiting_lora_adapters)])];
      const ml = posInt(newest.labels.max_lora);
      if (ml !== undefined) out.maxLoras = ml;
    }
  } else if (isSglang) {
    const t = sum(samples, 'sglang:max_total_num_tokens');
    if (t !== undefined && t > 0) out.capacityTokens = t;
  }
  return out;
}
