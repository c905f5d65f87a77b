/**
 * Is the engine behind this shim alive? A pure state machine (`EngineHealth`) fed by a thin prober
 * (`EngineProber`: `GET <engine>/health` every `intervalMs`, as vLLM and SGLang serve it).
 *
 *   up ──probe fails──▶ down ──still down after deregisterAfterMs──▶ withdrawn
 *   down / withdrawn ──probe answers──▶ up            (withdrawn: `rejoin` first)
 *
 * A probe fails on a refused or reset connection, a timeout (`timeoutMs`) or an answer other than 200; a 404 is
 * an engine without a /health route that did answer, so it counts as up. What the shim does with each event
 * (index.ts): `down` → its load reports say `healthy: false` (at once, and /healthz answers 503); `withdraw` → its
 * registrations are deleted (routers and indexers drop the worker); `rejoin` → registered again; `up` → reports
 * say `healthy: true`.
 */
import { request } from 'undici';

export type EngineHealthEvent = 'down' | 'withdraw' | 'rejoin' | 'up';

export class EngineHealth {
  readonly #deregisterAfterMs: number;
  #up = true;
  #downSince = 0;
  #withdrawn = false;

  /** starts up: an engine is taken to be alive until a probe says otherwise */
  constructor(deregisterAfterMs: number) {
    this.#deregisterAfterMs = deregisterAfterMs;
  }

  get up(): boolean {
    return this.#up;
  }

  /** deregistered because the engine stayed down */
  get withdrawn(): boolean {
    return this.#withdrawn;
  }

  /** one probe's result at `now` (ms); the events it causes, in the order to act on them */
  observe(ok: boolean, now: number): EngineHealthEvent[] {
    if (ok) {
      if (this.#up) return [];
      this.#up = true;
      const rejoin = this.#withdrawn;
      this.#withdrawn = false;
      return rejoin ? ['rejoin', 'up'] : ['up'];
    }
    if (this.#up) {
      this.#up = false;
      this.#downSince = now;
      return now - this.#downSince >= this.#deregisterAfterMs ? ['down', 'withdraw'] : ['down'];
    }
    if (!this.#withdrawn && now - this.#downSince >= this.#deregisterAfterMs) {
      this.#withdrawn = true;
      return ['withdraw'];
    }
    return [];
  }
}

export interface EngineProberOptions {
  /** the engine's base URL */
  engineUrl: string;
  /** probe period, ms */
  intervalMs: number;
  /** a probe without an answer this long fails, ms */
  timeoutMs: number;
  /** each probe's result */
  onResult(ok: boolean, detail: string): void;
}

/** `GET <engine>/health` on a timer, one probe at a time. */
export class EngineProber {
  readonly #o: EngineProberOptions;
  #timer: NodeJS.Timeout | undefined;
  #inFlight: Promise<void> | undefined;
  #stopped = false;

  constructor(o: EngineProberOptions) {
    this.#o = o;
  }

  /** one probe now (joins the one in flight) */
  probe(): Promise<void> {
    this.#inFlight ??= this.#probe().finally(() => (this.#inFlight = undefined));
    return this.#inFlight;
  }

  async #probe(): Promise<void> {
    const { engineUrl, timeoutMs } = this.#o;
    let ok = false;
    let detail = '';
    try {
      const res = await request(`${engineUrl}/health`, { signal: AbortSignal.timeout(timeoutMs), headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
      await res.body.dump();
      ok = res.statusCode === 200 || res.statusCode === 404;
      detail = `HTTP ${res.statusCode}`;
    } catch (e) {
      detail = String((e as Error).message ?? e);
    }
    if (!this.#stopped) this.#o.onResult(ok, detail);
  }

  start(): void {
    if (this.#timer || this.#stopped) return;
    this.#timer = setInterval(() => void this.probe(), this.#o.intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
