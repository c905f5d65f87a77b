/**
 * Test doubles for the shim's engine side, independent of the project's own encoders:
 *   - `mp`: a msgpack writer that emits each byte by hand (format bytes from the msgpack spec);
 *   - `vllmArrayBatch` / `vllmMapBatch`: vLLM EventBatch payloads in both encodings, built from `mp`;
 *   - `FakeEngine`: ZMQ XPUB (so a test knows when the shim has subscribed) + ROUTER replay socket with
 *     a buffer the test controls, and an HTTP server for /metrics and /v1/models.
 */
import { createServer, type Server } from 'node:http';
import { Router, XPublisher } from 'zeromq';
import { decodeEventBatch, type Bus, type EventBatch } from '@kvgate/protocol';
import { freePort } from '../../../test/harness/nats-server.js';

// ---- msgpack, byte by byte -------------------------------------------------------------------------------
const be = (v: bigint, n: number): number[] => Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * (n - 1 - i))) & 0xffn));

export const mp = {
  nil: (): number[] => [0xc0],
  uint(n: number | bigint): number[] {
    const v = BigInt(n);
    if (v < 0x80n) return [Number(v)]; // positive fixint
    if (v < 0x100n) return [0xcc, Number(v)];
    if (v < 0x10000n) return [0xcd, ...be(v, 2)];
    if (v < 0x100000000n) return [0xce, ...be(v, 4)];
    return [0xcf, ...be(v, 8)];
  },
  float64(x: number): number[] {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(x);
    return [0xcb, ...b];
  },
  str(s: string): number[] {
    const b = [...Buffer.from(s, 'utf8')];
    if (b.length < 32) return [0xa0 | b.length, ...b];
    return [0xd9, b.length, ...b];
  },
  bin(bytes: Uint8Array): number[] {
    return [0xc4, bytes.length, ...bytes];
  },
  array(items: number[][]): number[] {
    const head = items.length < 16 ? [0x90 | items.length] : [0xdc, ...be(BigInt(items.length), 2)];
    return [...head, ...items.flat()];
  },
  map(entries: [string, number[]][]): number[] {
    if (entries.length >= 16) throw new Error('fixmap only');
    return [0x80 | entries.length, ...entries.flatMap(([k, v]) => [...mp.str(k), ...v])];
  },
};

export type Hash = bigint | Uint8Array;
const hashBytes = (h: Hash): number[] => (typeof h === 'bigint' ? mp.uint(h) : mp.bin(h));

export interface Stored {
  type: 'stored';
  hashes: Hash[];
  parent: Hash | null;
  tokens: number[];
  blockSize: number;
  loraId?: number | null;
  loraName?: string | null;
  /** default GPU */
  medium?: string;
}
export type Ev = Stored | { type: 'removed'; hashes: Hash[]; medium?: string } | { type: 'cleared' };

/** vLLM ≤ 0.23 (array_like): [ts, [events], dp_rank] */
export function vllmArrayBatch(events: Ev[], ts = Date.now() / 1000): Uint8Array {
  const evs = events.map((e) => {
    switch (e.type) {
      case 'stored':
        return mp.array([
          mp.str('BlockStored'),
          mp.array(e.hashes.map(hashBytes)),
          e.parent === null ? mp.nil() : hashBytes(e.parent),
          mp.array(e.tokens.map(mp.uint)),
          mp.uint(e.blockSize),
          e.loraId == null ? mp.nil() : mp.uint(e.loraId),
          mp.str(e.medium ?? 'GPU'),
          e.loraName == null ? mp.nil() : mp.str(e.loraName),
        ]);
      case 'removed':
        return mp.array([mp.str('BlockRemoved'), mp.array(e.hashes.map(hashBytes)), mp.str(e.medium ?? 'GPU')]);
      case 'cleared':
        return mp.array([mp.str('AllBlocksCleared')]);
    }
  });
  return Uint8Array.from(mp.array([mp.float64(ts), mp.array(evs), mp.uint(0)]));
}

/** newer vLLM (plain structs): {ts, events: [{type, …named fields}], data_parallel_rank} */
export function vllmMapBatch(events: Ev[], ts = Date.now() / 1000): Uint8Array {
  const evs = events.map((e) => {
    switch (e.type) {
      case 'stored':
        return mp.map([
          ['type', mp.str('BlockStored')],
          ['block_hashes', mp.array(e.hashes.map(hashBytes))],
          ['parent_block_hash', e.parent === null ? mp.nil() : hashBytes(e.parent)],
          ['token_ids', mp.array(e.tokens.map(mp.uint))],
          ['block_size', mp.uint(e.blockSize)],
          ['lora_id', e.loraId == null ? mp.nil() : mp.uint(e.loraId)],
          ['medium', mp.str(e.medium ?? 'GPU')],
          ['lora_name', e.loraName == null ? mp.nil() : mp.str(e.loraName)],
          ['extra_keys', mp.nil()], // a field this version of kvgate does not know: ignored
        ]);
      case 'removed':
        return mp.map([['type', mp.str('BlockRemoved')], ['block_hashes', mp.array(e.hashes.map(hashBytes))], ['medium', mp.str(e.medium ?? 'GPU')]]);
      case 'cleared':
        return mp.map([['type', mp.str('AllBlocksCleared')]]);
    }
  });
  return Uint8Array.from(mp.map([['ts', mp.float64(ts)], ['events', mp.array(evs)], ['data_parallel_rank', mp.uint(0)]]));
}

/**
 * vLLM's `_service_replay` on a ROUTER socket: for each request `[id, '', start]`, `[id, '', seq, payload]` for
 * every buffered batch from `start` on, then the end marker (seq -1, empty payload). Records each start in
 * `requests`; ends when the socket closes.
 */
export async function serveReplay(router: Router, buffer: Map<bigint, Uint8Array>, requests: bigint[]): Promise<void> {
  try {
    for await (const frames of router) {
      const [id, , start] = frames;
      if (!id || !start || start.length !== 8) continue;
      const from = start.readBigUInt64BE();
      requests.push(from);
      const seqs = [...buffer.keys()].filter((s) => s >= from).sort((a, b) => (a < b ? -1 : 1));
      for (const s of seqs) await router.send([id, Buffer.alloc(0), seqFrame(s), buffer.get(s)!]);
      await router.send([id, Buffer.alloc(0), Buffer.alloc(8, 0xff), Buffer.alloc(0)]);
    }
  } catch {
    /* socket closed */
  }
}

export function seqFrame(seq: number | bigint): Buffer {
  return Buffer.from(be(BigInt(seq), 8));
}

// ---- fake engine ------------------------------------------------------------------------------------------
export interface FakeEngineOptions {
  metricsText?: string;
  models?: unknown;
}

export class FakeEngine {
  readonly pub = new XPublisher({ linger: 0 });
  readonly router = new Router({ linger: 0 });
  /** what the replay socket serves: seq → payload */
  readonly buffer = new Map<bigint, Uint8Array>();
  metricsText: string;
  models: unknown;
  replayRequests: bigint[] = [];
  kvEvents = '';
  kvReplay = '';
  url = '';
  #http: Server;
  #subscribed!: Promise<void>;
  #seq = 0n;

  constructor(o: FakeEngineOptions = {}) {
    this.metricsText = o.metricsText ?? 'vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n';
    this.models = o.models ?? { object: 'list', data: [] };
    this.#http = createServer((req, res) => {
      if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
        res.end(this.metricsText);
      } else if (req.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(this.models));
      } else {
        res.writeHead(404);
        res.end();
      }
    });
  }

  async start(): Promise<this> {
    const [p1, p2] = [await freePort(), await freePort()];
    this.kvEvents = `tcp://127.0.0.1:${p1}`;
    this.kvReplay = `tcp://127.0.0.1:${p2}`;
    await this.pub.bind(this.kvEvents);
    await this.router.bind(this.kvReplay);
    // XPUB hands us the subscription message (0x01 + prefix) once a subscriber is attached
    this.#subscribed = (async () => {
      for (;;) {
        const [m] = await this.pub.receive();
        if (m && m[0] === 1) return;
      }
    })();
    void this.#serveReplay();
    await new Promise<void>((r) => this.#http.listen(0, '127.0.0.1', r));
    const a = this.#http.address();
    this.url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
    return this;
  }

  /** resolves once a SUB has subscribed */
  subscribed(): Promise<void> {
    return this.#subscribed;
  }

  #serveReplay(): Promise<void> {
    return serveReplay(this.router, this.buffer, this.replayRequests);
  }

  /** next engine sequence number */
  get seq(): bigint {
    return this.#seq;
  }
  set seq(v: bigint) {
    this.#seq = v;
  }

  /** publish one batch at the next seq (kept for replay unless `replay` is false); `live` false = lost on the wire */
  async send(payload: Uint8Array, opts: { live?: boolean; replay?: boolean } = {}): Promise<bigint> {
    const s = this.#seq++;
    if (opts.replay !== false) this.buffer.set(s, payload);
    if (opts.live !== false) await this.pub.send([Buffer.alloc(0), seqFrame(s), payload]);
    return s;
  }

  async sendRaw(frames: Uint8Array[]): Promise<void> {
    await this.pub.send(frames);
  }

  async close(): Promise<void> {
    this.pub.close();
    this.router.close();
    await new Promise<void>((r) => this.#http.close(() => r()));
    this.#http.closeAllConnections();
  }
}

// ---- bus-side observer ------------------------------------------------------------------------------------
/** Applies a worker's EventBatches as an indexer would, and checks the shim's own sequence. */
export class BusView {
  readonly batches: EventBatch[] = [];
  readonly blocks = new Set<bigint>();
  cleared = 0;
  seqErrors = 0;
  readonly #unsub: () => void;

  constructor(bus: Bus, subject: string) {
    const sub = bus.subscribe(subject, {
      callback: (m) => {
        const b = decodeEventBatch(m.data);
        const prev = this.batches.at(-1);
        // a new shim incarnation starts again at 0 (with `cleared`)
        if ((prev && b.seq !== prev.seq + 1 && b.seq !== 0) || (!prev && b.seq !== 0)) this.seqErrors++;
        this.batches.push(b);
        for (const e of b.events) {
          if (e.t === 'stored') for (const h of e.hashes) this.blocks.add(h);
          else if (e.t === 'removed') for (const h of e.hashes) this.blocks.delete(h);
          else {
            this.blocks.clear();
            this.cleared++;
          }
        }
      },
    });
    this.#unsub = () => sub.unsubscribe();
  }

  has(hashes: bigint[]): boolean {
    return hashes.every((h) => this.blocks.has(h));
  }

  close(): void {
    this.#unsub();
  }
}

export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sameSet = (a: Iterable<bigint>, b: Iterable<bigint>): boolean => {
  const x = new Set(a);
  const y = new Set(b);
  return x.size === y.size && [...x].every((h) => y.has(h));
};
