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

export interface BlockDigest {
  /** 32-byte sha256 digest */
  bytes: Buffer;
  /** its last 8 bytes, big-endian: the published int form and the cache's map key */
  key: bigint;
}

export class BlockHasher {
  readonly seed: Buffer;
  #scratch = new Uint32Array(64);

  /** `seed`: any string (hashed to 32 bytes); absent → 32 random bytes, like vLLM without PYTHONHASHSEED. */
  constructor(seed?: string) {
    this.seed = seed === undefined ? randomBytes(32) : createHash('sha256').update(`kvgate-sim|${seed}`).digest();
  }

  /** Digest of one block: tokens[start, start+blockSize) chained from `parent` (null = the seed). */
  hashBlock(parent: BlockDigest | null, tokens: ArrayLike<number>, start: number, blockSize: number): BlockDigest {
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
    for (let i = out.length; i < full; i++) out.push(this.hashBlock(i === 0 ? null : out[i - 1]!, tokens, i * blockSize, blockSize));
  }
}
