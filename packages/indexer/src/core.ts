/**
 * The contract every index implementation meets (PrefixIndex in radix.ts, NaiveIndex in naive.ts).
 * One contract suite (test/index-contract.test.ts) runs against each of them.
 *
 * Semantics, per worker w and prefix hash p:
 *   - `store(w, parent, [h…])`  w now holds each h (idempotent). `parent` is recorded on the prefix for dumps.
 *   - `remove(w, [h…])`         w no longer holds each h (idempotent; unknown hashes ignored).
 *     Descendants of a removed prefix stay indexed for w: they are unreachable by match (the walk stops at
 *     the first block w lacks) until the prefix is stored again, when they become reachable again. This is
 *     exactly what a per-worker set of prefix hashes would answer, so no cascade is needed.
 *   - `clear(w)`                w holds nothing (cost O(w's blocks)); the worker stays known.
 *   - `dropWorker(w)`           clear + forget w.
 *   - `match([p0…pn-1])`        for each worker holding p0: the number of consecutive leading prefixes it holds.
 *     Workers with depth 0 are absent. The walk stops at the first prefix no surviving worker holds.
 */

/** Block set of one worker, as [parent, hash] pairs flattened into one u64 array (parent 0n = root). */
export interface WorkerDump {
  worker: string;
  blocks: BigUint64Array;
}

export interface IndexDump {
  workers: WorkerDump[];
}

export interface Digest {
  count: number;
  xor: bigint;
}

export interface IndexCore {
  store(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>): void;
  remove(worker: string, hashes: ArrayLike<bigint>): void;
  clear(worker: string): void;
  dropWorker(worker: string): void;
  match(hashes: ArrayLike<bigint>): Record<string, number>;
  /** every worker the index knows (including ones with no blocks after a clear) */
  workers(): string[];
  digest(worker: string): Digest;
  /** (block, worker) entries held */
  readonly entries: number;
  dumpWorker(worker: string): WorkerDump;
  /** replace one worker's block set */
  loadWorker(dump: WorkerDump): void;
  dump(): IndexDump;
  load(dump: IndexDump): void;
}

/** Order-independent digest helper shared by the implementations. */
export function xorAll(hashes: Iterable<bigint>): bigint {
  let x = 0n;
  for (const h of hashes) x ^= h;
  return x;
}
