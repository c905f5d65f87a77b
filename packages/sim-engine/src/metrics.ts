/**
 * vLLM's Prometheus metric names, one prom-client Registry per engine instance. Labels: model_name and
 * engine="0" like vLLM v1. Times are simulated seconds (what the modelled GPU would show).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SchedulerStats } from './scheduler.js';

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];
/** vLLM's NixlPromMetrics buckets (nixl_xfer_time_seconds) */
const XFER_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0];
const BYTES_BUCKETS = [1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];

export class EngineMetrics {
  readonly registry = new Registry();
  #ttft: Histogram<string>;
  #e2e: Histogram<string>;
  #itl: Histogram<string>;
  #success: Counter<string>;
  #xferTime: Histogram<string>;
  #xferBytes: Histogram<string>;
  #xferFailed: Counter<string>;
  #labels: { model_name: string; engine: string };

  constructor(model: string, cacheConfig: { blockSize: number; numBlocks: number }, stats: () => SchedulerStats) {
    const labels = { model_name: model, engine: '0' };
    this.#labels = labels;
    const labelNames = ['model_name', 'engine'] as const;
    const r = this.registry;
    const gauge = (name: string, help: string, read: (s: SchedulerStats) => number) =>
      new Gauge({ name, help, labelNames, registers: [r], collect() { this.set(labels, read(stats())); } });
    gauge('vllm:num_requests_running', 'Number of requests in model execution batches.', (s) => s.running);
    gauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', (s) => s.waiting);
    gauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', (s) => s.kvUsage);
    // counters mirror the scheduler's monotonic totals (prom-client counters cannot be set, so add the delta)
    const counter = (name: string, help: string, read: (s: SchedulerStats) => number) => {
      let last = 0;
      const c = new Counter({
        name, help, labelNames, registers: [r],
        collect() {
          const v = read(stats());
          if (v > last) this.inc(labels, v - last);
          last = v;
        },
      });
      c.inc(labels, 0); // exported at 0 from the start, like vLLM
    };
    counter('vllm:prefix_cache_queries_total', 'Prefix cache queries, in terms of number of queried tokens.', (s) => s.prefixQueries);
    counter('vllm:prefix_cache_hits_total', 'Prefix cache hits, in terms of number of cached tokens.', (s) => s.prefixHits);
    // the offload connector's lookups (vLLM: connector_prefix_cache_stats; 0 while the CPU tier is off)
    counter('vllm:external_prefix_cache_queries_total', 'External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.', (s) => s.externalQueries);
    counter('vllm:external_prefix_cache_hits_total', 'External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.', (s) => s.externalHits);
    counter('vllm:num_preemptions_total', 'Cumulative number of preemption from the engine.', (s) => s.preemptions);
    counter('vllm:prompt_tokens_total', 'Number of prefill tokens processed.', (s) => s.promptTokensComputed);
    // vLLM's prompt_tokens_by_source: where each prompt token's KV came from (a P/D decode engine: the transfer)
    const lastBySource = { local_compute: 0, local_cache_hit: 0, external_kv_transfer: 0 };
    const bySource = new Counter({
      name: 'vllm:prompt_tokens_by_source_total', help: 'Number of prompt tokens by source.', labelNames: [...labelNames, 'source'], registers: [r],
      collect() {
        const s = stats();
        const now = { local_compute: s.promptTokensComputed, local_cache_hit: s.prefixHits, external_kv_transfer: s.promptTokensTransferred };
        for (const k of Object.keys(now) as (keyof typeof now)[]) {
          if (now[k] > lastBySource[k]) this.inc({ ...labels, source: k }, now[k] - lastBySource[k]);
          lastBySource[k] = now[k];
        }
      },
    });
    for (const source of Object.keys(lastBySource)) bySource.inc({ ...labels, source }, 0);
    counter('vllm:generation_tokens_total', 'Number of generation tokens processed.', (s) => s.generationTokens);
    this.#success = new Counter({ name: 'vllm:request_success_total', help: 'Count of successfully processed requests.', labelNames: [...labelNames, 'finished_reason'], registers: [r] });
    new Gauge({
      name: 'vllm:cache_config_info',
      help: 'Information of the LLMEngine CacheConfig',
      labelNames: ['block_size', 'num_gpu_blocks', 'num_cpu_blocks', 'cache_dtype', 'enable_prefix_caching', 'gpu_memory_utilization'],
      registers: [r],
    }).set({ block_size: String(cacheConfig.blockSize), num_gpu_blocks: String(cacheConfig.numBlocks), num_cpu_blocks: 'None', cache_dtype: 'auto', enable_prefix_caching: 'True', gpu_memory_utilization: '0.9' }, 1);
    new Gauge({
      name: 'vllm:lora_requests_info',
      help: 'Running stats on lora requests.',
      labelNames: ['max_lora', 'waiting_lora_adapters', 'running_lora_adapters'],
      registers: [r],
    }).set({ max_lora: '0', waiting_lora_adapters: '', running_lora_adapters: '' }, Date.now() / 1000);
    this.#ttft = new Histogram({ name: 'vllm:time_to_first_token_seconds', help: 'Histogram of time to first token in seconds.', labelNames, buckets: TTFT_BUCKETS, registers: [r] });
    this.#e2e = new Histogram({ name: 'vllm:e2e_request_latency_seconds', help: 'Histogram of e2e request latency in seconds.', labelNames, buckets: LATENCY_BUCKETS, registers: [r] });
    this.#itl = new Histogram({ name: 'vllm:inter_token_latency_seconds', help: 'Histogram of inter-token latency in seconds.', labelNames, buckets: ITL_BUCKETS, registers: [r] });
    // the NixlConnector's transfer metrics (decode side, one observation per pull; simulated seconds)
    this.#xferTime = new Histogram({ name: 'vllm:nixl_xfer_time_seconds', help: 'Histogram of transfer duration for NIXL KV Cache transfers.', labelNames, buckets: XFER_BUCKETS, registers: [r] });
    this.#xferBytes = new Histogram({ name: 'vllm:nixl_bytes_transferred', help: 'Histogram of bytes transferred per NIXL KV Cache transfers.', labelNames, buckets: BYTES_BUCKETS, registers: [r] });
    this.#xferFailed = new Counter({ name: 'vllm:nixl_num_failed_transfers', help: 'Number of failed NIXL KV Cache transfers.', labelNames, registers: [r] });
    this.#xferFailed.inc(labels, 0);
    for (const h of [this.#ttft, this.#e2e, this.#itl, this.#xferTime, this.#xferBytes]) h.zero(labels);
  }

  /** one KV pull done: its modelled time (queueing on the link included) and bytes */
  kvTransfer(ms: number, bytes: number): void {
    this.#xferTime.observe(this.#labels, ms / 1000);
    this.#xferBytes.observe(this.#labels, bytes);
  }
  kvTransferFailed(): void {
    this.#xferFailed.inc(this.#labels);
  }

  firstToken(ttftMs: number): void {
    this.#ttft.observe(this.#labels, ttftMs / 1000);
  }
  interToken(ms: number): void {
    this.#itl.observe(this.#labels, ms / 1000);
  }
  finished(e2eMs: number, reason: string): void {
    this.#e2e.observe(this.#labels, e2eMs / 1000);
    this.#success.inc({ ...this.#labels, finished_reason: reason });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
  get contentType(): string {
    return this.registry.contentType;
  }
}
