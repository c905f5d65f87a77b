/**
 * Is the engine behind this shim alive? A pure state machine (`EngineHealth`) fed by a thin prober
 * (`EngineProber`: `GET <engine>/health` every `intervalMs`, as vLLM and SGLang serve it).
 *
 *   up ──probe fails──▶ down ──still down after deregisterAfterMs──▶ withdrawn
 *   down / withdrawn ──probe answers──▶ up            (withdrawn: `rejoin` first)
 *
 * A probe fails on a refused or reset connection, a timeout (`timeoutMs`) or an answer other than 200; a 404 is
 * an engine without a /health route that did answer, so it counts as up. A refused connection or an error answer
 * is definite: down at once (a dead engine's port refuses). A timeout alone is not: an engine whose API server is
 * busy (a burst of tokenization, a loaded host) answers late, and taking it down would send its traffic elsewhere
 * and drop its cache hits; `slowProbesToDown` timeouts in a row (default 2) are needed, as Kubernetes probes
 * count a failureThreshold. What the shim does with each event
 * (index.ts): `down` → its load reports say `healthy: false` (at once, and /healthz answers 503); `withdraw` → its
 * registrations are deleted (routers and indexers drop the worker); `rejoin` → registered again; `up` → reports
 * say `healthy: true`.
 */
import { request } from 'undici';

export type EngineHealthEvent = 'down' | 'withdraw' | 'rejoin' | 'up';

export class EngineHealth {
  readonly #deregisterAfterMs: number;
  readonly #slowProbesToDown: number;
  #slowInARow = 0;
  #up = true;
  #downSince = 0;
  #withdrawn = false;

  /** starts up: an engine is taken to be alive until a probe says otherwise */
  constructor(deregisterAfterMs: number, slowProbesToDown = 2) {
    this.#deregisterAfterMs = deregisterAfterMs;
    this.#slowProbesToDown = Math.max(1, slowProbesToDown);
  }

  get up(): boolean {
    return this.#up;
  }

  /** deregistered because the engine stayed down */
  get withdrawn(): boolean {
    return this.#withdrawn;
  }

  /**
   * one probe's result at `now` (ms); the events it causes, in the order to act on them. `timedOut`: the probe got
   * no answer in time (counted towards `slowProbesToDown` while the engine is up) rather than a refusal or an error.
   */
  observe(ok: boolean, now: number, timedOut = false): EngineHealthEvent[] {
    if (ok) this.#slowInARow = 0;
    else if (timedOut && this.#up && ++this.#slowInARow < this.#slowProbesToDown) return [];
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
  /** each probe's result; `timedOut`: no answer within timeoutMs */
  onResult(ok: boolean, detail: string, timedOut: boolean): void;
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
    let timedOut = false;
    try {
      const res = await request(`${engineUrl}/health`, { signal: AbortSignal.timeout(timeoutMs), headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
      await res.body.dump();
      ok = res.statusCode === 200 || res.statusCode === 404;
      detail = `HTTP ${res.statusCode}`;
    } catch (e) {
      const err = e as Error & { code?: string };
      detail = String(err.message ?? e);
      timedOut = err.name === 'TimeoutError' || err.name === 'AbortError' || err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT';
    }
    if (!this.#stopped) this.#o.onResult(ok, detail, timedOut);
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
