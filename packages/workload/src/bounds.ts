/**
 * Hit-rate bounds of a workload, in prompt tokens served from cache / prompt tokens:
 *   infinite — every block seen before hits (no capacity limit, no routing);
 *   pooled   — one LRU cache with the engines' total capacity, replayed in arrival order; a request hits its
 *              longest cached run of leading blocks (prefix caching), then every block is touched.
 * A block is (key, tokens); keys name whole prefixes (Mooncake hash ids, or kvgate prefix hashes).
 */
export interface BoundBlock {
  key: number | bigint | string;
  tokens: number;
}

export function infiniteHitRate(requests: Iterable<readonly BoundBlock[]>): number {
  const seen = new Set<BoundBlock['key']>();
  let hit = 0;
  let total = 0;
  for (const blocks of requests) {
    for (const b of blocks) {
      total += b.tokens;
      if (seen.has(b.key)) hit += b.tokens;
      else seen.add(b.key);
    }
  }
  return total > 0 ? hit / total : 0;
}

/** `capacityTokens` is the engines' total KV capacity; a block occupies its full size. */
export function pooledHitRate(requests: Iterable<readonly BoundBlock[]>, capacityTokens: number, blockTokens: number): number {
  const cap = Math.max(0, Math.floor(capacityTokens / blockTokens));
  const lru = new Map<BoundBlock['key'], true>();
  let hit = 0;
  let total = 0;
  for (const blocks of requests) {
    let prefix = true;
    for (const b of blocks) {
      total += b.tokens;
      if (prefix && lru.has(b.key)) hit += b.tokens;
      else prefix = false;
      lru.delete(b.key);
      lru.set(b.key, true);
    }
    while (lru.size > cap) lru.delete(lru.keys().next().value!);
  }
  return total > 0 ? hit / total : 0;
}
