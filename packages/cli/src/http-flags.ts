/**
 * The HTTP server bounds every serving command takes (router, shim, indexer, sim-engine): header and body read
 * timeouts, keep-alive idle timeout and a connection cap (protocol/src/http-limits.ts applies them; a slow request
 * gets 408 KVG_REQUEST_TIMEOUT and its socket is closed). Absent flags keep each server's defaults.
 */
import type { HttpLimits } from '@kvgate/protocol';
import { FlagError } from './fatal.js';
import { intFlag, type FlagSpec } from './flags.js';

export const HTTP_LIMITS_SPEC = {
  'http-header-timeout-ms': { type: 'string', help: 'request headers must arrive within this (default 10000); past it: 408, socket closed' },
  'http-body-timeout-ms': { type: 'string', help: 'the whole request, body included, must arrive within this (default 30000); past it: 408' },
  'http-keepalive-timeout-ms': { type: 'string', help: 'close an idle keep-alive connection after this (default 5000; router and sim engine 65000)' },
  'http-max-connections': { type: 'string', help: 'concurrent connections accepted, more are closed at once (default 10000; 0 = no cap)' },
} as const satisfies Record<string, FlagSpec>;

export type HttpLimitFlags = { [K in keyof typeof HTTP_LIMITS_SPEC]?: string | undefined };

function whole(v: string | undefined, name: string, min: number): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = intFlag(v, name, 0);
  if (!Number.isSafeInteger(n) || n < min) throw new FlagError(`--${name} must be a whole number ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** the limits named by the flags (only those given: the server fills the rest with its defaults) */
export function httpLimitsFrom(f: HttpLimitFlags): HttpLimits {
  const headersTimeoutMs = whole(f['http-header-timeout-ms'], 'http-header-timeout-ms', 1);
  const bodyTimeoutMs = whole(f['http-body-timeout-ms'], 'http-body-timeout-ms', 1);
  const keepAliveTimeoutMs = whole(f['http-keepalive-timeout-ms'], 'http-keepalive-timeout-ms', 1);
  const maxConnections = whole(f['http-max-connections'], 'http-max-connections', 0);
  return {
    ...(headersTimeoutMs !== undefined ? { headersTimeoutMs } : {}),
    ...(bodyTimeoutMs !== undefined ? { bodyTimeoutMs } : {}),
    ...(keepAliveTimeoutMs !== undefined ? { keepAliveTimeoutMs } : {}),
    ...(maxConnections !== undefined ? { maxConnections } : {}),
  };
}
