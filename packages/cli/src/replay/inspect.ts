/**
 * `kvgate replay inspect`: rebuild the index as it stood at a time or stream sequence from recorded events, and
 * show what it held, what a prompt would match, and what a router saw and chose for a request; with a shard
 * (`--shard i/N`), only what that index shard's indexers hold (the other workers' batches skipped, as they do).
 * Pure: records in, report out.
 */
import { PrefixIndex, shardOf, type IndexShard } from '@kvgate/indexer';
import type { KvlogRecord, RouteDecision, TierOverlap } from '@kvgate/protocol';

export interface InspectQuery {
  at?: number;
  seq?: number;
  /** prefix hashes of a prompt to match against the index as it stood */
  hashes?: bigint[];
  requestId?: string;
  /** rebuild only what `kvgate indexer --shard i/N` holds: the workers whose id hashes to shard i of N */
  shard?: IndexShard;
}

export interface InspectReport {
  /** "i/N" when rebuilt as one index shard (InspectQuery.shard, N ≥ 2) */
  shard?: string;
  /** the point the index was rebuilt to */
  upTo: { time: number | null; seq: number | null; eventsApplied: number };
  /** blocks = distinct prefixes held on any tier */
  workers: Record<string, { blocks: number; lastSeq: number }>;
  /** GPU overlap per worker of the queried prompt */
  match?: Record<string, number>;
  /** for the queried prompt: workers that reach further through cpu/disk copies (cumulative depths) */
  matchTiers?: Record<string, TierOverlap>;
  request?: {
    decision: RouteDecision;
    /** overlaps the index held for the decision's prompt at the decision's time */
    indexAtDecision: Record<string, number>;
    /** workers whose overlap then was higher than the chosen worker's */
    betterHeld: string[];
  };
}

function rebuild(records: KvlogRecord[], stop: (r: KvlogRecord & { kind: 'event' }) => boolean, shard?: IndexShard) {
  const keep = shard && shard.of > 1 ? (w: string) => shardOf(w, shard.of) === shard.index : () => true;
  const index = new PrefixIndex();
  const lastSeq: Record<string, number> = {};
  let applied = 0, lastTime: number | null = null, lastStreamSeq: number | null = null;
  for (const r of records) {
    if (r.kind !== 'event') continue;
    if (stop(r)) break;
    const w = r.batch.worker;
    if (!keep(w)) continue; // another shard's batch: that shard's indexer holds it
    for (const e of r.batch.events) {
      if (e.t === 'stored') index.store(w, e.parent, e.hashes, e.tier);
      else if (e.t === 'removed') index.remove(w, e.hashes, e.tier);
      else index.clear(w);
    }
    lastSeq[w] = r.batch.seq;
    applied++;
    lastTime = r.time;
    lastStreamSeq = r.seq;
  }
  return { index, lastSeq, applied, lastTime, lastStreamSeq };
}

export function inspect(records: KvlogRecord[], q: InspectQuery): InspectReport {
  const stop = (r: KvlogRecord & { kind: 'event' }) => (q.seq !== undefined && r.seq > q.seq) || (q.at !== undefined && r.time > q.at);
  const { index, lastSeq, applied, lastTime, lastStreamSeq } = rebuild(records, stop, q.shard);
  const workers: InspectReport['workers'] = {};
  for (const w of index.workers()) workers[w] = { blocks: index.digest(w).count, lastSeq: lastSeq[w] ?? 0 };
  const report: InspectReport = { ...(q.shard && q.shard.of > 1 ? { shard: `${q.shard.index}/${q.shard.of}` } : {}), upTo: { time: lastTime, seq: lastStreamSeq, eventsApplied: applied }, workers };
  if (q.hashes) {
    report.match = index.match(q.hashes);
    const tiers = index.matchTiers(q.hashes);
    if (Object.keys(tiers).length > 0) report.matchTiers = tiers;
  }
  if (q.requestId !== undefined) {
    const rec = records.find((r): r is KvlogRecord & { kind: 'route' } => r.kind === 'route' && r.decision.requestId === q.requestId);
    if (rec) {
      const d = rec.decision;
      const then = rebuild(records, (r) => r.time > rec.time, q.shard).index.match(d.hashes);
      const chosenDepth = then[d.chosen] ?? 0;
      report.request = {
        decision: d,
        indexAtDecision: then,
        betterHeld: Object.entries(then).filter(([, n]) => n > chosenDepth).map(([w]) => w),
      };
    }
  }
  return report;
}
