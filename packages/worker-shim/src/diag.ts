/**
 * The shim's misconfiguration signals (issue 11; judges in @kvgate/protocol diag.ts), per published worker:
 *   events-stale         the engine served requests (running + waiting > 0 in a /metrics scrape, or a request the
 *                        shim's front proxied) for `staleEventsMs` and not one stored/removed event was published;
 *   block-size-mismatch  the block size in the engine's events ≠ the block size the worker is registered with.
 * Each is a gauge (`kvgate_shim_kv_events_stale`, `kvgate_shim_block_size_mismatch`, 1 = the problem holds), a
 * warning in the log at most once per worker per condition per minute, and part of the report `kvgate doctor` reads
 * on `…diag.shim.<worker>` (published every `diagIntervalMs`, and at once when `…diag.ask` arrives).
 * `ShimDiag` holds state and judges; the bus edge is protocol's startDiagPublisher.
 */
import { Gauge, type Registry } from 'prom-client';
import { judgeShim, logger, RateGate, type DiagCode, type DiagWorker, type EventBatch, type ShimFacts } from '@kvgate/protocol';

const log = logger('shim.diag');

const GAUGES: Record<'events-stale' | 'block-size-mismatch', { name: string; help: string }> = {
  'events-stale': {
    name: 'kvgate_shim_kv_events_stale',
    help: '1 when the engine served requests for the stale threshold (--stale-events-s) without one KV event published: routers see no cache on this worker and route it by load alone',
  },
  'block-size-mismatch': {
    name: 'kvgate_shim_block_size_mismatch',
    help: "1 when the block size in the engine's KV events is not the block size this worker is registered with (no prompt hash can match)",
  },
};

export class ShimDiag {
  readonly worker: string;
  readonly #staleEventsMs: number;
  readonly #now: () => number;
  readonly #gauges: Record<keyof typeof GAUGES, Gauge>;
  readonly #gate = new RateGate(60_000);
  readonly #startedAt: number;
  #lastEventAt: number | null = null;
  #servingSince: number | null = null;
  #eventBlockSize: number | null = null;

  constructor(o: { worker: string; registry: Registry; staleEventsMs: number; now?: () => number }) {
    this.worker = o.worker;
    this.#staleEventsMs = o.staleEventsMs;
    this.#now = o.now ?? Date.now;
    this.#startedAt = this.#now();
    const registers = [o.registry];
    this.#gauges = {
      'events-stale': new Gauge({ ...GAUGES['events-stale'], registers }),
      'block-size-mismatch': new Gauge({ ...GAUGES['block-size-mismatch'], registers }),
    };
  }

  /** the engine was seen serving (a scrape with running + waiting > 0, or a proxied request) */
  serving(): void {
    this.#servingSince ??= this.#now();
  }

  /** a batch went out on the bus: one with a stored or removed event shows the engine's events flow */
  published(batch: EventBatch): void {
    if (!batch.events.some((e) => e.t !== 'cleared')) return;
    this.#lastEventAt = this.#now();
    this.#servingSince = null;
  }

  /** the block size the engine's (GPU, full-token) events carry */
  eventBlockSize(b: number): void {
    this.#eventBlockSize = b;
  }

  facts(registeredBlockSize: number): ShimFacts {
    return {
      startedAt: this.#startedAt,
      lastEventAt: this.#lastEventAt,
      servingSince: this.#servingSince,
      eventBlockSize: this.#eventBlockSize,
      registeredBlockSize,
      staleEventsMs: this.#staleEventsMs,
    };
  }

  /** judges now: sets the gauges, warns (once a minute per condition), returns the worker's report entry */
  check(registeredBlockSize: number): DiagWorker {
    const shim = this.facts(registeredBlockSize);
    const now = this.#now();
    const findings = judgeShim(shim, now);
    const held = new Set<DiagCode>(findings.map((f) => f.code));
    for (const [code, g] of Object.entries(this.#gauges)) g.set(held.has(code as DiagCode) ? 1 : 0);
    for (const f of findings) {
      if (this.#gate.pass(f.code, now)) log.warn({ worker: this.worker, problem: f.code, check: f.check }, `worker ${this.worker} ${f.message}`);
    }
    return { worker: this.worker, findings, shim };
  }
}
