/** The shim's Prometheus metrics: one Registry per shim instance (never the global default). */
import { Counter, Gauge, Registry } from 'prom-client';

export interface ShimMetrics {
  registry: Registry;
  engineBatches: Counter;
  engineEvents: Counter<'type'>;
  malformedFrames: Counter;
  gaps: Counter;
  restarts: Counter;
  replays: Counter<'result'>;
  replayedBatches: Counter;
  probes: Counter;
  duplicates: Counter;
  unknownParents: Counter;
  unknownRemovals: Counter;
  skippedEvents: Counter<'reason'>;
  unreproducibleBlocks: Counter;
  mailboxDrops: Counter;
  droppedFrames: Counter;
  publishedBatches: Counter;
  publishedEvents: Counter;
  lagSeconds: Gauge;
  mapSize: Gauge;
  mapEvictions: Counter;
  internalErrors: Counter;
  scrapes: Counter<'result'>;
  loadReports: Counter;
  proxied: Counter<'route' | 'status'>;
  pdPrefills: Counter<'result'>;
  pdLocalPrefills: Counter<'reason'>;
  publishBufferBatches: Gauge;
  publishBufferBytes: Gauge;
  publishFailures: Counter;
  publishReplayed: Counter;
  publishOverflows: Counter;
  publishDropped: Counter;
  resyncs: Counter<'reason'>;
  engineUp: Gauge;
  /** the engine's own prefix-cache counters, mirrored from its /metrics (engine-load.ts enginePrefixCache) */
  enginePrefixQueries: CounterMirror;
  enginePrefixHits: CounterMirror;
}

/**
 * An engine's cumulative counter as a shim counter: each reading adds its rise since the last one; a reading below
 * the last (the engine restarted and counts from 0 again) adds its whole value. The first reading adds all of it,
 * so the shim's counter starts level with the engine's.
 */
export class CounterMirror {
  readonly counter: Counter;
  #last: number | undefined;

  constructor(counter: Counter) {
    this.counter = counter;
  }

  set(value: number): void {
    if (!Number.isFinite(value) || value < 0) return;
    const rise = this.#last === undefined || value < this.#last ? value : value - this.#last;
    this.#last = value;
    if (rise > 0) this.counter.inc(rise);
  }
}

export function createMetrics(worker: string): ShimMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ worker });
  const registers = [registry];
  const c = <L extends string = never>(name: string, help: string, labelNames: L[] = []) =>
    new Counter<L>({ name: `kvgate_shim_${name}`, help, labelNames, registers });
  const g = (name: string, help: string) => new Gauge({ name: `kvgate_shim_${name}`, help, registers });
  return {
    registry,
    engineBatches: c('engine_batches_total', 'engine KV event batches received (decoded)'),
    engineEvents: c('engine_events_total', 'engine KV events received, by type', ['type']),
    malformedFrames: c('malformed_frames_total', 'engine ZMQ messages that did not decode (skipped)'),
    gaps: c('gaps_total', 'engine sequence gaps seen'),
    restarts: c('engine_restarts_total', 'engine restarts seen (sequence went down or the socket lost its engine)'),
    replays: c('replays_total', 'replay requests, by result (complete, partial, empty, unavailable)', ['result']),
    replayedBatches: c('replayed_batches_total', 'engine batches applied from replay'),
    probes: c('replay_probes_total', 'replay probes finished (after the event socket (re)connected, and on the probe timer)'),
    duplicates: c('duplicate_batches_total', 'live engine batches skipped because a replay probe had applied them'),
    unknownParents: c('unknown_parents_total', 'BlockStored events dropped because their parent block was unknown'),
    unknownRemovals: c('unknown_removals_total', 'BlockRemoved hashes the shim did not know'),
    skippedEvents: c(
      'skipped_events_total',
      'engine events (or, for unknown-offload-hash, block hashes) not relayed, by reason: a decode reason of one event the rest of its batch survived, unknown-type, non-full-attention-group, other-full-attention-group, unclassified-group, unaligned, unknown-lora, unknown-offload-hash, malformed',
      ['reason'],
    ),
    unreproducibleBlocks: c('unreproducible_blocks_total', 'blocks whose engine extra keys (multimodal, prompt embeddings, …) the router cannot reproduce: indexed under keys no text prompt matches'),
    mailboxDrops: c('mailbox_drops_total', 'engine messages dropped because the relay mailbox was full'),
    droppedFrames: c('test_dropped_frames_total', 'engine messages dropped on purpose (test hook)'),
    publishedBatches: c('published_batches_total', 'EventBatches published on the bus'),
    publishedEvents: c('published_events_total', 'kvgate events published on the bus'),
    lagSeconds: g('lag_seconds', 'engine batch time to publish time, last batch'),
    mapSize: g('map_entries', 'engine hashes held in the engine-hash map'),
    mapEvictions: c('map_evictions_total', 'engine-hash map entries evicted by its cap (published as removed)'),
    internalErrors: c('internal_errors_total', 'unexpected errors caught in the relay'),
    scrapes: c('scrapes_total', 'engine /metrics scrapes, by result', ['result']),
    loadReports: c('load_reports_total', 'LoadReports published'),
    proxied: c('proxied_requests_total', 'requests proxied to the engine, by route and status', ['route', 'status']),
    pdPrefills: c('pd_prefills_total', 'remote prefills done for P/D, by result', ['result']),
    pdLocalPrefills: c('pd_local_prefills_total', 'P/D requests prefilled on the decode worker instead (prefill worker failed or timed out, descriptor expired or foreign); each still served', ['reason']),
    publishBufferBatches: g('publish_buffer_batches', 'event batches not yet stored in the event stream (bus down, appends failing or in flight)'),
    publishBufferBytes: g('publish_buffer_bytes', 'bytes of the event batches not yet stored'),
    publishFailures: c('publish_failures_total', 'event batch appends the stream did not acknowledge (kept and retried)'),
    publishReplayed: c('publish_replayed_batches_total', 'event batches stored late, from the buffer, after the bus was down or an append failed'),
    publishOverflows: c('publish_buffer_overflows_total', 'times the publish buffer passed its bound and was dropped (a resync follows once the bus is back)'),
    publishDropped: c('publish_dropped_batches_total', 'event batches dropped with an overflowing buffer or made before the resync that replaces them'),
    engineUp: g('engine_up', '1 while the engine answers its GET /health probe, 0 while it does not (load reports then say healthy: false)'),
    enginePrefixQueries: new CounterMirror(c('engine_prefix_cache_queries_total', "the engine's prefix-cache lookups in prompt tokens, mirrored from its /metrics (vLLM vllm:prefix_cache_queries_total; SGLang sglang:prompt_tokens_total)")),
    enginePrefixHits: new CounterMirror(c('engine_prefix_cache_hits_total', "the engine's prefix-cache hits in prompt tokens, mirrored from its /metrics (vLLM vllm:prefix_cache_hits_total; SGLang sglang:cached_tokens_total)")),
    resyncs: c('resyncs_total', 'whole block sets republished as cleared + stored, by reason (request: an indexer asked on …shim.resync.<worker>; overflow: the publish buffer overflowed)', ['reason']),
  };
}
