/**
 * Structured logs: pino, JSON lines on stderr (stdout stays free for tables and --json output).
 * Level from KVGATE_LOG_LEVEL (default info; the test runner sets warn).
 */
import pino, { type Logger } from 'pino';

export type { Logger };

let root: Logger | undefined;

export function logger(component: string, bindings: Record<string, unknown> = {}): Logger {
  root ??= pino({ level: process.env.KVGATE_LOG_LEVEL ?? 'info', base: { pid: process.pid } }, pino.destination(2));
  return root.child({ component, ...bindings });
}
