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
 *   - a frame that does not decode is counted and skipped (it consumes no sequence number, so the
 *     next good frame shows a gap and replay fetches the batch again).
 * Sockets are not here: `replay`, `publish` and `refreshLoras` are injected by the edge (index.ts).
 */
import { decodeEngineFrames, DecodeError, Fifo, logger, type EngineBatch, type EventBatch, type KvEvent, type ReplayMessage } from '@kvgate/protocol';
import { EngineMap } from './engine-map.js';
import { EngineSeq } from './engine-seq.js';
import { LoraNames } from './lora.js';
import type { ShimMetrics } from './metrics.js';

export interface RelayDeps {
  worker: string;
  model: string;
  /** only events from this ZMQ topic are taken (empty = any; the SUB socket filters by prefix already) */
  metrics: ShimMetrics;
  loras: LoraNames;
  maxMapEntries: number;
  /** most frames waiting in the mailbox before new ones are dropped (a drop shows as a gap, repaired by replay) */
  maxMailbox: number;
  publish(batch: EventBatch): void;
  /** every batch the engine still holds from `fromSeq` on, in order; null when there is no replay socket or it failed */
  replay(fromSeq: bigint): Promise<ReplayMessage[] | null>;
  /** re-read the engine's LoRA list (rate-limited by the caller) */
  refreshLoras(): Promise<void>;
  /** engine block size learned from events (first BlockStored) */
  onBlockSize?(blockSize: number): void;
}

type Mail =
  | { kind: 'frames'; frames: Uint8Array[] }
  | { kind: 'cleared'; done: () => void }
  | { kind: 'disconnected' }
  | { kind: 'connected' };

const log = logger('shim.relay');

function isPrimaryMedium(m: string | undefined): boolean {
  return m === undefined || m.toUpperCase() === 'GPU';
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

  constructor(deps: RelayDeps) {
    this.#d = deps;
    this.#map = new EngineMap({ model: deps.model, maxEntries: deps.maxMapEntries });
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

  /** resolves once the mailbox is empty */
  idle(): Promise<void> {
    if (!this.#running && this.#mail.length === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  stop(): void {
    this.#stopped = true;
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
      log.warn({ err: e instanceof DecodeError ? e.message : String(e) }, 'malformed engine frame skipped');
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
    const out: KvEvent[] = [];
    let refresh = false;
    for (const ev of batch.events) {
      metrics.engineEvents.inc({ type: ev.type });
      if (!isPrimaryMedium(ev.medium) || ('groupIdx' in ev && ev.groupIdx !== undefined && ev.groupIdx !== 0)) {
        metrics.skippedEvents.inc({ reason: 'tier-or-group' });
        continue;
      }
      switch (ev.type) {
        case 'BlockStored': {
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
          if (this.#blockSize !== ev.blockSize) {
            this.#blockSize = ev.blockSize;
            this.#d.onBlockSize?.(ev.blockSize);
          }
          const r = this.#map.stored({
            blockHashes: ev.blockHashes,
            parent: ev.parentBlockHash,
            tokenIds: ev.tokenIds,
            blockSize: ev.blockSize,
            lora: lora.kind === 'named' ? lora.name : null,
          });
          if (r.kind === 'unknown-parent') {
            metrics.unknownParents.inc();
            continue;
          }
          if (r.kind === 'malformed') {
            metrics.skippedEvents.inc({ reason: 'malformed' });
            continue;
          }
          out.push({ t: 'stored', parent: r.parent, hashes: r.hashes });
          const evicted = this.#map.takeEvicted();
          if (evicted.length) {
            metrics.mapEvictions.inc(evicted.length);
            out.push({ t: 'removed', hashes: evicted });
          }
          break;
        }
        case 'BlockRemoved': {
          const r = this.#map.removed(ev.blockHashes);
          if (r.unknown) metrics.unknownRemovals.inc(r.unknown);
          if (r.hashes.length) out.push({ t: 'removed', hashes: r.hashes });
          break;
        }
        case 'AllBlocksCleared':
          this.#map.clear();
          out.push({ t: 'cleared' });
          break;
      }
    }
    if (out.length) this.#emit(out, batch.ts);
    metrics.mapSize.set(this.#map.size);
    if (refresh) void this.#d.refreshLoras();
  }

  #emit(events: KvEvent[], engineTs: number): void {
    const now = Date.now();
    const batch: EventBatch = { worker: this.#d.worker, seq: ++this.#outSeq, ts: now, events, model: this.#d.model };
    this.#d.metrics.publishedBatches.inc();
    this.#d.metrics.publishedEvents.inc(events.length);
    if (Number.isFinite(engineTs) && engineTs > 0) this.#d.metrics.lagSeconds.set(Math.max(0, now / 1000 - engineTs));
    this.#d.publish(batch);
  }
}
