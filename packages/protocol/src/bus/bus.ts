/**
 * The Bus: the only way kvgate actors talk across process boundaries.
 * Two implementations share this interface and one conformance suite (test/bus-conformance.test.ts):
 *   MemoryBus (bus/memory.ts) — one process, the embedded default;
 *   NatsBus   (bus/nats.ts)   — nats-server, JetStream for the durable stream and the KV store.
 * Payloads are bytes; typed codecs live in schemas.ts. Subjects are dot-separated tokens, with
 * `*` matching one token and `>` matching one or more trailing tokens (NATS semantics).
 */

export interface Msg {
  readonly subject: string;
  readonly data: Uint8Array;
  /** reply subject when the sender used request() */
  readonly reply?: string;
  /** answer a request; false if the message carried no reply subject */
  respond(data: Uint8Array): boolean;
}

export interface Subscription extends AsyncIterable<Msg> {
  readonly subject: string;
  unsubscribe(): void;
  /** resolves when the subscription ends (unsubscribe or bus close) */
  readonly closed: Promise<void>;
}

export interface SubscribeOptions {
  /** queue group: each message goes to one member of the group */
  queue?: string;
  /** alternative to iterating: called for every message, synchronously, in order */
  callback?: (msg: Msg) => void;
}

export interface RequestOptions {
  /** default 1000 ms; rejects with BusError KVG_TIMEOUT after it */
  timeoutMs?: number;
}

export interface StreamMsg {
  /** stream sequence, from 1, gap-free within the stream */
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
  /** ms since the epoch when the stream stored it */
  readonly time: number;
}

export interface StreamReadOptions {
  /** first sequence to deliver (default 1 or the first the stream still has) */
  fromSeq?: number;
  /** first message stored at or after this time (ms since epoch); exclusive with fromSeq */
  fromTime?: number;
  /** subject filter, wildcards allowed */
  filter?: string;
  /** keep delivering new messages after catching up (default false: end at the last stored) */
  follow?: boolean;
}

export interface StreamConfig {
  /** subjects the stream captures (wildcards allowed) */
  subjects: string[];
  /** discard messages older than this (0 = keep) */
  maxAgeMs?: number;
  /** keep at most this many messages (0 = unlimited) */
  maxMsgs?: number;
}

export interface StreamInfo {
  firstSeq: number;
  lastSeq: number;
  messages: number;
}

/** A durable, ordered log (JetStream stream on NATS). */
export interface DurableStream {
  readonly name: string;
  /** append directly (publishing on a captured subject also appends); resolves to the sequence */
  append(subject: string, data: Uint8Array): Promise<number>;
  /** ordered read; ends after the last stored message unless `follow` */
  read(opts?: StreamReadOptions): StreamReader;
  info(): Promise<StreamInfo>;
  /**
   * sequence of the last stored message whose subject matches `filter` (wildcards allowed), 0 when none: where a
   * filtered reader is caught up (the stream's lastSeq may be a message the filter never delivers)
   */
  lastSeqOf(filter: string): Promise<number>;
  /** drop every message with seq < keepFromSeq (trim behind a snapshot) */
  purgeBefore(keepFromSeq: number): Promise<void>;
}

export interface StreamReader extends AsyncIterable<StreamMsg> {
  /** stop the read; the iterator ends */
  stop(): void;
}

export interface KvEntry {
  readonly key: string;
  /** null when deleted or expired */
  readonly value: Uint8Array | null;
  readonly op: 'put' | 'delete';
  readonly revision: number;
}

export interface KvConfig {
  /** entries not re-put within this time expire (0 = never). NATS: bucket max_age. */
  ttlMs?: number;
}

/** A key/value bucket with TTL (JetStream KV on NATS). Keys: [A-Za-z0-9_\-=.]+ */
export interface KvStore {
  readonly bucket: string;
  put(key: string, value: Uint8Array): Promise<number>;
  get(key: string): Promise<Uint8Array | null>;
  delete(key: string): Promise<void>;
  keys(): Promise<string[]>;
  /** current entries first (unless `newOnly`), then every change, including deletes and expiries */
  watch(opts?: { newOnly?: boolean }): KvWatcher;
}

export interface KvWatcher extends AsyncIterable<KvEntry> {
  stop(): void;
}

/** a connection change: the link to the server went away, or came back (after which subscriptions are live again) */
export type BusStatus = 'disconnected' | 'reconnected';

export interface Bus {
  /** 'memory' | 'nats' */
  readonly kind: string;
  /**
   * false between a disconnect and the reconnect that follows it. Absent (MemoryBus, wrappers that do not say):
   * always connected.
   */
  readonly connected?: boolean;
  /**
   * Calls `listener` on every connection change, in order; returns a function that removes it. Absent: the bus
   * never disconnects. A consumer that judges liveness by time (registry TTLs) must not judge while disconnected.
   */
  onStatus?(listener: (status: BusStatus) => void): () => void;
  publish(subject: string, data: Uint8Array): void;
  subscribe(subject: string, opts?: SubscribeOptions): Subscription;
  request(subject: string, data: Uint8Array, opts?: RequestOptions): Promise<Msg>;
  /** create-or-open a durable stream */
  stream(name: string, config: StreamConfig): Promise<DurableStream>;
  /** create-or-open a KV bucket */
  kv(bucket: string, config?: KvConfig): Promise<KvStore>;
  /** resolves once everything published so far has reached the server (memory: delivered) */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** NATS subject matching: `*` one token, `>` one or more trailing tokens. */
export function subjectMatches(pattern: string, subject: string): boolean {
  if (pattern === subject) return true;
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    const t = p[i];
    if (t === '>') return s.length > i;
    if (i >= s.length) return false;
    if (t !== '*' && t !== s[i]) return false;
  }
  return p.length === s.length;
}
