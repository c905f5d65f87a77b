/**
 * How a long-running command (router, indexer, shim, sim-engine) lives and ends, in one place:
 *   - `--drain-ms` and `--nats-connect-timeout`, the flags every one of them takes (spread into its SPEC);
 *   - `serveUntilSignal`: waits for SIGTERM or SIGINT, then runs the command's stop (stop accepting, drain or cut
 *     in-flight work within drain-ms, deregister, close the bus) and returns exit code 0. Every step of the way
 *     out is bounded: past drain-ms + STOP_SLACK_MS the process exits 0 whatever still waits (a NATS server or an
 *     engine that is gone), and a second signal exits at once with 1.
 */
import { logger } from '@kvgate/protocol';
import { FlagError } from './fatal.js';
import { intFlag, type FlagSpec } from './flags.js';

/** what the way out may take beyond drain-ms (deregistration, bus close, sockets): the default drain + this < 10 s */
const STOP_SLACK_MS = 4000;

export const LIFECYCLE_SPEC = {
  'drain-ms': { type: 'string', default: '5000', help: 'on SIGTERM/SIGINT: let in-flight requests finish this long, then cut them (SSE: an error event)' },
} as const satisfies Record<string, FlagSpec>;

export const NATS_CONNECT_SPEC = {
  'nats-connect-timeout': { type: 'string', default: '5000', help: 'give up starting when no NATS server answers within this many ms' },
} as const satisfies Record<string, FlagSpec>;

function msFlag(v: string | undefined, name: string, def: number): number {
  const n = intFlag(v, name, def);
  if (!Number.isInteger(n) || n < 0) throw new FlagError(`--${name} must be a whole number of ms ≥ 0, got ${JSON.stringify(v)}`);
  return n;
}

export function drainMs(f: { 'drain-ms'?: string | undefined }): number {
  return msFlag(f['drain-ms'], 'drain-ms', 5000);
}

export function natsConnectTimeoutMs(f: { 'nats-connect-timeout'?: string | undefined }): number {
  return msFlag(f['nats-connect-timeout'], 'nats-connect-timeout', 5000);
}

/** `p`, or undefined once `ms` passed (logged): a step on the way out never holds the process */
export async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T | undefined> {
  let t: NodeJS.Timeout | undefined;
  const late = Symbol('late');
  const r = await Promise.race([p.catch((err: unknown) => (logger('cli').warn({ err: String(err), step: what }, 'shutdown step failed'), undefined)), new Promise<typeof late>((res) => (t = setTimeout(() => res(late), ms)))]);
  clearTimeout(t);
  if (r === late) {
    logger('cli').warn({ step: what, ms }, 'shutdown step did not finish in time; going on');
    return undefined;
  }
  return r as T | undefined;
}

/** resolves with the first SIGTERM or SIGINT */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (s: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(s);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

/**
 * Serve until a signal, then `stop(drainMs)`; 0 once it is done (or once drain-ms + slack passed: then the process
 * exits 0 by itself). Logs one line when the signal comes and one when the process is stopped.
 */
export async function serveUntilSignal(cmd: string, drain: number, stop: (drainMs: number) => Promise<void>): Promise<number> {
  const log = logger(`cli.${cmd}`);
  const signal = await untilSignal();
  const t0 = Date.now();
  log.info({ signal, drainMs: drain }, 'shutting down: no new work, draining');
  const again = () => {
    log.warn('second signal: exiting now');
    process.exit(1);
  };
  process.once('SIGINT', again);
  process.once('SIGTERM', again);
  const hard = setTimeout(() => {
    log.warn({ ms: Date.now() - t0 }, 'shutdown did not finish in time: exiting');
    process.exit(0);
  }, drain + STOP_SLACK_MS);
  hard.unref();
  try {
    await stop(drain);
  } catch (err) {
    log.warn({ err: String(err) }, 'shutdown step failed');
  }
  clearTimeout(hard);
  process.off('SIGINT', again);
  process.off('SIGTERM', again);
  log.info({ ms: Date.now() - t0 }, 'stopped');
  return 0;
}
