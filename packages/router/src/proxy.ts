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
import { Agent, type Dispatcher } from 'undici';
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

export async function openUpstream(
  agent: Dispatcher,
  origin: string,
  path: string,
  body: Buffer,
  headers: Record<string, string>,
  signal: AbortSignal | UpstreamAbort,
): Promise<Dispatcher.ResponseData> {
  let res: Dispatcher.ResponseData;
  try {
    res = await agent.request({ origin, path, method: 'POST', body, headers, signal });
  } catch (e) {
    throw new UpstreamError(`upstream ${origin} failed: ${(e as Error).message}`, { beforeFirstByte: true, cause: e });
  }
  if (res.statusCode >= 500) {
    await res.body.dump().catch(() => undefined);
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

export function relay(up: Dispatcher.ResponseData, res: ServerResponse, extraHeaders: Record<string, string>, hooks: RelayHooks): (err: unknown) => void {
  const headers: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
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
  body.on('data', (chunk: Buffer) => {
    if (cutter.done) return;
    if (first) {
      first = false;
      hooks.onFirstByte();
    }
    hooks.onChunk?.(chunk);
    const out = filter ? filter.push(chunk) : chunk;
    if (out.length === 0) return;
    if (!res.write(out)) body.pause();
    cutter.wrote(out);
  });
  res.on('drain', () => body.resume());
  body.on('end', () => {
    const tail = filter?.flush();
    if (tail && !cutter.done) res.write(tail);
    res.end();
    end.finish(true);
  });
  body.on('error', (e) => {
    if (cutter.done) return; // our own cut ended the read
    // the upstream broke mid-body: an SSE stream ends with the error event (at an event boundary), else a close
    cutter.cut(new UpstreamError(`upstream stream broke: ${e.message}`, { beforeFirstByte: false, cause: e }));
    end.finish(false);
  });
  res.on('close', () => {
    if (!res.writableFinished) body.destroy();
    end.finish(res.writableFinished);
  });
  return (err) => cutter.cut(err);
}
