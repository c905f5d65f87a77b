/**
 * Fast decoder for `…events.<worker>` payloads (EventBatch, schemas.ts) straight into the index's native
 * form: hashes as (lo, hi) uint32 pairs, no BigInt and no intermediate objects per hash. It accepts the same
 * inputs as `decodeEventBatch` (any msgpack encoder, keys in any order, unknown keys skipped, hashes as
 * uint64 / int64 / smaller ints / 8-byte bin) and throws DecodeError on the same malformed ones; the test
 * wire.test.ts checks both decoders agree. On the bench workload decoding is about a fifth of ingest time
 * (see README, Numbers).
 */
import { DecodeError } from '@kvgate/protocol';

/** t: 0 stored, 1 removed, 2 cleared. pairs: [lo0, hi0, lo1, hi1, …]. */
export interface FastEvent {
  t: 0 | 1 | 2;
  parentLo: number;
  parentHi: number;
  pairs: Uint32Array;
}

export interface FastBatch {
  worker: string;
  seq: number;
  events: FastEvent[];
}

const td = new TextDecoder();

class Reader {
  pos = 0;
  #view: DataView | null = null;
  constructor(readonly buf: Uint8Array) {}
  /** only numbers need a DataView: made on first use, most batches never do */
  get view(): DataView {
    return (this.#view ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
  }
  need(n: number): void {
    if (this.pos + n > this.buf.length) throw new DecodeError('malformed msgpack: truncated');
  }
  byte(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  u16(): number {
    this.need(2);
    const b = this.buf, p = this.pos;
    this.pos += 2;
    return (b[p]! << 8) | b[p + 1]!;
  }
  u32(): number {
    this.need(4);
    const b = this.buf, p = this.pos;
    this.pos += 4;
    return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
  }
  /** map header → entry count, or -1 when the value is not a map */
  mapLen(): number {
    const b = this.byte();
    if ((b & 0xf0) === 0x80) return b & 0x0f;
    if (b === 0xde) return this.u16();
    if (b === 0xdf) return this.u32();
    this.pos--;
    return -1;
  }
  arrayLen(): number {
    const b = this.byte();
    if ((b & 0xf0) === 0x90) return b & 0x0f;
    if (b === 0xdc) return this.u16();
    if (b === 0xdd) return this.u32();
    this.pos--;
    return -1;
  }
  /** string or null when the value is not a string (not consumed then) */
  str(): string | null {
    const b = this.byte();
    let n: number;
    if ((b & 0xe0) === 0xa0) n = b & 0x1f;
    else if (b === 0xd9) n = this.byte();
    else if (b === 0xda) n = this.u16();
    else if (b === 0xdb) n = this.u32();
    else {
      this.pos--;
      return null;
    }
    this.need(n);
    const s = n < 16 ? ascii(this.buf, this.pos, n) : td.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }
  /**
   * Match a string against known names without building it: returns the index in `names`, -1 for another
   * string (consumed), -2 when the value is not a string (not consumed).
   */
  name(names: readonly Uint8Array[]): number {
    const b = this.buf[this.pos];
    if (b === undefined || (b & 0xe0) !== 0xa0) {
      if (b === 0xd9 || b === 0xda || b === 0xdb) {
        this.str();
        return -1;
      }
      return -2;
    }
    const n = b & 0x1f, at = this.pos + 1;
    this.advance(n + 1);
    const buf = this.buf;
    outer: for (let k = 0; k < names.length; k++) {
      const w = names[k]!;
      if (w.length !== n) continue;
      for (let j = 0; j < n; j++) if (buf[at + j] !== w[j]) continue outer;
      return k;
    }
    return -1;
  }
  /** a finite number (ints, floats, 64-bit ints as approximate numbers) */
  num(what: string): number {
    const b = this.byte();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 256;
    switch (b) {
      case 0xcc: return this.byte();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: { this.need(8); const v = Number(this.view.getBigUint64(this.pos)); this.pos += 8; return v; }
      case 0xd0: { this.need(1); const v = this.view.getInt8(this.pos); this.pos += 1; return v; }
      case 0xd1: { this.need(2); const v = this.view.getInt16(this.pos); this.pos += 2; return v; }
      case 0xd2: { this.need(4); const v = this.view.getInt32(this.pos); this.pos += 4; return v; }
      case 0xd3: { this.need(8); const v = Number(this.view.getBigInt64(this.pos)); this.pos += 8; return v; }
      case 0xca: { this.need(4); const v = this.view.getFloat32(this.pos); this.pos += 4; if (!Number.isFinite(v)) break; return v; }
      case 0xcb: { this.need(8); const v = this.view.getFloat64(this.pos); this.pos += 8; if (!Number.isFinite(v)) break; return v; }
    }
    throw new DecodeError(`${what} must be a number`);
  }
  /** one hash into out[2i], out[2i+1] (lo, hi) */
  hash(out: Uint32Array, i: number): void {
    const buf = this.buf, p = this.pos;
    const b = buf[p];
    if ((b === 0xcf || b === 0xd3) && p + 9 <= buf.length) {
      // the common case, inlined: big-endian u64 straight into two uint32
      out[2 * i + 1] = (buf[p + 1]! << 24) | (buf[p + 2]! << 16) | (buf[p + 3]! << 8) | buf[p + 4]!;
      out[2 * i] = (buf[p + 5]! << 24) | (buf[p + 6]! << 16) | (buf[p + 7]! << 8) | buf[p + 8]!;
      this.pos = p + 9;
      return;
    }
    this.byte();
    let lo: number, hi = 0;
    if (b === undefined) throw new DecodeError('malformed msgpack: truncated');
    if (b <= 0x7f) lo = b;
    else if (b === 0xcf || b === 0xd3) throw new DecodeError('malformed msgpack: truncated');
    else if (b === 0xcc) lo = this.byte();
    else if (b === 0xcd) lo = this.u16();
    else if (b === 0xce) lo = this.u32();
    else if (b === 0xc4 && this.byte() === 8) {
      hi = this.u32();
      lo = this.u32();
    } else throw new DecodeError('hash must be a 64-bit integer or 8-byte buffer');
    out[2 * i] = lo;
    out[2 * i + 1] = hi;
  }
  /** skip any one value */
  skip(): void {
    const b = this.byte();
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) return;
    if ((b & 0xf0) === 0x80) return this.skipN((b & 0x0f) * 2);
    if ((b & 0xf0) === 0x90) return this.skipN(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return this.advance(b & 0x1f);
    switch (b) {
      case 0xc4: case 0xd9: return this.advance(this.byte());
      case 0xc5: case 0xda: return this.advance(this.u16());
      case 0xc6: case 0xdb: return this.advance(this.u32());
      case 0xc7: return this.advance(this.byte() + 1);
      case 0xc8: return this.advance(this.u16() + 1);
      case 0xc9: return this.advance(this.u32() + 1);
      case 0xcc: case 0xd0: return this.advance(1);
      case 0xcd: case 0xd1: return this.advance(2);
      case 0xce: case 0xd2: case 0xca: return this.advance(4);
      case 0xcf: case 0xd3: case 0xcb: return this.advance(8);
      case 0xd4: return this.advance(2);
      case 0xd5: return this.advance(3);
      case 0xd6: return this.advance(5);
      case 0xd7: return this.advance(9);
      case 0xd8: return this.advance(17);
      case 0xdc: return this.skipN(this.u16());
      case 0xdd: return this.skipN(this.u32());
      case 0xde: return this.skipN(this.u16() * 2);
      case 0xdf: return this.skipN(this.u32() * 2);
    }
    throw new DecodeError(`malformed msgpack: byte 0x${b.toString(16)}`);
  }
  skipN(n: number): void {
    for (let i = 0; i < n; i++) this.skip();
  }
  advance(n: number): void {
    this.need(n);
    this.pos += n;
  }
}

function ascii(buf: Uint8Array, at: number, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) {
    const c = buf[at + i]!;
    if (c >= 0x80) return td.decode(buf.subarray(at, at + n));
    s += String.fromCharCode(c);
  }
  return s;
}

const EMPTY = new Uint32Array(0);
const te = new TextEncoder();
const names = (...xs: string[]) => xs.map((x) => te.encode(x));
const BATCH_KEYS = names('worker', 'seq', 'ts', 'events');
const EVENT_KEYS = names('t', 'parent', 'hashes');
const EVENT_TYPES = names('stored', 'removed', 'cleared');

/**
 * Hash arrays are carved out of shared 256 KiB slabs: `new Uint32Array(32)` per event would allocate a
 * backing store of its own (off the V8 heap above 64 bytes: a malloc and a finaliser each), which cost
 * more than decoding the hashes. A slab lives until the last view into it is collected.
 */
const SLAB = 1 << 16;
let slab = new Uint32Array(SLAB);
let slabAt = 0;
/**
 * Transient decoding (`decodeBatchFast(bytes, true)`) carves from one scratch buffer instead, rewound at every
 * transient call: no allocation at all, for a caller that applies the batch before decoding the next one and
 * copies what it keeps (ShardState: a batch that arrives in order is applied at once; one that must wait in
 * the reorder buffer is copied).
 */
let scratch = new Uint32Array(SLAB);
let scratchAt = 0;
let transient = false;

function carve(n: number): Uint32Array {
  if (transient) {
    if (scratchAt + n > scratch.length) {
      // views handed out earlier in this batch keep the old buffer alive
      scratch = new Uint32Array(Math.max(scratch.length * 2, n));
      scratchAt = 0;
    }
    const out = scratch.subarray(scratchAt, scratchAt + n);
    scratchAt += n;
    return out;
  }
  if (n > SLAB >>> 4) return new Uint32Array(n);
  if (slabAt + n > SLAB) {
    slab = new Uint32Array(SLAB);
    slabAt = 0;
  }
  const out = slab.subarray(slabAt, slabAt + n);
  slabAt += n;
  return out;
}

function hashes(r: Reader, what: string): Uint32Array {
  const n = r.arrayLen();
  if (n < 0) throw new DecodeError(`${what} must be an array`);
  if (n === 0) return EMPTY;
  const out = carve(2 * n);
  const buf = r.buf, len = buf.length;
  let p = r.pos;
  for (let i = 0; i < n; i++) {
    const b = buf[p];
    if ((b === 0xcf || b === 0xd3) && p + 9 <= len) {
      // the common case, in the loop: big-endian u64 straight into (lo, hi)
      out[2 * i + 1] = (buf[p + 1]! << 24) | (buf[p + 2]! << 16) | (buf[p + 3]! << 8) | buf[p + 4]!;
      out[2 * i] = (buf[p + 5]! << 24) | (buf[p + 6]! << 16) | (buf[p + 7]! << 8) | buf[p + 8]!;
      p += 9;
    } else {
      r.pos = p;
      r.hash(out, i);
      p = r.pos;
    }
  }
  r.pos = p;
  return out;
}

const parentTmp = new Uint32Array(2);

function event(r: Reader): FastEvent {
  const n = r.mapLen();
  if (n < 0) throw new DecodeError('event must be a map');
  let t = -1;
  let parentLo = 0, parentHi = 0;
  let pairs: Uint32Array | null = null;
  for (let i = 0; i < n; i++) {
    const k = r.name(EVENT_KEYS);
    if (k === -2) {
      r.skip();
      r.skip();
    } else if (k === 0) {
      t = r.name(EVENT_TYPES);
      if (t === -2) r.skip();
    } else if (k === 1) {
      if (r.buf[r.pos] === 0xc0) r.pos++;
      else {
        r.hash(parentTmp, 0);
        parentLo = parentTmp[0]!;
        parentHi = parentTmp[1]!;
      }
    } else if (k === 2) pairs = hashes(r, 'hashes');
    else r.skip();
  }
  if (t === 0) {
    if (!pairs) throw new DecodeError('stored.hashes must be an array');
    return { t: 0, parentLo, parentHi, pairs };
  }
  if (t === 1) {
    if (!pairs) throw new DecodeError('removed.hashes must be an array');
    return { t: 1, parentLo: 0, parentHi: 0, pairs };
  }
  if (t === 2) return { t: 2, parentLo: 0, parentHi: 0, pairs: EMPTY };
  throw new DecodeError('unknown event type');
}

/**
 * Worker ids repeat on every batch: a small direct-mapped cache from the id's bytes to one string instance
 * skips building the string, and the maps keyed by it (sequencers, ordinals) then hash an already-hashed
 * string.
 */
const NAME_CACHE = 256;
const cachedBytes: (Uint8Array | undefined)[] = new Array(NAME_CACHE);
const cachedNames: string[] = new Array(NAME_CACHE);

function workerName(r: Reader): string | null {
  const buf = r.buf, b = buf[r.pos];
  if (b === undefined || (b & 0xe0) !== 0xa0) return r.str(); // fixstr only (ids up to 31 bytes)
  const n = b & 0x1f, at = r.pos + 1;
  if (at + n > buf.length) return r.str(); // truncated: str() throws
  let h = n;
  for (let j = 0; j < n; j++) h = Math.imul(h ^ buf[at + j]!, 0x01000193);
  const slot = (h ^ (h >>> 16)) & (NAME_CACHE - 1);
  const c = cachedBytes[slot];
  if (c !== undefined && c.length === n) {
    let same = true;
    for (let j = 0; j < n; j++) {
      if (c[j] !== buf[at + j]) {
        same = false;
        break;
      }
    }
    if (same) {
      r.pos = at + n;
      return cachedNames[slot]!;
    }
  }
  const name = r.str()!;
  cachedBytes[slot] = buf.slice(at, at + n);
  cachedNames[slot] = name;
  return name;
}

/**
 * Decode one EventBatch. With `transientPairs`, the events' `pairs` are views into a scratch buffer valid only
 * until the next transient decode (see carve): copy them (`slice()`) to keep them longer.
 */
export function decodeBatchFast(bytes: Uint8Array, transientPairs = false): FastBatch {
  transient = transientPairs;
  scratchAt = 0;
  const r = new Reader(bytes);
  const n = r.mapLen();
  if (n < 0) throw new DecodeError('event batch must be a map');
  let worker: string | null = null;
  let seq: number | null = null;
  let ts: number | null = null;
  let events: FastEvent[] | null = null;
  for (let i = 0; i < n; i++) {
    const k = r.name(BATCH_KEYS);
    if (k === -2) {
      r.skip();
      r.skip();
    } else if (k === 0) {
      worker = workerName(r);
      if (worker === null) throw new DecodeError('worker must be a string');
    } else if (k === 1) seq = r.num('seq');
    else if (k === 2) ts = r.num('ts');
    else if (k === 3) {
      const m = r.arrayLen();
      if (m < 0) throw new DecodeError('event batch: events must be an array');
      events = new Array<FastEvent>(m);
      for (let j = 0; j < m; j++) events[j] = event(r);
    } else r.skip();
  }
  if (events === null) throw new DecodeError('event batch: events must be an array');
  if (worker === null) throw new DecodeError('worker must be a string');
  if (seq === null) throw new DecodeError('seq must be a number');
  if (ts === null) throw new DecodeError('ts must be a number');
  if (r.pos !== bytes.length) throw new DecodeError('malformed msgpack: trailing bytes');
  return { worker, seq, events };
}
