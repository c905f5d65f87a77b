/**
 * Every error kvgate raises on purpose is a KvgateError with a stable `code` (KVG_*).
 * The HTTP edges map codes to OpenAI-shaped errors with `httpStatus`, in vLLM's shape (vllm
 * entrypoints/openai/engine/protocol.py ErrorInfo: message, type, param, numeric `code` = the HTTP status) with
 * kvgate's own code beside it under `kvg_code`:
 *   {"error":{"message":"…","type":"invalid_request_error","param":"max_tokens","code":400,"kvg_code":"KVG_BAD_REQUEST"}}
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
  /** the request field at fault (the error body's `param`, as vLLM's VLLMValidationError.parameter) */
  readonly param: string | undefined;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; param?: string }) {
    super(message, options);
    this.name = 'KvgateError';
    this.code = code;
    this.param = options?.param;
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

/** The error body: vLLM's ErrorInfo fields plus kvgate's KVG_* code under `kvg_code`. */
export interface ErrorInfo {
  message: string;
  type: string;
  /** the request field at fault, or null */
  param: string | null;
  /** the HTTP status, a number (vLLM's `code`) */
  code: number;
  /** kvgate's stable code */
  kvg_code: string;
}

export interface ErrorBodyOptions {
  /**
   * `type` as vLLM's create_error_response names it (BadRequestError, NotFoundError, NotImplementedError,
   * InternalServerError) instead of OpenAI's (invalid_request_error, not_found_error, server_error): the
   * simulated engine's, which stands in for vLLM.
   */
  vllmTypes?: boolean;
}

function errorType(status: number, vllm: boolean): string {
  if (vllm) return status === 404 ? 'NotFoundError' : status === 501 ? 'NotImplementedError' : status >= 500 ? 'InternalServerError' : 'BadRequestError';
  return status >= 500 ? 'server_error' : status === 404 ? 'not_found_error' : 'invalid_request_error';
}

/** OpenAI-shaped error body in vLLM's shape: {error:{message,type,param,code:<status>,kvg_code}}. Never includes a stack. */
export function errorBody(err: unknown, options: ErrorBodyOptions = {}): { status: number; body: { error: ErrorInfo } } {
  const vllm = options.vllmTypes === true;
  if (err instanceof KvgateError) {
    const status = err.httpStatus;
    return { status, body: { error: { message: err.message, type: errorType(status, vllm), param: err.param ?? null, code: status, kvg_code: err.code } } };
  }
  return { status: 500, body: { error: { message: 'internal error', type: errorType(500, vllm), param: null, code: 500, kvg_code: 'KVG_INTERNAL' } } };
}
