/**
 * Wire payloads of DESIGN.md section 4 and their msgpackr codecs.
 * Hashes travel as 64-bit integers (BigInt on the JS side), never as floats.
 * Every decode validates shape and throws DecodeError on anything else.
 */
import { Packr } from 'msgpackr';
import { DecodeError } from './errors.js';

/**
 * Storage tier of a block (DESIGN.md §4): `gpu` (absent on the wire), `cpu` (host memory: vLLM's offloading
 * connector, SGLang's CPU_PINNED), `disk` (SSD/NVMe and any slower or remote pool: SGLang DISK, EXTERNAL).
 */
export type Tier = 'gpu' | 'cpu' | 'disk';
export const TIERS: readonly Tier[] = ['gpu', 'cpu', 'disk'];

/**
 * Normalised KV event (prefix hashes only). `parent` null = chained from the root. `tier` absent = `gpu`:
 * a block may be held on several tiers at once; `removed` with a tier drops only that tier's copy.
 */
export type KvEvent =
  | { t: 'stored'; parent: bigint | null; hashes: bigint[]; tier?: Tier }
  | { t: 'removed'; hashes: bigint[]; tier?: Tier }
  | { t: 'cleared' };

/** `…events.<hash bits>.<worker>` (subjects.ts): one batch, `seq` gap-free per worker (assigned by the shim). */
export interface EventBatch {
  worker: string;
  seq: number;
  ts: number;
  events: KvEvent[];
  /** model and lora let indexers keep per-pool trees; optional on the wire */
  model?: string;
}

export type WorkerRole = 'both' | 'prefill' | 'decode';

/** `…load.<worker>` */
export interface LoadReport {
  worker: string;
  model: string;
  role: WorkerRole;
  waiting: number;
  running: number;
  kvUsage: number;
  capacityBlocks: number;
  url: string;
  /** false: the engine behind this live shim fails its health probe (DESIGN.md §4); absent: not probed */
  healthy?: boolean;
  /**
   * Blocks the shim has published as held by this worker, per tier (a block on several tiers counts on each): what
   * the index holds of it once the events are applied. Absent: not a shim's report (or an older shim).
   */
  indexedBlocks?: { gpu: number; cpu: number; disk: number };
  ts: number;
}

/** `…workers` KV bucket value */
export interface WorkerRegistration {
  worker: string;
  model: string;
  role: WorkerRole;
  /** URL routers send requests to (the shim's HTTP front, or the engine itself) */
  url: string;
  /** the engine's own URL */
  engineUrl: string;
  blockSize: number;
  capacityBlocks: number;
  loras: string[];
  /**
   * Data-parallel rank this worker is (one engine server, `--data-parallel-size N`, publishes each rank as its
   * own worker `<id>-dp<r>`): routers send it as the `X-data-parallel-rank` request header. Absent = no DP.
   */
  dpRank?: number;
  /**
   * The engine's context length as its GET /v1/models entry says (vLLM's ModelCard `max_model_len`); routers list
   * it in their /v1/models. Absent = not known (an older shim, or the engine had not answered).
   */
  maxModelLen?: number;
  ts: number;
}

export interface MatchRequest {
  model: string;
  lora?: string | null;
  /** a bigint[] on the wire decodes to bigint[]; one 8·n-byte buffer (big-endian u64s) to a BigUint64Array */
  hashes: bigint[] | BigUint64Array;
}
/**
 * Per worker, blocks of the matched prefix reachable through each tier, cumulative: `gpu` = the GPU prefix
 * (= overlaps), `cpu` = that plus the run of blocks held on CPU right after it, `disk` = the same through
 * CPU or disk. So gpu ≤ cpu ≤ disk, and a worker without lower tiers has all three equal.
 */
export interface TierOverlap {
  gpu: number;
  cpu: number;
  disk: number;
}
export interface MatchReply {
  /** GPU overlap per worker (workers holding the first block on GPU) */
  overlaps: Record<string, number>;
  /** present when some worker reaches further through lower tiers; workers absent = gpu only */
  tiers?: Record<string, TierOverlap>;
  indexerSeq: number;
}

export interface WorkerDigest {
  seq: number;
  count: number;
  /** xor of all the worker's prefix hashes: order-independent checksum */
  xor: bigint;
}
export interface GossipMsg {
  indexer: string;
  digests: Record<string, WorkerDigest>;
}
/** `…index.sync.<indexer>`: a peer asks for (hashes empty, `request` true) or sends one worker's block set */
export interface SyncMsg {
  from: string;
  worker: string;
  request?: boolean;
  seq: number;
  /** pairs flattened: [parent0, hash0, parent1, hash1, …]; parent 0n = root */
  blocks: bigint[];
  /** tier bit mask per block (1 gpu, 2 cpu, 4 disk), one byte each; absent = every block on gpu only */
  tiers?: Uint8Array;
}

/**
 * `…shim.resync.<worker>` request: `fromSeq` = the first batch seq of that worker the asker is missing (its last
 * applied + 1), informational. The reply names the batch seq the resync batch was published at (`seq`), or, when
 * the shim cannot answer, an error body.
 */
export interface ResyncRequest {
  fromSeq?: number;
}
export interface ResyncReply {
  seq: number;
}

export interface ActiveDelta {
  router: string;
  worker: string;
  dPrefillTokens: number;
  dDecodeBlocks: number;
}
export interface ActiveBatch {
  router: string;
  deltas: ActiveDelta[];
}

const packr = new Packr({ useRecords: false, int64AsType: 'bigint', mapsAsObjects: true });

export function encode(value: unknown): Uint8Array {
  return packr.pack(value);
}

export function decode(bytes: Uint8Array): unknown {
  try {
    return packr.unpack(bytes);
  } catch (e) {
    throw new DecodeError(`malformed msgpack: ${(e as Error).message}`, { cause: e });
  }
}

// ---- validation helpers -------------------------------------------------------------------------

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}
function need(cond: boolean, what: string): asserts cond {
  if (!cond) throw new DecodeError(what);
}
/** An 8-byte hash as it may arrive: bigint, safe integer, or 8-byte buffer. */
export function toHash(v: unknown): bigint {
  if (typeof v === 'bigint') return BigInt.asUintN(64, v);
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (v instanceof Uint8Array && v.length === 8) return new DataView(v.buffer, v.byteOffset, 8).getBigUint64(0, false);
  throw new DecodeError(`hash must be a 64-bit integer or 8-byte buffer, got ${typeof v}`);
}
function hashes(v: unknown, what: string): bigint[] {
  need(Array.isArray(v), `${what} must be an array`);
  return v.map(toHash);
}
function str(v: unknown, what: string): string {
  need(typeof v === 'string', `${what} must be a string`);
  return v;
}
function num(v: unknown, what: string): number {
  if (typeof v === 'bigint') v = Number(v);
  need(typeof v === 'number' && Number.isFinite(v), `${what} must be a number`);
  return v;
}

function tier(v: unknown, what: string): Tier | undefined {
  if (v == null || v === 'gpu') return undefined;
  need(v === 'cpu' || v === 'disk', `${what}: unknown tier ${JSON.stringify(v)}`);
  return v;
}

function kvEvent(v: unknown): KvEvent {
  need(isObj(v), 'event must be a map');
  switch (v.t) {
    case 'stored': {
      const ev: KvEvent = { t: 'stored', parent: v.parent == null ? null : toHash(v.parent), hashes: hashes(v.hashes, 'stored.hashes') };
      const t = tier(v.tier, 'stored.tier');
      if (t) ev.tier = t;
      return ev;
    }
    case 'removed': {
      const ev: KvEvent = { t: 'removed', hashes: hashes(v.hashes, 'removed.hashes') };
      const t = tier(v.tier, 'removed.tier');
      if (t) ev.tier = t;
      return ev;
    }
    case 'cleared':
      return { t: 'cleared' };
    default:
      throw new DecodeError(`unknown event type ${JSON.stringify(v.t)}`);
  }
}

export function decodeEventBatch(bytes: Uint8Array): EventBatch {
  const v = decode(bytes);
  need(isObj(v), 'event batch must be a map');
  need(Array.isArray(v.events), 'event batch: events must be an array');
  const out: EventBatch = {
    worker: str(v.worker, 'worker'),
    seq: num(v.seq, 'seq'),
    ts: num(v.ts, 'ts'),
    events: v.events.map(kvEvent),
  };
  if (typeof v.model === 'string') out.model = v.model;
  return out;
}

export function decodeLoad(bytes: Uint8Array): LoadReport {
  const v = decode(bytes);
  need(isObj(v), 'load report must be a map');
  const role = str(v.role, 'role');
  need(role === 'both' || role === 'prefill' || role === 'decode', `bad role ${role}`);
  return {
    worker: str(v.worker, 'worker'),
    model: str(v.model, 'model'),
    role,
    waiting: num(v.waiting, 'waiting'),
    running: num(v.running, 'running'),
    kvUsage: num(v.kvUsage, 'kvUsage'),
    capacityBlocks: num(v.capacityBlocks, 'capacityBlocks'),
    url: str(v.url, 'url'),
    ...(typeof v.healthy === 'boolean' ? { healthy: v.healthy } : {}),
    ...(isObj(v.indexedBlocks) && ['gpu', 'cpu', 'disk'].every((t) => typeof (v.indexedBlocks as Record<string, unknown>)[t] === 'number')
      ? { indexedBlocks: { gpu: num(v.indexedBlocks.gpu, 'indexedBlocks.gpu'), cpu: num(v.indexedBlocks.cpu, 'indexedBlocks.cpu'), disk: num(v.indexedBlocks.disk, 'indexedBlocks.disk') } }
      : {}),
    ts: num(v.ts, 'ts'),
  };
}

export function decodeRegistration(bytes: Uint8Array): WorkerRegistration {
  const v = decode(bytes);
  need(isObj(v), 'registration must be a map');
  const role = str(v.role, 'role');
  need(role === 'both' || role === 'prefill' || role === 'decode', `bad role ${role}`);
  return {
    worker: str(v.worker, 'worker'),
    model: str(v.model, 'model'),
    role,
    url: str(v.url, 'url'),
    engineUrl: typeof v.engineUrl === 'string' ? v.engineUrl : str(v.url, 'url'),
    blockSize: num(v.blockSize, 'blockSize'),
    capacityBlocks: num(v.capacityBlocks, 'capacityBlocks'),
    loras: Array.isArray(v.loras) ? v.loras.filter((x): x is string => typeof x === 'string') : [],
    ...(v.dpRank != null ? { dpRank: num(v.dpRank, 'dpRank') } : {}),
    ...(typeof v.maxModelLen === 'number' && Number.isInteger(v.maxModelLen) && v.maxModelLen > 0 ? { maxModelLen: v.maxModelLen } : {}),
    ts: num(v.ts, 'ts'),
  };
}

/**
 * Big-endian u64s ↔ host order (little-endian, checked in hashing.ts): reverses each 8-byte group of `from` into
 * `to` (same length). By bytes, so no BigInt is made or read per hash.
 */
/** `to` = `from` with the bytes of every u64 reversed (native Buffer.swap64; a JS byte loop cost ~10 us per 128 hashes) */
function swapU64s(from: Uint8Array, to: Uint8Array): void {
  to.set(from);
  Buffer.from(to.buffer, to.byteOffset, to.byteLength).swap64();
}

/** Hashes packed as one buffer of big-endian u64s (8·n bytes): the cheap form of a long hash list. */
export function packHashes(hs: ArrayLike<bigint>): Uint8Array {
  const out = new Uint8Array(hs.length * 8);
  if (hs instanceof BigUint64Array) {
    swapU64s(new Uint8Array(hs.buffer, hs.byteOffset, hs.byteLength), out);
    return out;
  }
  const dv = new DataView(out.buffer);
  for (let i = 0; i < hs.length; i++) dv.setBigUint64(i * 8, hs[i]!, false);
  return out;
}

export function unpackHashes(b: Uint8Array, what = 'hashes'): BigUint64Array {
  need(b.length % 8 === 0, `${what}: a packed hash buffer must be 8·n bytes, got ${b.length}`);
  const out = new BigUint64Array(b.length / 8);
  swapU64s(b, new Uint8Array(out.buffer));
  return out;
}

export function decodeMatchRequest(bytes: Uint8Array): MatchRequest {
  const v = decode(bytes);
  need(isObj(v), 'match request must be a map');
  const hs = v.hashes instanceof Uint8Array ? unpackHashes(v.hashes) : hashes(v.hashes, 'hashes');
  return { model: str(v.model, 'model'), lora: typeof v.lora === 'string' ? v.lora : null, hashes: hs };
}

export function decodeMatchReply(bytes: Uint8Array): MatchReply {
  const v = decode(bytes);
  need(isObj(v) && isObj(v.overlaps), 'match reply must be a map with overlaps');
  const overlaps: Record<string, number> = {};
  for (const [k, n] of Object.entries(v.overlaps)) overlaps[k] = num(n, `overlaps.${k}`);
  const out: MatchReply = { overlaps, indexerSeq: num(v.indexerSeq ?? 0, 'indexerSeq') };
  if (v.tiers != null) {
    need(isObj(v.tiers), 'match reply: tiers must be a map');
    const tiers: Record<string, TierOverlap> = {};
    for (const [k, t] of Object.entries(v.tiers)) {
      need(isObj(t), `tiers.${k} must be a map`);
      const gpu = num(t.gpu ?? overlaps[k] ?? 0, `tiers.${k}.gpu`);
      const cpu = num(t.cpu ?? gpu, `tiers.${k}.cpu`);
      tiers[k] = { gpu, cpu, disk: num(t.disk ?? cpu, `tiers.${k}.disk`) };
    }
    out.tiers = tiers;
  }
  return out;
}

export function decodeGossip(bytes: Uint8Array): GossipMsg {
  const v = decode(bytes);
  need(isObj(v) && isObj(v.digests), 'gossip must be a map with digests');
  const digests: Record<string, WorkerDigest> = {};
  for (const [w, d] of Object.entries(v.digests)) {
    need(isObj(d), `digest ${w} must be a map`);
    digests[w] = { seq: num(d.seq, 'seq'), count: num(d.count, 'count'), xor: toHash(d.xor) };
  }
  return { indexer: str(v.indexer, 'indexer'), digests };
}

export function decodeSync(bytes: Uint8Array): SyncMsg {
  const v = decode(bytes);
  need(isObj(v), 'sync must be a map');
  const out: SyncMsg = {
    from: str(v.from, 'from'),
    worker: str(v.worker, 'worker'),
    request: v.request === true,
    seq: num(v.seq, 'seq'),
    blocks: v.blocks == null ? [] : hashes(v.blocks, 'blocks'),
  };
  if (v.tiers != null) {
    need(v.tiers instanceof Uint8Array && v.tiers.length * 2 === out.blocks.length, 'sync: tiers must be one byte per block');
    for (let i = 0; i < v.tiers.length; i++) need(v.tiers[i]! >= 1 && v.tiers[i]! <= 7, `sync: tiers[${i}] must be a tier mask in 1..7`);
    out.tiers = v.tiers;
  }
  return out;
}

export function decodeActive(bytes: Uint8Array): ActiveBatch {
  const v = decode(bytes);
  need(isObj(v) && Array.isArray(v.deltas), 'active batch must be a map with deltas');
  const router = str(v.router, 'router');
  return {
    router,
    deltas: v.deltas.map((d) => {
      need(isObj(d), 'delta must be a map');
      return {
        router,
        worker: str(d.worker, 'worker'),
        dPrefillTokens: num(d.dPrefillTokens, 'dPrefillTokens'),
        dDecodeBlocks: num(d.dDecodeBlocks, 'dDecodeBlocks'),
      };
    }),
  };
}

export function decodeResyncRequest(bytes: Uint8Array): ResyncRequest {
  const v = decode(bytes);
  need(isObj(v), 'resync request must be a map');
  if (v.fromSeq == null) return {};
  const fromSeq = num(v.fromSeq, 'fromSeq');
  need(Number.isSafeInteger(fromSeq) && fromSeq >= 0, `resync request: fromSeq must be a non-negative integer, got ${fromSeq}`);
  return { fromSeq };
}

export function decodeResyncReply(bytes: Uint8Array): ResyncReply {
  const v = decode(bytes);
  need(isObj(v), 'resync reply must be a map');
  const seq = num(v.seq, 'seq');
  need(Number.isSafeInteger(seq) && seq >= 0, `resync reply: seq must be a non-negative integer, got ${seq}`);
  return { seq };
}
