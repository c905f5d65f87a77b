/**
 * Every error kvgate raises on purpose is a KvgateError with a stable `code` (KVG_*).
 * The HTTP edges map codes to OpenAI-shaped errors with `httpStatus`.
 */
export type ErrorCode =
  | 'KVG_BAD_REQUEST'
  | 'KVG_BAD_JSON'
  | 'KVG_BODY_TOO_LARGE'
  | 'KVG_UNKNOWN_MODEL'
  | 'KVG_UNKNOWN_WORKER'
  | 'KVG_NO_WORKER'
  | 'KVG_UPSTREAM'
  | 'KVG_TIMEOUT'
  | 'KVG_DECODE'
  | 'KVG_BUS'
  | 'KVG_BUS_CLOSED'
  | 'KVG_NO_RESPONDERS'
  | 'KVG_NOT_FOUND'
  | 'KVG_BAD_DESCRIPTOR'
  | 'KVG_OVERLOADED'
  | 'KVG_QUEUE_TIMEOUT'
  | 'KVG_CONFIG'
  | 'KVG_NOT_READY'
  | 'KVG_SHUTTING_DOWN'
  | 'KVG_ENGINE_DOWN'
  | 'KVG_BAD_PREFILL_TARGET'
  | 'KVG_REQUEST_TIMEOUT'
  | 'KVG_UNAUTHORIZED'
  | 'KVG_RATE_LIMITED'
  | 'KVG_INTERNAL';

const STATUS: Record<ErrorCode, number> = {
  KVG_BAD_REQUEST: 400,
  KVG_BAD_JSON: 400,
  KVG_BODY_TOO_LARGE: 413,
  KVG_UNKNOWN_MODEL: 404,
  KVG_UNKNOWN_WORKER: 404,
  KVG_NO_WORKER: 503,
  KVG_UPSTREAM: 502,
  KVG_TIMEOUT: 504,
  KVG_DECODE: 400,
  KVG_BUS: 503,
  KVG_BUS_CLOSED: 503,
  KVG_NO_RESPONDERS: 503,
  KVG_NOT_FOUND: 404,
  KVG_BAD_DESCRIPTOR: 400,
  KVG_OVERLOADED: 429,
  /** every worker of the pool stayed over its busy thresholds past the flow-control queue's deadline (router flow-control.ts) */
  KVG_QUEUE_TIMEOUT: 503,
  KVG_CONFIG: 400,
  KVG_NOT_READY: 503,
  /** the process is draining after SIGTERM: a request it could not finish in time */
  KVG_SHUTTING_DOWN: 503,
  /** the shim's engine does not answer its health probe */
  KVG_ENGINE_DOWN: 503,
  /** x-prefiller-host-port names no registered, live prefill worker (the shim sends nothing there) */
  KVG_BAD_PREFILL_TARGET: 403,
  /** the request's headers or body did not arrive within the server's bound (http-limits.ts); the socket is closed */
  KVG_REQUEST_TIMEOUT: 408,
  /** a call without valid credentials (a shim call without a valid cluster signature) */
  KVG_UNAUTHORIZED: 401,
  /** a key (or client) over its request or prompt-token rate; the answer carries Retry-After */
  KVG_RATE_LIMITED: 429,
  KVG_INTERNAL: 500,
};

export class KvgateError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KvgateError';
    this.code = code;
  }
  get httpStatus(): number {
    return STATUS[this.code];
  }
}

/** A payload that is not what its format says it is (malformed msgpack, wrong shape). */
export class DecodeError extends KvgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KVG_DECODE', message, options);
    this.name = 'DecodeError';
  }
}

/** The bus failed (connection lost, closed, timed out, nobody subscribed to a request's subject). */
export class BusError extends KvgateError {
  constructor(code: 'KVG_BUS' | 'KVG_BUS_CLOSED' | 'KVG_NO_RESPONDERS' | 'KVG_TIMEOUT' | 'KVG_NOT_FOUND', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'BusError';
  }
}

/** OpenAI-shaped error body: {error:{message,type,code}}. Never includes a stack. */
export function errorBody(err: unknown): { status: number; body: { error: { message: string; type: string; code: string } } } {
  if (err instanceof KvgateError) {
    const status = err.httpStatus;
    const type = status >= 500 ? 'server_error' : status === 404 ? 'not_found_error' : 'invalid_request_error';
    return { status, body: { error: { message: err.message, type, code: err.code } } };
  }
  return { status: 500, body: { error: { message: 'internal error', type: 'server_error', code: 'KVG_INTERNAL' } } };
}
