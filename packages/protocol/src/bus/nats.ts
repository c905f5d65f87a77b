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
import { readFileSync } from 'node:fs';
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
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
  type MsgHdrs,
  type StreamConfig as JsStreamConfig,
  type OrderedConsumerOptions,
} from 'nats';
import { BusError, KvgateError } from '../errors.js';
import { logger, type Logger } from '../log.js';
import {
  subjectMatches,
  type Bus,
  type BusStatus,
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
import { Channel, subscriptionHandle } from './channel.js';
import { checkAge, checkKey, checkName, checkPattern, checkSubject, copyBytes } from './names.js';

export interface NatsBusOptions {
  /** connection name shown by nats-server monitoring; default 'kvgate' */
  name?: string;
  /** wait between reconnect attempts, ms; default 250 (attempts are unlimited) */
  reconnectWaitMs?: number;
  /** timeout of JetStream API calls, ms; default 5000 */
  jetstreamTimeoutMs?: number;
  /**
   * how long the first connect keeps trying (a refused or silent server is tried again every reconnectWaitMs)
   * before it rejects with KVG_BUS, ms; default KVGATE_NATS_CONNECT_TIMEOUT, else 5000. Auth and TLS failures
   * reject at once.
   */
  connectTimeoutMs?: number;
  /** logger; default logger('bus.nats') */
  log?: Logger;
  /**
   * JetStream replicas of the streams and KV buckets this bus creates (1..5): 3 on a 3-node cluster, as
   * production NATS runs. Default: KVGATE_NATS_REPLICAS, else 1. Existing streams keep theirs.
   */
  replicas?: number;
  /** NATS user (also read from a `nats://user:pass@host` URL, which the option overrides); default none */
  user?: string;
  /** NATS password; default none */
  pass?: string;
  /** NATS token; default none */
  token?: string;
  /** path to an nkey seed file (`SU…`); default none */
  nkeySeedFile?: string;
  /** path to a `.creds` file (user JWT + seed, from nsc); default none */
  credsFile?: string;
  /** TLS: CA bundle, client cert and key (PEM file paths). Any of them (or a tls:// URL) turns TLS on; default off */
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
}

/**
 * The URL(s) with every password or token blanked: `nats://user:***@host:4222`. Every log line and error that
 * names a NATS URL goes through this; a string that does not parse as a URL keeps only what follows an '@'.
 */
export function redactNatsUrl(url: string): string {
  return url
    .split(',')
    .map((raw) => {
      const s = raw.trim();
      const at = s.lastIndexOf('@');
      if (at < 0) return s;
      const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(s)?.[0] ?? '';
      const cred = s.slice(scheme.length, at);
      const colon = cred.indexOf(':');
      // user:pass → user:***; a bare token (nats://token@host) → ***
      const shown = colon >= 0 ? `${cred.slice(0, colon)}:***` : '***';
      return `${scheme}${shown}${s.slice(at)}`;
    })
    .join(',');
}

/** each server of a comma-separated URL list, credentials taken out (nats.js gets them as options) */
function splitServers(url: string): { servers: string[]; user?: string; pass?: string; token?: string; tls: boolean } {
  const servers: string[] = [];
  let user: string | undefined;
  let pass: string | undefined;
  let token: string | undefined;
  let tls = false;
  for (const raw of url.split(',')) {
    const s = raw.trim();
    if (!s) continue;
    if (/^tls:\/\//i.test(s)) tls = true;
    const at = s.lastIndexOf('@');
    if (at < 0) {
      servers.push(s);
      continue;
    }
    const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(s)?.[0] ?? '';
    const cred = s.slice(scheme.length, at);
    const colon = cred.indexOf(':');
    if (colon >= 0) {
      user = decodeURIComponent(cred.slice(0, colon));
      pass = decodeURIComponent(cred.slice(colon + 1));
    } else {
      token = decodeURIComponent(cred);
    }
    servers.push(`${scheme}${s.slice(at + 1)}`);
  }
  return { servers, ...(user !== undefined ? { user } : {}), ...(pass !== undefined ? { pass } : {}), ...(token !== undefined ? { token } : {}), tls };
}

function readSecretFile(path: string, what: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path));
  } catch (err) {
    throw new KvgateError('KVG_CONFIG', `cannot read the NATS ${what} file ${JSON.stringify(path)}: ${(err as NodeJS.ErrnoException).code ?? 'unreadable'}`, { cause: err });
  }
}

/** The auth and TLS part of nats.js's ConnectionOptions from NatsBusOptions and the URL (pure but for reading the named files). */
export function natsAuthOptions(url: string, o: NatsBusOptions): Pick<ConnectionOptions, 'servers' | 'user' | 'pass' | 'token' | 'authenticator' | 'tls'> {
  const u = splitServers(url);
  const out: Pick<ConnectionOptions, 'servers' | 'user' | 'pass' | 'token' | 'authenticator' | 'tls'> = { servers: u.servers };
  const user = o.user ?? u.user;
  const pass = o.pass ?? u.pass;
  const token = o.token ?? u.token;
  if (o.credsFile && o.nkeySeedFile) throw new KvgateError('KVG_CONFIG', 'give either a NATS .creds file or an nkey seed file, not both');
  if (user !== undefined) out.user = user;
  if (pass !== undefined) out.pass = pass;
  if (token !== undefined) out.token = token;
  if (o.credsFile) out.authenticator = credsAuthenticator(readSecretFile(o.credsFile, '.creds'));
  else if (o.nkeySeedFile) {
    const seed = new TextDecoder().decode(readSecretFile(o.nkeySeedFile, 'nkey seed')).split(/\s+/).find((l) => /^S[A-Z0-9]{20,}$/.test(l));
    if (!seed) throw new KvgateError('KVG_CONFIG', `the NATS nkey seed file ${JSON.stringify(o.nkeySeedFile)} holds no seed (a line starting with S…)`);
    out.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
  }
  const t = o.tls ?? {};
  if (u.tls || t.caFile || t.certFile || t.keyFile) {
    if ((t.certFile === undefined) !== (t.keyFile === undefined)) throw new KvgateError('KVG_CONFIG', 'a NATS TLS client certificate needs its key, and a key its certificate');
    // nats.js (node) reads these paths itself when it connects; check them now for a clear error
    if (t.caFile) readSecretFile(t.caFile, 'TLS CA');
    if (t.certFile) readSecretFile(t.certFile, 'TLS certificate');
    if (t.keyFile) readSecretFile(t.keyFile, 'TLS key');
    out.tls = { ...(t.caFile ? { caFile: t.caFile } : {}), ...(t.certFile ? { certFile: t.certFile } : {}), ...(t.keyFile ? { keyFile: t.keyFile } : {}) };
  }
  return out;
}

/** a nats.js error message with anything secret the options hold blanked (servers echo little, but be sure) */
function scrub(msg: string, secrets: Array<string | undefined>): string {
  let m = msg;
  for (const s of secrets) if (s && s.length >= 3) m = m.split(s).join('***');
  return m;
}

/** replicas from the option or KVGATE_NATS_REPLICAS; a bad value is a clear KVG_CONFIG error */
function replicasOf(o: NatsBusOptions): number {
  const raw = o.replicas ?? (process.env.KVGATE_NATS_REPLICAS ? Number(process.env.KVGATE_NATS_REPLICAS) : 1);
  if (!Number.isInteger(raw) || raw < 1 || raw > 5) throw new KvgateError('KVG_CONFIG', `NATS replicas must be an integer in 1..5, got ${JSON.stringify(process.env.KVGATE_NATS_REPLICAS ?? o.replicas)} (KVGATE_NATS_REPLICAS)`);
  return raw;
}

const DEFAULT_TIMEOUT_MS = 1000;
/** how much longer than a request's deadline nats.js keeps its reply slot (a late reply is then dropped quietly) */
const REQUEST_SLOT_GRACE_MS = 1000;

/**
 * One NatsBus.request waiting for its reply. The deadline is kept here, not by nats.js: when it passes, a reply
 * that is already in the socket is read first. Node runs due timers before it polls for I/O, so after one busy turn
 * of the event loop (a GC pause, a large body parsed) a bare timer would fire ahead of a reply that came back in
 * time, and a 5 ms index budget would be missed with nothing slow on the bus (issue 14). setImmediate runs after
 * that poll. A timer can also fire *early*: libuv keeps its loop time in whole milliseconds, so a 5 ms timer made
 * 0.9 ms into a millisecond fires after about 4.1 ms (seen as index misses "after 4.3 ms"). The deadline is
 * therefore measured from the request's own start on the monotonic clock, and a timer that fires ahead of it is
 * armed again for the rest. close() rejects what is still waiting with KVG_BUS_CLOSED (nats.js would report a
 * timeout).
 */
class PendingNatsRequest {
  #settled = false;
  #timer: NodeJS.Timeout;
  /** performance.now() when the request was made: the deadline is this + timeoutMs */
  readonly #due: number;
  readonly #enders: Set<() => void>;
  readonly #onClose: () => void;
  readonly subject: string;
  readonly timeoutMs: number;
  readonly reject: (e: Error) => void;

  constructor(enders: Set<() => void>, subject: string, timeoutMs: number, reject: (e: Error) => void) {
    this.#enders = enders;
    this.subject = subject;
    this.timeoutMs = timeoutMs;
    this.reject = reject;
    this.#onClose = () => void (this.settle() && reject(new BusError('KVG_BUS_CLOSED', `bus closed while waiting for a reply on ${subject}`)));
    enders.add(this.#onClose);
    this.#due = performance.now() + timeoutMs;
    this.#timer = setTimeout(pendingDeadline, timeoutMs, this);
  }

  /** the timer fired: past the deadline → time out after this turn's I/O; early (see above) → wait the rest */
  deadline(): void {
    if (this.#settled) return;
    const left = this.#due - performance.now();
    if (left > 0.05) this.#timer = setTimeout(pendingDeadline, Math.ceil(left), this);
    else setImmediate(pendingTimedOut, this);
  }

  /** true the first time (the caller then resolves or rejects), false after */
  settle(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#enders.delete(this.#onClose);
    return true;
  }

  /** nats.js rejected the request */
  failed(err: unknown): void {
    if (!this.settle()) return;
    const e = toBusError(err, this.subject);
    if (e.code === 'KVG_TIMEOUT') this.reject(new BusError('KVG_TIMEOUT', `request on ${this.subject} timed out after ${this.timeoutMs} ms`, { cause: err }));
    else this.reject(e);
  }
}

function pendingDeadline(p: PendingNatsRequest): void {
  p.deadline();
}

function pendingTimedOut(p: PendingNatsRequest): void {
  if (p.settle()) p.reject(new BusError('KVG_TIMEOUT', `request on ${p.subject} timed out after ${p.timeoutMs} ms`));
}
/** close(): the final flush, and the close itself, each wait at most this long */
const CLOSE_BUDGET_MS = 1000;

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
/** direct gets in flight at once while listing a bucket's keys */
const KEYS_CONCURRENCY = 32;
/** how long a snapshot read waits for its consumer before it checks the stream itself */
const SNAPSHOT_IDLE_MS = 1000;

/** one stored message, from a consumer delivery or a direct get */
interface Stored {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers: MsgHdrs | undefined;
  /** store time, ms since the epoch */
  timeMs: number;
}

function fromJsMsg(m: JsMsg): Stored {
  return { seq: m.seq, subject: m.subject, data: m.data, headers: m.headers, timeMs: m.info.timestampNanos / 1e6 };
}

/**
 * Make an ordered consumer stay stopped. nats.js (2.29) re-creates an ordered consumer by itself (a reconnect, missed
 * heartbeats, a delivery gap): it adds a new server-side consumer, then starts a pull on it and hands it to the
 * iterator with setSource, which does not look at whether the iterator was stopped meanwhile. A reader stopped
 * while such a reset was under way (the indexer re-opening its stream read after a reconnect does exactly that)
 * thus left a live pull behind: a server-side consumer pulling for nobody and an idle-heartbeat interval timer that
 * kept the process running after the connection closed (printing "aborting resetPending - connection is closed"
 * every 5 s). Once `stopped()`: no new reset starts, a consumer add still to come never completes (it would retry
 * on a closed connection every few seconds, forever), and a source handed over late is stopped and its consumer
 * deleted at once. Instance-level wrappers over the library's own methods; nothing else changes.
 */
function keepStopped(consumer: Consumer, msgs: ConsumerMessages, stopped: () => boolean): void {
  type Src = { stop(err?: Error): void };
  const oc = consumer as unknown as {
    reset?: (...a: unknown[]) => Promise<void>;
    api?: { add?: (...a: unknown[]) => Promise<unknown> };
    delete(): Promise<boolean>;
  };
  const it = msgs as unknown as { setSource?: (src: Src) => void };
  if (typeof oc.reset !== 'function' || typeof it.setSource !== 'function' || typeof oc.api?.add !== 'function') return; // not an ordered consumer
  const reset = oc.reset.bind(oc);
  oc.reset = (...a: unknown[]) => (stopped() ? Promise.resolve() : reset(...a));
  const api = oc.api;
  const add = api.add!.bind(api);
  oc.api = new Proxy(api, {
    get: (target, key, recv) => (key === 'add' ? (...a: unknown[]) => (stopped() ? new Promise(() => undefined) : add(...a)) : Reflect.get(target, key, recv)),
  });
  const setSource = it.setSource.bind(it);
  it.setSource = (src: Src) => {
    if (!stopped()) return setSource(src);
    src.stop();
    oc.delete().catch(() => undefined);
  };
}

/** Every message of an ordered pull consumer, for as long as it delivers (follow readers, watchers). */
async function* followMessages(msgs: ConsumerMessages): AsyncGenerator<Stored> {
  for await (const m of msgs) yield fromJsMsg(m);
}

/** Where a snapshot read ends, and how it looks at the stream without its consumer. */
interface SnapshotBounds {
  /** the stream's last sequence when the read started: nothing after it belongs to the read */
  lastSeq: number;
  /** only messages stored at or after this time (a fromTime read) */
  fromTimeMs?: number;
  /** the first stored message with seq >= `seq` that matches the read's filter; null if none */
  next(seq: number): Promise<Stored | null>;
}

/**
 * Messages of an ordered pull consumer up to `bounds.lastSeq`, the last message stored when the read
 * started; then the generator ends. A message past the bound (written since) ends it too, as does one
 * that reports nothing pending after it.
 *
 * The consumer's pending counts are not enough on their own: nats-server 2.9 over-counts them when a
 * message is removed while it is pending (a KV key re-put under history 1, an entry aged out by
 * max_age), so a delivery can report `pending: 1` forever. While writes keep coming (a key kept alive by
 * re-puts) the consumer is never idle either, and a read that waited for `pending: 0` never ended. So:
 * the bound ends the read however busy the stream is, and when the consumer stays quiet for a second
 * the read asks the stream directly for the next matching message up to the bound and yields it itself
 * (skipping it if the consumer delivers it later). Each quiet second therefore either ends the read or
 * moves it forward: it always ends.
 */
async function* snapshotMessages(consumer: Consumer, msgs: ConsumerMessages, bounds: SnapshotBounds, fromSeq: number): AsyncGenerator<Stored> {
  if (bounds.lastSeq < fromSeq) return;
  if ((await consumer.info(true)).num_pending === 0) return;
  const it = msgs[Symbol.asyncIterator]();
  let next = it.next();
  /** the highest sequence yielded (or skipped as older than fromTime) */
  let seen = fromSeq - 1;
  for (;;) {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([next, new Promise<typeof IDLE>((res) => (t = setTimeout(() => res(IDLE), SNAPSHOT_IDLE_MS)))]);
    clearTimeout(t);
    if (r === IDLE) {
      let m = await bounds.next(seen + 1);
      while (m && m.seq <= bounds.lastSeq && bounds.fromTimeMs !== undefined && m.timeMs < bounds.fromTimeMs) {
        seen = m.seq;
        m = await bounds.next(seen + 1);
      }
      if (!m || m.seq > bounds.lastSeq) return;
      seen = m.seq;
      yield m;
      if (m.seq >= bounds.lastSeq) return;
      continue;
    }
    if (r.done) return;
    next = it.next();
    const m = r.value;
    if (m.seq <= seen) continue; // already yielded from a direct get
    if (m.seq > bounds.lastSeq) return;
    seen = m.seq;
    yield fromJsMsg(m);
    if (m.seq >= bounds.lastSeq || m.info.pending === 0) return;
  }
}

function isNotFound(err: unknown): boolean {
  const ne = err as NatsError;
  return ne?.api_error?.err_code === 10059 || /stream not found/i.test(ne?.message ?? '');
}

/** Connect to nats-server (JetStream must be enabled). Rejects with BusError KVG_BUS if unreachable. */
export async function connectNats(url: string, opts: NatsBusOptions = {}): Promise<NatsBus> {
  const log = opts.log ?? logger('bus.nats');
  const replicas = replicasOf(opts);
  const auth = natsAuthOptions(url, opts);
  const shown = redactNatsUrl(url);
  const copts: ConnectionOptions = {
    ...auth,
    name: opts.name ?? 'kvgate',
    maxReconnectAttempts: -1,
    reconnectTimeWait: opts.reconnectWaitMs ?? 250,
  };
  const envBudget = Number(process.env.KVGATE_NATS_CONNECT_TIMEOUT);
  const budget = opts.connectTimeoutMs ?? (Number.isFinite(envBudget) && envBudget >= 0 && process.env.KVGATE_NATS_CONNECT_TIMEOUT !== '' ? envBudget : 5000);
  const deadline = Date.now() + budget;
  let nc: NatsConnection;
  for (;;) {
    try {
      nc = await connect({ ...copts, timeout: Math.max(50, deadline - Date.now()) });
      break;
    } catch (err) {
      const code = (err as NatsError)?.code;
      const retry = code === 'CONNECTION_REFUSED' || code === 'CONNECTION_TIMEOUT' || code === 'TIMEOUT';
      const wait = copts.reconnectTimeWait ?? 250;
      if (!retry || Date.now() + wait >= deadline) {
        const auth = code === 'AUTHORIZATION_VIOLATION' || /authori[sz]ation/i.test((err as Error).message);
        const why = retry ? `unreachable after ${budget} ms` : auth ? 'rejected the credentials (authorization violation)' : 'refused the connection';
        const detail = scrub((err as Error).message, [copts.pass, copts.token]);
        throw new BusError('KVG_BUS', `cannot connect to NATS at ${shown}: ${why} (${detail})`);
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  const bus = new NatsBus(nc, shown, log, opts.jetstreamTimeoutMs ?? 5000, replicas);
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
  readonly #statusListeners = new Set<(s: BusStatus) => void>();

  readonly #replicas: number;

  constructor(nc: NatsConnection, url: string, log: Logger, jsTimeoutMs: number, replicas = 1) {
    this.#replicas = replicas;
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

  get connected(): boolean {
    return this.#connected && !this.#closed;
  }

  onStatus(listener: (status: BusStatus) => void): () => void {
    this.#statusListeners.add(listener);
    return () => this.#statusListeners.delete(listener);
  }

  #emitStatus(s: BusStatus): void {
    for (const f of [...this.#statusListeners]) {
      try {
        f(s);
      } catch (err) {
        this.#log.error({ err }, 'bus status listener failed');
      }
    }
  }

  async #watchStatus(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type === Events.Disconnect) {
        if (!this.#connected) continue; // one disconnect per outage (nats.js reports each failed server)
        this.#connected = false;
        this.#log.warn({ server: s.data }, 'nats disconnected; reconnecting without limit');
        this.#emitStatus('disconnected');
      } else if (s.type === Events.Reconnect) {
        this.#connected = true;
        this.#onReconnect.splice(0).forEach((f) => f());
        this.#log.info({ server: s.data }, 'nats reconnected');
        this.#emitStatus('reconnected');
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
    return subscriptionHandle(subject, chan, end, callback !== undefined);
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
      // the request's state as an object, not named closures: under tsx's keepNames every named closure made per
      // request is an Object.defineProperty (the index query is one request per routing decision, issue 14)
      const p = new PendingNatsRequest(this.#enders, subject, timeout, reject);
      // nats.js's own timeout only frees its reply slot, later (our deadline settles first)
      this.#nc.request(subject, copyBytes(data), { timeout: timeout + REQUEST_SLOT_GRACE_MS }).then(
        (m) => void (p.settle() && resolve(this.#wrap(m))),
        (err) => p.failed(err),
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
          num_replicas: this.#replicas,
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
      async lastSeqOf(filter: string): Promise<number> {
        bus.#open();
        checkPattern(filter);
        try {
          // STREAM.MSG.GET {last_by_subj}: nats-server 2.9 takes a wildcard there (the newest message matching it)
          return (await (await bus.#jsmgr()).streams.getMessage(st.name, { last_by_subj: filter })).seq;
        } catch (err) {
          if ((err as NatsError)?.api_error?.err_code === 10037) return 0; // no message found
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

  /** the end of a snapshot read that starts now, and a direct look at the stream for it (see snapshotMessages) */
  async #snapshotBounds(stream: string, filter: string, fromTimeMs?: number): Promise<SnapshotBounds> {
    const jsm = await this.#jsmgr();
    const lastSeq = (await jsm.streams.info(stream)).state.last_seq;
    return {
      lastSeq,
      fromTimeMs,
      async next(seq: number): Promise<Stored | null> {
        try {
          // STREAM.MSG.GET's {seq, next_by_subj} (nats-server >= 2.9); nats.js types only name it for direct get
          const query: { seq: number; next_by_subj: string } = { seq, next_by_subj: filter };
          const sm = await jsm.streams.getMessage(stream, query as unknown as { seq: number });
          return { seq: sm.seq, subject: sm.subject, data: sm.data, headers: sm.header, timeMs: Date.parse(sm.timestamp) };
        } catch (err) {
          if ((err as NatsError)?.api_error?.err_code === 10037) return null; // no message found
          throw err;
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
      // a snapshot read ends at the last message stored now: take the bound before the consumer exists
      const bounds = follow ? undefined : await this.#snapshotBounds(stream, opts.filter ?? '>', opts.fromTime);
      if (stopped) return;
      const consumer = await this.#js.consumers.get(stream, co);
      if (stopped) return;
      // A following reader's pull requests expire every 5 s (heartbeats every 2.5 s): an ordered consumer lost
      // with a NATS node (its state lives on one server) is noticed and recreated in seconds, not the 30 s default.
      const msgs = await consumer.consume(follow ? { max_messages: 512, expires: 5000 } : { max_messages: 512 });
      keepStopped(consumer, msgs, () => stopped);
      stopSource = () => {
        msgs.stop();
        consumer.delete().catch(() => undefined);
      };
      if (stopped) return stopSource();
      const source = bounds ? snapshotMessages(consumer, msgs, bounds, opts.fromTime !== undefined ? 1 : Math.max(1, opts.fromSeq ?? 1)) : followMessages(msgs);
      for await (const m of source) {
        if (stopped) break;
        chan.push(Object.freeze({ seq: m.seq, subject: m.subject, data: m.data, time: Math.floor(m.timeMs) }));
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
      kv = await this.#js.views.kv(bucket, { history: 1, ttl: ttlMs, replicas: this.#replicas });
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
   * Keys whose last operation is a put that has not lapsed: the stream's subjects (one per key, delete
   * markers included), then each key's last message by a direct get, a few dozen at a time. Not a
   * consumer read: nats.js `kv.keys()` stops when a push consumer's creation reply says nothing is
   * pending (racing with the first delivery, it can return an empty list for a non-empty bucket), and a
   * pull consumer's pending counts are over-counted by nats-server 2.9 once a pending message is removed
   * — a key re-put all the time (history 1) then kept a read that waited for `pending: 0` going forever;
   * cutting the read at the last sequence seen at the start instead loses a key whose message is
   * replaced before the consumer reaches it. Listing then getting always ends and never loses a key
   * that stays live throughout.
   */
  async #liveKeys(bucket: string, ttlMs: number): Promise<string[]> {
    const stream = `KV_${bucket}`;
    const prefix = `$KV.${bucket}.`;
    const jsm = await this.#jsmgr();
    const si = await jsm.streams.info(stream, { subjects_filter: `${prefix}>` });
    const subjects = Object.keys(si.state.subjects ?? {});
    const now = Date.now();
    const live: { key: string; seq: number }[] = [];
    for (let i = 0; i < subjects.length; i += KEYS_CONCURRENCY) {
      await Promise.all(subjects.slice(i, i + KEYS_CONCURRENCY).map(async (subject) => {
        let sm;
        try {
          sm = await jsm.streams.getMessage(stream, { last_by_subj: subject });
        } catch (err) {
          if ((err as NatsError)?.api_error?.err_code === 10037) return; // gone since the listing (aged out)
          throw err;
        }
        const op = sm.header.get('KV-Operation');
        if (op === 'DEL' || op === 'PURGE') return;
        if (ttlMs > 0 && Date.parse(sm.timestamp) + ttlMs <= now) return;
        live.push({ key: subject.slice(prefix.length), seq: sm.seq });
      }));
    }
    return live.sort((x, y) => x.seq - y.seq).map((e) => e.key);
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
      keepStopped(consumer, msgs, () => stopped);
      stopSource = () => {
        msgs.stop();
        consumer.delete().catch(() => undefined);
      };
      if (stopped) return stopSource();
      for await (const m of followMessages(msgs)) {
        if (stopped) break;
        const op = m.headers?.get('KV-Operation');
        const e = { key: m.subject.slice(prefix.length), revision: m.seq, value: m.data, created: m.timeMs };
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
    // bounded: a server that is gone (or not answering) must not hold a process that is shutting down
    let t: NodeJS.Timeout | undefined;
    const bound = <T>(p: Promise<T>) => Promise.race([p, new Promise<void>((r) => (t = setTimeout(r, CLOSE_BUDGET_MS)))]).finally(() => clearTimeout(t));
    if (this.#connected) await bound(this.#nc.flush()).catch(() => undefined);
    await bound(this.#nc.close()).catch(() => undefined);
  }
}

