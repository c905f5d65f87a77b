/**
 * Structured logs: pino, JSON lines on stderr (stdout stays free for tables and --json output).
 * Level from KVGATE_LOG_LEVEL (default info; the test runner sets warn).
 */
import pino, { type Logger } from 'pino';

export type { Logger };

let root: Logger | undefined;

export function logger(component: string, bindings: Record<string, unknown> = {}): Logger {
  const level = process.env.KVGATE_LOG_LEVEL || 'info';
  root ??= pino({ level, base: { pid: process.pid } }, pino.destination(2));
  // a command that sets the level after some module made its logger at import (kvgate start: warn) still gets it
  // for every logger made from then on (a child keeps the level it was made with)
  if (root.level !== level && level in root.levels.values) root.level = level;
  return root.child({ component, ...bindings });
}
