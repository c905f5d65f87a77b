/**
 * The index query, an edge of the routing core (routing-core.ts IndexQuery): the prompt's prefix hashes → each
 * worker's overlap, within `timeoutMs` (a miss of the budget rejects: the core then routes by load alone).
 * Over the bus (`…index.match`, any indexer replica answers), or by direct call to an indexer in the same process.
 * With N index shards (`kvgate indexer --shard i/N`), the match is scattered to `…index.match.<N>.<i>` for every i
 * in parallel within the same budget and the disjoint answers merged; a shard that does not answer in time costs
 * only its workers' overlap (they score 0 and are routed by load), counted by `onShardMiss`. Only when no shard
 * answers does the query reject (the whole decision by load alone, as unsharded).
 */
import { decodeMatchReply, encode, packHashes, type Bus, type MatchReply, type Subjects } from '@kvgate/protocol';
import type { IndexQuery } from './routing-core.js';

/** An in-process index (the indexer's IndexClient). */
export interface DirectIndex {
  match(model: string, lora: string | null | undefined, hashes: ArrayLike<bigint>): Promise<MatchReply>;
}

export interface BusIndexOptions {
  /** index shard count N (the indexers' `--shard i/N`); 1 = the one `…index.match` subject. Default 1. */
  shards?: number;
  /** a shard that did not answer (timeout, no responders, an error reply) */
  onShardMiss?(shard: number): void;
}

export function busIndexQuery(bus: Bus, subj: Subjects, timeoutMs: number, opts: BusIndexOptions = {}): IndexQuery {
  const n = opts.shards ?? 1;
  if (n > 1) return scatterIndexQuery(bus, Array.from({ length: n }, (_, i) => subj.indexMatchShard(i, n)), timeoutMs, opts.onShardMiss);
  return async (model, lora, hashes) => {
    // the hashes as one packed buffer: msgpack of 128 BigInts costs more on both ends (DESIGN.md §4 allows Buffer)
    const reply = await bus.request(subj.indexMatch, encode({ model, lora, hashes: packHashes(hashes) }), { timeoutMs });
    return decodeMatchReply(reply.data);
  };
}

export function directIndexQuery(index: DirectIndex, timeoutMs: number): IndexQuery {
  return async (model, lora, hashes) => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('index timeout')), timeoutMs)));
    try {
      return await Promise.race([index.match(model, lora, hashes), late]);
    } finally {
      clearTimeout(timer);
    }
  };
}

function scatterIndexQuery(bus: Bus, shardSubjects: string[], timeoutMs: number, onShardMiss?: (shard: number) => void): IndexQuery {
  return async (model, lora, hashes) => {
    const body = encode({ model, lora, hashes: packHashes(hashes) });
    const parts = await Promise.allSettled(shardSubjects.map((s) => bus.request(s, body, { timeoutMs }).then((r) => decodeMatchReply(r.data))));
    return mergeShardReplies(parts.map((p) => (p.status === 'fulfilled' ? p.value : null)), onShardMiss);
  };
}

/**
 * Shard answers (null = missed) → one reply. Shards hold disjoint workers, so overlaps and tiers are unions;
 * `indexerSeq` is the lowest answering shard's (the reply is at least that fresh). No answer at all rejects.
 */
export function mergeShardReplies(parts: (MatchReply | null)[], onShardMiss?: (shard: number) => void): MatchReply {
  const overlaps: Record<string, number> = {};
  let tiers: MatchReply['tiers'];
  let seq = Infinity;
  let answered = 0;
  parts.forEach((r, i) => {
    if (!r) {
      onShardMiss?.(i);
      return;
    }
    answered++;
    Object.assign(overlaps, r.overlaps);
    if (r.tiers) tiers = Object.assign(tiers ?? {}, r.tiers);
    seq = Math.min(seq, r.indexerSeq);
  });
  if (answered === 0) throw new Error(`no index shard answered (${parts.length} asked)`);
  return tiers ? { overlaps, tiers, indexerSeq: seq } : { overlaps, indexerSeq: seq };
}
