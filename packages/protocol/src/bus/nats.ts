/**
 * NatsBus: the Bus over nats-server (nats.js v2). Core NATS for pub/sub, queue groups and request/reply;
 * JetStream streams for DurableStream; JetStream KV for KvStore.
 *
 * KV liveness. A bucket's TTL is the stream's max_age. On nats-server 2.9 an entry that ages out is
 * removed silently: no delete marker is written, so JetStream watchers never hear of it (per-message
 * TTL with delete markers arrived in 2.11). kvgate therefore defines liveness the same way on both buses:
 *   an entry is live while (time its last put was stored) + ttl > now.
 * get()/keys() apply that rule to what the server returns, and every watcher keeps the put time of each
 * live key and emits op 'delete' (value null, revision of the lapsed put) when it lapses — the same
 * event MemoryBus's timers produce. Times come from the server's store timestamp; the rule assumes the
 * clocks of client and server agree to well within the TTL.
 */
import {
  connect,
  DeliverPolicy,
  DiscardPolicy,
  Events,
  nanos,
  NatsError,
  RetentionPolicy,
  StorageType,
  type ConnectionOptions,
  type Consumer,
  type ConsumerMessages,
  type JsMsg,
  type JetStreamClient,
  type JetStreamManager,
  type KV,
  type NatsConnection,
  type Msg as NatsMsg,
  type StreamConfig as JsStreamConfig,
  type OrderedConsumerOptions,
} from 'nats';
import { BusError, KvgateError } from '../errors.js';
import { logger, type Logger } from '../log.js';
import {
  subjectMatches,
  type Bus,
  type DurableStream,
  type KvConfig,
  type KvEntry,
  type KvStore,
  type KvWatcher,
  type Msg,
  type RequestOptions,
  type StreamConfig,
  type StreamInfo,
  type StreamMsg,
  type StreamReadOptions,
  type StreamReader,
  type SubscribeOptions,
  type Subscription,
} from './bus.js';
import { Channel } from './channel.js';
import { checkAge, checkKey, checkName, checkPattern, checkSubject, copyBytes } from './names.js';

export interface NatsBusOptions {
  /** connection name shown by nats-server monitoring; default 'kvgate' */
  name?: string;
  /** wait between reconnect attempts, ms; default 250 (attempts are unlimited) */
  reconnectWaitMs?: number;
  /** timeout of JetStream API calls, ms; default 5000 */
  jetstreamTimeoutMs?: number;
  /** logger; default logger('bus.nats') */
  log?: Logger;
}

const DEFAULT_TIMEOUT_MS = 1000;

/** nats.js errors → BusError with a stable code */
function toBusError(err: unknown, what: string): KvgateError {
  if (err instanceof KvgateError) return err;
  const ne = err as NatsError;
  const code = ne?.code;
  const msg = ne?.api_error?.description ?? ne?.message ?? String(err);
  if (code === '503') return new BusError('KVG_NO_RESPONDERS', `no responders on ${what}`, { cause: err });
  if (code === 'TIMEOUT' || code === '408') return new BusError('KVG_TIMEOUT', `${what}: timed out`, { cause: err });
  if (code === 'CONNECTION_CLOSED' || code === 'CONNECTION_DRAINING') return new BusError('KVG_BUS_CLOSED', `${what}: bus is closed`, { cause: err });
  if (ne?.api_error?.code === 404 || /not found/i.test(msg)) return new BusError('KVG_NOT_FOUND', `${what}: ${msg}`, { cause: err });
  return new BusError('KVG_BUS', `${what}: ${msg}`, { cause: err });
}

const IDLE = Symbol('idle');

/**
 * Messages of an ordered pull consumer. Unless `follow`, ends after the last message that was pending
 * when the consumer was created: the creation reply's num_pending, then each message's `pending`. If the
 * stream drops what was pending before it arrives (max_age, purge), an idle second re-asks the server.
 */
async function* orderedMessages(consumer: Consumer, msgs: ConsumerMessages, follow: boolean): AsyncGenerator<JsMsg> {
  if (!follow && (await consumer.info(true)).num_pending === 0) return;
  const it = msgs[Symbol.asyncIterator]();
  let next = it.next();
  for (;;) {
    let r: IteratorResult<JsMsg> | typeof IDLE;
    if (follow) r = await next;
    else {
      let t: NodeJS.Timeout | undefined;
      r = await Promise.race([next, new Promise<typeof IDLE>((res) => (t = setTimeout(() => res(IDLE), 1000)))]);
      clearTimeout(t);
      if (r === IDLE) {
        if ((await consumer.info()).num_pending === 0) return;
        continue;
      }
    }
    if (r.done) return;
    next = it.next();
    yield r.value;
    if (!follow && r.value.info.pending === 0) return;
  }
}

function isNotFound(err: unknown): boolean {
  const ne = err as NatsError;
  return ne?.api_error?.err_code === 10059 || /stream not found/i.test(ne?.message ?? '');
}

/** Connect to nats-server (JetStream must be enabled). Rejects with BusError KVG_BUS if unreachable. */
export async function connectNats(url: string, opts: NatsBusOptions = {}): Promise<NatsBus> {
  const log = opts.log ?? logger('bus.nats');
  const copts: ConnectionOptions = {
    servers: url.split(',').map((s) => s.trim()),
    name: opts.name ?? 'kvgate',
    maxReconnectAttempts: -1,
    reconnectTimeWait: opts.reconnectWaitMs ?? 250,
  };
  let nc: NatsConnection;
  try {
    nc = await connect(copts);
  } catch (err) {
    throw new BusError('KVG_BUS', `cannot connect to NATS at ${url}: ${(err as Error).message}`, { cause: err });
  }
  const bus = new NatsBus(nc, url, log, opts.jetstreamTimeoutMs ?? 5000);
  return bus;
}

interface StreamHandleState {
  name: string;
  subjects: string[];
}

export class NatsBus implements Bus {
  readonly kind = 'nats';
  readonly url: string;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  #jsm: Promise<JetStreamManager> | undefined;
  readonly #log: Logger;
  readonly #jsTimeout: number;
  #closed = false;
  readonly #enders = new Set<() => void>();
  /** false between a disconnect and the reconnect that follows it */
  #connected = true;
  #onReconnect: (() => void)[] = [];

  constructor(nc: NatsConnection, url: string, log: Logger, jsTimeoutMs: number) {
    this.#nc = nc;
    this.url = url;
    this.#log = log;
    this.#jsTimeout = jsTimeoutMs;
    this.#js = nc.jetstream({ timeout: jsTimeoutMs });
    void this.#watchStatus();
  }

  /** the underlying connection (for tools that need raw NATS) */
  get connection(): NatsConnection {
    return this.#nc;
  }

  async #watchStatus(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type === Events.Disconnect) {
        this.#connected = false;
        this.#log.warn({ server: s.data }, 'nats disconnected; reconnecting without limit');
      } else if (s.type === Events.Reconnect) {
        this.#connected = true;
        this.#onReconnect.splice(0).forEach((f) => f());
        this.#log.info({ server: s.data }, 'nats reconnected');
      } else if (s.type === Events.Error) {
        this.#log.warn({ err: s.data }, 'nats async error');
      } else if (s.type === Events.LDM) {
        this.#log.warn({ server: s.data }, 'nats server entering lame duck mode');
      }
    }
  }

  #jsmgr(): Promise<JetStreamManager> {
    if (!this.#jsm) {
      const p = this.#nc.jetstreamManager({ timeout: this.#jsTimeout });
      p.catch(() => (this.#jsm = undefined)); // retry on the next call (e.g. JetStream not ready yet)
      this.#jsm = p;
    }
    return this.#jsm;
  }

  #open(): void {
    if (this.#closed || this.#nc.isClosed()) throw new BusError('KVG_BUS_CLOSED', 'bus is closed');
  }

  #wrap(m: NatsMsg): Msg {
    return Object.freeze({
      subject: m.subject,
      data: m.data,
      reply: m.reply || undefined,
      respond: (d: Uint8Array): boolean => {
        if (!m.reply || this.#nc.isClosed()) return false;
        return m.respond(copyBytes(d));
      },
    });
  }

  publish(subject: string, data: Uint8Array): void {
    this.#open();
    checkSubject(subject);
    // nats.js may hold the payload by reference until its next flush: give it our own copy
    this.#nc.publish(subject, copyBytes(data));
  }

  subscribe(subject: string, opts: SubscribeOptions = {}): Subscription {
    this.#open();
    checkPattern(subject);
    const callback = opts.callback;
    const end = (): void => {
      this.#enders.delete(end);
      if (!sub.isClosed()) sub.unsubscribe();
      chan.end();
    };
    const chan = new Channel<Msg>(end);
    const sub = this.#nc.subscribe(subject, {
      queue: opts.queue,
      callback: (err, m) => {
        if (err) {
          this.#log.warn({ err, subject }, 'subscription error');
          return;
        }
        if (callback) {
          try {
            callback(this.#wrap(m));
          } catch (e) {
            this.#log.error({ err: e, subject }, 'subscriber callback threw');
          }
        } else chan.push(this.#wrap(m));
      },
    });
    void sub.closed.then(() => chan.end(), () => chan.end());
    this.#enders.add(end);
    return {
      subject,
      closed: chan.closed,
      unsubscribe: end,
      [Symbol.asyncIterator]: () => {
        if (callback) throw new Error('subscription delivers to its callback; it cannot also be iterated');
        return chan[Symbol.asyncIterator]();
      },
    };
  }

  request(subject: string, data: Uint8Array, opts: RequestOptions = {}): Promise<Msg> {
    try {
      this.#open();
      checkSubject(subject);
    } catch (err) {
      return Promise.reject(err);
    }
    const timeout = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise<Msg>((resolve, reject) => {
      // close() rejects what is still waiting with KVG_BUS_CLOSED (nats.js would report a timeout)
      const onClose = (): void => reject(new BusError('KVG_BUS_CLOSED', `bus closed while waiting for a reply on ${subject}`));
      this.#enders.add(onClose);
      this.#nc.request(subject, copyBytes(data), { timeout }).then(
        (m) => {
          this.#enders.delete(onClose);
          resolve(this.#wrap(m));
        },
        (err) => {
          this.#enders.delete(onClose);
          const e = toBusError(err, subject);
          if (e.code === 'KVG_TIMEOUT') reject(new BusError('KVG_TIMEOUT', `request on ${subject} timed out after ${timeout} ms`, { cause: err }));
          else reject(e);
        },
      );
    });
  }

  async stream(name: string, config: StreamConfig): Promise<DurableStream> {
    this.#open();
    checkName('stream', name);
    if (!config || !Array.isArray(config.subjects) || config.subjects.length === 0) {
      throw new KvgateError('KVG_BAD_REQUEST', `stream ${name} needs at least one subject`);
    }
    for (const s of config.subjects) checkPattern(s);
    const maxAgeMs = config.maxAgeMs ?? 0;
    checkAge('maxAgeMs', maxAgeMs);
    const maxMsgs = config.maxMsgs && config.maxMsgs > 0 ? config.maxMsgs : -1;
    const jsm = await this.#jsmgr();
    try {
      let info;
      try {
        info = await jsm.streams.info(name);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      if (!info) {
        await jsm.streams.add({
          name,
          subjects: [...config.subjects],
          max_age: nanos(maxAgeMs),
          max_msgs: maxMsgs,
          storage: StorageType.File,
          retention: RetentionPolicy.Limits,
          discard: DiscardPolicy.Old,
          num_replicas: 1,
        });
      } else {
        const c = info.config;
        const same = c.subjects?.length === config.subjects.length && c.subjects.every((s, i) => s === config.subjects[i])
          && c.max_age === nanos(maxAgeMs) && c.max_msgs === maxMsgs;
        if (!same) {
          const next: JsStreamConfig = { ...c, subjects: [...config.subjects], max_age: nanos(maxAgeMs), max_msgs: maxMsgs };
          if (maxAgeMs > 0 && (c.duplicate_window ?? 0) > nanos(maxAgeMs)) next.duplicate_window = nanos(maxAgeMs);
          await jsm.streams.update(name, next);
        }
      }
    } catch (err) {
      throw toBusError(err, `stream ${name}`);
    }
    return this.#streamHandle({ name, subjects: [...config.subjects] });
  }

  #streamHandle(st: StreamHandleState): DurableStream {
    const bus = this;
    return {
      name: st.name,
      async append(subject: string, data: Uint8Array): Promise<number> {
        bus.#open();
        checkSubject(subject);
        if (!st.subjects.some((p) => subjectMatches(p, subject))) throw new BusError('KVG_BUS', `stream ${st.name} does not capture ${subject}`);
        try {
          const ack = await bus.#js.publish(subject, copyBytes(data), { expect: { streamName: st.name } });
          return ack.seq;
        } catch (err) {
          throw toBusError(err, `append to ${st.name}`);
        }
      },
      read(opts: StreamReadOptions = {}): StreamReader {
        bus.#open();
        return bus.#reader(st.name, opts);
      },
      async info(): Promise<StreamInfo> {
        bus.#open();
        try {
          const si = await (await bus.#jsmgr()).streams.info(st.name);
          return { firstSeq: si.state.first_seq, lastSeq: si.state.last_seq, messages: si.state.messages };
        } catch (err) {
          throw toBusError(err, `stream ${st.name}`);
        }
      },
      async purgeBefore(keepFromSeq: number): Promise<void> {
        bus.#open();
        try {
          const jsm = await bus.#jsmgr();
          const si = await jsm.streams.info(st.name);
          // never skip sequences past the end: JetStream would renumber the next append
          const seq = Math.min(keepFromSeq, si.state.last_seq + 1);
          if (si.state.messages === 0 || seq <= si.state.first_seq) return;
          await jsm.streams.purge(st.name, { seq });
        } catch (err) {
          throw toBusError(err, `purge ${st.name}`);
        }
      },
    };
  }

  #reader(stream: string, opts: StreamReadOptions): StreamReader {
    if (opts.fromSeq !== undefined && opts.fromTime !== undefined) {
      throw new KvgateError('KVG_BAD_REQUEST', 'stream read: fromSeq and fromTime are exclusive');
    }
    if (opts.filter !== undefined) checkPattern(opts.filter);
    const follow = opts.follow === true;
    let stopped = false;
    let stopSource: (() => void) | undefined;
    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      this.#enders.delete(stop);
      stopSource?.();
      chan.end();
    };
    const chan = new Channel<StreamMsg>(stop);
    this.#enders.add(stop);

    const run = async (): Promise<void> => {
      const co: Partial<OrderedConsumerOptions> = {};
      if (opts.filter !== undefined) co.filterSubjects = opts.filter;
      if (opts.fromTime !== undefined) {
        co.deliver_policy = DeliverPolicy.StartTime;
        co.opt_start_time = new Date(opts.fromTime).toISOString();
      } else if ((opts.fromSeq ?? 1) > 1) {
        co.deliver_policy = DeliverPolicy.StartSequence;
        co.opt_start_seq = opts.fromSeq;
      }
      const consumer = await this.#js.consumers.get(stream, co);
      if (stopped) return;
      const msgs = await consumer.consume({ max_messages: 512 });
      stopSource = () => {
        msgs.stop();
        consumer.delete().catch(() => undefined);
      };
      if (stopped) return stopSource();
      for await (const m of orderedMessages(consumer, msgs, follow)) {
        if (stopped) break;
        chan.push(Object.freeze({ seq: m.seq, subject: m.subject, data: m.data, time: Math.floor(m.info.timestampNanos / 1e6) }));
      }
      stop();
    };
    run().catch((err) => {
      if (stopped) return;
      stopped = true;
      this.#enders.delete(stop);
      stopSource?.();
      chan.end(toBusError(err, `read ${stream}`));
    });
    return { stop, [Symbol.asyncIterator]: () => chan[Symbol.asyncIterator]() };
  }

  async kv(bucket: string, config: KvConfig = {}): Promise<KvStore> {
    this.#open();
    checkName('bucket', bucket);
    const ttlMs = config.ttlMs ?? 0;
    checkAge('ttlMs', ttlMs);
    let kv: KV;
    try {
      kv = await this.#js.views.kv(bucket, { history: 1, ttl: ttlMs });
      // nats.js opens an existing bucket as it is: bring its TTL to what was asked (create-or-update)
      const jsm = await this.#jsmgr();
      const name = `KV_${bucket}`;
      const si = await jsm.streams.info(name);
      if (si.config.max_age !== nanos(ttlMs)) {
        const next: JsStreamConfig = { ...si.config, max_age: nanos(ttlMs) };
        if (ttlMs > 0 && (si.config.duplicate_window ?? 0) > nanos(ttlMs)) next.duplicate_window = nanos(ttlMs);
        await jsm.streams.update(name, next);
      }
    } catch (err) {
      throw toBusError(err, `kv ${bucket}`);
    }
    return this.#kvHandle(bucket, kv, ttlMs);
  }

  #kvHandle(bucket: string, kv: KV, ttlMs: number): KvStore {
    const bus = this;
    const lapsed = (created: Date): boolean => ttlMs > 0 && created.getTime() + ttlMs <= Date.now();
    const get = async (key: string): Promise<Uint8Array | null> => {
      const e = await kv.get(key);
      if (!e || e.operation !== 'PUT' || lapsed(e.created)) return null;
      return e.value;
    };
    return {
      bucket,
      async put(key: string, value: Uint8Array): Promise<number> {
        bus.#open();
        checkKey(key);
        try {
          return await kv.put(key, copyBytes(value));
        } catch (err) {
          throw toBusError(err, `kv ${bucket} put ${key}`);
        }
      },
      async get(key: string): Promise<Uint8Array | null> {
        bus.#open();
        checkKey(key);
        try {
          return await get(key);
        } catch (err) {
          throw toBusError(err, `kv ${bucket} get ${key}`);
        }
      },
      async delete(key: string): Promise<void> {
        bus.#open();
        checkKey(key);
        try {
          await kv.delete(key);
        } catch (err) {
          throw toBusError(err, `kv ${bucket} delete ${key}`);
        }
      },
      async keys(): Promise<string[]> {
        bus.#open();
        try {
          return await bus.#liveKeys(bucket, ttlMs);
        } catch (err) {
          throw toBusError(err, `kv ${bucket} keys`);
        }
      },
      watch(opts: { newOnly?: boolean } = {}): KvWatcher {
        bus.#open();
        return bus.#watch(bucket, ttlMs, opts.newOnly === true);
      },
    };
  }

  /**
   * Keys whose last operation is a put that has not lapsed. Not nats.js `kv.keys()`: that one reads a
   * push consumer and stops when the creation reply says nothing is pending, which races with the first
   * delivery and can return an empty list for a non-empty bucket. A pull consumer delivers nothing
   * before it is asked, so its creation count is exact.
   */
  async #liveKeys(bucket: string, ttlMs: number): Promise<string[]> {
    const prefix = `$KV.${bucket}.`;
    // every message, not DeliverPolicy.LastPerSubject: see the note on #watch
    const consumer = await this.#js.consumers.get(`KV_${bucket}`, { filterSubjects: `${prefix}>`, headers_only: true });
    const msgs = await consumer.consume({ max_messages: 512 });
    const live = new Map<string, boolean>();
    try {
      const now = Date.now();
      for await (const m of orderedMessages(consumer, msgs, false)) {
        const op = m.headers?.get('KV-Operation');
        const lapsed = ttlMs > 0 && m.info.timestampNanos / 1e6 + ttlMs <= now;
        live.set(m.subject.slice(prefix.length), op !== 'DEL' && op !== 'PURGE' && !lapsed);
      }
      return [...live].filter(([, isLive]) => isLive).map(([k]) => k);
    } finally {
      msgs.stop();
      consumer.delete().catch(() => undefined);
    }
  }

  /**
   * Watches the bucket from its last values (always, so a newOnly watcher still knows which keys are
   * live and can report their expiry), emits puts, deletes of keys it knows, and lapses by TTL.
   */
  #watch(bucket: string, ttlMs: number, newOnly: boolean): KvWatcher {
    let stopped = false;
    let stopSource: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    const live = new Map<string, { revision: number; expiresAt: number }>();
    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      this.#enders.delete(stop);
      stopSource?.();
      chan.end();
    };
    const chan = new Channel<KvEntry>(stop);
    this.#enders.add(stop);

    const sweep = (): void => {
      timer = undefined;
      timerAt = Infinity;
      if (stopped) return;
      const now = Date.now();
      let next = Infinity;
      for (const [key, rec] of live) {
        if (rec.expiresAt <= now) {
          live.delete(key);
          chan.push(Object.freeze({ key, value: null, op: 'delete', revision: rec.revision }));
        } else next = Math.min(next, rec.expiresAt);
      }
      arm(next);
    };
    let timerAt = Infinity;
    /** one timer, at the earliest expiry among live keys */
    const arm = (at: number): void => {
      if (at === Infinity || stopped || (timer !== undefined && timerAt <= at)) return;
      if (timer) clearTimeout(timer);
      timerAt = at;
      timer = setTimeout(sweep, Math.max(0, at - Date.now()));
      timer.unref();
    };

    const run = async (): Promise<void> => {
      let initialUpTo = 0;
      if (newOnly) initialUpTo = (await (await this.#jsmgr()).streams.info(`KV_${bucket}`)).state.last_seq;
      // An ordered *pull* consumer, not nats.js kv.watch(): kv.watch rides a push consumer that, after a
      // server restart, only recovers once its idle heartbeats are missed (~15 s on 2.9); the pull
      // consumer re-creates itself as soon as the connection is back.
      // DeliverPolicy.All, not LastPerSubject: on nats-server 2.9 a last-per-subject consumer whose
      // starting message is replaced (a key re-put) before delivery can stall with num_pending > 0 and
      // never deliver again. Buckets are made with history 1, so "all" is one message per key anyway.
      const prefix = `$KV.${bucket}.`;
      const consumer = await this.#js.consumers.get(`KV_${bucket}`, { filterSubjects: `${prefix}>` });
      const msgs = await consumer.consume({ max_messages: 256 });
      stopSource = () => {
        msgs.stop();
        consumer.delete().catch(() => undefined);
      };
      if (stopped) return stopSource();
      for await (const m of orderedMessages(consumer, msgs, true)) {
        if (stopped) break;
        const op = m.headers?.get('KV-Operation');
        const e = { key: m.subject.slice(prefix.length), revision: m.seq, value: m.data, created: m.info.timestampNanos / 1e6 };
        if (op !== 'DEL' && op !== 'PURGE') {
          const expiresAt = ttlMs > 0 ? e.created + ttlMs : Infinity;
          if (expiresAt <= Date.now()) {
            const was = live.get(e.key);
            if (was) {
              live.delete(e.key);
              chan.push(Object.freeze({ key: e.key, value: null, op: 'delete', revision: was.revision }));
            }
            continue;
          }
          live.set(e.key, { revision: e.revision, expiresAt });
          if (!(newOnly && e.revision <= initialUpTo)) {
            chan.push(Object.freeze({ key: e.key, value: e.value, op: 'put', revision: e.revision }));
          }
          arm(expiresAt);
        } else if (live.delete(e.key)) {
          chan.push(Object.freeze({ key: e.key, value: null, op: 'delete', revision: e.revision }));
        }
      }
      stop();
    };
    run().catch((err) => {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      this.#enders.delete(stop);
      stopSource?.();
      chan.end(toBusError(err, `watch ${bucket}`));
    });
    return { stop, [Symbol.asyncIterator]: () => chan[Symbol.asyncIterator]() };
  }

  /** waits through a reconnect: what was published while disconnected is buffered and sent on reconnect */
  async flush(): Promise<void> {
    for (;;) {
      this.#open();
      try {
        await this.#nc.flush();
        return;
      } catch (err) {
        if ((err as NatsError)?.code !== 'DISCONNECT' || this.#closed) throw toBusError(err, 'flush');
      }
      if (!this.#connected) await new Promise<void>((r) => this.#onReconnect.push(r));
      else await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const end of [...this.#enders]) end();
    this.#enders.clear();
    this.#onReconnect.splice(0).forEach((f) => f());
    if (this.#nc.isClosed()) return;
    try {
      await this.#nc.flush();
    } catch {
      /* closing anyway */
    }
    await this.#nc.close();
  }
}

