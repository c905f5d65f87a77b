/**
 * Scrapes the engine's Prometheus /metrics on a timer (edge: HTTP), hands each reading's samples to `onSamples`
 * (one /metrics may serve several data-parallel ranks: the caller reads each rank's load from them, see
 * engine-load.ts). A failed scrape is counted and skipped; the previous reading stays current.
 */
import { request } from 'undici';
import { logger } from '@kvgate/protocol';
import { parsePrometheusText, type Sample } from './prom-text.js';
import type { ShimMetrics } from './metrics.js';

const log = logger('shim.scrape');

export class LoadScraper {
  readonly #url: string;
  readonly #intervalMs: number;
  readonly #metrics: ShimMetrics;
  readonly #onSamples: (samples: Sample[]) => void;
  #timer: NodeJS.Timeout | undefined;
  #inFlight: Promise<Sample[] | null> | undefined;
  #failures = 0;
  #stopped = false;

  constructor(engineUrl: string, intervalMs: number, metrics: ShimMetrics, onSamples: (samples: Sample[]) => void) {
    this.#url = `${engineUrl}/metrics`;
    this.#intervalMs = intervalMs;
    this.#metrics = metrics;
    this.#onSamples = onSamples;
  }

  /** one scrape now; resolves with its samples (null on failure) */
  scrape(): Promise<Sample[] | null> {
    this.#inFlight ??= this.#scrape().finally(() => (this.#inFlight = undefined));
    return this.#inFlight;
  }

  async #scrape(): Promise<Sample[] | null> {
    const timeout = Math.max(1000, this.#intervalMs * 5);
    try {
      const res = await request(this.#url, { headersTimeout: timeout, bodyTimeout: timeout });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`);
      const { samples } = parsePrometheusText(text);
      this.#metrics.scrapes.inc({ result: 'ok' });
      this.#failures = 0;
      if (!this.#stopped) this.#onSamples(samples);
      return samples;
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
