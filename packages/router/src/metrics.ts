/** The router's Prometheus metrics: one Registry per router instance (no global default registry). */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export class RouterMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'endpoint' | 'status'>;
  readonly decisions: Counter<'policy' | 'mode'>;
  readonly pdDecisions: Counter<'decision' | 'reason'>;
  readonly indexFallbacks: Counter;
  readonly indexShardMisses: Counter;
  readonly retries: Counter<'reason'>;
  readonly noWorker: Counter;
  readonly tokenizeFailures: Counter;
  readonly routeSeconds: Histogram;
  readonly overlapRatio: Histogram;
  readonly predictedCachedTokens: Counter<'worker' | 'model'>;
  readonly actualCachedTokens: Counter<'worker' | 'model'>;
  readonly promptTokens: Counter<'worker' | 'model'>;
  readonly cachedTokensDelta: Histogram<'worker' | 'model'>;
  readonly usageMissing: Counter<'worker' | 'model'>;
  readonly cacheUncompared: Counter<'reason'>;
  readonly ttftSeconds: Histogram<'worker' | 'model'>;
  readonly itlSeconds: Histogram<'worker' | 'model'>;
  readonly e2eSeconds: Histogram<'worker' | 'model'>;
  readonly indexQuerySeconds: Histogram<'model'>;
  readonly inflight: Gauge<'worker'>;
  readonly suspect: Gauge<'worker'>;
  readonly unhealthy: Gauge<'worker'>;
  readonly viewStale: Gauge;
  readonly heldWorkers: Gauge;
  readonly busSilent: Gauge;

  constructor(routerId: string) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ router: routerId });
    this.requests = new Counter({ name: 'kvgate_router_requests_total', help: 'HTTP requests by endpoint and status', labelNames: ['endpoint', 'status'], registers });
    this.decisions = new Counter({ name: 'kvgate_router_decisions_total', help: 'routing decisions', labelNames: ['policy', 'mode'], registers });
    this.pdDecisions = new Counter({ name: 'kvgate_router_pd_decisions_total', help: 'P/D pools: requests split (remote prefill) or prefilled on the decode worker, and why', labelNames: ['decision', 'reason'], registers });
    this.indexShardMisses = new Counter({ name: 'kvgate_router_index_shard_misses_total', help: 'index shards (--index-shards N) that did not answer a match within budget: their workers scored 0 overlap for that decision', labelNames: ['shard'], registers });
    this.indexFallbacks = new Counter({ name: 'kvgate_router_index_fallback_total', help: 'decisions made by load alone because the index did not answer within budget', registers });
    this.retries = new Counter({
      name: 'kvgate_router_upstream_retries_total',
      help: 'requests retried on another worker after an upstream failure before the first byte, by reason (connect: no connection or it broke; status: a 5xx answer)',
      labelNames: ['reason'],
      registers,
    });
    this.noWorker = new Counter({ name: 'kvgate_router_no_worker_total', help: 'requests answered 503: no live worker', registers });
    this.tokenizeFailures = new Counter({ name: 'kvgate_router_tokenize_failures_total', help: 'prompts routed without token ids (tokenizer unavailable)', registers });
    this.routeSeconds = new Histogram({
      name: 'kvgate_router_route_seconds',
      help: 'request in → upstream request sent (tokenize, hash, index match, score)',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
      registers,
    });
    this.overlapRatio = new Histogram({ name: 'kvgate_router_overlap_ratio', help: 'cached blocks / prompt blocks of the chosen worker', buckets: [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1], registers });
    // predicted vs actual cached prompt tokens, token-weighted (cache-accounting.ts): a 200 answer carrying
    // usage.prompt_tokens_details.cached_tokens, not a batch; a P/D split by its prefill leg, under the prefill
    // worker. Both edges: the EPP picker reads the response body the proxy streams through it
    const wm: Array<'worker' | 'model'> = ['worker', 'model'];
    this.predictedCachedTokens = new Counter({ name: 'kvgate_router_predicted_cached_tokens_total', help: 'prompt tokens the routing decision predicted cached on the worker that served (its GPU overlap blocks × block size, the last prompt token never counted; a P/D split: on its prefill worker)', labelNames: wm, registers });
    this.actualCachedTokens = new Counter({ name: 'kvgate_router_actual_cached_tokens_total', help: "prompt tokens the engine reported cached (usage.prompt_tokens_details.cached_tokens) for the same requests (a P/D split: the prefill leg's, relayed by the decode worker's shim; the decode leg's counts the transferred KV). Through the EPP picker: read off the response body the proxy streams through it (response_body_mode FULL_DUPLEX_STREAMED); a stream there carries usage only when its client asked (stream_options.include_usage)", labelNames: wm, registers });
    this.promptTokens = new Counter({ name: 'kvgate_router_prompt_tokens_total', help: "prompt tokens of the same requests, as the engine counted them (usage.prompt_tokens)", labelNames: wm, registers });
    this.cachedTokensDelta = new Histogram({
      name: 'kvgate_router_cached_tokens_delta',
      help: 'per request: actual − predicted cached prompt tokens (negative: fewer cached than predicted — eviction after routing, hash mismatch; positive: more — index lag)',
      labelNames: wm,
      buckets: [-16384, -4096, -1024, -256, -64, -16, -1, 0, 16, 64, 256, 1024, 4096, 16384],
      registers,
    });
    this.cacheUncompared = new Counter({
      name: 'kvgate_router_cache_uncompared_total',
      help: 'answered requests left out of the predicted/actual cached-token counters, by reason: batch (usage sums several prompts), pd_local_prefill (the decode worker prefilled locally), pd_no_prefill_usage (a P/D split answered without the prefill leg\'s usage), epp_no_response_body (the EPP picker saw a 200 answer\'s headers but never its body: the proxy\'s response_body_mode is not FULL_DUPLEX_STREAMED)',
      labelNames: ['reason'],
      registers,
    });
    this.usageMissing = new Counter({ name: 'kvgate_router_usage_missing_total', help: 'answered requests whose engine usage carried no prompt_tokens_details.cached_tokens (not compared; vLLM reports it only with --enable-prompt-tokens-details, SGLang with --enable-cache-report)', labelNames: wm, registers });
    // latency per worker and model from the request's arrival (latency.ts); the queue wait is admission.ts's
    // kvgate_router_queue_wait_seconds{priority} (before a worker is chosen)
    this.ttftSeconds = new Histogram({
      name: 'kvgate_router_ttft_seconds',
      help: 'streams: request in → first upstream body byte out to the client (the first token; routing, queue wait, connect and prefill included)',
      labelNames: wm,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.itlSeconds = new Histogram({
      name: 'kvgate_router_itl_seconds',
      help: 'streams: time between consecutive upstream chunks passed on (one event per engine step: the inter-token latency)',
      labelNames: wm,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.e2eSeconds = new Histogram({
      name: 'kvgate_router_e2e_seconds',
      help: 'request in → response end, every 200 answer relayed to its end',
      labelNames: wm,
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300],
      registers,
    });
    this.indexQuerySeconds = new Histogram({
      name: 'kvgate_router_index_query_seconds',
      help: "the index match of one routing decision, sent → answered (or given up at the index budget: kvgate_router_index_fallback_total counts those)",
      labelNames: ['model'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1],
      registers,
    });
    this.inflight = new Gauge({ name: 'kvgate_router_inflight_requests', help: 'requests this router has open per worker', labelNames: ['worker'], registers });
    this.suspect = new Gauge({ name: 'kvgate_router_worker_suspect', help: '1 while the worker is suspect after an upstream failure (here or at a peer router), skipped while others are available', labelNames: ['worker'], registers });
    this.unhealthy = new Gauge({ name: 'kvgate_router_worker_unhealthy', help: '1 while the worker\'s last load report says healthy: false (its engine is down); never picked', labelNames: ['worker'], registers });
    this.viewStale = new Gauge({ name: 'kvgate_router_view_stale', help: '1 while the bus has been silent longer than staleViewMs: the registry and load view are last-known (still used)', registers });
    this.heldWorkers = new Gauge({ name: 'kvgate_router_registry_held_workers', help: 'workers whose registration lapsed but are kept until the bus confirms it (registry-hold.ts)', registers });
    this.busSilent = new Gauge({ name: 'kvgate_router_bus_silent_seconds', help: 'seconds since anything arrived on the bus (own heartbeat each second)', registers });
  }
}
