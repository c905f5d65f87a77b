/**
 * Graceful shutdown of kvgate's HTTP edges (router, shim front, sim engine). `HttpDrain.close(server, drainMs)`:
 *   1. stops accepting (the listener closes; idle keep-alive sockets close; new requests on busy ones get
 *      `connection: close`);
 *   2. lets the responses in flight finish for up to `drainMs`;
 *   3. cuts what is left, cleanly: a response not started answers 503 KVG_SHUTTING_DOWN (OpenAI-shaped); an SSE
 *      stream ends, at an event boundary, with the error event `data: {"error":{…,"code":503,"kvg_code":"KVG_SHUTTING_DOWN"}}`
 *      and `data: [DONE]` — never a bare socket reset; any other body is closed;
 *   4. closes every connection.
 * A relay that copies an upstream SSE body registers its own cut (`SseCutter`), since only it knows where the
 * upstream's events end; other responses get the default cut.
 */
import type { Server, ServerResponse } from 'node:http';
import { errorBody, KvgateError } from './errors.js';

/** time a cut waits for responses to end before every connection is closed */
const CUT_GRACE_MS = 500;

/** The SSE error event (and the stream's end marker) a cut stream ends with. */
export function sseErrorEvent(err: unknown): string {
  return `data: ${JSON.stringify(errorBody(err).body)}\n\ndata: [DONE]\n\n`;
}

export function shuttingDown(who: string): KvgateError {
  return new KvgateError('KVG_SHUTTING_DOWN', `${who} is shutting down: the response was cut`);
}

/**
 * Is `res` an SSE stream? Headers given to writeHead as an object are not in getHeader()'s map (only in the header
 * block already written, Node's `_header`), so both are looked at.
 */
/**
 * Set on every SSE response kvgate sends (router, shim front): a reverse proxy in front must pass each event on as
 * it comes. nginx buffers proxied responses by default (`proxy_buffering on`: a buffer at a time, bursts of events)
 * and turns that off for a response carrying `X-Accel-Buffering: no`; `Cache-Control: no-cache` keeps caches from
 * storing or holding the stream.
 */
export const SSE_HEADERS: Readonly<Record<string, string>> = Object.freeze({ 'x-accel-buffering': 'no', 'cache-control': 'no-cache' });

/** a `content-type` header value (or undici's array of them) naming an SSE body */
export function isEventStream(contentType: unknown): boolean {
  const v = Array.isArray(contentType) ? contentType[0] : contentType;
  return typeof v === 'string' && v.trimStart().toLowerCase().startsWith('text/event-stream');
}

function isSse(res: ServerResponse): boolean {
  const ct = res.getHeader('content-type');
  if (typeof ct === 'string') return ct.includes('text/event-stream');
  const head = (res as unknown as { _header?: unknown })._header;
  return typeof head === 'string' && /^content-type:\s*text\/event-stream/im.test(head);
}

/** true when `chunk` ends an SSE event (a blank line: LF LF, or CR LF CR LF) */
function endsEvent(chunk: Uint8Array): boolean {
  const n = chunk.length;
  return (n >= 2 && chunk[n - 1] === 0x0a && chunk[n - 2] === 0x0a) || (n >= 4 && chunk[n - 1] === 0x0a && chunk[n - 2] === 0x0d && chunk[n - 3] === 0x0a && chunk[n - 4] === 0x0d);
}

/** The default cut: 503 before the headers, the SSE error event on a stream, a close otherwise. */
export function cutResponse(res: ServerResponse, err: unknown, headers: Record<string, string> = {}): void {
  if (res.writableEnded || res.destroyed) return;
  if (!res.headersSent) {
    const { status, body } = errorBody(err);
    res.writeHead(status, { ...headers, 'content-type': 'application/json', connection: 'close' });
    res.end(JSON.stringify(body));
  } else if (isSse(res)) {
    res.end(sseErrorEvent(err));
  } else {
    res.destroy();
  }
}

/**
 * A relay's clean cut of an SSE stream it copies from upstream: the error event goes out at the next event
 * boundary of what was written (at once when the last chunk ended an event, else after the chunk that does, or
 * after `graceMs` with a blank line first). Call `wrote(chunk)` after each chunk written; stop writing once
 * `done`. `stop` ends the upstream read.
 */
export class SseCutter {
  readonly #res: ServerResponse;
  readonly #stop: () => void;
  readonly #graceMs: number;
  #atBoundary = true;
  #pending: unknown;
  #timer: NodeJS.Timeout | undefined;
  done = false;

  constructor(res: ServerResponse, stop: () => void, graceMs = 200) {
    this.#res = res;
    this.#stop = stop;
    this.#graceMs = graceMs;
  }

  wrote(chunk: Uint8Array): void {
    if (chunk.length > 0) this.#atBoundary = endsEvent(chunk);
    if (this.#pending !== undefined && this.#atBoundary) this.#finish('');
  }

  cut(err: unknown): void {
    if (this.done || this.#pending !== undefined || this.#res.writableEnded || this.#res.destroyed) return;
    if (!this.#res.headersSent || !isSse(this.#res)) {
      this.done = true;
      this.#stop();
      cutResponse(this.#res, err);
      return;
    }
    this.#pending = err;
    if (this.#atBoundary) return this.#finish('');
    this.#timer = setTimeout(() => this.#finish('\n\n'), this.#graceMs);
    this.#timer.unref();
  }

  #finish(sep: string): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.#timer);
    if (!this.#res.writableEnded && !this.#res.destroyed) this.#res.end(sep + sseErrorEvent(this.#pending));
    this.#stop();
  }
}

export class HttpDrain {
  readonly #who: string;
  readonly #open = new Set<ServerResponse>();
  readonly #cuts = new WeakMap<ServerResponse, (err: unknown) => void>();
  #waiters: (() => void)[] = [];
  #draining = false;
  readonly #cutHeaders: ((res: ServerResponse) => Record<string, string>) | undefined;

  /**
   * `who` names the process in the cut's error message ("router", "shim", "engine"); `cutHeaders`: extra headers
   * of the default cut's 503 for a response (the router's x-request-id), asked only when a response is cut
   */
  constructor(server: Server, who: string, cutHeaders?: (res: ServerResponse) => Record<string, string>) {
    this.#who = who;
    this.#cutHeaders = cutHeaders;
    server.on('request', (_req, res: ServerResponse) => {
      if (this.#draining) res.shouldKeepAlive = false;
      this.#open.add(res);
      res.once('close', () => {
        this.#open.delete(res);
        if (this.#open.size === 0) this.#waiters.splice(0).forEach((f) => f());
      });
    });
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** responses in flight */
  get active(): number {
    return this.#open.size;
  }

  /** the cut of `res` when the drain ends before it does (default: cutResponse) */
  onCut(res: ServerResponse, cut: (err: unknown) => void): void {
    this.#cuts.set(res, cut);
  }

  #idle(ms: number): Promise<boolean> {
    if (this.#open.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(this.#open.size === 0), ms);
      this.#waiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /**
   * Stop accepting, let in-flight responses finish for up to `drainMs`, cut the rest, close every connection.
   * `beforeCut` runs once the drain time is up, before the cuts (e.g. stop the work that writes to responses).
   */
  async close(server: Server, drainMs: number, beforeCut?: () => void): Promise<{ cut: number }> {
    this.#draining = true;
    const closed = new Promise<void>((r) => server.close(() => r()));
    server.closeIdleConnections();
    let cut = 0;
    const idle = await this.#idle(drainMs);
    beforeCut?.();
    if (!idle) {
      const err = shuttingDown(this.#who);
      for (const res of [...this.#open]) {
        cut++;
        (this.#cuts.get(res) ?? ((e: unknown) => cutResponse(res, e, this.#cutHeaders?.(res))))(err);
      }
      await this.#idle(CUT_GRACE_MS);
    }
    server.closeAllConnections();
    await Promise.race([closed, new Promise((r) => setTimeout(r, CUT_GRACE_MS).unref())]);
    return { cut };
  }
}
