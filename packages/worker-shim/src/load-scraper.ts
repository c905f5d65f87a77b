/**
 * Scrapes the engine's Prometheus /metrics on a timer (edge: HTTP), hands each reading to `onLoad`.
 * A failed scrape is counted and skipped; the previous reading stays current.
 */
import { request } from 'undici';
import { logger } from '@kvgate/protocol';
import { parsePrometheusText } from './prom-text.js';
import { engineLoad, type EngineLoad } from './engine-load.js';
import type { ShimMetrics } from './metrics.js';

const log = logger('shim.scrape');

export class LoadScraper {
  readonly #url: string;
  readonly #intervalMs: number;
  readonly #metrics: ShimMetrics;
  readonly #onLoad: (l: EngineLoad) => void;
  #timer: NodeJS.Timeout | undefined;
  #inFlight: Promise<EngineLoad | null> | undefined;
  #failures = 0;
  #stopped = false;

  constructor(engineUrl: string, intervalMs: number, metrics: ShimMetrics, onLoad: (l: EngineLoad) => void) {
    this.#url = `${engineUrl}/metrics`;
    this.#intervalMs = intervalMs;
    this.#metrics = metrics;
    this.#onLoad = onLoad;
  }

  /** one scrape now; resolves with the reading (null on failure) */
  scrape(): Promise<EngineLoad | null> {
    this.#inFlight ??= this.#scrape().finally(() => (this.#inFlight = undefined));
    return this.#inFlight;
  }

  async #scrape(): Promise<EngineLoad | null> {
    const timeout = Math.max(1000, this.#intervalMs * 5);
    try {
      const res = await request(this.#url, { headersTimeout: timeout, bodyTimeout: timeout });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`);
      const load = engineLoad(parsePrometheusText(text).samples);
      this.#metrics.scrapes.inc({ result: 'ok' });
      this.#failures = 0;
      if (!this.#stopped) this.#onLoad(load);
      return load;
    } catch (e) {
      this.#metrics.scrapes.inc({ result: 'error' });
      // log the first failure of a run, then every 100th: an engine that is down must not flood the log
      if (this.#failures++ % 100 === 0) log.warn({ url: this.#url, err: String((e as Error).message ?? e) }, 'engine /metrics scrape failed');
      return null;
    }
  }

  start(): void {
    if (this.#timer || this.#stopped) return;
    this.#timer = setInterval(() => void this.scrape(), this.#intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#inFlight;
  }
}
