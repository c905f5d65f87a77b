/**
 * The worker hash: FNV-1a (32 bits) of a worker id, the one hash every worker split in kvgate uses — index shards
 * (`kvgate indexer --shard i/N` owns the workers with workerHash mod N = i, @kvgate/indexer's shardOf) and the
 * shard bits in every event subject (subjects.ts `events(worker)`), so that a shard of N = 2^k reads only its own
 * workers' events with one subject filter on the durable stream. It lives here because the shim (which publishes
 * on the subject) and the indexer (which filters on it) must agree on it bit for bit.
 */

/** FNV-1a (32 bits) of the worker id (UTF-16 code units): stable across processes and releases */
export function workerHash(worker: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < worker.length; i++) h = Math.imul(h ^ worker.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** how many low bits of workerHash every event subject carries, one token each (`…events.<b0>.….<b5>.<worker>`) */
export const EVENT_SHARD_BITS = 6;

/** `b0.b1.b2.b3.b4.b5`: the low EVENT_SHARD_BITS bits of `hash`, least significant first, each "0" or "1" */
export function shardBitTokens(hash: number, bits = EVENT_SHARD_BITS): string {
  let out = '';
  for (let b = 0; b < bits; b++) out += (b === 0 ? '' : '.') + ((hash >>> b) & 1);
  return out;
}

/**
 * How many low bits of the worker hash a subject filter can fix for shard count `of`: log2 of the largest power of
 * two dividing `of`, at most EVENT_SHARD_BITS. workerHash mod of = i implies the hash's low bits equal i's there, so
 * the filter over those bits holds every worker of shard i — and exactly those when `of` = 2^bits (a power of two
 * ≤ 64). 0: no filter is possible (odd `of`), the shard reads every event.
 */
export function eventFilterBits(of: number): number {
  if (!Number.isInteger(of) || of < 1) throw new Error(`invalid shard count ${of}`);
  let bits = 0;
  while (bits < EVENT_SHARD_BITS && (of & (1 << bits)) === 0) bits++;
  return bits;
}
