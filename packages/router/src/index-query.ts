/**
 * The index query, an edge of the routing core (routing-core.ts IndexQuery): the prompt's prefix hashes → each
 * worker's overlap, within `timeoutMs` (a miss of the budget rejects: the core then routes by load alone).
 * Over the bus (`…index.match`, any indexer replica answers), or by direct call to an indexer in the same process.
 */
import { decodeMatchReply, encode, packHashes, type Bus, type MatchReply, type Subjects } from '@kvgate/protocol';
import type { IndexQuery } from './routing-core.js';

/** An in-process index (the indexer's IndexClient). */
export interface DirectIndex {
  match(model: string, lora: string | null | undefined, hashes: ArrayLike<bigint>): Promise<MatchReply>;
}

export function busIndexQuery(bus: Bus, subj: Subjects, timeoutMs: number): IndexQuery {
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
