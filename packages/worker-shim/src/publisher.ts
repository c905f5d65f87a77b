/**
 * EventPublisher: puts one worker's EventBatches into the durable event stream, in order, and keeps what the bus
 * could not take.
 *
 * Every batch is appended with a stream acknowledgement (`DurableStream.append`), so the shim knows what is
 * stored: a core publish during an outage — or just after a restart, before JetStream has loaded the stream —
 * is lost without a word. Up to `window` appends are in flight at once (in call order on one connection, so
 * the stream keeps their order). A batch whose append fails, and every batch made while the bus is down, waits
 * in a bounded buffer (BatchBuffer) and is appended, oldest first, once the bus takes appends again (retried
 * every `retryMs`, doubling up to 2 s, and at once on reconnect; each retry first opens the stream again, since
 * a server that lost its store has none).
 *
 * Past the bound (`maxBatches` or `maxBytes`) the buffer is dropped: replaying part of the history would leave
 * holes. The publisher then drops every batch until the bus is back, asks the relay for a resync (its whole
 * block set as `cleared` + `stored`, at the relay's next seq) and publishes from that batch on. Both paths are
 * counted (kvgate_shim_publish_replayed_batches_total, kvgate_shim_publish_buffer_overflows_total,
 * kvgate_shim_resyncs_total{reason="overflow"}).
 */
import { encode, logger, type EventBatch } from '@kvgate/protocol';
import { BatchBuffer, type BufferedBatch } from './batch-buffer.js';
import type { ShimMetrics } from './metrics.js';

const log = logger('shim.publisher');

export interface PublisherDeps {
  worker: string;
  metrics: ShimMetrics;
  /** append one encoded batch to the event stream; resolves once stored */
  append(data: Uint8Array): Promise<unknown>;
  /** open the event stream again (create-or-open) before a retry */
  reopen(): Promise<void>;
  /** false while the bus is down */
  connected(): boolean;
  /** the buffer overflowed and the bus is back: make a resync batch (it comes back through `publish(…, true)`) */
  requestResync(): void;
  /** most batches kept while the bus cannot take them (default 10,000) */
  maxBatches?: number;
  /** most bytes kept (default 64 MiB) */
  maxBytes?: number;
  /** appends in flight at once (default 64) */
  window?: number;
  /** first retry wait after a failed append, ms (default 250; doubles up to 2 s) */
  retryMs?: number;
}

type State = 'normal' | 'overflowed' | 'awaiting-resync';

export class EventPublisher {
  readonly #d: PublisherDeps;
  readonly #buf: BatchBuffer;
  readonly #window: number;
  readonly #retryMin: number;
  #retryWait: number;
  #state: State = 'normal';
  /** a failed append stopped the pump; the retry timer (or a reconnect) restarts it */
  #paused = false;
  #pumping = false;
  /** bumped when the buffer is dropped: appends in flight from before are not put back */
  #epoch = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #drained: (() => void)[] = [];

  constructor(d: PublisherDeps) {
    this.#d = d;
    this.#buf = new BatchBuffer({ maxBatches: d.maxBatches ?? 10_000, maxBytes: d.maxBytes ?? 64 * 1024 * 1024 });
    this.#window = d.window ?? 64;
    this.#retryMin = d.retryMs ?? 250;
    this.#retryWait = this.#retryMin;
  }

  /** batches waiting (buffered or in flight) */
  get buffered(): number {
    return this.#buf.length;
  }

  get state(): State {
    return this.#state;
  }

  /** one batch from the relay, in seq order; `resync` marks the batches of a resync (whole block set) */
  publish(batch: EventBatch, resync = false): void {
    if (this.#stopped) return;
    if (this.#state !== 'normal') {
      if (!resync) {
        this.#d.metrics.publishDropped.inc(); // older than the resync that will replace it
        return;
      }
      this.#state = 'normal';
      log.info({ worker: this.#d.worker, seq: batch.seq }, 'resync batch made after the buffer overflowed: publishing from it');
    }
    const down = this.#paused || !this.#d.connected();
    const item: BufferedBatch = { seq: batch.seq, data: encode(batch), delayed: down };
    if (!this.#buf.push(item)) return this.#overflow();
    this.#gauges();
    if (down) {
      this.#pause();
      return;
    }
    this.#pump();
  }

  /** the bus came back: try at once */
  busReconnected(): void {
    if (this.#stopped) return;
    this.#retryWait = this.#retryMin;
    if (this.#paused || this.#state !== 'normal') this.#retry();
  }

  /** resolves once everything handed over is stored, or after `timeoutMs` */
  drained(timeoutMs: number): Promise<void> {
    if (this.#buf.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      t.unref();
      this.#drained.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #gauges(): void {
    this.#d.metrics.publishBufferBatches.set(this.#buf.length);
    this.#d.metrics.publishBufferBytes.set(this.#buf.bytes);
    if (this.#buf.length === 0) this.#drained.splice(0).forEach((f) => f());
  }

  #overflow(): void {
    const n = this.#buf.length;
    this.#d.metrics.publishOverflows.inc();
    this.#d.metrics.publishDropped.inc(n + 1);
    log.warn({ worker: this.#d.worker, dropped: n + 1 }, 'publish buffer full while the bus is down: dropped it, will resync instead');
    this.#buf.clear();
    this.#epoch++;
    this.#state = 'overflowed';
    this.#gauges();
    this.#pause();
  }

  #pause(): void {
    this.#paused = true;
    if (this.#timer === undefined && !this.#stopped) {
      this.#timer = setTimeout(() => this.#retry(), this.#retryWait);
      this.#timer.unref();
      this.#retryWait = Math.min(2000, this.#retryWait * 2);
    }
  }

  /** the bus may take appends again: reopen the stream, then resume (or, after an overflow, ask for a resync) */
  #retry(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#stopped) return;
    if (!this.#d.connected()) return this.#pause();
    void this.#d.reopen().then(
      () => {
        if (this.#stopped) return;
        this.#retryWait = this.#retryMin;
        if (this.#state === 'overflowed') {
          this.#state = 'awaiting-resync';
          this.#d.metrics.resyncs.inc({ reason: 'overflow' });
          this.#d.requestResync();
        }
        this.#paused = false;
        this.#pump();
      },
      (err) => {
        log.debug({ worker: this.#d.worker, err: String(err) }, 'event stream not reachable yet');
        this.#pause();
      },
    );
  }

  #pump(): void {
    if (this.#pumping || this.#paused || this.#stopped) return;
    this.#pumping = true;
    void this.#run().finally(() => {
      this.#pumping = false;
      if (!this.#paused && this.#buf.length > 0 && !this.#stopped) this.#pump();
    });
  }

  async #run(): Promise<void> {
    while (!this.#paused && !this.#stopped && this.#buf.length > 0) {
      const epoch = this.#epoch;
      const items = this.#buf.peek(this.#window);
      const results = await Promise.allSettled(items.map((it) => this.#d.append(it.data)));
      if (epoch !== this.#epoch) continue; // dropped meanwhile (overflow): nothing to put back
      const failed: BufferedBatch[] = [];
      results.forEach((r, i) => {
        const it = items[i]!;
        if (r.status === 'fulfilled') {
          if (it.delayed) this.#d.metrics.publishReplayed.inc();
        } else {
          it.delayed = true;
          failed.push(it);
        }
      });
      this.#buf.settle(items.length, failed);
      this.#gauges();
      if (failed.length > 0) {
        this.#d.metrics.publishFailures.inc(failed.length);
        const why = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
        log.warn({ worker: this.#d.worker, failed: failed.length, buffered: this.#buf.length, err: String(why.reason) }, 'event batches not stored: kept, retrying');
        this.#pause();
      }
    }
  }
}
