/**
 * The indexer actor: the only writer of its shards. Messages in — stream events, registry changes, match
 * requests, peer gossip, repair payloads, timer ticks — are handled one at a time on the event loop; state
 * changes reach the shards as ShardRequest messages, in order. Sockets stay outside (the Bus, http.ts).
 *
 * Start-up: load the newest snapshot (snapshot.ts), replay the durable event stream from the snapshot's
 * sequence + 1 and keep following it; `ready` once the stream position reached the stream's last sequence as
 * of start-up — a shard's last one under its subject filter (below), the stream's last message may be another's.
 *
 * A shard `--shard i/N` reads the stream with the subject filter `…events.<low bits of i>.>` (subjects.ts
 * eventsShard): every event subject carries the low 6 bits of its worker's hash, so with N a power of two ≤ 64 the
 * server delivers exactly this shard's workers' batches. Other N filter on the bits N allows (none for odd N) and
 * skip the other shards' batches they still read (kvgate_indexer_foreign_batches_skipped_total). Replicas converge by gossip (gossip.ts); the stream is trimmed behind the oldest snapshot of
 * the live replicas.
 *
 * Losses (a bus outage, batches lost on the way or with the server's store):
 *   - a registry delete or TTL lapse is acted on only while the bus is connected and at least two registry TTLs
 *     after the last reconnect; one seen earlier (the watch's own TTL clock ran on while nothing could be
 *     re-put) makes the worker a suspect, dropped only if its key is still absent when judged after that grace.
 *     A watch that ends is opened again; it never drops anyone by ending;
 *   - on reconnect, and whenever a read ends on its own, the stream is opened again (create-or-open: a server
 *     that lost its store has none) and read from the last applied sequence + 1;
 *   - a worker whose batch sequence skipped a gap (sequencer flush), or whose first batch came far into its
 *     sequence without a clear (its history is unknown here), and, after a reconnect, every worker, is
 *     asked for a resync on `…shim.resync.<worker>`, rate-limited per worker (resync.ts); its shim republishes
 *     its whole block set as a `cleared` + `stored` batch into the stream. A shim that never answers leaves the
 *     worker to peer repair (gossip).
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import {
  decode,
  decodeMatchRequest,
  decodeRegistration,
  decodeResyncReply,
  decodeSync,
  encode,
  errorBody,
  logger,
  subjects,
  toHash,
  type Bus,
  type DurableStream,
  type KvEvent,
  type KvStore,
  type KvWatcher,
  type MatchReply,
  type Msg,
  type StreamMsg,
  type StreamReader,
  type Subjects,
  type Subscription,
  type WorkerDigest,
  type WorkerRegistration, eventFilterBits, eventStreamConfig } from '@kvgate/protocol';
import { GossipTracker, type PeerGossip } from './gossip.js';
import { ResyncGate, type ResyncReason } from './resync.js';
import { shardOf, shardSnapshotDir, ShardSet, type IndexShard } from './shards.js';
import type { WorkerState } from './shard-state.js';
import { readNewestSnapshot, writeSnapshot } from './snapshot.js';

export interface IndexerOptions {
  /** replica id, unique among indexers of a namespace (subject token). Default `indexer-<random>`. */
  id?: string;
  /** NATS subject namespace. Default 'default'. */
  namespace?: string;
  /** index shards as worker threads; 0 = one inline shard (no thread hop). Default 0. */
  shards?: number;
  /** cap on (block, worker) entries over all shards; 0 = unbounded. Default 0. */
  maxEntries?: number;
  /** directory for snapshots (shared by replicas or not); absent = no snapshots. Default none. */
  snapshotDir?: string;
  /** snapshot period, ms. Default 30000. */
  snapshotIntervalMs?: number;
  /** gossip period, ms. Default 1000. */
  gossipIntervalMs?: number;
  /** disagreement lasting this long triggers a repair, ms. Default 3 × gossipIntervalMs. */
  graceMs?: number;
  /** TTL of the worker registry bucket, ms; must match the shims'. Default 3000. */
  registryTtlMs?: number;
  /**
   * this replica is index shard `index` of `of` (`kvgate indexer --shard i/N`, of ≥ 2): it holds only the workers
   * whose id hashes to it (shardOf, the in-process split's hash), reads the stream through a subject filter on its
   * workers' hash bits (of a power of two ≤ 64: only its workers' batches; otherwise it skips the rest), answers `…index.match.<of>.<index>` in that shard's queue group and gossips on
   * `…index.gossip.<of>.<index>` with that shard's replicas only; snapshots go to `<snapshotDir>/shard-<of>-<index>`.
   * It never trims the event stream (the other shards' snapshots are not seen). Absent (or of = 1) = the whole index
   * on `…index.match` / `…index.gossip`, as before.
   */
  shard?: IndexShard;
  /** answer `…index.match` in the indexers' queue group. Default true. */
  serveMatch?: boolean;
  /** least time between two resync requests for one worker, ms (resync.ts). Default 5000. */
  resyncIntervalMs?: number;
  /** wait for a shim's resync reply, ms. Default 3000. */
  resyncTimeoutMs?: number;
}

/** first wait before opening the event stream again after a read ended, ms (doubles up to 5 s) */
const REOPEN_MIN_MS = 100;
const REOPEN_MAX_MS = 5000;

export interface WorkerInfo {
  blocks: number;
  /** last applied batch seq (from the shim) */
  seq: number;
  /** stream sequence of the worker's last event, and its age */
  lastStreamSeq: number | null;
  lastEventAgeMs: number | null;
  registered: boolean;
  model: string | null;
}

/** In-process match API (the router in the same process can skip msgpack). */
export interface IndexClient {
  match(model: string, lora: string | null | undefined, hashes: ArrayLike<bigint>): Promise<MatchReply>;
}

/**
 * Registry keys are worker ids with every character outside [A-Za-z0-9_-] written `=xx` (hex code; the shim's
 * registryKey), since KV keys allow fewer characters than subject tokens. This undoes it.
 */
export function workerOfKey(key: string): string {
  return key.replace(/=([0-9a-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

export class Indexer {
  readonly id: string;
  readonly metrics = new Registry();
  readonly #bus: Bus;
  readonly #subj: Subjects;
  readonly #opts: Required<Omit<IndexerOptions, 'snapshotDir' | 'id' | 'namespace' | 'shard'>> & { snapshotDir?: string };
  /** this replica's index shard; null = the whole index */
  readonly shard: IndexShard | null;
  /** a shard's configured snapshot directory (where unsharded replicas write theirs); null unsharded */
  #unshardedDir: string | null = null;
  readonly #shards: ShardSet;
  readonly #gossip: GossipTracker;
  readonly #log;
  readonly #registry = new Map<string, WorkerRegistration>();
  /** model → block size from every registration seen, another shard's included */
  readonly #blockSizes = new Map<string, number>();
  readonly #lastEvent = new Map<string, { seq: number; time: number }>();
  #stream: DurableStream | null = null;
  #reader: StreamReader | null = null;
  #watcher: KvWatcher | null = null;
  #kv: KvStore | null = null;
  /** worker → its registry key, for the workers in #registry */
  readonly #keys = new Map<string, string>();
  /** workers whose registry entry went away while the bus was down (or within a TTL of the reconnect): worker → key */
  readonly #suspects = new Map<string, string>();
  /** when the bus last came back (0: never lost) */
  #reconnectedAt = 0;
  #unStatus: (() => void) | undefined;
  /** generation of the stream reader: a reader of an older generation ends without consequence */
  #readerGen = 0;
  #reopenWait = REOPEN_MIN_MS;
  readonly #resync: ResyncGate;
  readonly #subs: Subscription[] = [];
  readonly #timers: NodeJS.Timeout[] = [];
  #applied = 0;
  #catchUpTo = 0;
  /** a shard's subject filter on the event stream (subjects.ts eventsShard); undefined = every event */
  readonly #filter: string | undefined;
  /** how many low worker-hash bits that filter fixes (subjects.ts eventFilterBits; 0 = no filter) */
  readonly #filterBits: number;
  #ready = false;
  #snapshotSeq = 0;
  #lastPurge = 0;
  #closed = false;
  #reserveTimer: NodeJS.Timeout | null = null;
  #busy: Promise<void> = Promise.resolve();
  readonly #m;

  private constructor(bus: Bus, opts: IndexerOptions) {
    this.id = opts.id ?? `indexer-${randomUUID().slice(0, 8)}`;
    this.#bus = bus;
    this.#subj = subjects(opts.namespace ?? 'default');
    const gossipIntervalMs = opts.gossipIntervalMs ?? 1000;
    this.#opts = {
      shards: opts.shards ?? 0,
      maxEntries: opts.maxEntries ?? 0,
      snapshotIntervalMs: opts.snapshotIntervalMs ?? 30_000,
      gossipIntervalMs,
      graceMs: opts.graceMs ?? 3 * gossipIntervalMs,
      registryTtlMs: opts.registryTtlMs ?? 3000,
      serveMatch: opts.serveMatch ?? true,
      resyncIntervalMs: opts.resyncIntervalMs ?? 5000,
      resyncTimeoutMs: opts.resyncTimeoutMs ?? 3000,
      ...(opts.snapshotDir ? { snapshotDir: opts.snapshotDir } : {}),
    };
    this.shard = opts.shard && opts.shard.of > 1 ? { index: opts.shard.index, of: opts.shard.of } : null;
    if (this.shard && this.#opts.snapshotDir) {
      this.#unshardedDir = this.#opts.snapshotDir;
      this.#opts.snapshotDir = join(this.#opts.snapshotDir, shardSnapshotDir(this.shard));
    }
    this.#filterBits = this.shard ? eventFilterBits(this.shard.of) : 0;
    this.#filter = this.shard && this.#filterBits > 0 ? this.#subj.eventsShard(this.shard.index, this.shard.of) : undefined;
    this.#shards = ShardSet.create(this.#opts.shards, { maxEntries: this.#opts.maxEntries }, this.shard?.of ?? 1);
    this.#gossip = new GossipTracker(this.id, { graceMs: this.#opts.graceMs, peerTtlMs: Math.max(5 * gossipIntervalMs, 2000) });
    this.#log = logger('indexer', { indexer: this.id });
    this.#resync = new ResyncGate({ minIntervalMs: this.#opts.resyncIntervalMs });
    const reg = [this.metrics];
    const shards = this.#shards;
    const gauge = (name: string, help: string, key: 'entries' | 'nodes' | 'workers' | 'evictedEntries' | 'evictedNodes' | 'batches' | 'storedBlocks' | 'removedBlocks' | 'duplicates' | 'gaps' | 'decodeErrors' | 'arrayBytes') =>
      new Gauge({ name, help, registers: reg, async collect() { this.set((await shards.stats())[key]); } });
    const matches = new Counter({ name: 'kvgate_indexer_match_requests_total', help: 'match requests answered', labelNames: ['via'], registers: reg });
    this.#m = {
      // label children resolved once: the bus path counts every router query
      matchesBus: matches.labels({ via: 'bus' }),
      matchesLocal: matches.labels({ via: 'local' }),
      foreign: new Counter({ name: 'kvgate_indexer_foreign_batches_skipped_total', help: 'event batches of workers another index shard owns, read and skipped (--shard)', registers: reg }),
      streamMsgs: new Counter({ name: 'kvgate_indexer_stream_messages_total', help: 'event batches read from the durable stream', registers: reg }),
      unregistered: new Counter({ name: 'kvgate_indexer_unregistered_batches_total', help: 'event batches of workers never seen in the registry (applied anyway)', registers: reg }),
      matchErrors: new Counter({ name: 'kvgate_indexer_match_errors_total', help: 'match requests rejected', registers: reg }),
      matchSeconds: new Histogram({ name: 'kvgate_indexer_match_seconds', help: 'match latency inside the indexer', buckets: [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2], registers: reg }),
      repairs: new Counter({ name: 'kvgate_indexer_repairs_requested_total', help: 'worker repairs asked of peers', labelNames: ['reason'], registers: reg }),
      repaired: new Counter({ name: 'kvgate_indexer_repairs_applied_total', help: 'worker block sets installed from peers', registers: reg }),
      snapshots: new Counter({ name: 'kvgate_indexer_snapshots_total', help: 'snapshots written', registers: reg }),
      dropped: new Counter({ name: 'kvgate_indexer_workers_dropped_total', help: 'workers dropped after leaving the registry', registers: reg }),
      deferred: new Counter({ name: 'kvgate_indexer_registry_deletes_deferred_total', help: 'registry deletes / TTL lapses seen while the bus was down or within a TTL of the reconnect: judged later, not acted on', registers: reg }),
      resyncs: new Counter({ name: 'kvgate_indexer_resyncs_requested_total', help: 'resyncs asked of shims (…shim.resync.<worker>), by reason (gap, reconnect)', labelNames: ['reason'], registers: reg }),
      resyncFailures: new Counter({ name: 'kvgate_indexer_resync_failures_total', help: 'resync requests no shim answered (no responders, timeout, bad reply)', registers: reg }),
      reopens: new Counter({ name: 'kvgate_indexer_stream_reopens_total', help: 'event stream reads opened again from the last applied sequence (after a reconnect or a read that ended)', registers: reg }),
      disconnects: new Counter({ name: 'kvgate_indexer_bus_disconnects_total', help: 'bus outages seen', registers: reg }),
      streamSeq: new Gauge({ name: 'kvgate_indexer_stream_seq', help: 'last applied stream sequence', registers: reg }),
      entries: gauge('kvgate_indexer_entries', '(block, worker) entries held', 'entries'),
      prefixes: gauge('kvgate_indexer_prefixes', 'distinct prefixes held', 'nodes'),
      workers: gauge('kvgate_indexer_workers', 'workers with index state', 'workers'),
      indexBytes: gauge('kvgate_indexer_index_bytes', 'bytes held by the index arrays (capacity; sized from the KV capacity workers register)', 'arrayBytes'),
      evicted: gauge('kvgate_indexer_evicted_entries', 'entries evicted by the memory bound (since start)', 'evictedEntries'),
      evictedPrefixes: gauge('kvgate_indexer_evicted_prefixes', 'prefixes evicted by the memory bound (since start)', 'evictedNodes'),
      batches: gauge('kvgate_indexer_batches_applied', 'event batches applied (since start)', 'batches'),
      stored: gauge('kvgate_indexer_stored_blocks', 'stored block events applied (since start)', 'storedBlocks'),
      removed: gauge('kvgate_indexer_removed_blocks', 'removed block events applied (since start)', 'removedBlocks'),
      duplicates: gauge('kvgate_indexer_duplicate_batches', 'batches dropped as duplicates (since start)', 'duplicates'),
      gaps: gauge('kvgate_indexer_seq_gaps', 'per-worker sequence gaps skipped (since start)', 'gaps'),
      decodeErrors: gauge('kvgate_indexer_decode_errors', 'undecodable event batches (since start)', 'decodeErrors'),
    };
  }

  /** Build, load the newest snapshot, start consuming; resolves once subscriptions are live (not yet ready). */
  static async start(bus: Bus, opts: IndexerOptions = {}): Promise<Indexer> {
    const ix = new Indexer(bus, opts);
    try {
      await ix.#start();
    } catch (e) {
      await ix.close();
      throw e;
    }
    return ix;
  }

  async #start(): Promise<void> {
    const s = this.#subj;
    await this.#shards.stats(); // thread shards are up (loading TypeScript in a thread takes a while under load)
    if (this.#opts.snapshotDir) {
      let snap = readNewestSnapshot(this.#opts.snapshotDir);
      let layout = this.shard ? `${this.shard.index}/${this.shard.of}` : 'unsharded';
      let seeded = false;
      if (!snap && this.#unshardedDir) {
        // resharding 1 → N: an unsharded indexer trimmed the stream behind its snapshots, so a shard without a
        // snapshot of its own starts from the unsharded one (its workers of it) instead of the trimmed stream
        snap = readNewestSnapshot(this.#unshardedDir);
        layout = 'unsharded';
        seeded = snap !== null;
      }
      if (snap) {
        // a shard installs only its own workers, whatever the file holds
        let installed = 0;
        for (const w of snap.workers) {
          if (!this.owns(w.worker)) continue;
          this.#shards.installWorker(w);
          installed++;
        }
        this.#applied = snap.streamSeq;
        if (snap.indexer === this.id && !seeded) this.#snapshotSeq = snap.streamSeq;
        this.#log.info({ from: snap.indexer, layout, streamSeq: snap.streamSeq, workers: installed }, 'snapshot loaded');
      }
    }
    this.#stream = await this.#bus.stream(s.eventStream, eventStreamConfig(s));
    const info = await this.#stream.info();
    this.#catchUpTo = this.#filter ? await this.#stream.lastSeqOf(this.#filter) : info.lastSeq;
    if (this.shard) {
      const bits = this.#filterBits;
      const shard = `${this.shard.index}/${this.shard.of}`;
      if (1 << bits === this.shard.of) this.#log.info({ shard, filter: this.#filter }, 'reading only this shard\'s events (subject filter)');
      else if (bits === 0) this.#log.warn({ shard }, 'an odd shard count has no subject filter: this shard reads the whole event stream and skips the other shards\' batches (use a power of two ≤ 64)');
      else this.#log.warn({ shard, filter: this.#filter, reads: `1/${1 << bits}` }, 'a shard count that is not a power of two ≤ 64: this shard reads the events of every shard sharing its low hash bits and skips the others\' batches (use a power of two ≤ 64)');
    }
    if (this.#applied > 0 && info.messages > 0 && info.firstSeq > this.#applied + 1) {
      this.#log.warn({ snapshotSeq: this.#applied, firstSeq: info.firstSeq }, 'stream trimmed past the snapshot: peers will repair the gap');
    }
    this.#checkReady();

    this.#kv = await this.#bus.kv(s.workersBucket, { ttlMs: this.#opts.registryTtlMs });
    this.#openWatch();
    this.#unStatus = this.#bus.onStatus?.((st) => this.#onBusStatus(st));

    const sh = this.shard;
    const matchSubject = sh ? s.indexMatchShard(sh.index, sh.of) : s.indexMatch;
    const queue = sh ? s.indexShardQueue(sh.index, sh.of) : s.indexQueue;
    if (this.#opts.serveMatch) this.#subs.push(this.#bus.subscribe(matchSubject, { queue, callback: (m) => void this.#onMatch(m) }));
    this.#subs.push(this.#bus.subscribe(this.#gossipSubject, { callback: (m) => this.#onGossip(m) }));
    this.#subs.push(this.#bus.subscribe(s.indexSync(this.id), { callback: (m) => this.#onSync(m) }));

    this.#startReader();

    this.#every(this.#opts.gossipIntervalMs, () => this.#gossipTick());
    if (this.#opts.snapshotDir) this.#every(this.#opts.snapshotIntervalMs, () => this.snapshotNow().then(() => undefined));
  }

  get #gossipSubject(): string {
    return this.shard ? this.#subj.indexGossipShard(this.shard.index, this.shard.of) : this.#subj.indexGossip;
  }

  /** whether this replica holds `worker` (always, unsharded) */
  owns(worker: string): boolean {
    return this.shard === null || shardOf(worker, this.shard.of) === this.shard.index;
  }

  #every(ms: number, fn: () => Promise<void>): void {
    const t = setInterval(() => {
      // one background job at a time: a slow snapshot delays the next gossip instead of overlapping it
      this.#busy = this.#busy.then(fn).catch((err) => this.#log.warn({ err }, 'periodic job failed'));
    }, ms);
    t.unref();
    this.#timers.push(t);
  }

  // ---- messages in --------------------------------------------------------------------------------

  /** (re)start following the stream from the last applied sequence + 1; an older reader is stopped */
  #startReader(): void {
    const gen = ++this.#readerGen;
    this.#reader?.stop();
    const reader = this.#stream!.read({ fromSeq: this.#applied + 1, follow: true, ...(this.#filter ? { filter: this.#filter } : {}) });
    this.#reader = reader;
    void this.#consume(reader, gen);
  }

  async #consume(reader: StreamReader, gen: number): Promise<void> {
    try {
      for await (const m of reader) {
        try {
          this.#onEvent(m);
          this.#reopenWait = REOPEN_MIN_MS;
        } catch (err) {
          this.#log.error({ err, seq: m.seq }, 'event not applied');
        }
      }
    } catch (err) {
      if (!this.#closed && gen === this.#readerGen) this.#log.warn({ err }, 'event stream read failed: opening it again');
    }
    // a follow read never ends by itself: the consumer failed (server restart, stream gone); read on from where we are
    if (!this.#closed && gen === this.#readerGen) this.#reopenLater(gen);
  }

  #reopenLater(gen: number): void {
    const wait = this.#reopenWait;
    this.#reopenWait = Math.min(REOPEN_MAX_MS, wait * 2);
    setTimeout(() => void this.#reopenStream(gen), wait).unref();
  }

  /**
   * Open the event stream again (create-or-open) and follow it from the last applied sequence + 1. A stream
   * whose last sequence is below ours was made anew (the server lost its store): read it from its start, and ask
   * every worker for a resync (what the old stream held is gone).
   */
  async #reopenStream(gen: number): Promise<void> {
    if (this.#closed || gen !== this.#readerGen) return;
    try {
      const s = this.#subj;
      const stream = await this.#bus.stream(s.eventStream, eventStreamConfig(s));
      const info = await stream.info();
      if (this.#closed || gen !== this.#readerGen) return;
      this.#stream = stream;
      if (info.lastSeq < this.#applied) {
        this.#log.warn({ applied: this.#applied, lastSeq: info.lastSeq }, 'event stream is behind our position (the server lost its store): reading it from its start, resyncing every worker');
        this.#applied = Math.max(0, info.firstSeq - 1);
        this.#snapshotSeq = 0;
        this.#lastPurge = 0;
        this.#wantResyncAll('reconnect');
      }
      this.#m.reopens.inc();
      this.#startReader();
      this.#log.info({ fromSeq: this.#applied + 1 }, 'following the event stream again');
    } catch (err) {
      if (this.#closed || gen !== this.#readerGen) return;
      this.#log.warn({ err }, 'event stream not reachable yet: retrying');
      this.#reopenLater(gen);
    }
  }

  #onBusStatus(st: 'disconnected' | 'reconnected'): void {
    if (this.#closed) return;
    if (st === 'disconnected') {
      this.#m.disconnects.inc();
      this.#log.warn('bus disconnected: keeping every worker; registry lapses are judged after the reconnect');
      return;
    }
    this.#reconnectedAt = Date.now();
    this.#reopenWait = REOPEN_MIN_MS;
    void this.#reopenStream(this.#readerGen);
    this.#wantResyncAll('reconnect');
    this.#log.info({ workers: this.#resync.pending }, 'bus reconnected: re-reading the stream from our position, resyncing workers');
  }

  #wantResyncAll(reason: ResyncReason): void {
    for (const w of this.#registry.keys()) this.#resync.want(w, reason);
    for (const w of this.#lastEvent.keys()) this.#resync.want(w, reason);
  }

  #onEvent(m: StreamMsg): void {
    if (m.seq <= this.#applied) return;
    const worker = m.subject.slice(m.subject.lastIndexOf('.') + 1);
    if (!this.owns(worker)) {
      // another shard's worker: the stream position moves on, the index does not change
      this.#applied = m.seq;
      this.#m.foreign.inc();
      this.#m.streamSeq.set(m.seq);
      this.#checkReady();
      return;
    }
    if (!this.#registry.has(worker)) this.#m.unregistered.inc();
    this.#shards.ingest(worker, m.data);
    this.#applied = m.seq;
    this.#lastEvent.set(worker, { seq: m.seq, time: m.time });
    this.#m.streamMsgs.inc();
    this.#m.streamSeq.set(m.seq);
    this.#checkReady();
  }

  #checkReady(): void {
    if (!this.#ready && this.#applied >= this.#catchUpTo) {
      this.#ready = true;
      this.#log.info({ streamSeq: this.#applied }, 'caught up: ready');
    }
  }

  #openWatch(): void {
    this.#watcher = this.#kv!.watch();
    void this.#watchRegistry(this.#watcher);
  }

  /**
   * Liveness may be judged now: connected, and every shim had two TTLs since the reconnect to put its entry
   * again (a shim reconnects on its own schedule, and puts issued during the outage time out first).
   */
  #judgeable(now: number): boolean {
    return this.#bus.connected !== false && now - this.#reconnectedAt >= 2 * this.#opts.registryTtlMs + this.#opts.gossipIntervalMs;
  }

  #dropWorker(worker: string): void {
    const known = this.#registry.delete(worker);
    this.#keys.delete(worker);
    this.#suspects.delete(worker);
    this.#shards.dropWorker(worker);
    this.#gossip.forget(worker, Date.now());
    this.#resync.forget(worker);
    this.#lastEvent.delete(worker);
    if (known) this.#m.dropped.inc();
    this.#log.info({ worker }, 'worker left the registry: dropped from the index');
  }

  /** suspects whose registry key is still absent once liveness can be judged are dropped; the others stay */
  async #judgeSuspects(): Promise<void> {
    if (this.#suspects.size === 0 || !this.#kv || !this.#judgeable(Date.now())) return;
    for (const [worker, key] of [...this.#suspects]) {
      let value: Uint8Array | null;
      try {
        value = await this.#kv.get(key);
      } catch (err) {
        this.#log.debug({ err, worker }, 'registry not readable yet: judging later');
        return;
      }
      if (this.#suspects.get(worker) !== key) continue; // re-put meanwhile
      if (value === null) this.#dropWorker(worker);
      else this.#suspects.delete(worker);
    }
  }

  async #watchRegistry(w: KvWatcher): Promise<void> {
    try {
      for await (const e of w) {
        if (e.op === 'put' && e.value) {
          try {
            const reg = decodeRegistration(e.value);
            if (!this.owns(reg.worker)) {
              this.#blockSizes.set(reg.model, reg.blockSize);
              continue;
            }
            const before = this.#registry.get(reg.worker)?.capacityBlocks;
            this.#registry.set(reg.worker, reg);
            this.#keys.set(reg.worker, e.key);
            this.#suspects.delete(reg.worker);
            // the index never holds more prefixes than the engines' caches: size it now, not by rehashing during ingest
            if (before !== reg.capacityBlocks) this.#reserveSoon();
          } catch (err) {
            this.#log.warn({ err, key: e.key }, 'bad worker registration ignored');
          }
        } else if (e.op === 'delete') {
          const worker = workerOfKey(e.key);
          if (!this.owns(worker)) continue;
          if (this.#judgeable(Date.now())) this.#dropWorker(worker);
          else {
            // the watch's TTL clock ran while no shim could re-put: not an expiry yet
            this.#suspects.set(worker, e.key);
            this.#m.deferred.inc();
            this.#log.info({ worker }, 'registry entry lapsed while the bus was down or just back: judged after a TTL');
          }
        }
      }
    } catch (err) {
      if (!this.#closed) this.#log.warn({ err }, 'registry watch failed: watching again');
    }
    if (this.#closed || w !== this.#watcher) return;
    // a watch that ended is not a worker expiring: watch again; who is gone shows when judged after a TTL
    for (const [worker, key] of this.#keys) this.#suspects.set(worker, key);
    this.#reconnectedAt = Math.max(this.#reconnectedAt, Date.now());
    setTimeout(() => {
      if (!this.#closed && w === this.#watcher) this.#openWatch();
    }, 500).unref();
  }

  /**
   * Size the shards for the registered capacity once per burst of registrations (50 ms): a fleet's shims register
   * together, and sizing on each one summed every registration again and rehashed the tables each time.
   */
  #reserveSoon(): void {
    if (this.#reserveTimer) return;
    this.#reserveTimer = setTimeout(() => {
      this.#reserveTimer = null;
      if (!this.#closed) this.#shards.reserve([...this.#registry.values()].map((r) => [r.worker, r.capacityBlocks]));
    }, 50);
    this.#reserveTimer.unref();
  }

  async #onMatch(m: Msg): Promise<void> {
    const t0 = process.hrtime.bigint();
    try {
      const req = decodeMatchRequest(m.data);
      const reply = await this.match(req.model, req.lora, req.hashes, 'bus');
      m.respond(encode(reply));
    } catch (err) {
      this.#m.matchErrors.inc();
      m.respond(encode(errorBody(err).body));
    }
    this.#m.matchSeconds.observe(Number(process.hrtime.bigint() - t0) / 1e9);
  }

  #onGossip(m: Msg): void {
    try {
      const v = decode(m.data) as Record<string, unknown>;
      if (!v || typeof v !== 'object' || typeof v.indexer !== 'string' || typeof v.digests !== 'object' || v.digests === null) return;
      const digests: Record<string, WorkerDigest> = {};
      for (const [w, d] of Object.entries(v.digests as Record<string, Record<string, unknown>>)) {
        digests[w] = { seq: Number(d.seq), count: Number(d.count), xor: toHash(d.xor) };
      }
      const msg: PeerGossip = { indexer: v.indexer, digests, snapshotSeq: typeof v.snapshotSeq === 'number' ? v.snapshotSeq : 0 };
      this.#gossip.observe(msg, Date.now());
    } catch (err) {
      this.#log.debug({ err }, 'bad gossip ignored');
    }
  }

  #onSync(m: Msg): void {
    let msg;
    try {
      msg = decodeSync(m.data);
    } catch (err) {
      this.#log.debug({ err }, 'bad sync message ignored');
      return;
    }
    if (msg.request) {
      // a peer asks for one worker's block set
      const to = msg.from;
      void this.#shards.dumpWorker(msg.worker).then((st) => {
        const reply: Record<string, unknown> = { from: this.id, worker: st.worker, seq: st.seq, blocks: Array.from(st.blocks) };
        if (st.tiers) reply.tiers = st.tiers;
        this.#bus.publish(this.#subj.indexSync(to), encode(reply));
      }).catch((err) => this.#log.warn({ err }, 'sync dump failed'));
      return;
    }
    if (msg.blocks.length % 2 !== 0) return;
    const state: WorkerState = { worker: msg.worker, seq: msg.seq, blocks: BigUint64Array.from(msg.blocks) };
    if (msg.tiers) state.tiers = msg.tiers; // decodeSync checked one mask byte per block
    this.#shards.installWorker(state, true);
    this.#m.repaired.inc();
    this.#log.info({ worker: msg.worker, from: msg.from, seq: msg.seq, blocks: msg.blocks.length / 2 }, 'worker repaired from peer');
  }

  async #gossipTick(): Promise<void> {
    if (this.#closed) return;
    for (const w of await this.#shards.flushGaps()) this.#resync.want(w, 'gap');
    const digests = await this.#shards.digests();
    this.#sendResyncs(digests);
    await this.#judgeSuspects();
    this.#bus.publish(this.#gossipSubject, encode({ indexer: this.id, digests, snapshotSeq: this.#snapshotSeq }));
    const now = Date.now();
    for (const o of this.#gossip.decide(digests, now)) {
      this.#m.repairs.inc({ reason: o.reason });
      this.#log.info(o, 'repairing worker from peer');
      this.#bus.publish(this.#subj.indexSync(o.from), encode({ from: this.id, worker: o.worker, request: true, seq: 0, blocks: [] }));
    }
    const keepFrom = this.#gossip.purgeFrom(this.#snapshotSeq, now);
    if (keepFrom !== null && keepFrom > this.#lastPurge && this.#stream && !this.shard) {
      await this.#stream.purgeBefore(keepFrom);
      this.#lastPurge = keepFrom;
      this.#log.info({ keepFrom }, 'event stream trimmed behind the oldest live snapshot');
    }
  }

  /** asks the shims of the workers due (resync.ts) to republish their block sets; answers arrive in the stream */
  #sendResyncs(digests: Record<string, WorkerDigest>): void {
    if (this.#bus.connected === false) return;
    const now = Date.now();
    for (const o of this.#resync.due(now)) {
      this.#m.resyncs.inc({ reason: o.reason });
      const last = digests[o.worker]?.seq ?? -1;
      this.#log.info({ worker: o.worker, reason: o.reason, fromSeq: last + 1 }, 'asking the shim for a resync');
      this.#bus
        .request(this.#subj.shimResync(o.worker), encode({ fromSeq: last + 1 }), { timeoutMs: this.#opts.resyncTimeoutMs })
        .then((m) => {
          const r = decodeResyncReply(m.data);
          this.#resync.answered(o.worker, true, Date.now());
          this.#log.info({ worker: o.worker, seq: r.seq }, 'shim republished its block set');
        })
        .catch((err) => {
          this.#resync.answered(o.worker, false, Date.now(), o.reason);
          this.#m.resyncFailures.inc();
          this.#log.warn({ worker: o.worker, err: String(err) }, 'resync not answered (peers may repair the worker)');
        });
    }
  }

  // ---- public API ---------------------------------------------------------------------------------

  get ready(): boolean {
    return this.#ready;
  }

  /** last applied stream sequence */
  get streamSeq(): number {
    return this.#applied;
  }

  registration(worker: string): WorkerRegistration | undefined {
    return this.#registry.get(worker);
  }

  /** block size of a model as its registered workers report it (a shard: any shard's workers, for /debug/match) */
  blockSizeOf(model: string): number | null {
    for (const r of this.#registry.values()) if (r.model === model) return r.blockSize;
    return this.shard ? (this.#blockSizes.get(model) ?? null) : null;
  }

  /** `model` and `lora` are part of every prefix hash already: one index serves all of them. */
  async match(_model: string, _lora: string | null | undefined, hashes: ArrayLike<bigint>, via: 'bus' | 'local' = 'local'): Promise<MatchReply> {
    const h = hashes instanceof BigUint64Array ? hashes : BigUint64Array.from(hashes as ArrayLike<bigint>, (x) => BigInt.asUintN(64, x));
    const { overlaps, tiers } = await this.#shards.match(h);
    (via === 'bus' ? this.#m.matchesBus : this.#m.matchesLocal).inc();
    return tiers ? { overlaps, tiers, indexerSeq: this.#applied } : { overlaps, indexerSeq: this.#applied };
  }

  client(): IndexClient {
    return { match: (model, lora, hashes) => this.match(model, lora, hashes) };
  }

  digests(): Promise<Record<string, WorkerDigest>> {
    return this.#shards.digests();
  }

  async workers(): Promise<Record<string, WorkerInfo>> {
    const digests = await this.#shards.digests();
    const now = Date.now();
    const out: Record<string, WorkerInfo> = {};
    const names = new Set([...Object.keys(digests), ...this.#registry.keys()]);
    for (const w of [...names].sort()) {
      const last = this.#lastEvent.get(w);
      out[w] = {
        blocks: digests[w]?.count ?? 0,
        seq: digests[w]?.seq ?? -1,
        lastStreamSeq: last?.seq ?? null,
        lastEventAgeMs: last ? Math.max(0, now - last.time) : null,
        registered: this.#registry.has(w),
        model: this.#registry.get(w)?.model ?? null,
      };
    }
    return out;
  }

  /**
   * stream messages not applied yet (a filtered shard: the sequence distance to its last event, an upper bound; 0
   * when caught up); null when the bus does not answer within 1 s (debug routes never hang on it)
   */
  async lag(): Promise<number | null> {
    if (!this.#stream) return 0;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<null>((r) => (timer = setTimeout(() => r(null), 1000)));
    try {
      const stream = this.#stream;
      const last = this.#filter ? stream.lastSeqOf(this.#filter) : stream.info().then((i) => i.lastSeq);
      last.catch(() => undefined); // a late failure after the timeout won the race is not unhandled
      const lastSeq = await Promise.race([last, late]);
      return lastSeq === null ? null : Math.max(0, lastSeq - this.#applied);
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Write a snapshot now (also runs every snapshotIntervalMs); returns the file, or null without a dir. */
  async snapshotNow(): Promise<string | null> {
    if (!this.#opts.snapshotDir || this.#closed) return null;
    const streamSeq = this.#applied; // the shards apply in order: the snapshot reply reflects exactly this cut
    const workers = await this.#shards.snapshot();
    const file = writeSnapshot(this.#opts.snapshotDir, { indexer: this.id, streamSeq, ts: Date.now(), workers });
    this.#snapshotSeq = streamSeq;
    this.#m.snapshots.inc();
    return file;
  }

  /** Tests and debugging: apply events to one worker outside the stream (diverges this replica on purpose). */
  inject(worker: string, events: KvEvent[]): void {
    this.#shards.inject(worker, events);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    if (this.#reserveTimer) clearTimeout(this.#reserveTimer);
    for (const s of this.#subs) s.unsubscribe();
    this.#unStatus?.();
    this.#readerGen++;
    this.#reader?.stop();
    this.#watcher?.stop();
    await this.#busy.catch(() => undefined);
    await this.#shards.close();
  }
}
