/** @kvgate/indexer: the global prefix → worker index (see README.md). */
export { startIndexer, type StartIndexerOptions, type RunningIndexer } from './main.js';
export { Indexer, workerOfKey, type IndexerOptions, type IndexClient, type WorkerInfo } from './actor.js';
export { PrefixIndex, type PrefixIndexOptions, type PrefixIndexStats } from './radix.js';
export { NaiveIndex } from './naive.js';
export type { IndexCore, IndexDump, WorkerDump, Digest } from './core.js';
export { ShardState, type ShardOptions, type WorkerState, type ShardStats } from './shard-state.js';
export { ShardSet, LocalShard, ThreadShard, shardOf, workerHash, parseShard, shardSnapshotDir, type IndexShard } from './shards.js';
export { GossipTracker, type GossipOptions, type RepairOrder } from './gossip.js';
export { readNewestSnapshot, writeSnapshot, encodeSnapshot, decodeSnapshot, type Snapshot } from './snapshot.js';
export { decodeBatchFast, decodeBatchInto, DecodedBatch, STORED, REMOVED, CLEARED } from './wire.js';
export { createIndexerHttp, parseMatchBody } from './http.js';
