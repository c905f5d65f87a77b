/**
 * `kvgate` commands as processes, the way an operator runs them (issue 12, lifecycle):
 *   - fatal start-up errors (a port in use, NATS unreachable after a short --nats-connect-timeout, a bad flag) on
 *     every command: exit ≠ 0, one line on stderr `kvgate <cmd>: … [KVG_*]` (log lines aside), no stack, and the
 *     process is gone;
 *   - SIGTERM on a real cluster (nats-server, sim engine, shim, indexer, router, each its own process): a stream
 *     cut by the router's shutdown, and one cut by the shim's, end with the SSE error event KVG_SHUTTING_DOWN and
 *     `data: [DONE]`; each process exits 0 within 10 s — a shim whose engine was killed -9 first, and shim,
 *     router, indexer and engine after nats-server itself is gone; a shim that stops deletes its registration
 *     (TTL 60 s, so nothing else can have removed it).
 * Waits are bounded waits for events; nothing asserts on speed.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { request } from 'undici';
import { createBus } from '@kvgate/protocol/bus/index';
import { initHashing, subjects, type Bus, type KvStore } from '@kvgate/protocol';
import { registryKey } from '@kvgate/worker-shim';
import { freePort, startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { tokens } from '../../router/test/helpers.js';

await initHashing();
const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;
const EXIT_BOUND_MS = 10_000;
const TTL = '60000';

interface Proc {
  name: string;
  child: ChildProcess;
  out: { stdout: string; stderr: string };
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** resolves with the first match of `re` on stderr (bounded) */
  line(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
}

const procs: Proc[] = [];

function kvgate(name: string, args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  const watchers: (() => void)[] = [];
  child.stdout!.on('data', (c: Buffer) => (out.stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => {
    out.stderr += c.toString();
    watchers.forEach((w) => w());
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const p: Proc = {
    name,
    child,
    out,
    exited,
    line: (re, ms = 30_000) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${name}: no ${re} on stderr within ${ms} ms:\n${out.stderr}`)), ms);
        const check = () => {
          const m = re.exec(out.stderr);
          if (m) {
            clearTimeout(t);
            resolve(m);
          }
        };
        watchers.push(check);
        void exited.then(() => setTimeout(() => {
          clearTimeout(t);
          const m = re.exec(out.stderr);
          if (m) resolve(m);
          else reject(new Error(`${name} exited before ${re}:\n${out.stderr}`));
        }, 50));
        check();
      }),
  };
  procs.push(p);
  return p;
}

/** the exit, or null when it takes more than EXIT_BOUND_MS */
async function exitWithin(p: Proc, ms = EXIT_BOUND_MS): Promise<{ code: number | null; signal: NodeJS.Signals | null } | null> {
  let t: NodeJS.Timeout | undefined;
  const r = await Promise.race([p.exited, new Promise<null>((res) => (t = setTimeout(() => res(null), ms)))]);
  clearTimeout(t);
  return r;
}

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** stderr lines that are not structured log lines (JSON) */
const plainLines = (stderr: string): string[] => stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));

async function expectFatal(cmd: string, args: string[], code: string, env: Record<string, string> = {}): Promise<void> {
  const p = kvgate(cmd, [cmd, ...args], env);
  const r = await exitWithin(p, 30_000);
  const what = `kvgate ${cmd} ${args.join(' ')}:\n${p.out.stderr}`;
  assert.ok(r, `${what}\n(still running)`);
  assert.ok(r!.code !== 0 && r!.code !== null, `${what}\nexit ${r!.code}`);
  assert.not.match(p.out.stderr, /^\s+at /m, `${what}\n(a stack trace)`);
  const lines = plainLines(p.out.stderr);
  assert.is(lines.length, 1, what);
  assert.match(lines[0]!, new RegExp(`^kvgate ${cmd}: .+ \\(.+\\) \\[${code}\\]$`), what);
  assert.ok(gone(p.child.pid!), `${what}\n(process still there)`);
}

/** a TCP port something else holds */
async function holdPort(): Promise<{ port: number; server: Server }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  return { port: typeof a === 'object' && a ? a.port : 0, server };
}

test('fatal start-up: a port in use, on every serving command', async () => {
  const { port, server } = await holdPort();
  try {
    await Promise.all([
      expectFatal('router', ['--port', String(port), '--host', '127.0.0.1'], 'KVG_PORT_IN_USE'),
      expectFatal('indexer', ['--port', String(port), '--host', '127.0.0.1'], 'KVG_PORT_IN_USE'),
      expectFatal('shim', ['--worker-id', 'w', '--model', 'm', '--port', String(port), '--host', '127.0.0.1', '--engine-url', `http://127.0.0.1:${port}`], 'KVG_PORT_IN_USE'),
      expectFatal('shim', ['--worker-id', 'w', '--model', 'm', '--port=-1', '--kv-events-bind', `tcp://127.0.0.1:${port}`, '--engine-url', `http://127.0.0.1:${port}`], 'KVG_PORT_IN_USE'),
      expectFatal('sim-engine', ['--port', String(port), '--no-kv-events'], 'KVG_PORT_IN_USE'),
      expectFatal('sim-engine', ['--port', '0', '--kv-events-endpoint', `tcp://127.0.0.1:${port}`], 'KVG_PORT_IN_USE'),
    ]);
  } finally {
    server.close();
  }
});

test('fatal start-up: NATS unreachable after --nats-connect-timeout', async () => {
  const nowhere = `nats://127.0.0.1:${await freePort()}`;
  const t = ['--nats', nowhere, '--nats-connect-timeout', '300'];
  await Promise.all([
    expectFatal('router', ['--port', '0', ...t], 'KVG_NATS_UNREACHABLE'),
    expectFatal('indexer', ['--port', '0', ...t], 'KVG_NATS_UNREACHABLE'),
    expectFatal('shim', ['--worker-id', 'w', '--model', 'm', '--port', '0', ...t], 'KVG_NATS_UNREACHABLE'),
  ]);
});

test('fatal start-up: a bad flag, on every command', async () => {
  await Promise.all([
    expectFatal('router', ['--port', 'eighty'], 'KVG_BAD_FLAG'),
    expectFatal('router', ['--policy', 'best'], 'KVG_BAD_FLAG'),
    expectFatal('router', ['--drain-ms', '-5'], 'KVG_BAD_FLAG'),
    expectFatal('indexer', ['--shards', 'many'], 'KVG_BAD_FLAG'),
    expectFatal('shim', ['--model', 'm'], 'KVG_BAD_FLAG'),
    expectFatal('shim', ['--worker-id', 'w', '--model', 'm', '--nats-connect-timeout', 'soon'], 'KVG_BAD_FLAG'),
    expectFatal('sim-engine', ['--role', 'boss'], 'KVG_BAD_FLAG'),
    expectFatal('start', ['--no-such-flag'], 'KVG_BAD_FLAG'),
    expectFatal('replay', ['--no-such-flag'], 'KVG_BAD_FLAG'),
    expectFatal('doctor', ['--no-such-flag'], 'KVG_BAD_FLAG'),
  ]);
});

// ---- a cluster of processes ----------------------------------------------------------------------------------

let nats: NatsServerHandle;
let bus: Bus;
let workers: KvStore;
const NS = `life${process.pid}`;

async function engine(name: string): Promise<{ proc: Proc; url: string; events: string; replay: string }> {
  const [e, r] = [await freePort(), await freePort()];
  // slow tokens (speedup 0.2: ≈ 30 ms each) so a long completion is still streaming when a signal comes
  const proc = kvgate(name, ['sim-engine', '--port', '0', '--speedup', '0.2', '--kv-events-endpoint', `tcp://127.0.0.1:${e}`, '--kv-replay-endpoint', `tcp://127.0.0.1:${r}`, '--drain-ms', '300']);
  const [, url] = await proc.line(/listening on (http:\/\/\S+)/);
  return { proc, url: url!, events: `tcp://127.0.0.1:${e}`, replay: `tcp://127.0.0.1:${r}` };
}

async function shim(worker: string, eng: { url: string; events: string; replay: string }): Promise<{ proc: Proc; url: string }> {
  const proc = kvgate(worker, [
    'shim', '--worker-id', worker, '--model', 'qwen3-8b', '--engine-url', eng.url, '--kv-events', eng.events, '--kv-replay', eng.replay,
    '--nats', nats.url, '--namespace', NS, '--port', '0', '--host', '127.0.0.1', '--ttl-ms', TTL, '--drain-ms', '300', '--engine-probe-ms', '200',
  ]);
  const [, url] = await proc.line(/worker \S+ up at (http:\/\/\S+)/);
  return { proc, url: url! };
}

async function router(name: string): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const proc = kvgate(name, ['router', '--port', String(port), '--host', '127.0.0.1', '--nats', nats.url, '--namespace', NS, '--registry-ttl-ms', TTL, '--drain-ms', '300', '--index-timeout-ms', '200']);
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const ok = await request(`${url}/readyz`).then(async (r) => (await r.body.dump(), r.statusCode === 200), () => false);
    if (ok) break;
    if (i > 300 || proc.child.exitCode !== null) throw new Error(`${name} not ready:\n${proc.out.stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { proc, url };
}

async function indexer(name: string): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const proc = kvgate(name, ['indexer', '--port', String(port), '--host', '127.0.0.1', '--nats', nats.url, '--namespace', NS, '--ttl-ms', TTL]);
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const ok = await request(`${url}/healthz`).then(async (r) => (await r.body.dump(), r.statusCode === 200), () => false);
    if (ok) break;
    if (i > 300 || proc.child.exitCode !== null) throw new Error(`${name} not up:\n${proc.out.stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { proc, url };
}

/** a long streaming completion; resolves once its first event came, with the rest of the body to read */
async function openStream(url: string, base: number): Promise<{ worker: string; rest: Promise<string> }> {
  const res = await request(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'qwen3-8b', prompt: tokens(64, base), max_tokens: 1000, stream: true }),
  });
  assert.is(res.statusCode, 200);
  const it = res.body[Symbol.asyncIterator]();
  let head = '';
  while (!head.includes('\n\n')) {
    const n = await it.next();
    if (n.done) break;
    head += (n.value as Buffer).toString();
  }
  const rest = (async () => {
    let text = head;
    for (;;) {
      const n = await it.next();
      if (n.done) return text;
      text += (n.value as Buffer).toString();
    }
  })();
  return { worker: String(res.headers['x-kvgate-worker']), rest };
}

/** the body's SSE data payloads, in order */
const events = (body: string): string[] => body.split('\n\n').map((e) => e.trim()).filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));

function assertCut(body: string): void {
  const ev = events(body);
  assert.ok(ev.length >= 3, body.slice(0, 500));
  assert.is(ev.at(-1), '[DONE]', body.slice(-500));
  const err = JSON.parse(ev.at(-2)!) as { error?: { kvg_code?: string; type?: string; message?: string } };
  assert.is(err.error?.kvg_code, 'KVG_SHUTTING_DOWN', ev.at(-2));
  assert.is(err.error?.type, 'server_error');
  // every event before it is a whole chunk of the stream (the cut came at an event boundary)
  for (const e of ev.slice(0, -2)) assert.ok((JSON.parse(e) as { choices?: unknown[] }).choices, e);
}

async function registered(worker: string): Promise<boolean> {
  return (await workers.get(registryKey(worker))) !== null;
}

async function expectExit0(p: Proc): Promise<void> {
  const r = await exitWithin(p);
  assert.ok(r, `${p.name} still running ${EXIT_BOUND_MS} ms after SIGTERM:\n${p.out.stderr.slice(-2000)}`);
  assert.is(r!.code, 0, `${p.name} exit ${r!.code} ${r!.signal}:\n${p.out.stderr.slice(-2000)}`);
}

test('SIGTERM: the router cuts a stream with the SSE error event, exits 0; the shim cuts one too, deregisters, exits 0', async () => {
  nats = await startNatsServer();
  bus = await createBus({ nats: nats.url });
  workers = await bus.kv(subjects(NS).workersBucket, { ttlMs: Number(TTL) });
  const eng = await engine('engine-1');
  const s1 = await shim('w1', eng);
  const ix = await indexer('indexer-1');
  const r1 = await router('router-1');

  // the router is stopped while it relays a stream: the client sees the error event and [DONE]
  const a = await openStream(r1.url, 0);
  assert.is(a.worker, 'w1');
  r1.proc.child.kill('SIGTERM');
  assertCut(await a.rest);
  await expectExit0(r1.proc);

  // the shim is stopped while a stream runs through it: the router relays the shim's cut as it is
  const r2 = await router('router-2');
  const b = await openStream(r2.url, 5000);
  assert.ok(await registered('w1'));
  s1.proc.child.kill('SIGTERM');
  assertCut(await b.rest);
  await expectExit0(s1.proc);
  assert.is(await registered('w1'), false, 'w1 deregistered');

  for (const p of [r2.proc, ix.proc, eng.proc]) p.child.kill('SIGTERM');
  for (const p of [r2.proc, ix.proc, eng.proc]) await expectExit0(p);
});

test('SIGTERM: a shim whose engine was killed -9 exits 0 and deregisters', async () => {
  const eng = await engine('engine-2');
  const s2 = await shim('w2', eng);
  assert.ok(await registered('w2'));
  eng.proc.child.kill('SIGKILL');
  await eng.proc.exited;
  // its /healthz says so first
  for (let i = 0; ; i++) {
    const r = await request(`${s2.url}/healthz`);
    const body = (await r.body.json()) as { error?: { kvg_code: string } };
    if (r.statusCode === 503) {
      assert.is(body.error?.kvg_code, 'KVG_ENGINE_DOWN');
      break;
    }
    assert.ok(i < 100, 'shim /healthz never said 503');
    await new Promise((res) => setTimeout(res, 100));
  }
  s2.proc.child.kill('SIGTERM');
  await expectExit0(s2.proc);
  assert.is(await registered('w2'), false, 'w2 deregistered');
});

test('SIGTERM after nats-server is gone: shim, router, indexer and engine each exit 0', async () => {
  const eng = await engine('engine-3');
  const s3 = await shim('w3', eng);
  const ix = await indexer('indexer-3');
  const r3 = await router('router-3');
  await bus.close();
  await nats.stop();
  // they notice (or not); either way SIGTERM must end them
  await new Promise((r) => setTimeout(r, 500));
  const all = [s3.proc, r3.proc, ix.proc, eng.proc];
  for (const p of all) p.child.kill('SIGTERM');
  for (const p of all) await expectExit0(p);
});

test.after(async () => {
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await bus?.close().catch(() => undefined);
  await nats?.stop().catch(() => undefined);
});

test.run();
