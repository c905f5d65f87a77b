/**
 * One ext_proc stream (= one HTTP request through the proxy), message by message. No gRPC here: messages come in
 * through `onMessage`, answers leave through `send`, so the whole conversation is testable without a socket.
 *
 *   request_headers     kept; with end_of_stream (no body) the pick happens at once
 *   request_body        chunks buffered until end_of_stream (past `bodyLimit`: 413 immediate response), then the
 *                       pick: the headers answer (destination header + envoy.lb metadata, route cache cleared),
 *                       then the body streamed back unchanged in ≤ 62,000-byte chunks, end_of_stream on the last
 *                       (unchanged body: Content-Length stays as the client sent it)
 *   request_trailers    (a body ended by trailers) the pick, the body back, then the trailers answer
 *   response_headers    `envoy.lb/x-gateway-destination-endpoint-served`: the in-flight load moves to the worker
 *                       that really served; the prefill is over
 *   response_body       echoed back chunk by chunk (FULL_DUPLEX_STREAMED); its end_of_stream ends the request.
 *                       A 200 answer's chunks also pass through a UsageTap (diag.ts): at its end the engine's usage
 *                       goes to the predicted-vs-actual accounting (cache-accounting.ts), by the worker that served.
 *                       A stream carries usage only when its client asked (stream_options.include_usage: the
 *                       picker passes the body unchanged); without it the answer counts as usage missing. A proxy
 *                       that sends no response body (response_body_mode NONE) leaves the answer uncompared
 *                       (reason epp_no_response_body).
 *   stream end / error  the request's load leaves the ledger (idempotent)
 */
import type { Logger } from '@kvgate/protocol';
import { predictionFor, type CacheAccounting } from '../cache-accounting.js';
import { UsageTap } from '../diag.js';
import { SHED_HEADER } from '../admission.js';
import type { RoutingCore } from '../routing-core.js';
import type { Ticket } from '../inflight.js';
import { bodyChunks, continueHeaders, headerOf, immediate, pickedResponse, servedEndpoint, subsetHint, type HttpHeaders, type ProcessingRequest, type ProcessingResponse } from './messages.js';
import type { Picker, PickResult } from './picker.js';

export interface StreamOptions {
  picker: Picker;
  core: RoutingCore;
  /** buffered request body cap, bytes (default 10 MiB) */
  bodyLimit?: number;
  /** send per-endpoint scores in envoy.lb (default false) */
  scores?: boolean;
  log?: Logger;
  /** predicted vs actual cached tokens: each 200 answer's usage, read off the response body */
  cache?: CacheAccounting;
  /** the pick's latency (last request message in → headers answer out), ms */
  onPicked?(ms: number, r: PickResult): void;
  /** the request ended (its load released) */
  onFinished?(): void;
}

export class EppStream {
  readonly #o: StreamOptions;
  readonly #send: (r: ProcessingResponse) => void;
  #headers: HttpHeaders | undefined;
  #subset: string[] | undefined;
  #chunks: Buffer[] = [];
  #size = 0;
  #tickets: Ticket[] = [];
  #picked: Extract<PickResult, { kind: 'picked' }> | undefined;
  #done = false; // an immediate response went out: ignore the rest
  #finished = false;
  #chain: Promise<void> = Promise.resolve();
  /** a 200 answer being read for its usage (cache accounting) */
  #tap: UsageTap | undefined;
  #respHeaders: HttpHeaders | undefined;
  #served: string | undefined;
  #bodySeen = false;

  constructor(o: StreamOptions, send: (r: ProcessingResponse) => void) {
    this.#o = o;
    this.#send = send;
  }

  /** the pick made, if any (tests and logs) */
  get picked(): Extract<PickResult, { kind: 'picked' }> | undefined {
    return this.#picked;
  }

  get tickets(): readonly Ticket[] {
    return this.#tickets;
  }

  /** Messages are handled in order: a body chunk arriving while a pick is awaited waits its turn. */
  onMessage(m: ProcessingRequest): Promise<void> {
    this.#chain = this.#chain.then(() => this.#handle(m)).catch((e: unknown) => {
      this.#o.log?.error({ err: e }, 'ext_proc message failed');
      if (!this.#picked && !this.#done) {
        this.#done = true;
        this.#send(immediate(500, 'internal error', 'KVG_INTERNAL'));
      }
    });
    return this.#chain;
  }

  /** The stream ended (cleanly, cancelled or broken): the request's load is released. */
  end(): void {
    this.#finish();
  }

  async #handle(m: ProcessingRequest): Promise<void> {
    if (this.#done) return;
    switch (m.request) {
      case 'request_headers': {
        this.#headers = m.request_headers;
        this.#subset = subsetHint(m);
        if (m.request_headers?.end_of_stream) await this.#pick(Buffer.alloc(0), null);
        return;
      }
      case 'request_body': {
        const b = m.request_body?.body ?? Buffer.alloc(0);
        // the hint may ride on any message of the request path; the first one seen counts
        this.#subset ??= subsetHint(m);
        this.#size += b.length;
        if (this.#size > (this.#o.bodyLimit ?? 10 * 1024 * 1024)) {
          this.#done = true;
          this.#chunks = [];
          this.#send(immediate(413, `request body over ${this.#o.bodyLimit ?? 10 * 1024 * 1024} bytes`, 'KVG_BODY_TOO_LARGE'));
          return;
        }
        if (b.length > 0) this.#chunks.push(b);
        if (m.request_body?.end_of_stream) await this.#pick(this.#body(), 'eos');
        return;
      }
      case 'request_trailers': {
        if (!this.#picked) await this.#pick(this.#body(), 'trailers');
        if (!this.#done) this.#send({ request_trailers: {} });
        return;
      }
      case 'response_headers': {
        const served = servedEndpoint(m);
        if (served && this.#picked) {
          const w = this.#o.picker.workerAt(this.#picked.route, served);
          if (w) this.#tickets = this.#o.core.move(this.#tickets, w);
          this.#served = w;
        }
        if (this.#o.cache && this.#picked && headerOf(m.response_headers, ':status') === '200') {
          this.#tap = new UsageTap(this.#picked.stream);
          this.#respHeaders = m.response_headers;
        }
        this.#o.core.firstByte(this.#tickets);
        this.#send(continueHeaders('response_headers'));
        if (m.response_headers?.end_of_stream) this.#finish();
        return;
      }
      case 'response_body': {
        const b = m.response_body?.body ?? Buffer.alloc(0);
        const eos = m.response_body?.end_of_stream === true;
        this.#send({ response_body: { response: { body_mutation: { streamed_response: { body: b, end_of_stream: eos } } } } });
        if (this.#tap) {
          this.#bodySeen = true;
          if (b.length > 0) this.#tap.push(b);
          if (eos) this.#account();
        }
        if (eos) this.#finish();
        return;
      }
      case 'response_trailers': {
        this.#send({ response_trailers: {} });
        this.#account();
        this.#finish();
        return;
      }
      default:
        return;
    }
  }

  #body(): Buffer {
    const b = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#size);
    this.#chunks = [];
    return b;
  }

  /** `bodyEnd`: null = no body; 'eos' = the last chunk carried end_of_stream; 'trailers' = trailers follow */
  async #pick(body: Buffer, bodyEnd: 'eos' | 'trailers' | null): Promise<void> {
    const t0 = performance.now();
    const headers = this.#headers;
    const r = await this.#o.picker.pick({ header: (n) => headerOf(headers, n), body, subset: this.#subset });
    if (r.kind === 'refused') {
      this.#done = true;
      const extra: Record<string, string> = {};
      if (r.retryAfterS !== undefined) extra['retry-after'] = String(r.retryAfterS);
      if (r.shed) extra[SHED_HEADER] = r.shed;
      this.#send(immediate(r.status, r.message, r.reason, extra, r.param ?? null));
      this.#o.onPicked?.(performance.now() - t0, r);
      return;
    }
    this.#picked = r;
    this.#tickets = r.tickets;
    if (this.#finished) {
      // the stream ended while the pick was awaited
      this.#o.core.finish(this.#tickets);
      return;
    }
    this.#send(pickedResponse(r.endpoints, {}, this.#o.scores ? r.scores : undefined));
    this.#o.onPicked?.(performance.now() - t0, r);
    if (bodyEnd !== null) for (const c of bodyChunks(body, 'request_body', bodyEnd === 'eos')) this.#send(c);
  }

  /** the answer is complete: its usage against the prediction (once) */
  #account(): void {
    const tap = this.#tap, picked = this.#picked;
    this.#tap = undefined;
    if (!tap || !picked || !this.#o.cache) return;
    const h = this.#respHeaders;
    this.#o.cache.record(predictionFor(picked.route, picked.batch, (n) => headerOf(h, n), this.#served), tap.usage());
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    // a 200 answer whose body never came through here (the proxy sends none): not compared
    if (this.#tap && !this.#bodySeen) this.#o.cache?.uncompared('epp_no_response_body');
    this.#tap = undefined;
    if (this.#tickets.length > 0) this.#o.core.finish(this.#tickets);
    this.#o.onFinished?.();
  }
}
