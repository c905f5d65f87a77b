/**
 * The router's view of each proxied request's latency (issue 17), per worker and model, from the moment the
 * request arrived at the HTTP edge:
 *   kvgate_router_ttft_seconds  request in → the first upstream body byte passed on to the client (streams: the
 *                               engine's first token, everything before it included — body read, routing, queue
 *                               wait, connect, prefill). Not observed for whole JSON answers: their first byte is
 *                               their last.
 *   kvgate_router_itl_seconds   between consecutive upstream chunks of a stream (engines write one event per token
 *                               step), as the router passes them on; a chunk carrying no token — the usage-only
 *                               chunk (`choices: []`), `data: [DONE]` — is not an interval between tokens
 *   kvgate_router_e2e_seconds   request in → the response's end, every 200 answer relayed to its end
 * Label children are resolved once per request; a chunk costs one clock read and one bucket search.
 */
import type { Histogram } from 'prom-client';
import type { RouterMetrics } from './metrics.js';

type Child = ReturnType<Histogram['labels']>;

export class RequestTimer {
  readonly #tIn: number;
  readonly #stream: boolean;
  readonly #ttft: Child | undefined;
  readonly #itl: Child | undefined;
  readonly #e2e: Child;
  readonly #onTtft: ((seconds: number) => void) | undefined;
  #last = -1;

  /** `tIn`: performance.now() when the request arrived */
  /** `onTtft`: also told each stream's TTFT (the dashboard's feed, while one is open) */
  constructor(m: RouterMetrics, worker: string, model: string, tIn: number, stream: boolean, onTtft?: (seconds: number) => void) {
    this.#tIn = tIn;
    this.#onTtft = onTtft;
    this.#stream = stream;
    if (stream) {
      this.#ttft = m.ttftSeconds.labels(worker, model);
      this.#itl = m.itlSeconds.labels(worker, model);
    }
    this.#e2e = m.e2eSeconds.labels(worker, model);
  }

  /** one upstream body chunk, as it is passed on */
  chunk(c: Buffer): void {
    if (!this.#stream) return;
    const now = performance.now();
    if (this.#last >= 0 && noToken(c)) return;
    if (this.#last < 0) {
      const s = (now - this.#tIn) / 1000;
      this.#ttft!.observe(s);
      this.#onTtft?.(s);
    }
    else this.#itl!.observe((now - this.#last) / 1000);
    this.#last = now;
  }

  /** the response ended (`ok`: relayed to its end) */
  done(ok: boolean): void {
    if (ok) this.#e2e.observe((performance.now() - this.#tIn) / 1000);
  }
}

const DONE = Buffer.from('data: [DONE]');
const EMPTY_CHOICES = Buffer.from('"choices":[]');
const SOME_CHOICE = Buffer.from('"choices":[{');

/** a stream chunk that carries no token: `data: [DONE]` first, or usage-only events (`choices: []`) alone */
function noToken(c: Buffer): boolean {
  if (c.subarray(0, DONE.length).equals(DONE)) return true;
  return c.indexOf(EMPTY_CHOICES) >= 0 && c.indexOf(SOME_CHOICE) < 0;
}
