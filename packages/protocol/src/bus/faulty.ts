/**
 * FaultyBus: a Bus that loses, duplicates and reorders some of what it publishes on chosen subjects — the chaos
 * suite's way to put dropped, duplicated and reordered KV events between a shim and the indexers without touching
 * either. Publishing and stream appends on a matching subject each draw one fate (seeded, so a run repeats):
 *   drop     the message never leaves (an append still resolves, with sequence -1: the caller believes it landed)
 *   dup      it is sent twice
 *   reorder  it is held back and sent right after the next matching message, or after `HOLD_MS` when no other
 *            comes (or on flush); a held stream append resolves at once (with -1, as a drop: the caller believes
 *            it landed and goes on), so a publisher that appends one batch at a time, waiting for each
 *            acknowledgement, still sees its batches stored out of order — and never waits for an
 *            acknowledgement that only its own next append would release
 * Everything else is the inner bus, untouched. Turned on for a command by KVGATE_BUS_FAULTS (createBus), e.g.
 * `events.>:drop=0.02,dup=0.02,reorder=0.02,seed=7`; never on by default.
 */
import { KvgateError } from '../errors.js';
import { mulberry32 } from '../prng.js';
import { subjectMatches, type Bus, type DurableStream, type StreamConfig } from './bus.js';

export interface BusFaults {
  /** full subject pattern the faults apply to, e.g. `kvgate.*.events.>` */
  pattern: string;
  drop: number;
  dup: number;
  reorder: number;
  seed: number;
}

/** fates drawn for matching messages (others are not counted) */
export interface FaultCounts {
  dropped: number;
  duplicated: number;
  reordered: number;
  passed: number;
}

/** parse `pattern:drop=…,dup=…,reorder=…,seed=…` (a pattern without a namespace gets `kvgate.*.` in front) */
export function parseBusFaults(spec: string): BusFaults {
  const at = spec.indexOf(':');
  if (at <= 0) throw new KvgateError('KVG_CONFIG', `bus faults ${JSON.stringify(spec)}: expected pattern:drop=p,dup=p,reorder=p[,seed=n]`);
  let pattern = spec.slice(0, at).trim();
  if (!pattern.startsWith('kvgate.')) pattern = `kvgate.*.${pattern}`;
  const f: BusFaults = { pattern, drop: 0, dup: 0, reorder: 0, seed: 1 };
  for (const kv of spec.slice(at + 1).split(',')) {
    const [k, v] = kv.split('=').map((x) => x.trim());
    const n = Number(v);
    if (k === 'seed' && Number.isInteger(n)) f.seed = n;
    else if ((k === 'drop' || k === 'dup' || k === 'reorder') && n >= 0 && n <= 1) f[k] = n;
    else throw new KvgateError('KVG_CONFIG', `bus faults: bad ${JSON.stringify(kv)} (drop, dup, reorder in [0, 1]; seed an integer)`);
  }
  if (f.drop + f.dup + f.reorder > 1) throw new KvgateError('KVG_CONFIG', 'bus faults: drop + dup + reorder must be ≤ 1');
  return f;
}

type Fate = 'drop' | 'dup' | 'reorder' | 'pass';

/** longest a reordered message waits for the next matching one before it is sent anyway, ms */
export const HOLD_MS = 50;

export class FaultyBus implements Bus {
  readonly counts: FaultCounts = { dropped: 0, duplicated: 0, reordered: 0, passed: 0 };
  readonly #inner: Bus;
  readonly #f: BusFaults;
  readonly #rng: () => number;
  /** held back for reordering: sent after the next matching message */
  #held: (() => void) | null = null;
  #holdTimer: NodeJS.Timeout | undefined;

  constructor(inner: Bus, faults: BusFaults) {
    this.#inner = inner;
    this.#f = faults;
    this.#rng = mulberry32(faults.seed);
  }

  get kind(): string {
    return this.#inner.kind;
  }
  get connected(): boolean | undefined {
    return this.#inner.connected;
  }
  onStatus(listener: Parameters<NonNullable<Bus['onStatus']>>[0]): () => void {
    return this.#inner.onStatus?.(listener) ?? (() => undefined);
  }

  #fate(subject: string): Fate {
    if (!subjectMatches(this.#f.pattern, subject)) return 'pass';
    const x = this.#rng();
    if (x < this.#f.drop) return 'drop';
    if (x < this.#f.drop + this.#f.dup) return 'dup';
    if (x < this.#f.drop + this.#f.dup + this.#f.reorder) return 'reorder';
    return 'pass';
  }

  /** run `send` under a fate; a held message goes out right after the next one that is sent */
  #apply(fate: Fate, send: () => void): void {
    const release = () => this.#release();
    if (fate === 'drop') {
      this.counts.dropped++;
      return;
    }
    if (fate === 'reorder' && this.#held === null) {
      this.counts.reordered++;
      this.#held = send;
      this.#holdTimer = setTimeout(release, HOLD_MS);
      this.#holdTimer.unref();
      return;
    }
    if (fate === 'dup') {
      this.counts.duplicated++;
      send();
      send();
    } else {
      this.counts.passed++;
      send();
    }
    release();
  }

  /** send what is held back, if anything */
  #release(): void {
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    const h = this.#held;
    this.#held = null;
    h?.();
  }

  publish(subject: string, data: Uint8Array): void {
    if (!subjectMatches(this.#f.pattern, subject)) return this.#inner.publish(subject, data);
    this.#apply(this.#fate(subject), () => this.#inner.publish(subject, data));
  }

  subscribe(...a: Parameters<Bus['subscribe']>): ReturnType<Bus['subscribe']> {
    return this.#inner.subscribe(...a);
  }
  request(...a: Parameters<Bus['request']>): ReturnType<Bus['request']> {
    return this.#inner.request(...a);
  }
  kv(...a: Parameters<Bus['kv']>): ReturnType<Bus['kv']> {
    return this.#inner.kv(...a);
  }

  async stream(name: string, config: StreamConfig): Promise<DurableStream> {
    const s = await this.#inner.stream(name, config);
    const bus = this;
    return {
      name: s.name,
      read: (o) => s.read(o),
      info: () => s.info(),
      lastSeqOf: (f) => s.lastSeqOf(f),
      purgeBefore: (k) => s.purgeBefore(k),
      append(subject: string, data: Uint8Array): Promise<number> {
        if (!subjectMatches(bus.#f.pattern, subject)) return s.append(subject, data);
        return new Promise<number>((resolve, reject) => {
          const fate = bus.#fate(subject);
          if (fate === 'drop') {
            bus.#apply(fate, () => undefined);
            return resolve(-1);
          }
          if (fate === 'reorder' && bus.#held === null) {
            // acknowledged now, stored later (after the next append, or HOLD_MS): see the header
            bus.#apply(fate, () => void s.append(subject, data).catch(() => undefined));
            return resolve(-1);
          }
          // dup: two appends, the promise settles with the first
          bus.#apply(fate, () => void s.append(subject, data).then(resolve, reject));
        });
      },
    };
  }

  async flush(): Promise<void> {
    this.#release();
    await this.#inner.flush();
  }

  async close(): Promise<void> {
    clearTimeout(this.#holdTimer);
    this.#held = null;
    await this.#inner.close();
  }
}
