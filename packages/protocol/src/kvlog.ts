/**
 * `.kvlog`: a recorded slice of kvgate's durable streams, for debugging (DESIGN.md section 6).
 *
 *   header  = "KVGLOG" (6 bytes ASCII) ‖ version u16 BE ‖ header-length u32 BE ‖ msgpack header map
 *   record* = length u32 BE ‖ msgpack record map
 *
 * Records carry their stream sequence and time. Two kinds: KV event batches (as published by shims) and routing
 * decisions (as published by routers). Unknown record kinds from a newer writer are skipped by readers.
 */
import { decode, encode, decodeEventBatch, unpackHashes, type EventBatch, type TierOverlap } from './schemas.js';
import { DecodeError } from './errors.js';

export const KVLOG_MAGIC = 'KVGLOG';
export const KVLOG_VERSION = 1;

export interface KvlogHeader {
  version: number;
  namespace: string;
  createdAt: number;
  /** time window the export asked for (ms since epoch), if any */
  from?: number;
  to?: number;
}

/** What a router saw and chose for one request. */
export interface RouteDecision {
  router: string;
  requestId: string;
  model: string;
  lora?: string | null;
  promptTokens: number;
  /** prefix hashes of the prompt's full blocks (so inspect can replay the match) */
  hashes: bigint[];
  overlaps: Record<string, number>;
  /** per-tier overlaps (cumulative gpu ≤ cpu ≤ disk) of the workers that reach past their GPU prefix; absent = none */
  tiers?: Record<string, TierOverlap>;
  /** true when the request carried a `cache_salt` (its hashes are salted; the salt itself is not recorded) */
  salted?: boolean;
  scores: Record<string, number>;
  chosen: string;
  prefill?: string;
  policy: string;
  /** true when the index did not answer in budget and load alone decided */
  degraded?: boolean;
  ts: number;
}

/** A decision as routers publish it: hashes packed into one buffer of 8-byte big-endian values (cheap to encode). */
export type RouteDecisionWire = Omit<RouteDecision, 'hashes'> & { hashes: Uint8Array };

/** Decode a published decision (packed or array hashes). Throws DecodeError on anything else. */
export function toRouteDecision(v: unknown): RouteDecision {
  const d = v as Record<string, unknown> | null;
  if (!d || typeof d !== 'object' || typeof d.chosen !== 'string' || typeof d.model !== 'string') throw new DecodeError('routing decision lacks chosen/model');
  const hashes = d.hashes instanceof Uint8Array ? [...unpackHashes(d.hashes)] : Array.isArray(d.hashes) ? d.hashes.map((h) => BigInt(h as bigint)) : [];
  return { ...(d as unknown as RouteDecision), hashes };
}

export type KvlogRecord =
  | { kind: 'event'; seq: number; time: number; subject: string; batch: EventBatch }
  | { kind: 'route'; seq: number; time: number; subject: string; decision: RouteDecision };

export function encodeHeader(h: Omit<KvlogHeader, 'version'>): Uint8Array {
  const body = encode({ ...h, version: KVLOG_VERSION });
  const out = new Uint8Array(6 + 2 + 4 + body.length);
  out.set(new TextEncoder().encode(KVLOG_MAGIC), 0);
  const dv = new DataView(out.buffer);
  dv.setUint16(6, KVLOG_VERSION, false);
  dv.setUint32(8, body.length, false);
  out.set(body, 12);
  return out;
}

export function encodeRecord(r: KvlogRecord): Uint8Array {
  const body = encode(r);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, false);
  out.set(body, 4);
  return out;
}

function asRecord(v: unknown): KvlogRecord | null {
  if (typeof v !== 'object' || v === null) throw new DecodeError('kvlog record must be a map');
  const r = v as Record<string, unknown>;
  const seq = Number(r.seq), time = Number(r.time);
  if (!Number.isFinite(seq) || !Number.isFinite(time) || typeof r.subject !== 'string') throw new DecodeError('kvlog record lacks seq/time/subject');
  if (r.kind === 'event') return { kind: 'event', seq, time, subject: r.subject, batch: decodeEventBatch(encode(r.batch)) };
  if (r.kind === 'route') {
    return { kind: 'route', seq, time, subject: r.subject, decision: toRouteDecision(r.decision) };
  }
  return null; // unknown kind from a newer writer
}

/** Parse a whole .kvlog buffer. Throws DecodeError on a bad header or a truncated/malformed record. */
export function parseKvlog(buf: Uint8Array): { header: KvlogHeader; records: KvlogRecord[] } {
  if (buf.length < 12 || new TextDecoder().decode(buf.subarray(0, 6)) !== KVLOG_MAGIC) throw new DecodeError('not a .kvlog file (bad magic)');
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = dv.getUint16(6, false);
  if (version > KVLOG_VERSION) throw new DecodeError(`.kvlog version ${version} is newer than this kvgate reads (${KVLOG_VERSION})`);
  const hlen = dv.getUint32(8, false);
  if (12 + hlen > buf.length) throw new DecodeError('.kvlog header truncated');
  const header = decode(buf.subarray(12, 12 + hlen)) as KvlogHeader;
  const records: KvlogRecord[] = [];
  let off = 12 + hlen;
  while (off < buf.length) {
    if (off + 4 > buf.length) throw new DecodeError(`.kvlog record length truncated at byte ${off}`);
    const len = dv.getUint32(off, false);
    if (off + 4 + len > buf.length) throw new DecodeError(`.kvlog record truncated at byte ${off}`);
    const rec = asRecord(decode(buf.subarray(off + 4, off + 4 + len)));
    if (rec) records.push(rec);
    off += 4 + len;
  }
  return { header: { ...header, version }, records };
}
