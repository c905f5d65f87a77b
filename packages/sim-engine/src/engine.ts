/**
 * The real-time driver around the pure scheduler: the engine's single writer. Everything that changes the
 * scheduler goes through this class (submit, abort, held-block release, reset); the step loop runs one step,
 * waits its modelled duration divided by `speedup`, then delivers the step's tokens and publishes its KV events
 * as one batch, and runs the next step.
 *
 * Simulated time follows wall time × speedup while the engine keeps up, but the simulator's own CPU lag is never
 * billed as GPU time: a step starts when the previous one ended (or when the request that woke an idle engine
 * arrived), and a request arriving during a step is stamped within that step. So TTFT and latency (simulated ms,
 * in the metrics) come from the timing model and queueing, not from how busy the host happens to be.
 */
import { Scheduler, type SchedulerOptions, type SchedulerStats, type StepResult, type SubmitRequest, type TokenOutput, type HeldBlocks } from './scheduler.js';
import type { KvCacheEvent } from './kv-cache.js';
import type { EngineMetrics } from './metrics.js';

export interface EngineCoreOptions {
  scheduler: SchedulerOptions;
  /** simulated ms per wall ms (default 1) */
  speedup?: number;
  /** how long (simulated ms) a P/D prefill keeps its blocks for the decode side (default 480,000, vLLM's 480 s) */
  holdTimeoutMs?: number;
  /** one call per step with KV events (and for events outside steps, e.g. a reset) */
  onEvents?: (events: KvCacheEvent[], tsSeconds: number) => void;
  /**
   * Each finished request that was submitted with a `tag` (the client's x-request-id): its TTFT and end-to-end
   * latency on the engine's modelled clock (arrival → first token / last token, simulated ms), free of host lag,
   * and the gaps between its tokens (simulated ms).
   * `kvgate start` reports these beside what its client observed (wall × speedup, which scales the host's lag too).
   */
  onRequestDone?: RequestTimingSink;
}

/** a finished request's modelled latencies: TTFT, end to end, and the gaps between its tokens (simulated ms) */
export type RequestTimingSink = (requestId: string, ttftMs: number, e2eMs: number, gapsMs: number[]) => void;

type Sink = (out: TokenOutput) => void;

interface Track {
  sink: Sink;
  arrivalMs: number;
  lastMs: number;
  firstMs: number;
  tag: string | undefined;
  /** gaps between tokens, kept only for a tagged request */
  gaps: number[] | undefined;
}

export class EngineCore {
  readonly speedup: number;
  #sched: Scheduler;
  #t0 = performance.now();
  #holdTimeoutMs: number;
  #onEvents: (events: KvCacheEvent[], tsSeconds: number) => void;
  #onRequestDone: EngineCoreOptions['onRequestDone'];
  #metrics: EngineMetrics | undefined;
  #tracks = new Map<string, Track>();
  #holdTimers = new Map<string, NodeJS.Timeout>();
  #busy = false;
  /** end of the last step started (simulated ms) */
  #cursor = 0;
  #stepStart = 0;
  #inStep = false;
  /** arrival of the request that woke the idle engine */
  #wakeAt = 0;
  #closed = false;
  #timer: NodeJS.Timeout | NodeJS.Immediate | undefined;

  constructor(opts: EngineCoreOptions, metrics?: EngineMetrics) {
    this.speedup = opts.speedup ?? 1;
    if (!(this.speedup > 0)) throw new RangeError('speedup must be > 0');
    this.#sched = new Scheduler(opts.scheduler);
    this.#holdTimeoutMs = opts.holdTimeoutMs ?? 480_000;
    this.#onEvents = opts.onEvents ?? (() => {});
    this.#onRequestDone = opts.onRequestDone;
    this.#metrics = metrics;
  }

  get scheduler(): Scheduler {
    return this.#sched;
  }

  /** Simulated milliseconds since the engine started. */
  now(): number {
    return (performance.now() - this.#t0) * this.speedup;
  }

  /** Resolves after `simMs` simulated milliseconds. */
  sleep(simMs: number): Promise<void> {
    const wall = simMs / this.speedup;
    return new Promise((r) => (wall < 1 ? setImmediate(r) : setTimeout(r, wall)));
  }

  stats(): SchedulerStats {
    return this.#sched.stats();
  }

  /**
   * Queues a request; `sink` receives each generated token (the last has a finishReason). Throws on bad input.
   * `tag`: reported with the request's modelled latencies to `onRequestDone` when it finishes.
   */
  submit(req: Omit<SubmitRequest, 'arrivalMs'>, sink: Sink, tag?: string): void {
    if (this.#closed) throw new Error('engine closed');
    const now = this.now();
    const arrivalMs = this.#inStep ? Math.min(Math.max(now, this.#stepStart), this.#cursor) : Math.max(now, this.#cursor);
    this.#sched.submit({ ...req, arrivalMs });
    this.#tracks.set(req.id, { sink, arrivalMs, lastMs: arrivalMs, firstMs: NaN, tag, gaps: tag !== undefined && this.#onRequestDone ? [] : undefined });
    // busy but not in a step = woken, first step not started yet: it must not start before this arrival
    if (this.#busy && !this.#inStep) this.#wakeAt = Math.max(this.#wakeAt, arrivalMs);
    else this.#kick(arrivalMs);
  }

  /** Client gone or cancelled: frees everything the request holds. */
  abort(id: string): void {
    this.#tracks.delete(id);
    this.#clearHoldTimer(id);
    if (this.#sched.abort(id)) this.#kick();
  }

  /** The blocks a finished do_remote_decode request still holds. */
  held(id: string): HeldBlocks | undefined {
    return this.#sched.held(id);
  }

  /** Frees held blocks (decode side pulled them). */
  releaseHeld(id: string): boolean {
    this.#clearHoldTimer(id);
    const ok = this.#sched.releaseHeld(id);
    if (ok) this.#kick();
    return ok;
  }

  /** vLLM's reset_prefix_cache: refused (false) while blocks are in use. */
  resetPrefixCache(): boolean {
    const ok = this.#sched.resetPrefixCache();
    if (ok && !this.#busy) this.#flushLooseEvents();
    return ok;
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) {
      clearTimeout(this.#timer as NodeJS.Timeout);
      clearImmediate(this.#timer as NodeJS.Immediate);
    }
    for (const t of this.#holdTimers.values()) clearTimeout(t);
    this.#holdTimers.clear();
    this.#tracks.clear();
  }

  #clearHoldTimer(id: string): void {
    const t = this.#holdTimers.get(id);
    if (t) {
      clearTimeout(t);
      this.#holdTimers.delete(id);
    }
  }

  #flushLooseEvents(): void {
    const ev = this.#sched.drainEvents();
    if (ev.length) this.#onEvents(ev, Date.now() / 1000);
  }

  /** Wakes the idle loop; its first step starts at `at` (simulated ms). */
  #kick(at = Math.max(this.now(), this.#cursor)): void {
    if (this.#busy || this.#closed) return;
    this.#busy = true;
    this.#wakeAt = at;
    this.#timer = setImmediate(() => this.#loop());
  }

  /** `continuing`: called right after a step completed (start at its end), else woken from idle. */
  #loop(continuing = false): void {
    this.#timer = undefined;
    if (this.#closed) return;
    // steps never overlap in simulated time, and lag of the host between steps is not simulated time
    const start = continuing ? this.#cursor : Math.max(this.#cursor, this.#wakeAt);
    const r = this.#sched.step(start);
    if (!r) {
      this.#busy = false;
      this.#flushLooseEvents();
      return;
    }
    this.#stepStart = r.startMs;
    this.#cursor = r.endMs;
    this.#inStep = true;
    // wait until the step's modelled end; coarse timers only when the wait is ≥ 1 ms of wall time
    const delay = (r.endMs - this.now()) / this.speedup;
    const done = () => this.#complete(r);
    this.#timer = delay < 1 ? setImmediate(done) : setTimeout(done, delay);
  }

  #complete(r: StepResult): void {
    this.#timer = undefined;
    this.#inStep = false;
    if (this.#closed) return;
    if (r.events.length) this.#onEvents(r.events, Date.now() / 1000);
    for (const out of r.outputs) {
      const t = this.#tracks.get(out.id);
      if (!t) continue;
      if (this.#metrics) {
        if (out.index === 0) this.#metrics.firstToken(out.atMs - t.arrivalMs);
        else this.#metrics.interToken(out.atMs - t.lastMs);
        if (out.finishReason) this.#metrics.finished(out.atMs - t.arrivalMs, out.finishReason);
      }
      if (out.index === 0) t.firstMs = out.atMs;
      else t.gaps?.push(out.atMs - t.lastMs);
      t.lastMs = out.atMs;
      if (out.finishReason) {
        this.#tracks.delete(out.id);
        if (t.tag !== undefined && this.#onRequestDone) this.#onRequestDone(t.tag, t.firstMs - t.arrivalMs, out.atMs - t.arrivalMs, t.gaps ?? []);
        if (this.#sched.held(out.id)) {
          const timer = setTimeout(() => this.releaseHeld(out.id), this.#holdTimeoutMs / this.speedup);
          timer.unref();
          this.#holdTimers.set(out.id, timer);
        }
      }
      try {
        t.sink(out);
      } catch {
        /* a sink failing (socket gone) must not stop the engine */
      }
    }
    this.#loop(true);
  }
}
