/**
 * Upstream HTTP: one undici Agent (keep-alive connection pools per origin) for every worker, and a relay that
 * copies the upstream response to the client chunk by chunk (SSE included) with no buffering.
 *
 * - `openUpstream` resolves once the upstream answered with headers. A connection failure, or a 5xx answer,
 *   rejects with UpstreamError (`beforeFirstByte` true, `status` set for a 5xx): nothing reached the client yet,
 *   so the caller may retry on another worker.
 * - `relay` writes status and headers, then each body chunk as it arrives (respecting the client's backpressure),
 *   calls `onFirstByte` at the first body chunk and `onDone` exactly once at the end, on error or on abort.
 * - `relay` returns the stream's clean cut for a router that shuts down (http-drain.ts): an SSE stream ends with
 *   the error event and `data: [DONE]` at an upstream event boundary, never a bare reset.
 * - A client that disconnects aborts the upstream request through the signal the caller passed in (an
 *   UpstreamAbort: undici takes an EventEmitter that emits 'abort' as a signal, and one costs far less to make
 *   per request than an AbortController).
 */
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { Agent, util as undiciUtil, type Dispatcher } from 'undici';
import { isEventStream, KvgateError, SSE_HEADERS, SseCutter } from '@kvgate/protocol';

export interface UpstreamOptions {
  /** max connections per upstream origin; default 256 */
  connections?: number;
  /** idle keep-alive per socket; default 30000 ms */
  keepAliveTimeoutMs?: number;
  /** TCP connect budget; default 2000 ms */
  connectTimeoutMs?: number;
  /** wait for response headers, and for each body chunk; default 600000 ms (long prefills) */
  upstreamTimeoutMs?: number;
}

export function createAgent(o: UpstreamOptions = {}): Agent {
  return new Agent({
    connections: o.connections ?? 256,
    keepAliveTimeout: o.keepAliveTimeoutMs ?? 30_000,
    keepAliveMaxTimeout: Math.max(o.keepAliveTimeoutMs ?? 30_000, 60_000),
    connect: { timeout: o.connectTimeoutMs ?? 2000, noDelay: true },
    headersTimeout: o.upstreamTimeoutMs ?? 600_000,
    bodyTimeout: o.upstreamTimeoutMs ?? 600_000,
  });
}

/** A one-shot abort signal for one upstream request (see the module comment). */
export class UpstreamAbort extends EventEmitter {
  aborted = false;
  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.emit('abort');
  }
}

export class UpstreamError extends KvgateError {
  readonly beforeFirstByte: boolean;
  readonly status: number | undefined;
  constructor(message: string, opts: { beforeFirstByte: boolean; status?: number; cause?: unknown }) {
    super('KVG_UPSTREAM', message, { cause: opts.cause });
    this.name = 'UpstreamError';
    this.beforeFirstByte = opts.beforeFirstByte;
    this.status = opts.status;
  }
}

/** The upstream's answer at its headers; `relay` (or `dump`) reads its body. */
export interface UpstreamResponse {
  statusCode: number;
  /** as undici parses them: lower-case names, repeated headers as arrays */
  headers: Record<string, string | string[] | undefined>;
  body: UpstreamBody;
}

/** What reads an upstream body: chunks as they come (false = pause until `resume()`), then `end` or `error` once. */
export interface BodyConsumer {
  data(chunk: Buffer): boolean;
  end(): void;
  error(err: Error): void;
}

/** dump(): at most this much of an unwanted body is read (and the connection kept); past it the request is cut */
const DUMP_LIMIT = 128 * 1024;

/**
 * One upstream request through undici's dispatch API (issue 14): no Promise-per-body, Readable stream or async
 * resource per request as `request()` makes, the body handed to one consumer chunk by chunk (undici's parser is
 * paused when the client pushes back). Chunks that arrive before `consume` (undici parses a small answer's body in
 * the same turn as its headers) wait in a queue. `end`/`error` reach the consumer in a later tick, as a Readable's do.
 */
export class UpstreamBody {
  #resolve: (r: UpstreamResponse) => void;
  #reject: (e: Error) => void;
  #abortFn: ((reason?: Error) => void) | null = null;
  #resumeFn: (() => void) | null = null;
  #headersIn = false;
  #abortedEarly: Error | null = null;
  #consumer: BodyConsumer | null = null;
  #queued: Buffer[] = [];
  #paused = false;
  #ended = false;
  #failed: Error | null = null;
  #tailSent = false;
  #destroyed = false;
  readonly #onAbort: () => void;
  #signal: AbortSignal | UpstreamAbort | null;

  constructor(resolve: (r: UpstreamResponse) => void, reject: (e: Error) => void, signal: AbortSignal | UpstreamAbort) {
    this.#resolve = resolve;
    this.#reject = reject;
    this.#signal = signal;
    this.#onAbort = () => this.#signalled();
    if (signal instanceof EventEmitter) signal.once('abort', this.#onAbort);
    else signal.addEventListener('abort', this.#onAbort, { once: true });
    if (signal.aborted) this.#signalled();
  }

  /** the request is over for us: the caller's signal no longer reaches it (one UpstreamAbort serves every retry) */
  #detach(): void {
    const s = this.#signal;
    if (!s) return;
    this.#signal = null;
    if (s instanceof EventEmitter) s.removeListener('abort', this.#onAbort);
    else s.removeEventListener('abort', this.#onAbort);
  }

  /** the caller's signal: before the headers the request fails (openUpstream rejects); after, the body errors */
  #signalled(): void {
    const reason = new Error('upstream request aborted');
    if (!this.#headersIn) {
      if (this.#abortFn) this.#abortFn(reason);
      else this.#abortedEarly = reason;
      return;
    }
    if (this.#destroyed || this.#ended || this.#failed) return;
    this.#fail(reason);
    this.#abortFn?.(reason);
  }

  // ---- undici's (legacy) dispatch handler ------------------------------------------------------------------
  onConnect(abort: (reason?: Error) => void): void {
    if (this.#abortedEarly) abort(this.#abortedEarly);
    else this.#abortFn = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true; // 1xx: informational, as request() without onInfo
    this.#headersIn = true;
    this.#resumeFn = resume;
    this.#resolve({ statusCode, headers: undiciUtil.parseHeaders(rawHeaders) as UpstreamResponse['headers'], body: this });
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.#destroyed) return true;
    const c = this.#consumer;
    if (c && !this.#paused && this.#queued.length === 0) {
      if (c.data(chunk)) return true;
      this.#paused = true;
      return false;
    }
    this.#queued.push(chunk);
    return !this.#paused;
  }

  onComplete(): void {
    this.#ended = true;
    this.#tail();
  }

  onError(err: Error): void {
    if (!this.#headersIn) {
      // settled before any answer: a later abort signal has nothing to do
      this.#headersIn = true;
      this.#failed = err;
      this.#detach();
      this.#reject(err);
      return;
    }
    if (this.#destroyed || this.#ended || this.#failed) return;
    this.#fail(err);
  }

  // ---- the body, for its one consumer -------------------------------------------------------------------------
  /** start reading: queued chunks go out in the next tick, then each as it arrives */
  consume(c: BodyConsumer): void {
    this.#consumer = c;
    process.nextTick(flushBody, this);
  }

  /** after the consumer's `data` returned false */
  resume(): void {
    if (!this.#paused || this.#destroyed) return;
    this.#paused = false;
    this.flush();
    if (!this.#paused && this.#queued.length === 0) this.#resumeFn?.();
  }

  /** stop reading and cut the upstream request if it is still going (no `end` or `error` follows) */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#queued.length = 0;
    this.#detach();
    if (!this.#ended && !this.#failed) this.#abortFn?.(new Error('upstream body destroyed'));
  }

  /** read and drop the body (up to DUMP_LIMIT, then cut): the connection stays reusable for a small answer */
  dump(): Promise<void> {
    return new Promise<void>((resolve) => {
      let size = 0;
      const body = this;
      this.consume({
        data(chunk: Buffer): boolean {
          size += chunk.length;
          if (size > DUMP_LIMIT) {
            body.destroy();
            resolve();
          }
          return true;
        },
        end: resolve,
        error: () => resolve(),
      });
    });
  }

  /** queued chunks to the consumer while it takes them; then the end or error */
  flush(): void {
    const c = this.#consumer;
    if (!c || this.#destroyed) return;
    while (this.#queued.length > 0 && !this.#paused) {
      if (!c.data(this.#queued.shift()!)) this.#paused = true;
      if (this.#destroyed) return;
    }
    this.#tail();
  }

  #fail(err: Error): void {
    this.#failed = err;
    this.#queued.length = 0; // a Readable destroyed with an error drops what was not read
    this.#tail();
  }

  /** end or error to the consumer, in a later tick, once nothing is queued (and not paused, for an end) */
  #tail(): void {
    if (this.#tailSent || !this.#consumer || this.#destroyed) return;
    if (this.#failed || (this.#ended && this.#queued.length === 0 && !this.#paused)) {
      this.#tailSent = true;
      process.nextTick(tailBody, this);
    }
  }

  /** the end or error, delivered (tailBody) */
  deliverTail(): void {
    this.#detach();
    const c = this.#consumer;
    if (!c || this.#destroyed) return;
    if (this.#failed) c.error(this.#failed);
    else c.end();
  }
}

function flushBody(b: UpstreamBody): void {
  b.flush();
}

function tailBody(b: UpstreamBody): void {
  b.deliverTail();
}

export async function openUpstream(
  agent: Dispatcher,
  origin: string,
  path: string,
  body: Buffer,
  headers: Record<string, string>,
  signal: AbortSignal | UpstreamAbort,
): Promise<UpstreamResponse> {
  let res: UpstreamResponse;
  try {
    res = await new Promise<UpstreamResponse>((resolve, reject) => {
      agent.dispatch({ origin, path, method: 'POST', body, headers }, new UpstreamBody(resolve, reject, signal) as unknown as Dispatcher.DispatchHandler);
    });
  } catch (e) {
    throw new UpstreamError(`upstream ${origin} failed: ${(e as Error).message}`, { beforeFirstByte: true, cause: e });
  }
  if (res.statusCode >= 500) {
    await res.body.dump();
    throw new UpstreamError(`upstream ${origin} answered ${res.statusCode}`, { beforeFirstByte: true, status: res.statusCode });
  }
  return res;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade', 'te', 'trailer']);

export interface RelayHooks {
  onFirstByte(): void;
  /** every body chunk, as it is passed on (read only: the diag usage tap) */
  onChunk?(chunk: Buffer): void;
  /** rewrites what the client gets, chunk by chunk (usage-strip.ts: the usage chunk the client did not ask for) */
  filter?: { push(chunk: Buffer): Buffer; flush(): Buffer | null };
  /** `ok` false when the upstream body failed or the client went away first */
  onDone(ok: boolean): void;
}

export function relay(up: UpstreamResponse, res: ServerResponse, extraHeaders: Record<string, string>, hooks: RelayHooks): (err: unknown) => void {
  const headers: Record<string, string | string[]> = {};
  for (const k in up.headers) {
    const v = up.headers[k];
    if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
  }
  Object.assign(headers, extraHeaders);
  const ct = up.headers['content-type'];
  if (isEventStream(ct)) Object.assign(headers, SSE_HEADERS);
  res.writeHead(up.statusCode, headers);
  // A stream's headers go out now: a streaming client sees the response start before the first token. A whole
  // JSON answer's go out with its body, one write instead of two (one packet less for the client to read: the
  // router's added latency, issue 14).
  if (typeof ct !== 'string' || !ct.startsWith('application/json')) res.flushHeaders();
  const body = up.body;
  const filter = hooks.filter;
  let first = true;
  // onDone exactly once (an object's method: a named closure per request costs a defineProperty under tsx's keepNames)
  const end = {
    done: false,
    finish(ok: boolean): void {
      if (end.done) return;
      end.done = true;
      hooks.onDone(ok);
    },
  };
  const cutter = new SseCutter(res, () => body.destroy());
  res.on('drain', () => body.resume());
  res.on('close', () => {
    if (!res.writableFinished) body.destroy();
    end.finish(res.writableFinished);
  });
  body.consume({
    data(chunk: Buffer): boolean {
      if (cutter.done) return true;
      if (first) {
        first = false;
        hooks.onFirstByte();
      }
      hooks.onChunk?.(chunk);
      const out = filter ? filter.push(chunk) : chunk;
      if (out.length === 0) return true;
      const more = res.write(out);
      cutter.wrote(out);
      return more;
    },
    end(): void {
      const tail = filter?.flush();
      if (tail && !cutter.done) res.write(tail);
      res.end();
      end.finish(true);
    },
    error(e: Error): void {
      if (cutter.done) return; // our own cut ended the read
      // the upstream broke mid-body: an SSE stream ends with the error event (at an event boundary), else a close
      cutter.cut(new UpstreamError(`upstream stream broke: ${e.message}`, { beforeFirstByte: false, cause: e }));
      end.finish(false);
    },
  });
  return (err) => cutter.cut(err);
}
