/**
 * Fast decoder for `…events.<hash bits>.<worker>` payloads (EventBatch, schemas.ts) straight into the index's native
 * form: hashes as (lo, hi) uint32 pairs, no BigInt and no intermediate objects per hash. It accepts the same
 * inputs as `decodeEventBatch` (any msgpack encoder, keys in any order, unknown keys skipped, hashes as
 * uint64 / int64 / smaller ints / 8-byte bin) and throws DecodeError on the same malformed ones; the test
 * wire.test.ts checks both decoders agree. On the bench workload decoding is about 15 % of ingest time
 * (see README, Numbers).
 */
import { DecodeError } from '@kvgate/protocol';

export const STORED = 0, REMOVED = 1, CLEARED = 2;
/** tier bits as core.ts defines them (TIER_GPU, TIER_CPU, TIER_DISK) */
const TIER_BIT_GPU = 1;

/**
 * One EventBatch in flat arrays: event i has type type[i], parent (parentLo[i], parentHi[i]) (0, 0 = none),
 * tier bit tier[i] (core.ts: 1 gpu, 2 cpu, 4 disk) and hashes pairs[2·start[i] … 2·(start[i] + len[i])) as
 * (lo, hi) uint32 pairs. `decodeBatchInto` refills
 * one instance batch after batch without allocating; `clone()` keeps a copy (the reorder buffer does).
 */
export class DecodedBatch {
  worker = '';
  seq = 0;
  ts = 0;
  /** events */
  count = 0;
  /** hashes over all events */
  blocks = 0;
  type = new Uint8Array(4);
  parentLo = new Uint32Array(4);
  parentHi = new Uint32Array(4);
  tier = new Uint8Array(4);
  start = new Int32Array(4);
  len = new Int32Array(4);
  pairs = new Uint32Array(64);

  /** event i's hashes (a view) */
  hashes(i: number): Uint32Array {
    return this.pairs.subarray(2 * this.start[i]!, 2 * (this.start[i]! + this.len[i]!));
  }

  /** an exact-size copy that later decodes into this one do not touch */
  clone(): DecodedBatch {
    const c = new DecodedBatch();
    c.worker = this.worker;
    c.seq = this.seq;
    c.ts = this.ts;
    c.count = this.count;
    c.blocks = this.blocks;
    c.type = this.type.slice(0, this.count);
    c.parentLo = this.parentLo.slice(0, this.count);
    c.parentHi = this.parentHi.slice(0, this.count);
    c.tier = this.tier.slice(0, this.count);
    c.start = this.start.slice(0, this.count);
    c.len = this.len.slice(0, this.count);
    c.pairs = this.pairs.slice(0, 2 * this.blocks);
    return c;
  }

  /** start over (keeps the arrays) */
  reset(): void {
    this.count = 0;
    this.blocks = 0;
  }

  /** append an event; its hashes are then written with `reserveHashes` (decoder) or `pushHashes` */
  pushEvent(type: number, parentLo: number, parentHi: number, tier = TIER_BIT_GPU): number {
    const i = this.count++;
    if (i === this.type.length) {
      const n = 2 * i;
      this.type = growTo(this.type, n);
      this.parentLo = growTo(this.parentLo, n);
      this.parentHi = growTo(this.parentHi, n);
      this.tier = growTo(this.tier, n);
      this.start = growTo(this.start, n);
      this.len = growTo(this.len, n);
    }
    this.type[i] = type;
    this.parentLo[i] = parentLo;
    this.parentHi[i] = parentHi;
    this.tier[i] = tier;
    this.start[i] = this.blocks;
    this.len[i] = 0;
    return i;
  }

  /** room for n more hashes of the last event: returns the pair offset to write them at */
  reserveHashes(n: number): number {
    const at = 2 * this.blocks;
    if (at + 2 * n > this.pairs.length) this.pairs = growTo(this.pairs, Math.max(2 * this.pairs.length, at + 2 * n));
    this.blocks += n;
    this.len[this.count - 1] += n;
    return at;
  }

  pushHashes(pairs: Uint32Array): void {
    this.pairs.set(pairs, this.reserveHashes(pairs.length >>> 1));
  }

  /** forget the hashes of the last event (they are the last ones written) */
  dropLastHashes(): void {
    const i = this.count - 1;
    this.blocks -= this.len[i]!;
    this.len[i] = 0;
  }
}

function growTo<T extends Uint8Array | Uint32Array | Int32Array>(a: T, n: number): T {
  const b = new (a.constructor as new (n: number) => T)(n);
  b.set(a);
  return b;
}

const td = new TextDecoder();

/** big-endian bytes of one number are copied here reversed (little-endian host; hashing.ts checks it) */
const numBytes = new Uint8Array(8);
const numF64 = new Float64Array(numBytes.buffer);
const numF32 = new Float32Array(numBytes.buffer, 0, 1);
const numI32 = new Int32Array(numBytes.buffer);

/** One reader, reset per batch (no allocation per decode). */
class Reader {
  pos = 0;
  buf: Uint8Array = new Uint8Array(0);
  reset(buf: Uint8Array): void {
    this.buf = buf;
    this.pos = 0;
  }
  /** the next n bytes reversed into numBytes (a big-endian number as the host reads it) */
  #swap(n: number): void {
    this.need(n);
    for (let i = 0; i < n; i++) numBytes[n - 1 - i] = this.buf[this.pos + i]!;
    this.pos += n;
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
      case 0xcf: this.#swap(8); return (numI32[1]! >>> 0) * 2 ** 32 + (numI32[0]! >>> 0);
      case 0xd0: { const v = this.byte(); return v > 0x7f ? v - 256 : v; }
      case 0xd1: { const v = this.u16(); return v > 0x7fff ? v - 0x10000 : v; }
      case 0xd2: return this.u32() | 0;
      case 0xd3: this.#swap(8); return numI32[1]! * 2 ** 32 + (numI32[0]! >>> 0);
      case 0xca: { this.#swap(4); const v = numF32[0]!; if (!Number.isFinite(v)) break; return v; }
      case 0xcb: { this.#swap(8); const v = numF64[0]!; if (!Number.isFinite(v)) break; return v; }
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

const te = new TextEncoder();
const names = (...xs: string[]) => xs.map((x) => te.encode(x));
const BATCH_KEYS = names('worker', 'seq', 'ts', 'events');
const EVENT_KEYS = names('t', 'parent', 'hashes', 'tier');
/** tier names in bit order: index i → bit 1 << i (core.ts tierBit) */
const TIER_NAMES = names('gpu', 'cpu', 'disk');
const EVENT_TYPES = names('stored', 'removed', 'cleared');

/** the hashes array of the event being decoded, into out's pairs */
function hashes(r: Reader, out: DecodedBatch, what: string): void {
  const n = r.arrayLen();
  if (n < 0) throw new DecodeError(`${what} must be an array`);
  if (n === 0) return;
  // every hash takes at least one byte: a length beyond the input is malformed (and must not size an array)
  if (n > r.buf.length - r.pos) throw new DecodeError('malformed msgpack: truncated');
  let o = out.reserveHashes(n);
  const pairs = out.pairs, buf = r.buf, len = buf.length;
  let p = r.pos;
  for (let i = 0; i < n; i++, o += 2) {
    const b = buf[p];
    if ((b === 0xcf || b === 0xd3) && p + 9 <= len) {
      // the common case, in the loop: big-endian u64 straight into (lo, hi)
      pairs[o + 1] = (buf[p + 1]! << 24) | (buf[p + 2]! << 16) | (buf[p + 3]! << 8) | buf[p + 4]!;
      pairs[o] = (buf[p + 5]! << 24) | (buf[p + 6]! << 16) | (buf[p + 7]! << 8) | buf[p + 8]!;
      p += 9;
    } else {
      r.pos = p;
      r.hash(pairs, o >>> 1);
      p = r.pos;
    }
  }
  r.pos = p;
}

const parentTmp = new Uint32Array(2);

/** one event map, appended to out (hashes may precede `t` in the map: the type is patched in at the end) */
function event(r: Reader, out: DecodedBatch): void {
  const n = r.mapLen();
  if (n < 0) throw new DecodeError('event must be a map');
  let t = -1, sawHashes = false, tier = TIER_BIT_GPU;
  let parentLo = 0, parentHi = 0;
  const i = out.pushEvent(CLEARED, 0, 0);
  for (let k = 0; k < n; k++) {
    const key = r.name(EVENT_KEYS);
    if (key === -2) {
      r.skip();
      r.skip();
    } else if (key === 0) {
      t = r.name(EVENT_TYPES);
      if (t === -2) r.skip();
    } else if (key === 1) {
      if (r.buf[r.pos] === 0xc0) r.pos++;
      else {
        r.hash(parentTmp, 0);
        parentLo = parentTmp[0]!;
        parentHi = parentTmp[1]!;
      }
    } else if (key === 2) {
      if (sawHashes) out.dropLastHashes(); // a repeated key: the last one wins, as in the reference decoder
      hashes(r, out, 'hashes');
      sawHashes = true;
    } else if (key === 3) {
      const v = r.name(TIER_NAMES); // -1: another string (read), -2: not a string (not read)
      if (v >= 0) tier = 1 << v;
      else if (v === -1) throw new DecodeError('unknown tier'); // as the reference decoder (schemas.ts)
      else if (r.buf[r.pos] === 0xc0) {
        r.pos++;
        tier = TIER_BIT_GPU;
      } else throw new DecodeError('tier must be a string');
    } else r.skip();
  }
  if (t === STORED || t === REMOVED) {
    if (!sawHashes) throw new DecodeError(t === STORED ? 'stored.hashes must be an array' : 'removed.hashes must be an array');
    out.type[i] = t;
    out.tier[i] = tier;
    if (t === STORED) {
      out.parentLo[i] = parentLo;
      out.parentHi[i] = parentHi;
    }
    return;
  }
  if (t !== CLEARED) throw new DecodeError('unknown event type');
  out.dropLastHashes(); // cleared carries no hashes: drop any it had
}

/**
 * Worker ids repeat on every batch: a cache from the id's bytes to one string instance skips building the
 * string, and the maps keyed by it (sequencers, ordinals) then hash an already-hashed string. Ids of up to
 * 31 bytes (a fixstr) are cached; two candidate slots per id (two hashes), so a few hundred workers do not
 * evict each other (a direct-mapped cache of 256 did, at 256 workers, and fell back to building strings).
 */
const CACHE_SLOTS = 1024;
const cacheBytes = new Uint8Array(CACHE_SLOTS * 32);
/** id length + 1 per slot (0 = empty) */
const cacheLen = new Uint8Array(CACHE_SLOTS);
const cacheNames: string[] = new Array<string>(CACHE_SLOTS).fill('');

function cachedAt(slot: number, buf: Uint8Array, at: number, n: number): boolean {
  if (cacheLen[slot] !== n + 1) return false;
  const o = slot * 32;
  for (let j = 0; j < n; j++) if (cacheBytes[o + j] !== buf[at + j]) return false;
  return true;
}

function workerName(r: Reader): string | null {
  const buf = r.buf, b = buf[r.pos];
  if (b === undefined || (b & 0xe0) !== 0xa0) return r.str(); // fixstr only (ids up to 31 bytes)
  const n = b & 0x1f, at = r.pos + 1;
  if (at + n > buf.length) return r.str(); // truncated: str() throws
  let h = 0x811c9dc5 ^ n;
  for (let j = 0; j < n; j++) h = Math.imul(h ^ buf[at + j]!, 0x01000193);
  const s1 = (h ^ (h >>> 16)) & (CACHE_SLOTS - 1), s2 = (h >>> 20) & (CACHE_SLOTS - 1);
  if (cachedAt(s1, buf, at, n)) {
    r.pos = at + n;
    return cacheNames[s1]!;
  }
  if (cachedAt(s2, buf, at, n)) {
    r.pos = at + n;
    return cacheNames[s2]!;
  }
  const name = r.str()!;
  // the new id takes an empty candidate slot, else its first one (the id there keeps its other slot, if free)
  const slot = cacheLen[s1] === 0 || cacheLen[s2] !== 0 ? s1 : s2;
  cacheBytes.set(buf.subarray(at, at + n), slot * 32);
  cacheLen[slot] = n + 1;
  cacheNames[slot] = name;
  return name;
}

const reader = new Reader();
/** decodeBatchFast's own instance (cloned before it is returned) */
const shared = new DecodedBatch();

/**
 * Decode one EventBatch into `out` (its previous content is replaced; nothing is allocated once out's arrays
 * are large enough). Throws DecodeError on malformed input, leaving `out` unspecified.
 */
export function decodeBatchInto(bytes: Uint8Array, out: DecodedBatch): void {
  const r = reader;
  r.reset(bytes);
  out.reset();
  try {
    const n = r.mapLen();
    if (n < 0) throw new DecodeError('event batch must be a map');
    let worker: string | null = null;
    let seq: number | null = null;
    let ts: number | null = null;
    let events = false;
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
        if (events) out.reset(); // a repeated key: the last one wins, as in the reference decoder
        const m = r.arrayLen();
        if (m < 0) throw new DecodeError('event batch: events must be an array');
        if (m > bytes.length - r.pos) throw new DecodeError('malformed msgpack: truncated');
        for (let j = 0; j < m; j++) event(r, out);
        events = true;
      } else r.skip();
    }
    if (!events) throw new DecodeError('event batch: events must be an array');
    if (worker === null) throw new DecodeError('worker must be a string');
    if (seq === null) throw new DecodeError('seq must be a number');
    if (ts === null) throw new DecodeError('ts must be a number');
    if (r.pos !== bytes.length) throw new DecodeError('malformed msgpack: trailing bytes');
    out.worker = worker;
    out.seq = seq;
    out.ts = ts;
  } finally {
    r.reset(EMPTY_BYTES); // do not keep the caller's buffer alive
  }
}

const EMPTY_BYTES = new Uint8Array(0);

/** Decode one EventBatch into a new DecodedBatch of its own (cold paths, tests). */
export function decodeBatchFast(bytes: Uint8Array): DecodedBatch {
  decodeBatchInto(bytes, shared);
  return shared.clone();
}
