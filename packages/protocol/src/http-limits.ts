/**
 * Timeouts and caps every kvgate HTTP server applies (router, shim, indexer, sim engine), so that a slow or
 * greedy client cannot hold sockets open:
 *   - headers must arrive within `headersTimeoutMs`, and the whole request (headers + body) within
 *     `bodyTimeoutMs`: past either the client gets 408 `KVG_REQUEST_TIMEOUT` (OpenAI-shaped JSON, unless the
 *     response has already started) and the socket is closed. The response itself is not bounded (long SSE
 *     generations are fine): only receiving the request is;
 *   - an idle keep-alive socket is closed after `keepAliveTimeoutMs`;
 *   - at most `maxConnections` sockets at once: one more is accepted and closed at once (Node's
 *     `server.maxConnections`), counted by the `drop` event.
 * Node checks the two request timeouts on one shared sweep per server (`connectionsCheckingInterval`, 30 s by
 * default: far too coarse, so it must be set at `createServer`), not a timer per request; the sweep runs at a
 * quarter of the shorter bound (50 ms … 1 s), so a timeout fires within 1.25 × its bound (bounds of 200 ms and
 * more). A request counts as received once its last body byte arrived: Node then stops checking it, so the
 * response (a long SSE stream) is never cut by these bounds.
 *
 *   const server = createServer(httpServerOptions(limits), handler);
 *   applyHttpLimits(server, limits);
 */
import type { Server, ServerOptions } from 'node:http';
import type { Socket } from 'node:net';
import { errorBody, KvgateError } from './errors.js';
import { logger } from './log.js';

const log = logger('http-limits');

export interface HttpLimits {
  /** request headers must arrive within this, ms (default 10,000) */
  headersTimeoutMs?: number;
  /** the whole request, body included, must arrive within this, ms (default 30,000) */
  bodyTimeoutMs?: number;
  /** an idle keep-alive connection is closed after this (+ Node's 1 s grace), ms (default 5,000; the router and sim engine pass 65,000) */
  keepAliveTimeoutMs?: number;
  /** concurrent connections accepted; more are closed at once (default 10,000; 0 = no cap) */
  maxConnections?: number;
}

export type ResolvedHttpLimits = Required<HttpLimits>;

export const HTTP_LIMIT_DEFAULTS: ResolvedHttpLimits = {
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 10_000,
};

function bound(v: number | undefined, name: string, dflt: number, allowZero: boolean): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 0 || (!allowZero && v === 0)) throw new KvgateError('KVG_CONFIG', `${name} must be a ${allowZero ? 'non-negative' : 'positive'} integer, got ${v}`);
  return v;
}

/** validated limits with defaults (`base` overrides the shared defaults, e.g. a longer keep-alive) */
export function resolveHttpLimits(l: HttpLimits = {}, base: HttpLimits = {}): ResolvedHttpLimits {
  const d = { ...HTTP_LIMIT_DEFAULTS, ...base };
  const headersTimeoutMs = bound(l.headersTimeoutMs, 'header timeout', d.headersTimeoutMs, false);
  const bodyTimeoutMs = bound(l.bodyTimeoutMs, 'body timeout', d.bodyTimeoutMs, false);
  return {
    // Node requires headersTimeout ≤ requestTimeout
    headersTimeoutMs: Math.min(headersTimeoutMs, bodyTimeoutMs),
    bodyTimeoutMs,
    // 0 would not mean "no keep-alive" to Node but "idle sockets never time out": refused
    keepAliveTimeoutMs: bound(l.keepAliveTimeoutMs, 'keep-alive timeout', d.keepAliveTimeoutMs, false),
    maxConnections: bound(l.maxConnections, 'max connections', d.maxConnections, true),
  };
}

/** options for `http.createServer` (the sweep interval can only be set there) */
export function httpServerOptions(limits: ResolvedHttpLimits, extra: ServerOptions = {}): ServerOptions {
  const sweep = Math.max(50, Math.min(1000, Math.floor(Math.min(limits.headersTimeoutMs, limits.bodyTimeoutMs) / 4)));
  return {
    ...extra,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.bodyTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionsCheckingInterval: sweep,
  };
}

const TIMEOUT_CODE = 'ERR_HTTP_REQUEST_TIMEOUT';

/** a raw OpenAI-shaped error response (written straight to the socket: no handler's response has started) */
function rawError(status: number, reason: string, err: KvgateError): string {
  const json = JSON.stringify(errorBody(err).body);
  return `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\nconnection: close\r\n\r\n${json}`;
}

/**
 * Applies the limits to a server made with `httpServerOptions` (sets them again, for servers made elsewhere):
 * the timeouts, the connection cap, and a `clientError` handler that answers a timed-out request with an
 * OpenAI-shaped 408 and a malformed one with 400, then closes the socket.
 */
export function applyHttpLimits(server: Server, limits: ResolvedHttpLimits, name = 'http'): void {
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = limits.bodyTimeoutMs;
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  // 0 = no cap (Node's own default is Infinity; 0 there would refuse every connection)
  server.maxConnections = limits.maxConnections > 0 ? limits.maxConnections : Infinity;
  const timeoutMsg = rawError(
    408,
    'Request Timeout',
    new KvgateError('KVG_REQUEST_TIMEOUT', `the request was not received in time (headers within ${limits.headersTimeoutMs} ms, the whole request within ${limits.bodyTimeoutMs} ms)`),
  );
  const malformed = rawError(400, 'Bad Request', new KvgateError('KVG_BAD_REQUEST', 'malformed HTTP request'));
  const tooLarge = rawError(431, 'Request Header Fields Too Large', new KvgateError('KVG_BAD_REQUEST', 'request headers too large'));
  let dropped = 0;
  server.on('drop', () => {
    if (dropped++ % 100 === 0) log.warn({ server: name, maxConnections: limits.maxConnections, dropped }, 'connection refused: at the connection cap');
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    const timedOut = err.code === TIMEOUT_CODE;
    // a response already under way must not be corrupted: only a socket with nothing written gets an answer
    const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    const answer = !socket.writable || inFlight?.headersSent || err.code === 'ECONNRESET' ? undefined : timedOut ? timeoutMsg : err.code === 'HPE_HEADER_OVERFLOW' ? tooLarge : malformed;
    if (timedOut) log.debug({ server: name }, 'request not received in time: 408, socket closed');
    if (answer === undefined) {
      socket.destroy();
      return;
    }
    // close once the answer is flushed; a peer that reads nothing does not keep the socket either
    const t = setTimeout(() => socket.destroy(), 1000);
    t.unref();
    socket.end(answer, () => {
      clearTimeout(t);
      socket.destroy();
    });
  });
}
