/**
 * Pure decoder for vLLM / SGLang KV event messages (DESIGN.md section 3): bytes in, events out.
 *
 * Wire shapes accepted (msgspec msgpack, as the engines encode them):
 *  - batch: `[ts, [event…], dp_rank?, …]` (array_like structs: vLLM ≤ 0.23, SGLang, whose third field is
 *           `attn_dp_rank`) or `{ts, events, data_parallel_rank?, …}` (plain structs: newer vLLM).
 *  - event: `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
 *           extra_keys, group_idx, kv_cache_spec_kind, kv_cache_spec_sliding_window, …]`,
 *           `["BlockRemoved", block_hashes, medium, group_idx, …]`, `["AllBlocksCleared", …]`, or the same as a map
 *           whose `type` key holds the tag and whose other keys are the field names (omit_defaults drops fields
 *           equal to their default there).
 *  - position 7 of an array BlockStored is vLLM's `lora_name` (string or nil) or, from SGLang ≥ 0.5.18
 *    (`BlockStoredWithMetadata`, same tag), a metadata map `{cache_salt, …}`; a map event may carry `metadata`.
 *  - hash-only placeholders (vLLM's offloading connector: `token_ids` empty, `block_size` 0 or the offloaded
 *    block size, `medium` e.g. "CPU") decode with `hashOnly: true`.
 * Trailing optional fields may be missing; unknown fields are ignored; unknown tags are skipped and counted.
 * An event of a known tag that cannot be understood is dropped alone and listed in `invalid` with a reason:
 * one bad event never costs its batch. Only a frame or batch that is not a batch throws DecodeError. No other
 * exception escapes, and decoding is linear in the input size.
 */
import { Unpackr } from 'msgpackr';
import { DecodeError } from '../errors.js';
import type { AllBlocksCleared, BlockRemoved, BlockStored, EngineBatch, EngineEvent, EngineHash, EngineMessage, ExtraKey, ReplayMessage } from './types.js';

// Maps decode as `Map` (no prototype keys to trip over in untrusted input); 64-bit ints decode as BigInt
// so uint64 hashes ≥ 2^53 stay exact, while narrower ints stay numbers. Structured-clone extensions off.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: false, int64AsType: 'bigint', structuredClone: false });

/** seq value of the replay socket's end marker (-1 as int64) */
export const REPLAY_END_SEQ = 0xffffffffffffffffn;

const topicDecoder = new TextDecoder('utf-8');

/** Decodes one PUB message `[topic, seq (8-byte big-endian), payload]`. */
export function decodeEngineFrames(frames: readonly Uint8Array[]): EngineMessage {
  if (!Array.isArray(frames) || frames.length !== 3) throw new DecodeError(`engine message must have 3 frames [topic, seq, payload], got ${Array.isArray(frames) ? frames.length : typeof frames}`);
  const [topic, seq, payload] = frames as [Uint8Array, Uint8Array, Uint8Array];
  if (!(topic instanceof Uint8Array)) throw new DecodeError('topic frame must be bytes');
  return { topic: topicDecoder.decode(topic), seq: decodeSeq(seq), batch: decodeEngineBatch(payload) };
}

/**
 * Decodes one reply of the replay socket: `[seq, payload]`, or `['', seq, payload]` as a DEALER sees it.
 * The end marker is `seq = 2^64-1` (vLLM sends -1) with an empty payload.
 */
export function decodeReplayFrames(frames: readonly Uint8Array[]): ReplayMessage {
  if (!Array.isArray(frames)) throw new DecodeError('replay message must be an array of frames');
  let f = frames;
  if (f.length === 3 && f[0] instanceof Uint8Array && f[0].length === 0) f = f.slice(1);
  if (f.length !== 2) throw new DecodeError(`replay message must have 2 frames [seq, payload], got ${frames.length}`);
  const seq = decodeSeq(f[0]!);
  if (seq === REPLAY_END_SEQ) return { end: true, seq };
  return { end: false, seq, batch: decodeEngineBatch(f[1]!) };
}

/** The 8-byte big-endian sequence frame, as an unsigned 64-bit bigint. */
export function decodeSeq(frame: Uint8Array): bigint {
  if (!(frame instanceof Uint8Array) || frame.length !== 8) throw new DecodeError(`seq frame must be 8 bytes, got ${frame instanceof Uint8Array ? frame.length : typeof frame}`);
  return new DataView(frame.buffer, frame.byteOffset, 8).getBigUint64(0, false);
}

/** Decodes one msgpack `EventBatch` payload. */
export function decodeEngineBatch(payload: Uint8Array): EngineBatch {
  if (!(payload instanceof Uint8Array)) throw new DecodeError('payload must be bytes');
  if (payload.length === 0) throw new DecodeError('empty payload');
  let v: unknown;
  try {
    v = unpackr.unpack(payload);
  } catch (e) {
    throw new DecodeError(`malformed msgpack in engine event batch: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  let ts: unknown, events: unknown, rank: unknown;
  if (Array.isArray(v)) {
    [ts, events, rank] = v;
    if (v.length < 2) throw new DecodeError(`event batch array needs [ts, events], got ${v.length} element(s)`);
  } else if (v instanceof Map) {
    ts = v.get('ts');
    events = v.get('events');
    rank = v.get('data_parallel_rank') ?? v.get('attn_dp_rank');
  } else {
    throw new DecodeError(`event batch must be an array or a map, got ${describe(v)}`);
  }
  if (!Array.isArray(events)) throw new DecodeError(`event batch: events must be an array, got ${describe(events)}`);
  const out: EngineBatch = { ts: finite(ts, 'ts'), events: [], skipped: 0, invalid: [] };
  if (rank != null) out.dpRank = uint(rank, 'data_parallel_rank');
  for (let i = 0; i < events.length; i++) {
    let ev: EngineEvent | undefined;
    try {
      ev = decodeEvent(events[i], i);
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      out.invalid.push({ index: i, reason: reasonOf(e), message: e.message });
      continue;
    }
    if (ev) out.events.push(ev);
    else out.skipped++;
  }
  return out;
}

// ---- events ---------------------------------------------------------------------------------------

/**
 * A DecodeError of one event, with a short stable label for metrics (`kvgate_shim_skipped_events_total{reason}`):
 * the field at fault, so label values stay few.
 */
class EventError extends DecodeError {
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.reason = reason;
  }
}
function reasonOf(e: DecodeError): string {
  if (e instanceof EventError) return e.reason;
  // validators name the field as `event i (Tag).field[j]`: the field is the label
  const m = /\)\.([a-z_]+)/.exec(e.message);
  return m ? `bad-${m[1]}` : 'malformed';
}

/** Field order of the array_like encoding, after the tag (vLLM's current list; SGLang's is a prefix of it). */
const STORED_FIELDS = ['block_hashes', 'parent_block_hash', 'token_ids', 'block_size', 'lora_id', 'medium', 'lora_name', 'extra_keys', 'group_idx', 'kv_cache_spec_kind', 'kv_cache_spec_sliding_window'] as const;
const REMOVED_FIELDS = ['block_hashes', 'medium', 'group_idx'] as const;
type Field = (typeof STORED_FIELDS)[number] | (typeof REMOVED_FIELDS)[number] | 'metadata';

/** A field reader over either encoding: array position (after the tag) or map key. */
type Get = (name: Field) => unknown;

function decodeEvent(raw: unknown, index: number): EngineEvent | undefined {
  let tag: unknown;
  let get: (order: readonly Field[]) => Get;
  if (Array.isArray(raw)) {
    tag = raw[0];
    get = (order) => (name) => {
      const k = order.indexOf(name);
      return k < 0 ? undefined : raw[k + 1];
    };
  } else if (raw instanceof Map) {
    tag = raw.get('type');
    get = () => (name) => raw.get(name);
  } else {
    throw new EventError('bad-event', `event ${index} must be an array or a map, got ${describe(raw)}`);
  }
  if (typeof tag !== 'string') throw new EventError('bad-tag', `event ${index}: tag must be a string, got ${describe(tag)}`);
  const where = `event ${index} (${tag})`;
  switch (tag) {
    case 'BlockStored':
      return blockStored(get(STORED_FIELDS), where);
    case 'BlockRemoved':
      return blockRemoved(get(REMOVED_FIELDS), where);
    case 'AllBlocksCleared': {
      // no array fields; a map may carry a medium in future versions
      const ev: AllBlocksCleared = { type: 'AllBlocksCleared' };
      if (raw instanceof Map) {
        const medium = optString(raw.get('medium'), `${where}.medium`);
        if (medium !== undefined) ev.medium = medium;
      }
      return ev;
    }
    default:
      return undefined;
  }
}

function blockStored(get: Get, where: string): BlockStored {
  const blockHashes = hashList(get('block_hashes'), `${where}.block_hashes`);
  const parentRaw = get('parent_block_hash');
  const parentBlockHash = parentRaw == null ? null : engineHash(parentRaw, `${where}.parent_block_hash`);
  const blockSize = uint(get('block_size'), `${where}.block_size`);
  const tokenIds = tokens(get('token_ids'), `${where}.token_ids`);
  // hash-only placeholder (offloading connector): no tokens, so nothing to chain; the hashes name blocks
  // the engine stored on GPU before
  const hashOnly = tokenIds.length === 0 && blockHashes.length > 0;
  let aligned = false;
  if (!hashOnly) {
    if (blockSize === 0) throw new DecodeError(`${where}.block_size must be positive when token_ids are given`);
    const blocks = tokenIds.length / blockSize;
    if (!Number.isInteger(blocks)) throw new EventError('token-count', `${where}: ${tokenIds.length} token ids is not a whole number of ${blockSize}-token blocks`);
    if (blockHashes.length > blocks) throw new EventError('token-count', `${where}: ${blockHashes.length} block hashes but only ${blocks} block(s) of tokens`);
    aligned = blockHashes.length === blocks;
  }
  const loraRaw = get('lora_id');
  const ev: BlockStored = {
    type: 'BlockStored',
    blockHashes,
    parentBlockHash,
    tokenIds,
    blockSize,
    aligned,
    hashOnly,
    loraId: loraRaw == null ? null : uint(loraRaw, `${where}.lora_id`),
  };
  const medium = optString(get('medium'), `${where}.medium`);
  if (medium !== undefined) ev.medium = medium;
  // position 7: vLLM's lora_name, or SGLang's metadata map (BlockStoredWithMetadata shares the tag)
  const seventh = get('lora_name');
  const metadata = seventh instanceof Map ? seventh : get('metadata');
  if (!(seventh instanceof Map)) {
    const loraName = optString(seventh, `${where}.lora_name`);
    if (loraName !== undefined) ev.loraName = loraName;
  }
  if (metadata != null) {
    if (!(metadata instanceof Map)) throw new DecodeError(`${where}.metadata must be a map, got ${describe(metadata)}`);
    const salt = optString(metadata.get('cache_salt'), `${where}.metadata.cache_salt`);
    if (salt) ev.cacheSalt = salt;
  }
  const extra = get('extra_keys');
  if (extra != null) ev.extraKeys = extraKeys(extra, blockHashes.length, `${where}.extra_keys`);
  const group = get('group_idx');
  if (group != null) ev.groupIdx = uint(group, `${where}.group_idx`);
  const kind = optString(get('kv_cache_spec_kind'), `${where}.kv_cache_spec_kind`);
  if (kind !== undefined) ev.kvCacheSpecKind = kind;
  const window = get('kv_cache_spec_sliding_window');
  if (window != null) ev.kvCacheSpecSlidingWindow = uint(window, `${where}.kv_cache_spec_sliding_window`);
  return ev;
}

/** vLLM's per-block extra keys: one entry (array or nil) per block hash; nesting bounded so input stays linear. */
function extraKeys(v: unknown, blocks: number, what: string): (ExtraKey[] | null)[] {
  if (!Array.isArray(v)) throw new DecodeError(`${what} must be an array or nil, got ${describe(v)}`);
  if (v.length !== blocks) throw new DecodeError(`${what}: ${v.length} entries for ${blocks} block hashes`);
  const out = new Array<ExtraKey[] | null>(v.length);
  for (let i = 0; i < v.length; i++) {
    const e = v[i];
    if (e == null) out[i] = null;
    else if (Array.isArray(e)) out[i] = e.map((k, j) => extraKey(k, `${what}[${i}][${j}]`, 0));
    else throw new DecodeError(`${what}[${i}] must be an array or nil, got ${describe(e)}`);
  }
  return out;
}

function extraKey(k: unknown, what: string, depth: number): ExtraKey {
  if (k === null || typeof k === 'string' || typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean' || k instanceof Uint8Array) return k;
  if (Array.isArray(k) && depth < 4) return k.map((x, j) => extraKey(x, `${what}[${j}]`, depth + 1));
  throw new DecodeError(`${what}: unsupported extra key ${describe(k)}`);
}

function blockRemoved(get: Get, where: string): BlockRemoved {
  const ev: BlockRemoved = { type: 'BlockRemoved', blockHashes: hashList(get('block_hashes'), `${where}.block_hashes`) };
  const medium = optString(get('medium'), `${where}.medium`);
  if (medium !== undefined) ev.medium = medium;
  const group = get('group_idx');
  if (group != null) ev.groupIdx = uint(group, `${where}.group_idx`);
  return ev;
}

// ---- field validators -----------------------------------------------------------------------------

const U64 = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Normalises one engine block hash (see EngineHash). */
export function engineHash(v: unknown, what = 'hash'): EngineHash {
  if (typeof v === 'bigint') {
    if (v > U64 || v < I64_MIN) throw new DecodeError(`${what}: ${v} does not fit 64 bits`);
    return v < 0n ? BigInt.asUintN(64, v) : v;
  }
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new DecodeError(`${what} must be an integer or bytes, got ${v}`);
    return v < 0 ? BigInt.asUintN(64, BigInt(v)) : BigInt(v);
  }
  if (v instanceof Uint8Array) {
    if (v.length === 0) throw new DecodeError(`${what}: empty byte hash`);
    let s = '';
    for (let i = 0; i < v.length; i++) s += HEX[v[i]!];
    return s;
  }
  throw new DecodeError(`${what} must be an integer or bytes, got ${describe(v)}`);
}

function hashList(v: unknown, what: string): EngineHash[] {
  if (!Array.isArray(v)) throw new DecodeError(`${what} must be an array, got ${describe(v)}`);
  const out = new Array<EngineHash>(v.length);
  for (let i = 0; i < v.length; i++) out[i] = engineHash(v[i], `${what}[${i}]`);
  return out;
}

/** Token ids as uint32 numbers. SGLang's EAGLE bigram pairs `[t_i, t_{i+1}]` become `t_i`. */
function tokens(v: unknown, what: string): number[] {
  if (!Array.isArray(v)) throw new DecodeError(`${what} must be an array, got ${describe(v)}`);
  const out = new Array<number>(v.length);
  for (let i = 0; i < v.length; i++) {
    let t = v[i];
    if (Array.isArray(t)) {
      if (t.length !== 2) throw new DecodeError(`${what}[${i}]: a token pair must have 2 elements, got ${t.length}`);
      t = t[0];
    }
    if (typeof t === 'number') {
      if (!(t >= 0 && t <= 0xffffffff && Number.isInteger(t))) throw new DecodeError(`${what}[${i}] must be a uint32 token id, got ${t}`);
      out[i] = t;
    } else if (typeof t === 'bigint' && t >= 0n && t <= 0xffffffffn) {
      out[i] = Number(t);
    } else {
      throw new DecodeError(`${what}[${i}] must be a uint32 token id, got ${describe(t)}`);
    }
  }
  return out;
}

function uint(v: unknown, what: string): number {
  if (typeof v === 'bigint' && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  throw new DecodeError(`${what} must be a non-negative integer, got ${describe(v)}`);
}

function finite(v: unknown, what: string): number {
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  throw new DecodeError(`${what} must be a number, got ${describe(v)}`);
}

function optString(v: unknown, what: string): string | undefined {
  if (v == null) return undefined;
  if (typeof v === 'string') return v;
  throw new DecodeError(`${what} must be a string or nil, got ${describe(v)}`);
}

function describe(v: unknown): string {
  if (v === null) return 'nil';
  if (Array.isArray(v)) return 'array';
  if (v instanceof Uint8Array) return 'bytes';
  if (v instanceof Map) return 'map';
  if (typeof v === 'number' || typeof v === 'bigint') return `${typeof v} ${v}`;
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return typeof v;
}
