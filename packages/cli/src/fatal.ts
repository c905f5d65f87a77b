/**
 * Fatal errors of `kvgate <command>`: every error a command cannot start (or go on) with becomes one line on
 * stderr, `kvgate <cmd>: <what> (<hint>) [KVG_*]`, and an exit code — never a stack trace (KVGATE_DEBUG=1 adds
 * it). One table, so every command says the same thing about the same failure:
 *
 *   KVG_BAD_FLAG         exit 2  a flag that does not parse, or a value out of range
 *   KVG_CONFIG           exit 2  options that do not fit together (a component's own validation)
 *   KVG_PORT_IN_USE      exit 1  a listen or bind on an address something else holds (HTTP or ZMQ)
 *   KVG_ADDRESS          exit 1  an address that cannot be listened on (permission, not local)
 *   KVG_NATS_AUTH        exit 1  NATS refused the credentials (or TLS failed)
 *   KVG_NATS_UNREACHABLE exit 1  no NATS server answered within --nats-connect-timeout
 *   KVG_NATS             exit 1  NATS answered but the bus could not be set up (JetStream off, timeouts)
 *   KVG_FILE             exit 1  a file or directory named by a flag that cannot be read or written
 *   KVG_STARTUP          exit 1  anything else
 */
import { KvgateError } from '@kvgate/protocol';

export type FatalCode = 'KVG_BAD_FLAG' | 'KVG_CONFIG' | 'KVG_PORT_IN_USE' | 'KVG_ADDRESS' | 'KVG_NATS_AUTH' | 'KVG_NATS_UNREACHABLE' | 'KVG_NATS' | 'KVG_FILE' | 'KVG_STARTUP';

export interface Fatal {
  code: FatalCode;
  /** what went wrong, one line */
  what: string;
  /** what to do about it */
  hint: string;
  exitCode: number;
}

/** A bad flag value found by a command (flags.ts throws it too). */
export class FlagError extends Error {
  readonly code = 'KVG_BAD_FLAG';
  constructor(message: string) {
    super(message);
    this.name = 'FlagError';
  }
}

const firstLine = (s: string): string => s.split('\n')[0]!.trim();

interface SysError {
  code?: unknown;
  errno?: unknown;
  syscall?: unknown;
  address?: unknown;
  port?: unknown;
  path?: unknown;
  message?: unknown;
}

/** "host:port" of a failed listen: Node's net errors carry address and port, ZMQ's carry the endpoint */
function where(e: SysError): string {
  if (typeof e.address === 'string' && e.port !== undefined) return `${e.address}:${String(e.port)}`;
  if (typeof e.address === 'string') return e.address;
  const m = /((?:\[[^\]]*\]|[\w.*-]+):\d+)\s*$/.exec(String(e.message ?? ''));
  return m?.[1] ?? 'the address';
}

export function classify(cmd: string, err: unknown): Fatal {
  const e = (err ?? {}) as SysError;
  const msg = firstLine(err instanceof Error ? err.message : String(err));
  const code = typeof e.code === 'string' ? e.code : '';
  if (code.startsWith('ERR_PARSE_ARGS') || err instanceof FlagError) {
    return { code: 'KVG_BAD_FLAG', what: msg, hint: `kvgate ${cmd} --help lists the options`, exitCode: 2 };
  }
  if (code === 'EADDRINUSE' || /address already in use/i.test(msg)) {
    return { code: 'KVG_PORT_IN_USE', what: `${where(e)} is already in use`, hint: 'stop what holds it, or choose another port with the flag that set it', exitCode: 1 };
  }
  if (typeof e.path === 'string' && (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR' || code === 'EACCES' || code === 'EPERM')) {
    return { code: 'KVG_FILE', what: msg, hint: 'check the path given by the flag', exitCode: 1 };
  }
  if (code === 'EACCES' || code === 'EADDRNOTAVAIL' || code === 'EPERM') {
    return { code: 'KVG_ADDRESS', what: `cannot listen on ${where(e)}: ${msg}`, hint: 'ports below 1024 need privileges; a bind address must be one of this host\'s', exitCode: 1 };
  }
  if (err instanceof KvgateError) {
    if (err.code === 'KVG_CONFIG') return { code: 'KVG_CONFIG', what: msg, hint: `kvgate ${cmd} --help lists the options`, exitCode: 2 };
    if (err.code === 'KVG_BUS' && /cannot connect to NATS.*(rejected the credentials|TLS|certificate|SSL)/i.test(msg)) {
      return { code: 'KVG_NATS_AUTH', what: msg, hint: 'check --nats-user/--nats-password, --nats-token, --nats-nkey, --nats-creds and --nats-tls-* (or the URL\'s user:pass)', exitCode: 1 };
    }
    if (err.code === 'KVG_BUS' && /cannot connect to NATS/.test(msg)) {
      return { code: 'KVG_NATS_UNREACHABLE', what: msg, hint: 'is nats-server running (with -js) at that URL? check --nats, or wait longer with --nats-connect-timeout', exitCode: 1 };
    }
    if (err.code === 'KVG_BUS' || err.code === 'KVG_TIMEOUT' || err.code === 'KVG_NO_RESPONDERS' || err.code === 'KVG_BUS_CLOSED') {
      return { code: 'KVG_NATS', what: `NATS: ${msg}`, hint: 'kvgate needs JetStream: run nats-server with -js, and check its logs', exitCode: 1 };
    }
  }
  if (code === 'ENOENT') return { code: 'KVG_FILE', what: msg, hint: 'check the path given by the flag', exitCode: 1 };
  return { code: 'KVG_STARTUP', what: msg || 'failed', hint: 'KVGATE_DEBUG=1 prints the stack', exitCode: 1 };
}

export function fatalLine(cmd: string, f: Fatal): string {
  return `kvgate ${cmd}: ${f.what} (${f.hint}) [${f.code}]`;
}

/** Print `err` as one line (plus its stack under KVGATE_DEBUG=1); the exit code to return. */
export function reportFatal(cmd: string, err: unknown): number {
  const f = classify(cmd, err);
  process.stderr.write(fatalLine(cmd, f) + '\n');
  if (process.env.KVGATE_DEBUG === '1' && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
  return f.exitCode;
}
