/**
 * EventRelay: the actor that turns one engine's KV event stream into kvgate EventBatches.
 *
 * Messages in: raw ZMQ frames `[topic, seq, payload]` from the subscriber (through `post`).
 * Messages out: `EventBatch`es handed to `publish`, numbered 0, 1, 2, … without gaps (a new shim
 * incarnation starts again at 0, with `cleared`; indexers read seq 0 after a higher one as a shim restart).
 * State (private, changed only while the mailbox runs one message at a time): the engine-hash map,
 * the engine sequence, the LoRA names, the outgoing sequence.
 *
 * Repairs, in this order:
 *   - the socket lost its engine (disconnect): publish `cleared`, count from 0 (a restarted engine
 *     may be past our old sequence by the time we reconnect, so numbering alone cannot show it);
 *   - the socket (re)connected: probe the replay socket from the next expected seq, so batches sent
 *     before the subscription took hold are learned even if the engine then goes quiet;
 *   - engine seq went down (the engine restarted): publish `cleared`, forget the map, count from 0;
 *   - engine seq skipped [from, to): ask `replay(from)`; a complete answer is applied as if it had
 *     arrived live; a suffix [k, to) with k > from, or nothing, means some removals may be lost:
 *     publish `cleared`, forget the map, then apply whatever suffix arrived (relearning from there).
 *   - a frame that does not decode at all (not a batch) is counted and skipped (it consumes no sequence
 *     number, so the next good frame shows a gap and replay fetches the batch again); the log gets the first of
 *     a flood and then one summary line per 10 s with counts by reason (log-summary.ts), not a line per frame.
 * One event the decoder could not understand never costs its batch: it is counted by reason
 * (`kvgate_shim_skipped_events_total{reason}`), the rest applies and the sequence advances, so no replay and
 * no clear follows (replay would return the same bytes).
 *
 * Event semantics (DESIGN.md §3):
 *   - tiers: `medium` → gpu / cpu / disk (tiers.ts); full-token stores on any tier chain as usual and carry
 *     their tier; hash-only placeholders are translated through the engine map into parent-linked `stored`
 *     chains on their tier; a removal drops only its tier's copy;
 *   - salts and extra keys: the chain root takes the cache salt; blocks with extra keys the router cannot
 *     reproduce get opaque keys (extra-keys.ts);
 *   - hybrid models: only one full-attention KV cache group is indexed (#groupSkip).
 * Sockets are not here: `replay`, `publish` and `refreshLoras` are injected by the edge (index.ts).
 */
import { decodeEngineFrames, DecodeError, Fifo, logger, TIERS, type BlockRemoved, type BlockStored, type EngineBatch, type EventBatch, type KvEvent, type ReplayMessage, type Tier } from '@kvgate/protocol';
import { EngineMap } from './engine-map.js';
import { EngineSeq } from './engine-seq.js';
import { LoraNames } from './lora.js';
import { interpretExtraKeys } from './extra-keys.js';
import { tierOfMedium } from './tiers.js';
import type { ShimMetrics } from './metrics.js';
import { LogSummary, type LogSummaryOptions } from './log-summary.js';

export interface RelayDeps {
  worker: string;
  model: string;
  /** only events from this ZMQ topic are taken (empty = any; the SUB socket filters by prefix already) */
  metrics: ShimMetrics;
  loras: LoraNames;
  maxMapEntries: number;
  /** most frames waiting in the mailbox before new ones are dropped (a drop shows as a gap, repaired by replay) */
  maxMailbox: number;
  /** one outgoing batch; `resync` marks the batches of a resync (the whole block set, see `resync()`) */
  publish(batch: EventBatch, resync?: boolean): void;
  /** every batch the engine still holds from `fromSeq` on, in order; null when there is no replay socket or it failed */
  replay(fromSeq: bigint): Promise<ReplayMessage[] | null>;
  /** re-read the engine's LoRA list (rate-limited by the caller) */
  refreshLoras(): Promise<void>;
  /** engine block size learned from events (first BlockStored) */
  onBlockSize?(blockSize: number): void;
  /**
   * GPU blocks per offloaded block, for hash-only placeholders that do not say (newer vLLM sends block_size 0;
   * older ones the offloaded block size, which wins). Default 1.
   */
  offloadBlockFactor?: number;
  /**
   * where the summary of malformed frames goes and its window (log-summary.ts: the first of a window logged at
   * once, the rest summed up in one line per window, 10 s by default); default the relay's logger
   */
  malformedLog?: Pick<LogSummaryOptions, 'log' | 'intervalMs' | 'timers'>;
}

type Mail =
  | { kind: 'frames'; frames: Uint8Array[] }
  | { kind: 'cleared'; done: () => void }
  | { kind: 'resync'; done: (seq: number) => void }
  | { kind: 'disconnected' }
  | { kind: 'connected' };

const log = logger('shim.relay');

/**
 * Most block hashes in one resync batch: a NATS message is at most 1 MiB by default (max_payload) and a hash
 * takes 9 bytes in msgpack; a larger block set continues in the batches that follow (only the first clears).
 */
export const RESYNC_MAX_HASHES = 65_536;

/**
 * vLLM KVCacheSpecKind values whose blocks hold a whole prefix: full attention, MLA (DeepSeek's latent full
 * attention) and full attention with sink tokens. The others — sliding_window, sliding_window_mla, mamba,
 * chunked_local_attention, encoder_only_attention, cross_attention, unknown — never make an overlap.
 */
const FULL_ATTENTION_KINDS = new Set(['full_attention', 'mla_attention', 'sink_full_attention']);

/** the summary's reason for a frame that did not decode (decodeEngineFrames' checks, in its order) */
function malformedReason(e: unknown, msg: string): string {
  if (!(e instanceof DecodeError)) return 'other';
  if (msg.startsWith('engine message must have 3 frames')) return 'frame-count';
  if (msg.startsWith('topic frame')) return 'topic';
  if (msg.startsWith('seq frame')) return 'seq';
  return 'payload';
}

/** a kvgate event with its tier; gpu stays implicit (absent on the wire) */
function withTier<E extends KvEvent & { t: 'stored' | 'removed' }>(e: E, tier: Tier): E {
  if (tier !== 'gpu') e.tier = tier;
  return e;
}

export class EventRelay {
  readonly #d: RelayDeps;
  readonly #map: EngineMap;
  readonly #seq = new EngineSeq();
  #outSeq = -1;
  readonly #mail = new Fifo<Mail>();
  #running = false;
  #idle: (() => void)[] = [];
  #blockSize: number | undefined;
  #stopped = false;
  /** last engine seq a replay probe applied; live copies at or below it are duplicates */
  #probedUpTo = -1n;
  /** KV cache group → spec kind, learned from stores (removals and placeholders carry only the group) */
  readonly #groupKinds = new Map<number, string>();
  /** the full-attention group indexed (the first seen) */
  #indexedGroup: number | undefined;
  /** invalid-event reasons already logged */
  readonly #warned = new Set<string>();
  #resyncing: Promise<number> | undefined;
  /** frames that did not decode: counted each (malformed_frames_total), logged at most once per window */
  readonly #malformed: LogSummary;

  constructor(deps: RelayDeps) {
    this.#d = deps;
    this.#map = new EngineMap({ model: deps.model, maxEntries: deps.maxMapEntries });
    this.#malformed = new LogSummary({
      log: deps.malformedLog?.log ?? log,
      one: 'malformed engine frame skipped',
      what: 'malformed engine frames skipped',
      bindings: { worker: deps.worker },
      ...(deps.malformedLog?.intervalMs !== undefined ? { intervalMs: deps.malformedLog.intervalMs } : {}),
      ...(deps.malformedLog?.timers ? { timers: deps.malformedLog.timers } : {}),
    });
  }

  /** last outgoing sequence used (-1 before the first) */
  get outSeq(): number {
    return this.#outSeq;
  }
  get engineNext(): bigint {
    return this.#seq.next;
  }
  get mapSize(): number {
    return this.#map.size;
  }
  /** blocks this worker has published as held, per tier (what the index holds of it, once applied) */
  get tierCounts(): Record<Tier, number> {
    return this.#map.tierCounts();
  }

  /** enqueue one ZMQ message */
  post(frames: Uint8Array[]): void {
    if (this.#stopped) return;
    if (this.#mail.length >= this.#d.maxMailbox) {
      this.#d.metrics.mailboxDrops.inc();
      return;
    }
    this.#mail.push({ kind: 'frames', frames });
    this.#kick();
  }

  /**
   * The event socket lost its engine. Beside the engine (same pod) that means the engine process went
   * away; a new one numbers from 0 again, and may already be past our old sequence when we reconnect,
   * so the numbering alone cannot be trusted to show the restart. Clear now; the next batch is a gap
   * from 0 and replay relearns whatever the engine holds.
   */
  engineDisconnected(): void {
    if (this.#stopped) return;
    this.#mail.push({ kind: 'disconnected' });
    this.#kick();
  }

  /**
   * The event socket (re)connected to its engine. Batches the engine published before our subscription
   * took hold never reach us, and an idle engine may publish nothing more for a long time, so ask the
   * replay socket now for everything from the next expected sequence.
   */
  engineConnected(): void {
    if (this.#mail.last()?.kind === 'connected') return; // one probe queued is enough
    if (this.#stopped) return;
    this.#mail.push({ kind: 'connected' });
    this.#kick();
  }

  /** enqueue a `cleared` for this worker (start-up, shutdown); resolves once it is published */
  publishCleared(): Promise<void> {
    return new Promise((done) => {
      this.#mail.push({ kind: 'cleared', done });
      this.#kick();
    });
  }

  /**
   * Publish the whole block set as it stands after every message already in the mailbox: `cleared`, then a
   * `stored` per chain and tier (tiers kept), at the next outgoing seq(s). Resolves to the first batch's seq.
   * Requests that arrive while one is queued share it.
   */
  resync(): Promise<number> {
    if (this.#stopped) return Promise.reject(new Error('relay stopped'));
    if (this.#resyncing) return this.#resyncing;
    const p = new Promise<number>((done) => {
      this.#mail.push({ kind: 'resync', done });
      this.#kick();
    }).finally(() => {
      if (this.#resyncing === p) this.#resyncing = undefined;
    });
    this.#resyncing = p;
    return p;
  }

  /** a resync is queued (a request now shares it) */
  get resyncQueued(): boolean {
    return this.#resyncing !== undefined;
  }

  /** resolves once the mailbox is empty */
  idle(): Promise<void> {
    if (!this.#running && this.#mail.length === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  stop(): void {
    this.#stopped = true;
    this.#malformed.stop();
  }

  #kick(): void {
    if (this.#running) return;
    this.#running = true;
    void this.#drain();
  }

  async #drain(): Promise<void> {
    for (let m = this.#mail.shift(); m !== undefined; m = this.#mail.shift()) {
      try {
        if (m.kind === 'frames') await this.#onFrames(m.frames);
        else if (m.kind === 'disconnected') {
          if (this.#seq.seen || this.#map.size > 0) {
            this.#d.metrics.restarts.inc();
            this.#clear('engine disconnected');
          }
          this.#seq.reset();
          this.#probedUpTo = -1n;
        } else if (m.kind === 'connected') {
          await this.#replayFrom(this.#seq.next);
          this.#d.metrics.probes.inc();
        } else if (m.kind === 'resync') {
          m.done(this.#publishBlockSet());
        } else {
          this.#clear('requested');
          m.done();
        }
      } catch (e) {
        // A bug here must not stop the relay: log, count, keep going.
        this.#d.metrics.internalErrors.inc();
        log.error({ err: e }, 'relay failed on a message');
      }
    }
    this.#running = false;
    const w = this.#idle;
    this.#idle = [];
    for (const r of w) r();
  }

  async #onFrames(frames: Uint8Array[]): Promise<void> {
    const { metrics } = this.#d;
    let msg;
    try {
      msg = decodeEngineFrames(frames);
    } catch (e) {
      metrics.malformedFrames.inc();
      const err = e instanceof DecodeError ? e.message : String(e);
      this.#malformed.note(malformedReason(e, err), err);
      return;
    }
    metrics.engineBatches.inc();
    let verdict = this.#seq.judge(msg.seq);
    if (verdict.kind === 'restart') {
      if (msg.seq <= this.#probedUpTo) {
        // already applied by a replay probe (the live copy was in flight): not a restart
        metrics.duplicates.inc();
        return;
      }
      metrics.restarts.inc();
      log.warn({ seq: String(msg.seq), expected: String(verdict.expected) }, 'engine sequence went down: engine restarted');
      this.#clear('engine restart');
      this.#seq.reset();
      this.#probedUpTo = -1n;
      verdict = this.#seq.judge(msg.seq);
    }
    if (verdict.kind === 'gap') {
      // The first batch of an engine we have not seen yet is a gap from 0 only if we care about history:
      // replay teaches us what the engine already holds.
      if (this.#seq.seen) metrics.gaps.inc();
      await this.#replayFrom(verdict.from, verdict.to);
    }
    this.#apply(msg.seq, msg.batch);
  }

  /**
   * Replays from `from`. With `to` (a gap before the live batch `to`): the batches [from, to) are needed.
   * Without (a probe after (re)connecting): whatever the engine holds from `from` on.
   * A run that does not start at `from` means batches are lost for good: clear, then apply the run.
   */
  async #replayFrom(from: bigint, to?: bigint): Promise<void> {
    const { metrics } = this.#d;
    let got: ReplayMessage[] | null = null;
    try {
      got = await this.#d.replay(from);
    } catch (e) {
      log.warn({ err: String(e) }, 'replay failed');
      got = null;
    }
    const batches: { seq: bigint; batch: EngineBatch }[] = [];
    if (got) {
      for (const r of got) if (!r.end && r.seq >= from && (to === undefined || r.seq < to)) batches.push({ seq: r.seq, batch: r.batch });
      batches.sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
    }
    let run: typeof batches;
    let complete: boolean;
    if (to !== undefined) {
      // the contiguous run that ends right before `to`
      let k = batches.length;
      let expect = to - 1n;
      while (k > 0 && batches[k - 1]!.seq === expect) {
        k--;
        expect--;
      }
      run = batches.slice(k);
      complete = run.length > 0 ? run[0]!.seq === from : from === to;
    } else {
      // the contiguous run from the first batch held
      let k = 0;
      while (k < batches.length && (k === 0 || batches[k]!.seq === batches[k - 1]!.seq + 1n)) k++;
      run = batches.slice(0, k);
      // an engine with nothing new since `from` leaves nothing missing
      complete = run.length === 0 || run[0]!.seq === from;
    }
    const result = got === null ? 'unavailable' : complete ? 'complete' : run.length > 0 ? 'partial' : 'empty';
    if (to !== undefined || run.length > 0) metrics.replays.inc({ result });
    if (!complete || (to !== undefined && got === null)) {
      log.warn({ from: String(from), to: to === undefined ? null : String(to), replayed: run.length, result }, 'batches lost: clearing worker, relearning');
      if (this.#seq.seen || this.#map.size > 0) this.#clear('unrepaired gap');
    }
    for (const b of run) {
      metrics.replayedBatches.inc();
      this.#apply(b.seq, b.batch);
      if (to === undefined) this.#probedUpTo = b.seq;
    }
  }

  /** `cleared` + the map's block set (per tier) as one batch, or consecutive ones past RESYNC_MAX_HASHES; returns the first seq */
  #publishBlockSet(): number {
    const set = this.#map.blockSet();
    const first = this.#outSeq + 1;
    let events: KvEvent[] = [{ t: 'cleared' }];
    let n = 0;
    const now = Date.now() / 1000;
    for (const tier of TIERS) {
      for (const c of set[tier]) {
        let parent = c.parent;
        for (let i = 0; i < c.hashes.length; ) {
          if (n >= RESYNC_MAX_HASHES) {
            this.#emit(events, now, true);
            events = [];
            n = 0;
          }
          const take = Math.min(c.hashes.length - i, RESYNC_MAX_HASHES - n);
          const hashes = c.hashes.slice(i, i + take);
          events.push(withTier({ t: 'stored', parent, hashes }, tier));
          parent = hashes[hashes.length - 1]!;
          i += take;
          n += take;
        }
      }
    }
    this.#emit(events, now, true);
    log.info({ worker: this.#d.worker, seq: first, batches: this.#outSeq - first + 1, blocks: this.#map.size }, 'block set republished (resync)');
    return first;
  }

  #clear(reason: string): void {
    this.#map.clear();
    this.#emit([{ t: 'cleared' }], Date.now() / 1000);
    if (reason === 'requested') log.debug({ reason }, 'worker cleared');
    else log.info({ reason }, 'worker cleared');
  }

  /** map one engine batch and publish it; marks `seq` accepted */
  #apply(seq: bigint, batch: EngineBatch): void {
    const { metrics, loras } = this.#d;
    this.#seq.accept(seq);
    // events the decoder could not understand are dropped one by one; the rest of the batch applies
    for (const bad of batch.invalid) {
      metrics.skippedEvents.inc({ reason: bad.reason });
      if (!this.#warned.has(bad.reason)) {
        this.#warned.add(bad.reason);
        log.warn({ reason: bad.reason, err: bad.message }, 'engine event not understood: skipped (the rest of its batch applies; logged once per reason)');
      }
    }
    if (batch.skipped > 0) metrics.skippedEvents.inc({ reason: 'unknown-type' }, batch.skipped);
    const out: KvEvent[] = [];
    let refresh = false;
    for (const ev of batch.events) {
      metrics.engineEvents.inc({ type: ev.type });
      const tier = tierOfMedium(ev.medium);
      if (ev.type !== 'AllBlocksCleared') {
        const skip = this.#groupSkip(ev);
        if (skip) {
          metrics.skippedEvents.inc({ reason: skip });
          continue;
        }
      }
      switch (ev.type) {
        case 'BlockStored': {
          if (ev.hashOnly) {
            this.#placeholder(ev, tier, out);
            continue;
          }
          if (!ev.aligned) {
            metrics.skippedEvents.inc({ reason: 'unaligned' });
            continue;
          }
          const lora = loras.resolve(ev.loraId, ev.loraName);
          if (lora.kind === 'unknown') {
            metrics.skippedEvents.inc({ reason: 'unknown-lora' });
            refresh = true;
            continue;
          }
          const loraName = lora.kind === 'named' ? lora.name : null;
          if (tier === 'gpu' && this.#blockSize !== ev.blockSize) {
            this.#blockSize = ev.blockSize;
            this.#d.onBlockSize?.(ev.blockSize);
          }
          const keys = this.#blockKeys(ev, loraName);
          const r = this.#map.stored({
            blockHashes: ev.blockHashes,
            parent: ev.parentBlockHash,
            tokenIds: ev.tokenIds,
            blockSize: ev.blockSize,
            lora: loraName,
            tier,
            salt: keys.salt,
            opaque: keys.opaque,
          });
          if (r.kind === 'unknown-parent') {
            metrics.unknownParents.inc();
            continue;
          }
          if (r.kind === 'malformed') {
            metrics.skippedEvents.inc({ reason: 'malformed' });
            continue;
          }
          if (keys.opaqueCount > 0) metrics.unreproducibleBlocks.inc(keys.opaqueCount);
          out.push(withTier({ t: 'stored', parent: r.parent, hashes: r.hashes }, tier));
          this.#flushEvicted(out);
          break;
        }
        case 'BlockRemoved': {
          const r = this.#map.removed(ev.blockHashes, tier);
          if (r.unknown) metrics.unknownRemovals.inc(r.unknown);
          if (r.hashes.length) out.push(withTier({ t: 'removed', hashes: r.hashes }, tier));
          break;
        }
        case 'AllBlocksCleared':
          if (ev.medium === undefined) {
            // no tier named: every copy the engine announced is void (vLLM resets the offload tiers with the prefix cache)
            this.#map.clear();
            out.push({ t: 'cleared' });
          } else {
            const gone = this.#map.clearTier(tier);
            if (gone.length) out.push(withTier({ t: 'removed', hashes: gone }, tier));
          }
          break;
      }
    }
    if (out.length) this.#emit(out, batch.ts);
    metrics.mapSize.set(this.#map.size);
    if (refresh) void this.#d.refreshLoras();
  }

  /**
   * Hybrid models: only full-attention KV cache groups index prefixes (a sliding-window or Mamba group holds
   * a window or a state, never a reusable prefix). A group is classified by `kv_cache_spec_kind` when the event
   * (or an earlier store of the same group) names it; without any kind only group 0 (or no group) is indexed.
   * Of several full-attention groups the first seen is indexed: they cache the same prefixes under the same
   * hashes, and counting a block once per group would let one group's removal hide the other's copy.
   * Returns the skip reason, or undefined to index the event.
   */
  #groupSkip(ev: BlockStored | BlockRemoved): string | undefined {
    const g = ev.groupIdx;
    let kind = ev.type === 'BlockStored' ? ev.kvCacheSpecKind : undefined;
    if (kind !== undefined && g !== undefined) this.#groupKinds.set(g, kind);
    if (kind === undefined && g !== undefined) kind = this.#groupKinds.get(g);
    if (kind !== undefined) {
      if (!FULL_ATTENTION_KINDS.has(kind)) return 'non-full-attention-group';
      if (g === undefined) return undefined;
      this.#indexedGroup ??= g;
      return g === this.#indexedGroup ? undefined : 'other-full-attention-group';
    }
    if (g === undefined || g === (this.#indexedGroup ?? 0)) return undefined;
    return 'unclassified-group';
  }

  /**
   * Salt and unreproducible extra keys of a full-token store. SGLang names the salt (`cacheSalt`); vLLM puts
   * it, with everything else it hashes, in `extra_keys` (see extra-keys.ts). The salt only matters for a
   * store that starts a prompt (parent null): later blocks chain from a parent whose hash already took it.
   */
  #blockKeys(ev: BlockStored, loraName: string | null): { salt?: string; opaque?: (string | undefined)[]; opaqueCount: number } {
    const root = ev.parentBlockHash === null;
    let salt = root ? ev.cacheSalt : undefined;
    if (!ev.extraKeys) return { salt, opaqueCount: 0 };
    let opaque: (string | undefined)[] | undefined;
    let opaqueCount = 0;
    const name = ev.loraName ?? loraName ?? undefined;
    for (let i = 0; i < ev.extraKeys.length; i++) {
      const k = interpretExtraKeys(ev.extraKeys[i], root && i === 0, name, ev.loraId);
      if (k.kind === 'salt') salt = k.salt;
      else if (k.kind === 'opaque') {
        opaque ??= new Array<string | undefined>(ev.blockHashes.length).fill(undefined);
        opaque[i] = k.text;
        opaqueCount++;
      }
    }
    return { salt, opaque, opaqueCount };
  }

  /**
   * A hash-only placeholder (vLLM's offloading connector): the engine copied blocks it announced on GPU to
   * another tier. Translated through the map, never guessed. Each hash names the last GPU block of one
   * offloaded block; older vLLM sends the offloaded block size (a multiple of the GPU block size), newer 0 (then
   * `offloadBlockFactor`, default 1).
   */
  #placeholder(ev: BlockStored, tier: Tier, out: KvEvent[]): void {
    let span = this.#d.offloadBlockFactor ?? 1;
    const gpuB = this.#blockSize;
    if (ev.blockSize > 0 && gpuB !== undefined && gpuB > 0 && ev.blockSize % gpuB === 0) span = ev.blockSize / gpuB;
    const r = this.#map.addTier(ev.blockHashes, tier, span);
    if (r.unknown) this.#d.metrics.skippedEvents.inc({ reason: 'unknown-offload-hash' }, r.unknown);
    for (const c of r.chains) {
      // the connector sends one placeholder per offloaded block: continue the previous chain when it links up
      const last = out.at(-1);
      if (last?.t === 'stored' && (last.tier ?? 'gpu') === tier && last.hashes.at(-1) === c.parent) last.hashes.push(...c.hashes);
      else out.push(withTier({ t: 'stored', parent: c.parent, hashes: c.hashes }, tier));
    }
  }

  /** publishes the removal of whatever the map's cap evicted (or a GPU store replaced), per tier */
  #flushEvicted(out: KvEvent[]): void {
    const ev = this.#map.takeEvicted();
    const n = ev.gpu.length + ev.cpu.length + ev.disk.length;
    if (n === 0) return;
    this.#d.metrics.mapEvictions.inc(n);
    for (const t of TIERS) if (ev[t].length) out.push(withTier({ t: 'removed', hashes: ev[t] }, t));
  }

  #emit(events: KvEvent[], engineTs: number, resync = false): void {
    const now = Date.now();
    const batch: EventBatch = { worker: this.#d.worker, seq: ++this.#outSeq, ts: now, events, model: this.#d.model };
    this.#d.metrics.publishedBatches.inc();
    this.#d.metrics.publishedEvents.inc(events.length);
    if (Number.isFinite(engineTs) && engineTs > 0) this.#d.metrics.lagSeconds.set(Math.max(0, now / 1000 - engineTs));
    this.#d.publish(batch, resync);
  }
}
