/**
 * KV cache events as vLLM and SGLang publish them (DESIGN.md section 3), after decoding.
 * Field names follow the engines' own, in camelCase.
 */

/**
 * An engine's block hash, opaque to kvgate. Two forms, never mixed up in a `Map`:
 *  - `bigint`: integer hashes, always normalised to uint64 (0 ≤ h < 2^64). Whatever the msgpack width
 *    (fixint … uint64 0xcf, or a signed int such as Python's `hash()` from SGLang), the same 64-bit
 *    value gives the same bigint; negative int64 values map to their two's-complement uint64.
 *  - `string`: raw byte digests (vLLM's default 32-byte sha256 `bytes`), as lowercase hex.
 * Both are primitives, so they compare by value and work directly as `Map`/`Set` keys.
 */
export type EngineHash = bigint | string;

/**
 * One entry of vLLM's per-block `extra_keys` (kv_cache_utils.generate_block_hash_extra_keys): the LoRA name,
 * multimodal keys (`[identifier, offset]` pairs, older versions a hash string), the request's `cache_salt`
 * (first block of a prompt only) and prompt-embedding digests (bytes), in that order. Decoded as msgpack
 * gives them: strings, numbers, nested arrays, Uint8Array.
 */
export type ExtraKey = string | number | bigint | boolean | Uint8Array | ExtraKey[] | null;

export interface BlockStored {
  type: 'BlockStored';
  /** hashes of the newly stored full blocks, in prefix order */
  blockHashes: EngineHash[];
  /** hash of the block just before the first stored one; null = the sequence starts here */
  parentBlockHash: EngineHash | null;
  /**
   * Tokens of the blocks, `blockSize` per block (always a whole number of blocks). Normally
   * `blockHashes.length * blockSize` long. vLLM skips null / masked-out blocks (sliding-window and
   * hybrid KV-cache groups) in `blockHashes` but not in `tokenIds`, so fewer hashes than blocks can
   * arrive: see `aligned`. SGLang's EAGLE "bigram" token pairs `[t_i, t_{i+1}]` are reduced to `t_i`.
   */
  tokenIds: number[];
  blockSize: number;
  /** true when there is exactly one hash per token block: only then may hash i be paired with block i */
  aligned: boolean;
  /**
   * A hash-only placeholder: no tokens (`token_ids` empty, `block_size` 0), as vLLM's offloading connector
   * sends for blocks it copied to another tier. Only the engine hashes name the blocks; `tokenIds` is empty,
   * `blockSize` is 0 and `aligned` false.
   */
  hashOnly: boolean;
  /** vLLM's (deprecated) numeric LoRA id; null = base model */
  loraId: number | null;
  /** storage tier, e.g. "GPU" / "CPU"; absent on old engines */
  medium?: string;
  loraName?: string;
  /** vLLM: per block, the extra keys mixed into that block's engine hash (null entry = none); see ExtraKey */
  extraKeys?: (ExtraKey[] | null)[];
  /** SGLang ≥ 0.5.18 `BlockStoredWithMetadata`: the request's `cache_salt` */
  cacheSalt?: string;
  /** vLLM KV-cache group (hybrid models); absent = the only group */
  groupIdx?: number;
  /** vLLM: the group's cache spec kind, e.g. "full_attention", "sliding_window", "mamba"; absent on older engines */
  kvCacheSpecKind?: string;
  /** vLLM: sliding window of that group, in tokens */
  kvCacheSpecSlidingWindow?: number;
}

export interface BlockRemoved {
  type: 'BlockRemoved';
  blockHashes: EngineHash[];
  medium?: string;
  groupIdx?: number;
}

export interface AllBlocksCleared {
  type: 'AllBlocksCleared';
  medium?: string;
}

export type EngineEvent = BlockStored | BlockRemoved | AllBlocksCleared;

/** One decoded `EventBatch` payload. */
export interface EngineBatch {
  /** engine wall-clock time of the batch, seconds since the epoch (float) */
  ts: number;
  /** data-parallel rank, when the engine sent one */
  dpRank?: number;
  events: EngineEvent[];
  /** events with a tag this decoder does not know (new engine versions); they are dropped */
  skipped: number;
  /**
   * Events that have a known tag but could not be understood: each is dropped alone (the rest of the batch
   * still applies). `reason` is a short stable label for metrics; `message` says what was wrong.
   */
  invalid: { index: number; reason: string; message: string }[];
}

/** One ZMQ PUB message `[topic, seq, payload]`. */
export interface EngineMessage {
  topic: string;
  /** 8-byte big-endian sequence number, per engine process, from 0 */
  seq: bigint;
  batch: EngineBatch;
}

/** One reply of the replay (ROUTER) socket: a batch, or the end marker `seq = 2^64-1` with an empty payload. */
export type ReplayMessage = { end: false; seq: bigint; batch: EngineBatch } | { end: true; seq: bigint };
