/**
 * Every NATS subject, stream, bucket and queue-group name kvgate uses (DESIGN.md section 4). Each is granted to the
 * roles that use it in nats-permissions.ts (the shipped deploy/nats config): a new subject needs its role there,
 * or a deployment on that config refuses it (test/security/nats-permissions.test.ts).
 */
import { eventFilterBits, shardBitTokens, workerHash } from './worker-hash.js';

export interface Subjects {
  readonly prefix: string;
  /**
   * `kvgate.<ns>.events.<b0>.<b1>.<b2>.<b3>.<b4>.<b5>.<worker>` — normalised KV events, captured by the durable
   * stream. b0 … b5 are the low 6 bits of workerHash(worker) (worker-hash.ts), least significant first, "0" or "1":
   * index shard i of N = 2^k reads its workers' events alone with one filter (`eventsShard`), since nats-server 2.9
   * allows one filter subject per consumer. (Before: `kvgate.<ns>.events.<worker>`; see eventsAll.)
   */
  events(worker: string): string;
  /**
   * `kvgate.<ns>.events.>` — every event subject: what the durable stream captures. It also captures the old
   * `kvgate.<ns>.events.<worker>` form, so shims not yet upgraded keep feeding the stream (and every reader
   * without a shard filter) during an upgrade; a shard filter never matches the old form.
   */
  readonly eventsAll: string;
  /**
   * The subject filter of index shard `shard` of `of` on the event stream: `kvgate.<ns>.events.<bits of shard>.>`
   * over the low eventFilterBits(of) bits — exactly the shard's workers when `of` is a power of two ≤ 64, a
   * superset otherwise (the shard still skips the rest), `eventsAll` when `of` is odd.
   */
  eventsShard(shard: number, of: number): string;
  load(worker: string): string;
  readonly loadAll: string;
  readonly indexMatch: string;
  readonly indexGossip: string;
  /**
   * `kvgate.<ns>.index.match.<of>.<shard>` — `…index.match` asked of one index shard of `of` (`kvgate indexer
   * --shard i/N`, N ≥ 2: each answers for the workers whose id hashes to it). The count is part of the subject, so a
   * router configured for another N gets no answer (counted as shard misses) instead of partial answers.
   */
  indexMatchShard(shard: number, of: number): string;
  /** `kvgate.<ns>.index.gossip.<of>.<shard>` — gossip among the replicas of one index shard only */
  indexGossipShard(shard: number, of: number): string;
  /** wildcard over every shard's match subject */
  readonly indexMatchShards: string;
  /** wildcard over every shard's gossip subject */
  readonly indexGossipShards: string;
  /** queue group the replicas of one index shard answer `indexMatchShard` in: `kvgate-indexers-<of>-<shard>` */
  indexShardQueue(shard: number, of: number): string;
  indexSync(indexer: string): string;
  readonly routerActive: string;
  /**
   * `kvgate.<ns>.shim.resync.<worker>` — request/reply, indexer → shim: republish the worker's whole block set as
   * one `cleared` + `stored` batch into the event stream (after a sequence gap or a bus outage); reply `{seq}`
   */
  shimResync(worker: string): string;
  /** `kvgate.<ns>.decisions.<router>` — routing decisions, captured by `decisionStream` for replay/debugging */
  decisions(router: string): string;
  readonly decisionsAll: string;
  /** `kvgate.<ns>.diag.shim.<worker>` — a shim's misconfiguration findings and facts (diag.ts), every few seconds */
  diagShim(worker: string): string;
  /** `kvgate.<ns>.diag.router.<router>` — a router's findings and facts per worker it proxied to */
  diagRouter(router: string): string;
  /** wildcard over every diag report */
  readonly diagAll: string;
  /** `kvgate.<ns>.diag.ask` — `kvgate doctor` asks every shim and router to publish its report now (empty payload) */
  readonly diagAsk: string;
  /** JetStream stream capturing `decisionsAll` */
  readonly decisionStream: string;
  /** JetStream stream capturing `eventsAll` */
  readonly eventStream: string;
  /** KV bucket holding worker registrations */
  readonly workersBucket: string;
  /** queue group indexers answer `indexMatch` in */
  readonly indexQueue: string;
  /** object-store bucket / file prefix for index snapshots */
  readonly snapshotBucket: string;
}

/** Subject tokens may not contain '.', '*', '>' or whitespace; worker ids are checked against this. */
export const TOKEN_RE = /^[A-Za-z0-9_\-:@]+$/;

/**
 * Key of a worker in the workers bucket: KV keys allow only [A-Za-z0-9_\-=.], worker ids also ':' and '@'; every
 * other character (and '.') becomes '=' and two hex digits (':' → '=3a'), so a key is always one subject token.
 * Readers use the value's `worker` field (the indexer's workerOfKey undoes it).
 */
export function registryKey(worker: string): string {
  return worker.replace(/[^A-Za-z0-9_-]/g, (c) => '=' + c.charCodeAt(0).toString(16).padStart(2, '0'));
}

/**
 * The two durable streams' configs. Every process that opens a stream passes the same config (opening updates an
 * existing stream's config), so they are defined here once. Decisions are debugging data: capped.
 */
export function eventStreamConfig(s: Subjects): { subjects: string[] } {
  return { subjects: [s.eventsAll] };
}
export function decisionStreamConfig(s: Subjects): { subjects: string[]; maxMsgs: number } {
  return { subjects: [s.decisionsAll], maxMsgs: 100_000 };
}

/** `<of>.<shard>` (two subject tokens); a shard index outside 0 … of − 1 or a count below 2 is a programming error */
function shardToken(shard: number, of: number): string {
  if (!Number.isInteger(of) || of < 2 || !Number.isInteger(shard) || shard < 0 || shard >= of) throw new Error(`invalid index shard ${shard}/${of}`);
  return `${of}.${shard}`;
}

export function subjects(namespace = 'default'): Subjects {
  if (!TOKEN_RE.test(namespace)) throw new Error(`invalid namespace ${JSON.stringify(namespace)}`);
  const p = `kvgate.${namespace}`;
  const safeNs = namespace.replace(/[^A-Za-z0-9_-]/g, '_');
  return {
    prefix: p,
    events: (w) => `${p}.events.${shardBitTokens(workerHash(w))}.${w}`,
    eventsAll: `${p}.events.>`,
    eventsShard: (i, n) => {
      if (!Number.isInteger(n) || n < 1 || !Number.isInteger(i) || i < 0 || i >= n) throw new Error(`invalid index shard ${i}/${n}`);
      const bits = eventFilterBits(n);
      return bits === 0 ? `${p}.events.>` : `${p}.events.${shardBitTokens(i, bits)}.>`;
    },
    load: (w) => `${p}.load.${w}`,
    loadAll: `${p}.load.*`,
    indexMatch: `${p}.index.match`,
    indexGossip: `${p}.index.gossip`,
    indexMatchShard: (i, n) => `${p}.index.match.${shardToken(i, n)}`,
    indexGossipShard: (i, n) => `${p}.index.gossip.${shardToken(i, n)}`,
    indexMatchShards: `${p}.index.match.*.*`,
    indexGossipShards: `${p}.index.gossip.*.*`,
    indexShardQueue: (i, n) => `kvgate-indexers-${n}-${i}`,
    indexSync: (i) => `${p}.index.sync.${i}`,
    routerActive: `${p}.router.active`,
    shimResync: (w) => `${p}.shim.resync.${w}`,
    decisions: (r) => `${p}.decisions.${r}`,
    decisionsAll: `${p}.decisions.*`,
    diagShim: (w) => `${p}.diag.shim.${w}`,
    diagRouter: (r) => `${p}.diag.router.${r}`,
    diagAll: `${p}.diag.*.*`,
    diagAsk: `${p}.diag.ask`,
    decisionStream: `KVGATE_DECISIONS_${safeNs}`,
    eventStream: `KVGATE_EVENTS_${safeNs}`,
    workersBucket: `kvgate_${safeNs}_workers`,
    indexQueue: `kvgate-indexers`,
    snapshotBucket: `kvgate_${safeNs}_snapshots`,
  };
}
