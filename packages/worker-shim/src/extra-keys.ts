/**
 * What vLLM's per-block `extra_keys` mean for kvgate's prefix hash (pure).
 *
 * vLLM mixes extra keys into each block's hash (kv_cache_utils.generate_block_hash_extra_keys), in this order:
 * the LoRA name (older versions: the int `lora_int_id`), multimodal keys (`[identifier, offset]` pairs; older
 * versions a hash string per input), the request's `cache_salt` (first block of a prompt only), prompt-embedding
 * digests (bytes). kvgate can reproduce two of these from a text request:
 *   - the LoRA: already in the chain root (lora name), so its entry is dropped here;
 *   - the salt: on the first block of a prompt (parent null) a single remaining string is the cache_salt, and
 *     enters the chain root: rootHash(model, lora, B, salt) (DESIGN.md §2).
 * Anything else (multimodal identifiers, embeddings, a second string, a string on a later block) the router
 * cannot reproduce: the block is *opaque* and gets a key no text prompt can match (`opaqueKey`), and so do its
 * descendants, because they chain from it.
 */
import { hashToHex, rootHash, type ExtraKey } from '@kvgate/protocol';

export type BlockKeys = { kind: 'plain' } | { kind: 'salt'; salt: string } | { kind: 'opaque'; text: string };

const PLAIN: BlockKeys = { kind: 'plain' };

/**
 * Interprets one block's extra keys. `first`: the block starts a prompt (the first block of a store whose parent
 * is null), the only place vLLM puts the salt. `loraName` / `loraId`: the event's LoRA, whose entry leads the keys.
 */
export function interpretExtraKeys(keys: readonly ExtraKey[] | null | undefined, first: boolean, loraName: string | undefined, loraId: number | null): BlockKeys {
  if (!keys || keys.length === 0) return PLAIN;
  let rest = keys;
  const k0 = keys[0];
  const isLora =
    (loraName !== undefined && loraName !== '' && k0 === loraName) ||
    (loraId !== null && loraId !== 0 && (k0 === loraId || (typeof k0 === 'bigint' && k0 === BigInt(loraId))));
  if (isLora) rest = keys.slice(1);
  if (rest.length === 0) return PLAIN;
  if (first && rest.length === 1 && typeof rest[0] === 'string' && rest[0] !== '') return { kind: 'salt', salt: rest[0] };
  return { kind: 'opaque', text: canonical(rest) };
}

/**
 * A deterministic text for extra keys: strings JSON-quoted, integers `i<decimal>`, other numbers `f<decimal>`,
 * bytes `b<hex>`, booleans, `null`, arrays in brackets. Numbers and bigints of the same value agree (msgpack
 * width must not change a key).
 */
export function canonical(keys: readonly ExtraKey[]): string {
  return '[' + keys.map(one).join(',') + ']';
}

function one(k: ExtraKey): string {
  if (k === null) return 'null';
  if (typeof k === 'string') return JSON.stringify(k);
  if (typeof k === 'bigint') return `i${k}`;
  if (typeof k === 'number') return Number.isInteger(k) ? `i${k}` : `f${k}`;
  if (typeof k === 'boolean') return k ? 'true' : 'false';
  if (k instanceof Uint8Array) return 'b' + Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('hex');
  return canonical(k);
}

/**
 * The key of an opaque block: p_i' = xxh64(utf8("kvgate:unreproducible|<p_i, 16 hex>|0|salt:<canonical keys>"),
 * seed), i.e. rootHash("kvgate:unreproducible", hex(p_i), 0, keys) — where p_i is the block's ordinary prefix
 * hash (parent + tokens). No text prompt reaches it: every prompt hash is a chain step (le64 ‖ le32 tokens) or a
 * root of block size ≥ 1, never a root of block size 0. Deterministic, so every shim of the worker (and a
 * restarted one) names the block alike, and the engine's later removal finds it.
 */
export function opaqueKey(prefix: bigint, text: string): bigint {
  return rootHash('kvgate:unreproducible', hashToHex(prefix), 0, text);
}
