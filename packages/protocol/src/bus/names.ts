/**
 * Name rules shared by both buses, checked at the public edge so MemoryBus refuses exactly what
 * nats-server would refuse (and with the same error on both).
 */
import { KvgateError } from '../errors.js';

const TOKEN = /^[^\s.*>]+$/;

/** a concrete subject to publish on: non-empty tokens, no wildcards */
/** subjects already found valid: a process publishes on a few subjects many times (bounded; cleared when full) */
const validSubjects = new Set<string>();

export function checkSubject(subject: string): void {
  if (validSubjects.has(subject)) return;
  if (typeof subject !== 'string' || subject.length === 0 || !subject.split('.').every((t) => TOKEN.test(t))) {
    throw new KvgateError('KVG_BAD_REQUEST', `invalid subject ${JSON.stringify(subject)}`);
  }
  if (validSubjects.size >= 10_000) validSubjects.clear();
  validSubjects.add(subject);
}

/** a subscription pattern: tokens, `*` for one token, `>` only last */
export function checkPattern(pattern: string): void {
  const toks = typeof pattern === 'string' && pattern.length > 0 ? pattern.split('.') : [];
  const ok = toks.length > 0 && toks.every((t, i) => t === '*' || (t === '>' && i === toks.length - 1) || TOKEN.test(t));
  if (!ok) throw new KvgateError('KVG_BAD_REQUEST', `invalid subject pattern ${JSON.stringify(pattern)}`);
}

const NAME = /^[A-Za-z0-9_-]+$/;

/** stream and bucket names (JetStream: no dots, wildcards or spaces) */
export function checkName(kind: 'stream' | 'bucket', name: string): void {
  if (typeof name !== 'string' || !NAME.test(name)) throw new KvgateError('KVG_BAD_REQUEST', `invalid ${kind} name ${JSON.stringify(name)}`);
}

const KEY = /^[A-Za-z0-9_\-=.]+$/;

/** KV keys: [A-Za-z0-9_\-=.]+, no leading, trailing or doubled dot (JetStream KV rules) */
export function checkKey(key: string): void {
  if (typeof key !== 'string' || !KEY.test(key) || key.startsWith('.') || key.endsWith('.') || key.includes('..')) {
    throw new KvgateError('KVG_BAD_REQUEST', `invalid key ${JSON.stringify(key)}`);
  }
}

/** could one subject match both patterns? (JetStream refuses streams whose subjects overlap) */
export function patternsOverlap(a: string, b: string): boolean {
  const x = a.split('.');
  const y = b.split('.');
  for (let i = 0; ; i++) {
    const s = x[i], t = y[i];
    if (s === undefined || t === undefined) return s === t;
    if (s === '>' || t === '>') return true;
    if (s !== '*' && t !== '*' && s !== t) return false;
  }
}

/** JetStream refuses max_age below 100 ms; both buses refuse the same values */
export function checkAge(field: string, ms: number): void {
  if (!Number.isFinite(ms) || ms < 0 || (ms > 0 && ms < 100)) {
    throw new KvgateError('KVG_BAD_REQUEST', `${field} must be 0 (never) or at least 100 ms, got ${ms}`);
  }
}

/** payloads are copied at the edge so a caller reusing its buffer cannot change what others see */
/**
 * Small payloads are copied into shared 64 KiB slabs (8-byte aligned views): `new Uint8Array(data)` allocates a
 * backing store of its own per message above 64 bytes (a malloc, and a finaliser), which was a tenth of a bus
 * request. A slab lives until the last view into it is collected.
 */
const SLAB = 64 * 1024;
const SMALL = 4096;
let slab = new ArrayBuffer(SLAB);
let slabAt = 0;

export function copyBytes(data: Uint8Array): Uint8Array {
  if (!(data instanceof Uint8Array)) throw new KvgateError('KVG_BAD_REQUEST', 'payload must be a Uint8Array');
  const n = data.length;
  if (n > SMALL) return new Uint8Array(data);
  if (slabAt + n > SLAB) {
    slab = new ArrayBuffer(SLAB);
    slabAt = 0;
  }
  const out = new Uint8Array(slab, slabAt, n);
  out.set(data);
  slabAt += (n + 7) & ~7;
  return out;
}
