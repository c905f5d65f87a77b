/**
 * A fake data-parallel engine server for the shim's DP tests, independent of kvgate's encoders:
 *   - `DpEngine`: one HTTP server (/metrics, /v1/models, /v1/completions recording each request's headers) and
 *     N ranks, each with its own ZMQ XPUB event socket and ROUTER replay socket, as vLLM runs them
 *     (`ZmqEventPublisher.offset_endpoint_port`: rank r uses the configured port + r, replay likewise);
 *     `connectTo` makes each rank's PUB connect to a bound subscriber instead (vLLM's connect mode: an
 *     endpoint without `*`, `::`, ipc or inproc);
 *   - `vllmBatch` / `vllmArrayBatch`: EventBatch payloads byte by byte from vllm/distributed/kv_events.py.
 *     Current vLLM: `EventBatch(msgspec.Struct, omit_defaults=True)` (no array_like: a map), fields ts, events,
 *     data_parallel_rank (the publisher sets it to its rank, so it is always present); events are tagged structs
 *     (`tag=True`: the class name under "type"), `omit_defaults` drops only fields with defaults still at their
 *     default (extra_keys, group_idx, kv_cache_spec_*), never lora_id / medium / lora_name (no defaults).
 *     vLLM ≤ 0.23: the same with `array_like=True`: `[ts, [events], data_parallel_rank]`, events
 *     `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]`.
 */
import { createServer as createNetServer } from 'node:net';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { Router, XPublisher } from 'zeromq';
import { mp, seqFrame, serveReplay, type Hash } from './fake-engine.js';

type Bytes = number[];
const hashBytes = (h: Hash): Bytes => (typeof h === 'bigint' ? mp.uint(h) : mp.bin(h));

export type DpEv = { type: 'stored'; hashes: Hash[]; parent: Hash | null; tokens: number[]; blockSize: number } | { type: 'removed'; hashes: Hash[] };

function storedMap(e: Extract<DpEv, { type: 'stored' }>): Bytes {
  return mp.map([
    ['type', mp.str('BlockStored')],
    ['block_hashes', mp.array(e.hashes.map(hashBytes))],
    ['parent_block_hash', e.parent === null ? mp.nil() : hashBytes(e.parent)],
    ['token_ids', mp.array(e.tokens.map(mp.uint))],
    ['block_size', mp.uint(e.blockSize)],
    ['lora_id', mp.nil()],
    ['medium', mp.str('GPU')],
    ['lora_name', mp.nil()],
  ]);
}

/** current vLLM: `{ts, events: [{type, …}], data_parallel_rank}` */
export function vllmBatch(rank: number, events: DpEv[], ts = Date.now() / 1000): Uint8Array {
  const evs = events.map((e) =>
    e.type === 'stored' ? storedMap(e) : mp.map([['type', mp.str('BlockRemoved')], ['block_hashes', mp.array(e.hashes.map(hashBytes))], ['medium', mp.str('GPU')]]),
  );
  return Uint8Array.from(mp.map([['ts', mp.float64(ts)], ['events', mp.array(evs)], ['data_parallel_rank', mp.uint(rank)]]));
}

/** vLLM ≤ 0.23 (array_like): `[ts, [events], data_parallel_rank]` */
export function vllmArrayBatch(rank: number, events: DpEv[], ts = Date.now() / 1000): Uint8Array {
  const evs = events.map((e) =>
    e.type === 'stored'
      ? mp.array([mp.str('BlockStored'), mp.array(e.hashes.map(hashBytes)), e.parent === null ? mp.nil() : hashBytes(e.parent), mp.array(e.tokens.map(mp.uint)), mp.uint(e.blockSize), mp.nil(), mp.str('GPU'), mp.nil()])
      : mp.array([mp.str('BlockRemoved'), mp.array(e.hashes.map(hashBytes)), mp.str('GPU')]),
  );
  return Uint8Array.from(mp.array([mp.float64(ts), mp.array(evs), mp.uint(rank)]));
}

/** Two consecutive free TCP ports (p, p + 1), below the ephemeral range so port-0 allocations cannot take them. */
export async function portPair(): Promise<number> {
  const free = (port: number) =>
    new Promise<boolean>((resolve) => {
      const srv = createNetServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
  for (let i = 0; i < 200; i++) {
    const p = 20000 + Math.floor(Math.random() * 12000);
    if ((await free(p)) && (await free(p + 1))) return p;
  }
  throw new Error('no free port pair in 20000-32000');
}

/** one engine core's event publisher and replay socket */
export class EngineRank {
  readonly pub = new XPublisher({ linger: 0 });
  readonly router = new Router({ linger: 0 });
  /** what the replay socket serves: seq → payload */
  readonly buffer = new Map<bigint, Uint8Array>();
  replayRequests: bigint[] = [];
  seq = 0n;
  #subscribed!: Promise<void>;

  constructor(readonly rank: number) {}

  async open(events: { bind?: string; connect?: string }, replay: string): Promise<void> {
    if (events.bind) await this.pub.bind(events.bind);
    else this.pub.connect(events.connect!);
    await this.router.bind(replay);
    // XPUB hands us the subscription message (0x01 + prefix) once a subscriber is attached
    this.#subscribed = (async () => {
      for (;;) {
        const [m] = await this.pub.receive();
        if (m && m[0] === 1) return;
      }
    })();
    void this.#serveReplay();
  }

  subscribed(): Promise<void> {
    return this.#subscribed;
  }

  #serveReplay(): Promise<void> {
    return serveReplay(this.router, this.buffer, this.replayRequests);
  }

  /** publish one batch at this rank's next seq, kept for replay (topic empty, as vLLM's default) */
  async send(payload: Uint8Array): Promise<bigint> {
    const s = this.seq++;
    this.buffer.set(s, payload);
    await this.pub.send([Buffer.alloc(0), seqFrame(s), payload]);
    return s;
  }

  /** a message outside this rank's numbering (another engine's publisher on this socket): not buffered */
  async sendForeign(seq: bigint, payload: Uint8Array): Promise<void> {
    await this.pub.send([Buffer.alloc(0), seqFrame(seq), payload]);
  }

  close(): void {
    this.pub.close();
    this.router.close();
  }
}

export interface SeenRequest {
  path: string;
  headers: IncomingMessage['headers'];
  body: string;
}

/** N engine cores behind one HTTP server (vLLM `--data-parallel-size N` with internal load balancing). */
export class DpEngine {
  readonly ranks: EngineRank[];
  metricsText: string;
  readonly seen: SeenRequest[] = [];
  /** rank 0's endpoints, as in the engine's `--kv-events-config` (rank r: port + r) */
  kvEvents = '';
  kvReplay = '';
  url = '';
  #http: Server;

  constructor(size: number, metricsText = 'vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n') {
    this.ranks = Array.from({ length: size }, (_, r) => new EngineRank(r));
    this.metricsText = metricsText;
    this.#http = createServer(async (req, res) => {
      let body = '';
      for await (const c of req) body += c;
      if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
        res.end(this.metricsText);
      } else if (req.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ object: 'list', data: [] }));
      } else if (req.method === 'POST' && (req.url === '/v1/completions' || req.url === '/v1/chat/completions')) {
        this.seen.push({ path: req.url, headers: req.headers, body });
        const out = JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: 'ok', finish_reason: 'length' }] });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
        res.end(out);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
  }

  /**
   * Binds every rank's PUB on port + rank (or, with `connectTo`, connects it to `connectTo`'s port + rank, the
   * shim having bound there) and its ROUTER replay socket on the replay port + rank.
   */
  async start(o: { connectTo?: string } = {}): Promise<this> {
    for (let attempt = 0; ; attempt++) {
      const ev = await portPair();
      const rp = await portPair();
      try {
        for (const r of this.ranks) {
          const events = o.connectTo ? { connect: offset(o.connectTo, r.rank) } : { bind: `tcp://127.0.0.1:${ev + r.rank}` };
          await r.open(events, `tcp://127.0.0.1:${rp + r.rank}`);
        }
        this.kvEvents = o.connectTo ?? `tcp://127.0.0.1:${ev}`;
        this.kvReplay = `tcp://127.0.0.1:${rp}`;
        break;
      } catch (e) {
        // another test took a port between the probe and the bind: fresh sockets, other ports
        for (const r of this.ranks) r.close();
        if (attempt >= 5) throw e;
        this.ranks.splice(0, this.ranks.length, ...this.ranks.map((r) => new EngineRank(r.rank)));
      }
    }
    await new Promise<void>((r) => this.#http.listen(0, '127.0.0.1', r));
    const a = this.#http.address();
    this.url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
    return this;
  }

  async close(): Promise<void> {
    for (const r of this.ranks) r.close();
    this.#http.closeAllConnections();
    await new Promise<void>((r) => this.#http.close(() => r()));
  }
}

/** `tcp://host:P` → `tcp://host:P+r` (the test's own copy of vLLM's rule, not the shim's) */
function offset(endpoint: string, r: number): string {
  const i = endpoint.lastIndexOf(':');
  return `${endpoint.slice(0, i)}:${Number(endpoint.slice(i + 1)) + r}`;
}
