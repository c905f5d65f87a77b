/**
 * The load side of bench/router.bench.ts, in a process of its own: the stub engines and the HTTP client that
 * drives them, directly or through the router. The router (with its embedded indexer) runs in the bench's
 * process, as it would in a deployment, so the client's and the engines' garbage collection and event-loop
 * work do not land inside the router's measured latency. Times are CLOCK_MONOTONIC (process.hrtime), which
 * every process on the machine shares, so the router process can put its own "request in" on the same axis.
 *
 * Driven over the IPC channel of child_process.fork: { id, op, ... } in, { id, value } or { id, error } out.
 */
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

export type LoadRequest =
  | { op: 'engines'; count: number }
  | { op: 'prompts'; bodies: string[] }
  | { op: 'measure'; url: string; path: string; tag: string; count: number; rate: number; headers?: Record<string, string> }
  | { op: 'rps'; url: string; path: string; seconds: number; inFlight: number };

const arrivals = new Map<string, number>();
/** ms on the machine-wide monotonic clock */
const now = () => Number(process.hrtime.bigint()) / 1e6;

/** one measured request: client send, stub arrival and response complete at the client (ms, monotonic clock) */
export interface Timed {
  id: string;
  sent: number;
  at: number;
  /** the client has the whole response (status, headers, body) */
  done: number;
}
const servers: Server[] = [];
let bodies: string[] = [];

/** An engine stub: answers at once; records when each request's headers arrived. */
async function stubEngine(): Promise<string> {
  const srv = createServer((req: IncomingMessage, res: ServerResponse) => {
    const t = now();
    const id = req.headers['x-request-id'];
    if (typeof id === 'string') arrivals.set(id, t);
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 });
      res.end('{}');
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  servers.push(srv);
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
}

/** `count` requests at a fixed rate; per request: when it was sent, when the stub saw its headers, when the response was in */
async function measure(url: string, path: string, tag: string, count: number, rate: number, headers: Record<string, string> = {}): Promise<Timed[]> {
  const pool = new Pool(url, { connections: 64 });
  const out: Timed[] = [];
  const t0 = now();
  const pending: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const wait = t0 + (i * 1000) / rate - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const id = `${tag}-${i}`;
    const sent = now();
    pending.push(
      pool.request({ path, method: 'POST', body: bodies[i % bodies.length]!, headers: { 'content-type': 'application/json', 'x-request-id': id, ...headers } }).then(async (res) => {
        await res.body.dump();
        const done = now();
        if (res.statusCode !== 200) throw new Error(`${url}${path} answered ${res.statusCode}`);
        const at = arrivals.get(id);
        arrivals.delete(id);
        if (at !== undefined) out.push({ id, sent, at, done });
      }),
    );
  }
  await Promise.all(pending);
  await pool.close();
  return out;
}

/** closed-loop requests/s with `inFlight` concurrent requests */
async function rps(url: string, path: string, seconds: number, inFlight: number): Promise<number> {
  const pool = new Pool(url, { connections: inFlight });
  let done = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: inFlight }, async (_, k) => {
      for (let i = k; performance.now() < end; i += inFlight) {
        const res = await pool.request({ path, method: 'POST', body: bodies[i % bodies.length]!, headers: { 'content-type': 'application/json' } });
        await res.body.dump();
        // an error answer is cheap and must not count as throughput
        if (res.statusCode !== 200) throw new Error(`${url}${path} answered ${res.statusCode}`);
        done++;
      }
    }),
  );
  await pool.close();
  return done / seconds;
}

async function handle(req: LoadRequest): Promise<unknown> {
  switch (req.op) {
    case 'engines':
      return Promise.all(Array.from({ length: req.count }, () => stubEngine()));
    case 'prompts':
      bodies = req.bodies;
      return bodies.length;
    case 'measure':
      return measure(req.url, req.path, req.tag, req.count, req.rate, req.headers);
    case 'rps':
      return rps(req.url, req.path, req.seconds, req.inFlight);
  }
}

process.on('message', (m: { id: number; req: LoadRequest }) => {
  handle(m.req).then(
    (value) => process.send!({ id: m.id, value }),
    (err: Error) => process.send!({ id: m.id, error: String(err?.stack ?? err) }),
  );
});
process.on('disconnect', () => {
  for (const s of servers) s.closeAllConnections();
  process.exit(0);
});
