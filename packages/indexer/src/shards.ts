/**
 * Index shards. Sharding is by *worker*: every block of one worker lives in one shard, chosen by a hash of
 * the worker id. Ingest then never crosses shards (a batch names one worker) and each shard answers a match
 * for its own workers with one local walk; a match fans out to all N shards in parallel and merges disjoint
 * answers. Sharding by prefix instead would put consecutive blocks of one prompt in different shards, so a
 * walk would cross shards at nearly every block (bench/index.bench.ts measures both: index.shard.*).
 *
 *   LocalShard   ShardState called inline (N = 0 / 1: the embedded default, no thread hop)
 *   ThreadShard  ShardState in a worker thread (shard-thread.ts, entered through shard-thread-boot.mjs)
 */
import { Worker } from 'node:worker_threads';
import { KvgateError, workerHash, type KvEvent, type TierOverlap, type WorkerDigest } from '@kvgate/protocol';
import { ShardState, type MatchPart, type ShardOptions, type ShardRequest, type ShardStats, type WorkerState } from './shard-state.js';

export interface Shard {
  /** fire-and-forget, applied in call order */
  post(req: ShardRequest): void;
  call<T>(req: ShardRequest): Promise<T>;
  close(): Promise<void>;
}

export class LocalShard implements Shard {
  readonly state: ShardState;
  constructor(opts: ShardOptions = {}) {
    this.state = new ShardState(opts);
  }
  post(req: ShardRequest): void {
    this.state.handle(req);
  }
  async call<T>(req: ShardRequest): Promise<T> {
    return this.state.handle(req) as T;
  }
  async close(): Promise<void> {}
}

export class ThreadShard implements Shard {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  #next = 1;
  #dead: Error | null = null;

  constructor(opts: ShardOptions = {}) {
    this.#worker = new Worker(new URL('./shard-thread-boot.mjs', import.meta.url), { execArgv: ['--import', 'tsx'], workerData: opts });
    this.#worker.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: string }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(new KvgateError('KVG_INTERNAL', `index shard: ${m.error}`));
    });
    const fail = (err: Error) => {
      this.#dead = err;
      for (const p of this.#pending.values()) p.reject(new KvgateError('KVG_INTERNAL', `index shard thread died: ${err.message}`, { cause: err }));
      this.#pending.clear();
    };
    this.#worker.on('error', fail);
    this.#worker.on('exit', (code) => fail(new Error(`exit ${code}`)));
  }

  post(req: ShardRequest): void {
    if (this.#dead) return;
    if (req.op === 'ingest') {
      // copy out of the (possibly shared, large) socket buffer and hand the copy over without a second copy
      const data = new Uint8Array(req.data); // a copy (Buffer#slice would be a view of the shared pool)
      this.#worker.postMessage({ req: { op: 'ingest', data } }, [data.buffer]);
    } else this.#worker.postMessage({ req });
  }

  call<T>(req: ShardRequest): Promise<T> {
    if (this.#dead) return Promise.reject(new KvgateError('KVG_INTERNAL', `index shard thread died: ${this.#dead.message}`));
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ id, req });
    });
  }

  async close(): Promise<void> {
    this.#dead ??= new Error('closed');
    await this.#worker.terminate();
  }
}

/** one index shard of a sharded deployment (`kvgate indexer --shard index/of`) */
export interface IndexShard {
  /** 0 … of − 1 */
  index: number;
  /** shard count N (1 = the whole index) */
  of: number;
}

/** the snapshot subdirectory of a shard under the configured snapshot directory: `shard-<N>-<i>` */
export function shardSnapshotDir(s: IndexShard): string {
  return `shard-${s.of}-${s.index}`;
}

/** `i/N` (0 ≤ i < N, 1 ≤ N ≤ 1024) → the shard; anything else → KVG_CONFIG naming the value (the CLI reports it as KVG_BAD_FLAG) */
export function parseShard(text: string): IndexShard {
  const m = /^(\d{1,4})\/(\d{1,4})$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN;
  const of = m ? Number(m[2]) : NaN;
  if (!m || of < 1 || of > 1024 || index >= of) {
    throw new KvgateError('KVG_CONFIG', `--shard ${JSON.stringify(text)}: expected i/N with 0 ≤ i < N ≤ 1024 (e.g. 0/2)`);
  }
  return { index, of };
}

/** FNV-1a (32 bits) of the worker id, from @kvgate/protocol (the event subjects carry its low bits): re-exported */
export { workerHash };

/** the shard of `n` that holds `worker`: workerHash mod n */
export function shardOf(worker: string, n: number): number {
  return workerHash(worker) % n;
}

/** N shards behind one facade: routes by worker, fans out matches and merges. */
export class ShardSet {
  readonly shards: Shard[];
  /** process shard count above this set (`--shard i/N`: N, else 1) */
  readonly #spread: number;

  /**
   * `spread`: the process shard count N when this set is process shard i of N. Every worker here then has
   * fnv(w) mod N = i, so the thread split uses ⌊fnv(w) / N⌋ mod threads (fnv(w) mod threads would put all of
   * them in one thread when threads and N share a factor). Default 1: fnv(w) mod threads, as before.
   */
  constructor(shards: Shard[], spread = 1) {
    if (shards.length === 0) throw new KvgateError('KVG_CONFIG', 'at least one index shard is needed');
    this.shards = shards;
    this.#spread = Math.max(1, Math.floor(spread));
  }

  /** `threads` = 0 → one inline shard; otherwise that many worker threads; `spread` as in the constructor */
  static create(threads: number, opts: ShardOptions = {}, spread = 1): ShardSet {
    if (threads <= 0) return new ShardSet([new LocalShard(opts)], spread);
    const per: ShardOptions = { ...opts, maxEntries: opts.maxEntries ? Math.ceil(opts.maxEntries / threads) : 0 };
    return new ShardSet(Array.from({ length: threads }, () => new ThreadShard(per)), spread);
  }

  #index(worker: string): number {
    const n = this.shards.length;
    if (n === 1) return 0;
    return this.#spread === 1 ? shardOf(worker, n) : Math.floor(workerHash(worker) / this.#spread) % n;
  }

  #of(worker: string): Shard {
    return this.shards[this.#index(worker)]!;
  }

  ingest(worker: string, data: Uint8Array): void {
    this.#of(worker).post({ op: 'ingest', data });
  }

  /** synchronous answer when the only shard is inline (the in-process router path), else null */
  matchNow(hashes: BigUint64Array): MatchResult | null {
    const s = this.shards.length === 1 ? this.shards[0] : undefined;
    if (!(s instanceof LocalShard)) return null;
    return merge([s.state.match(hashes)]);
  }

  async match(hashes: BigUint64Array): Promise<MatchResult> {
    return this.matchNow(hashes) ?? merge(await Promise.all(this.shards.map((s) => s.call<MatchPart>({ op: 'match', hashes }))));
  }

  async digests(): Promise<Record<string, WorkerDigest>> {
    const parts = await Promise.all(this.shards.map((s) => s.call<Record<string, WorkerDigest>>({ op: 'digests' })));
    return Object.assign({}, ...parts) as Record<string, WorkerDigest>;
  }

  dumpWorker(worker: string): Promise<WorkerState> {
    return this.#of(worker).call<WorkerState>({ op: 'dumpWorker', worker });
  }

  installWorker(state: WorkerState, onlyIfNotBehind = false): void {
    this.#of(state.worker).post({ op: 'installWorker', state, onlyIfNotBehind });
  }

  /** size each shard for the KV capacity (blocks) of the workers it owns */
  reserve(capacityByWorker: Iterable<[worker: string, blocks: number]>): void {
    const sums = new Array<number>(this.shards.length).fill(0);
    for (const [w, blocks] of capacityByWorker) sums[this.#index(w)]! += blocks;
    this.shards.forEach((s, i) => s.post({ op: 'reserve', blocks: sums[i]! }));
  }

  dropWorker(worker: string): void {
    this.#of(worker).post({ op: 'dropWorker', worker });
  }

  inject(worker: string, events: KvEvent[]): void {
    this.#of(worker).post({ op: 'inject', worker, events });
  }

  /** skip open gaps in every shard; resolves to the workers that skipped one since the last call */
  async flushGaps(): Promise<string[]> {
    return (await Promise.all(this.shards.map((s) => s.call<string[]>({ op: 'flushGaps' })))).flat();
  }

  async snapshot(): Promise<WorkerState[]> {
    return (await Promise.all(this.shards.map((s) => s.call<WorkerState[]>({ op: 'snapshot' })))).flat();
  }

  async stats(): Promise<ShardStats> {
    const parts = await Promise.all(this.shards.map((s) => s.call<ShardStats>({ op: 'stats' })));
    const out = { ...parts[0]! };
    for (const p of parts.slice(1)) for (const k of Object.keys(out) as (keyof ShardStats)[]) out[k] += p[k];
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.shards.map((s) => s.close()));
  }
}

/** a merged match: GPU overlaps (workers with a GPU depth ≥ 1) and, when any, the lower-tier reach */
export interface MatchResult {
  overlaps: Record<string, number>;
  tiers?: Record<string, TierOverlap>;
}

function merge(parts: MatchPart[]): MatchResult {
  const overlaps: Record<string, number> = {};
  let tiers: Record<string, TierOverlap> | undefined;
  for (const [ws, ds, tiered] of parts) {
    for (let i = 0; i < ws.length; i++) if (ds[i]! > 0) overlaps[ws[i]!] = ds[i]!;
    if (tiered) for (const t of tiered) (tiers ??= {})[t.worker] = t.tiers;
  }
  return tiers ? { overlaps, tiers } : { overlaps };
}
