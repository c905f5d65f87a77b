/**
 * Router test kit: stub engines (real HTTP on loopback), worker registrations put straight into the workers
 * bucket, and a fake index answering `…index.match` from a table. No sim engine, shim or indexer involved.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  decodeMatchRequest,
  encode,
  subjects,
  type Bus,
  type LoadReport,
  type Subscription,
  type WorkerRegistration,
} from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';

export interface SeenRequest {
  path: string;
  headers: IncomingMessage['headers'];
  body: Record<string, unknown>;
}

/** An OpenAI-ish upstream. `hold` keeps responses open until released; `gated` streams one chunk per release. */
export class StubEngine {
  readonly name: string;
  seen: SeenRequest[] = [];
  /** requests whose client went away before the response finished */
  cancelled = 0;
  open = 0;
  hold = false;
  gated = false;
  chunks = 3;
  status = 200;
  #server: Server;
  #waiters: Array<() => void> = [];
  url = '';

  constructor(name: string) {
    this.name = name;
    this.#server = createServer((req, res) => this.#handle(req, res));
  }

  async listen(): Promise<this> {
    return this.listenOn(0);
  }

  /** listen on `port` (0 = any); after close() it may listen again (an engine coming back) */
  async listenOn(port: number): Promise<this> {
    await new Promise<void>((r, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, '127.0.0.1', () => {
        this.#server.off('error', reject);
        r();
      });
    });
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  /** let every held response (or the next gated chunk) go */
  release(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  #wait(): Promise<void> {
    return new Promise((r) => this.#waiters.push(r));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let raw = '';
    for await (const c of req) raw += c;
    const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
    this.seen.push({ path: req.url ?? '', headers: req.headers, body });
    if (this.status !== 200) {
      res.writeHead(this.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'stub failure', type: 'server_error', code: 'stub' } }));
      return;
    }
    this.open++;
    let finished = false;
    res.on('close', () => {
      this.open--;
      if (!finished) this.cancelled++;
    });
    if (this.hold) await this.#wait();
    if (body.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      for (let i = 0; i < this.chunks; i++) {
        if (i > 0 && this.gated) await this.#wait();
        if (res.destroyed) return;
        res.write(`data: ${JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: `t${i}` }], engine: this.name })}\n\n`);
      }
      res.end('data: [DONE]\n\n');
    } else {
      const out = JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: 'ok', finish_reason: 'length' }], engine: this.name });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
      res.end(out);
    }
    finished = true;
  }

  async close(): Promise<void> {
    this.release();
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

export function registration(worker: string, url: string, over: Partial<WorkerRegistration> = {}): WorkerRegistration {
  return { worker, model: 'stub-model', role: 'both', url, engineUrl: url, blockSize: 4, capacityBlocks: 10_000, loras: [], ts: Date.now(), ...over };
}

export async function register(bus: Bus, reg: WorkerRegistration, ns = 'default'): Promise<void> {
  const kv = await bus.kv(subjects(ns).workersBucket, { ttlMs: 0 });
  await kv.put(reg.worker, encode(reg));
}

export async function deregister(bus: Bus, worker: string, ns = 'default'): Promise<void> {
  const kv = await bus.kv(subjects(ns).workersBucket, { ttlMs: 0 });
  await kv.delete(worker);
}

export function publishLoad(bus: Bus, l: Partial<LoadReport> & { worker: string }, ns = 'default'): void {
  const full: LoadReport = { model: 'stub-model', role: 'both', waiting: 0, running: 0, kvUsage: 0, capacityBlocks: 10_000, url: '', ts: Date.now(), ...l };
  bus.publish(subjects(ns).load(l.worker), encode(full));
}

/** A fake index: `holds.get(worker)` is the set of prefix hashes the worker caches. */
export function fakeIndex(bus: Bus, holds: Map<string, Set<bigint>>, ns = 'default'): Subscription {
  const s = subjects(ns);
  return bus.subscribe(s.indexMatch, {
    queue: s.indexQueue,
    callback: (m) => {
      const req = decodeMatchRequest(m.data);
      const overlaps: Record<string, number> = {};
      for (const [w, set] of holds) {
        let n = 0;
        while (n < req.hashes.length && set.has(req.hashes[n]!)) n++;
        if (n > 0) overlaps[w] = n;
      }
      m.respond(encode({ overlaps, indexerSeq: 1 }));
    },
  });
}

export interface BusKind {
  name: string;
  /** a fresh bus (and whatever it needs); call `done` after closing the bus */
  make(): Promise<{ bus: Bus; done(): Promise<void> }>;
  /** auth options for the routers of a suite on this bus (NATS: API keys and the cluster secret) */
  routerAuth?: { apiKeys: string[]; clusterSecret: string };
  /** headers a client of those routers sends (NATS: the API key) */
  headers?: Record<string, string>;
}

export const MEMORY: BusKind = {
  name: 'memory',
  async make() {
    const bus = await createBus();
    return { bus, done: async () => {} };
  },
};

/**
 * Auth on in the NATS variants of the e2e suites (issue 13: the positive paths pass with auth on): nats-server
 * requires a password, routers require E2E_API_KEY (clients send E2E_AUTH_HEADERS) and sign every upstream call
 * with E2E_CLUSTER_SECRET.
 */
export const E2E_API_KEY = 'e2e-api-key-3b9f';
export const E2E_CLUSTER_SECRET = 'e2e-cluster-secret-5d21';
export const E2E_AUTH_HEADERS: Record<string, string> = { authorization: `Bearer ${E2E_API_KEY}` };

/** startStack options of an e2e suite's NATS variant: `nats` (started with a password) and every auth option on */
export function authedStackOptions(nats: NatsServerHandle): { nats: string; natsAuth: { user: string; pass: string }; apiKeys: string[]; clusterSecret: string; shimFronts: true } {
  return { nats: nats.url, natsAuth: nats.auth as { user: string; pass: string }, apiKeys: [E2E_API_KEY], clusterSecret: E2E_CLUSTER_SECRET, shimFronts: true };
}

let natsShared: NatsServerHandle | undefined;
/** a shared nats-server that requires a password (issue 13: the e2e suites over NATS run with auth on) */
export const NATS: BusKind = {
  name: 'nats (auth on)',
  async make() {
    natsShared ??= await startNatsServer({ auth: 'password' });
    const bus = await createBus({ nats: natsShared.url, ...natsShared.auth });
    return { bus, done: async () => {} };
  },
  routerAuth: { apiKeys: [E2E_API_KEY], clusterSecret: E2E_CLUSTER_SECRET },
  headers: E2E_AUTH_HEADERS,
};
export async function stopNats(): Promise<void> {
  await natsShared?.stop();
  natsShared = undefined;
}

export const tokens = (n: number, base = 0) => Array.from({ length: n }, (_, i) => base + i + 1);

export async function until(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
