/**
 * The engine's own block hashes (pure), built like vLLM's: a sha256 chain over (parent digest, block token ids),
 * rooted at a per-engine seed (vLLM's NONE_HASH, random per process unless PYTHONHASHSEED is set). Two engines
 * with different seeds give different hashes for the same prefix; that is why the shim maps engine hashes to
 * kvgate prefix hashes per worker. This is deliberately NOT kvgate's prefix hash.
 *
 * As vLLM does by default (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES), the hash published in events is the last 8 bytes
 * of the digest read big-endian as a uint64; `--block-hash-format bytes` publishes the 32-byte digest instead.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chainHashes } from '@kvgate/protocol';

/**
 * vLLM's `--prefix-caching-hash-algo`: sha256 (the default) or xxhash (64-bit, much cheaper; vLLM offers it for
 * speed). With xxhash the digest is the 8-byte hash itself. xxhash needs `initHashing()` from @kvgate/protocol first.
 */
export type HashAlgo = 'sha256' | 'xxhash';

export interface BlockDigest {
  /** 32-byte sha256 digest */
  bytes: Buffer;
  /** its last 8 bytes, big-endian: the published int form and the cache's map key */
  key: bigint;
}

/** xxhash digests compute their byte form only when an event publishes it. */
class XxDigest implements BlockDigest {
  readonly key: bigint;
  constructor(key: bigint) {
    this.key = key;
  }
  get bytes(): Buffer {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(this.key);
    return b;
  }
}

export class BlockHasher {
  readonly seed: Buffer;
  readonly algo: HashAlgo;
  #seedKey: bigint;
  #scratch = new Uint32Array(64);

  /** `seed`: any string (hashed to 32 bytes); absent → 32 random bytes, like vLLM without PYTHONHASHSEED. */
  constructor(seed?: string, algo: HashAlgo = 'sha256') {
    this.seed = seed === undefined ? randomBytes(32) : createHash('sha256').update(`kvgate-sim|${seed}`).digest();
    this.algo = algo;
    this.#seedKey = this.seed.readBigUInt64BE(24);
  }

  /** Digest of one block: tokens[start, start+blockSize) chained from `parent` (null = the seed). */
  hashBlock(parent: BlockDigest | null, tokens: ArrayLike<number>, start: number, blockSize: number): BlockDigest {
    if (this.algo === 'xxhash') return new XxDigest(chainHashes(parent ? parent.key : this.#seedKey, tokens, start, 1, blockSize)[0]!);
    if (this.#scratch.length < blockSize) this.#scratch = new Uint32Array(blockSize);
    const s = this.#scratch;
    for (let i = 0; i < blockSize; i++) s[i] = tokens[start + i]!;
    const bytes = createHash('sha256')
      .update(parent ? parent.bytes : this.seed)
      .update(new Uint8Array(s.buffer, 0, 4 * blockSize))
      .digest();
    return { bytes, key: bytes.readBigUInt64BE(24) };
  }

  /** Extends `out` with the digests of every full block of `tokens` not yet hashed. */
  extend(out: BlockDigest[], tokens: ArrayLike<number>, blockSize: number): void {
    const full = Math.floor(tokens.length / blockSize);
    if (this.algo === 'xxhash' && full > out.length) {
      const from = out.length;
      const keys = chainHashes(from === 0 ? this.#seedKey : out[from - 1]!.key, tokens, from * blockSize, full - from, blockSize);
      for (const k of keys) out.push(new XxDigest(k));
      return;
    }
    for (let i = out.length; i < full; i++) out.push(this.hashBlock(i === 0 ? null : out[i - 1]!, tokens, i * blockSize, blockSize));
  }
}
