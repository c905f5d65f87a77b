/**
 * `kvgate.<ns>.router.suspect`: routers tell each other what their upstream calls found (health.ts).
 *   {router, worker, suspect: true, reason: 'connect' | 'status', backoffMs, ts}   a call failed before its first byte
 *   {router, worker, suspect: false, ts}                                           a call to a suspect worker succeeded
 * msgpackr, like every bus payload; a router ignores its own messages (the bus echoes them).
 */
import { decode, DecodeError, encode, type Subjects } from '@kvgate/protocol';
import type { FailureReason } from './health.js';

export interface SuspectMsg {
  router: string;
  worker: string;
  suspect: boolean;
  reason?: FailureReason;
  backoffMs?: number;
  ts: number;
}

export function suspectSubject(s: Subjects): string {
  return `${s.prefix}.router.suspect`;
}

export function encodeSuspect(m: SuspectMsg): Uint8Array {
  return encode(m);
}

export function decodeSuspect(bytes: Uint8Array): SuspectMsg {
  const v = decode(bytes) as Record<string, unknown> | null;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new DecodeError('suspect message must be a map');
  const { router, worker, suspect, reason, backoffMs, ts } = v;
  if (typeof router !== 'string' || router.length === 0) throw new DecodeError('suspect message: router must be a string');
  if (typeof worker !== 'string' || worker.length === 0) throw new DecodeError('suspect message: worker must be a string');
  if (typeof suspect !== 'boolean') throw new DecodeError('suspect message: suspect must be a boolean');
  if (typeof ts !== 'number' || !Number.isFinite(ts)) throw new DecodeError('suspect message: ts must be a number');
  const out: SuspectMsg = { router, worker, suspect, ts };
  if (suspect) {
    if (reason !== 'connect' && reason !== 'status') throw new DecodeError('suspect message: reason must be connect or status');
    if (typeof backoffMs !== 'number' || !Number.isFinite(backoffMs) || backoffMs <= 0) throw new DecodeError('suspect message: backoffMs must be a positive number');
    out.reason = reason;
    out.backoffMs = backoffMs;
  }
  return out;
}
