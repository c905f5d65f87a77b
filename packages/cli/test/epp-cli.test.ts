/**
 * `kvgate epp` as processes, the way a cluster runs it (issue 16):
 *   - --objectives parsing (inline pairs, JSON and line files, bad values → FlagError);
 *   - fatal start-up errors are one line `kvgate epp: … [KVG_*]`: no --nats, a bad objective, NATS unreachable,
 *     the ext_proc port taken;
 *   - one replica over a real nats-server: gRPC health (liveness SERVING, readiness SERVING once the registry and
 *     the index answered), /metrics on the HTTP port with the picker's series, the OpenAI API refused there (404),
 *     a pick over ext_proc to the endpoint holding the prefix; SIGTERM → exit 0;
 *   - two replicas share in-flight load: requests picked on replica A (held open) show in replica B's view of the
 *     worker and move B's pick away from it (to the worker without the prefix); once A's requests end, their load
 *     leaves B's view.
 * Waits are bounded waits for events; nothing asserts on speed.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { request } from 'undici';
import { createBus } from '@kvgate/protocol/bus/index';
import { initHashing, prefixHashes, type Bus } from '@kvgate/protocol';
import { protos, SERVING } from '@kvgate/router/epp/protos';
import type { ProcessingResponse } from '@kvgate/router/epp/messages';
import { FlagError } from '../src/fatal.js';
import { EPP_DEFAULTS, parseObjectives } from '../src/commands/epp.js';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { fakeIndex, register, registration, tokens, until } from '../../router/test/helpers.js';

await initHashing();
const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;
const ENGINES = ['10.1.0.1:8000', '10.1.0.2:8000'];

interface Epp {
  child: ChildProcess;
  err: () => string;
  extProc: number;
  health: number;
  http: string;
}

const children: ChildProcess[] = [];

function run(args: string[]): { child: ChildProcess; err: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [BIN, 'epp', ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  child.stdout!.on('data', () => undefined);
  return { child, err: () => err, exited: new Promise((r) => child.once('exit', (code) => r(code))) };
}

/** a replica on free ports; resolves once its "epp ready" line names them */
async function startEpp(nats: string, ns: string, extra: string[] = []): Promise<Epp> {
  const p = run(['--nats', nats, '--namespace', ns, '--port', '0', '--health-port', '0', '--metrics-port', '0', '--registry-ttl-ms', '0', '--index-timeout-ms', '500', ...extra]);
  const ready = await new Promise<{ extProc: string; health: string; metrics: string }>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`epp not ready within 30 s:\n${p.err()}`)), 30_000);
    const check = () => {
      for (const line of p.err().split('\n')) {
        if (!line.includes('"epp ready"')) continue;
        clearTimeout(t);
        return resolve(JSON.parse(line) as { extProc: string; health: string; metrics: string });
      }
    };
    p.child.stderr!.on('data', check);
    void p.exited.then((code) => reject(new Error(`epp exited ${code}:\n${p.err()}`)));
  });
  const port = (a: string) => Number(a.slice(a.lastIndexOf(':') + 1));
  return { child: p.child, err: p.err, extProc: port(ready.extProc), health: port(ready.health), http: ready.metrics };
}

type ExtProcClient = grpc.Client & { Process(): grpc.ClientDuplexStream<unknown, ProcessingResponse> };
type HealthClient = grpc.Client & { Check(req: { service: string }, cb: (e: Error | null, r?: { status?: number }) => void): void };

function clients(e: Epp): { ext: ExtProcClient; health: HealthClient } {
  const { extProc, health } = protos();
  return {
    ext: new extProc(`127.0.0.1:${e.extProc}`, grpc.credentials.createInsecure()) as unknown as ExtProcClient,
    health: new health(`127.0.0.1:${e.health}`, grpc.credentials.createInsecure()) as unknown as HealthClient,
  };
}

function check(h: HealthClient, service: string): Promise<number | undefined> {
  return new Promise((resolve, reject) => h.Check({ service }, (e, r) => (e ? reject(e) : resolve(r?.status))));
}

const hdr = (o: Record<string, string>) => ({ headers: { headers: Object.entries(o).map(([key, v]) => ({ key, raw_value: Buffer.from(v) })) } });
const subsetMeta = (list: string[]) => ({ filter_metadata: { 'envoy.lb.subset_hint': { fields: { 'x-gateway-destination-endpoint-subset': { listValue: { values: list.map((s) => ({ stringValue: s })) } } } } } });

/** one request as Envoy sends it (headers, the whole body); resolves with the stream and the first (headers) answer */
async function pick(ext: ExtProcClient, prompt: number[], subset?: string[]): Promise<{ call: grpc.ClientDuplexStream<unknown, ProcessingResponse>; got: ProcessingResponse[]; dest: string }> {
  const call = ext.Process();
  const got: ProcessingResponse[] = [];
  call.on('data', (r: ProcessingResponse) => got.push(r));
  call.on('error', () => undefined);
  call.write({ request_headers: { ...hdr({ ':method': 'POST', ':path': '/v1/completions' }), end_of_stream: false }, ...(subset ? { metadata_context: subsetMeta(subset) } : {}) });
  call.write({ request_body: { body: Buffer.from(JSON.stringify({ model: 'stub-model', prompt, max_tokens: 8 })), end_of_stream: true } });
  await until(() => got.length >= 1, 10_000, 'the headers answer');
  const set = got[0]!.request_headers?.response.header_mutation?.set_headers ?? [];
  const h = set.find((x) => x.header.key === 'x-gateway-destination-endpoint');
  if (!h) throw new Error(`no destination: ${JSON.stringify(got[0])}`);
  return { call, got, dest: Buffer.from(h.header.raw_value).toString().split(',')[0]! };
}

/** the response side of a picked request, to its end (the picker releases its load) */
async function finish(c: { call: grpc.ClientDuplexStream<unknown, ProcessingResponse>; got: ProcessingResponse[] }): Promise<void> {
  c.call.write({ response_headers: { ...hdr({ ':status': '200' }), end_of_stream: false } });
  c.call.write({ response_body: { body: Buffer.from('{}'), end_of_stream: true } });
  const n = c.got.length;
  await until(() => c.got.length >= n + 2, 10_000, 'the response answers');
  c.call.end();
}

async function routeOnly(e: Epp, prompt: number[]): Promise<{ worker: string; candidates: { worker: string; load: { inflightPrefillTokens: number } }[] }> {
  const r = await request(`${e.http}/v1/route`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stub-model', prompt, max_tokens: 8 }) });
  assert.is(r.statusCode, 200);
  return (await r.body.json()) as never;
}

/** `until` for an asynchronous condition (a gRPC or HTTP answer): polled, bounded */
async function eventually(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let nats: NatsServerHandle | undefined;
let bus: Bus | undefined;
let nsCounter = 0;

async function cluster(holds: Map<string, Set<bigint>>): Promise<string> {
  nats ??= await startNatsServer();
  bus ??= await createBus({ nats: nats.url });
  const ns = `eppcli${process.pid}_${++nsCounter}`;
  for (const [i, e] of ENGINES.entries()) await register(bus, registration(`w${i}`, `http://${e}`), ns);
  fakeIndex(bus, holds, ns);
  return ns;
}

/** SIGTERM; resolves with the exit code */
function stop(e: Epp): Promise<number | null> {
  e.child.kill('SIGTERM');
  return new Promise((r) => (e.child.exitCode !== null ? r(e.child.exitCode) : e.child.once('exit', (code) => r(code))));
}

test('--objectives: inline pairs, a JSON file, a pairs file; bad ones refused', () => {
  assert.equal(parseObjectives('chat=10, batch=-1,normal=0'), { chat: 10, batch: -1, normal: 0 });
  assert.equal(parseObjectives('/x.json', () => '{"chat": 5, "bulk": -2}'), { chat: 5, bulk: -2 });
  assert.equal(parseObjectives('/x.txt', () => '# tiers\nchat=5\n\nbulk = -2 # shed first\n'), { chat: 5, bulk: -2 });
  for (const bad of ['chat=1.5', 'chat=', '=3', 'chat=1,chat=2', 'a b=1']) assert.throws(() => parseObjectives(bad), (e: unknown) => e instanceof FlagError, bad);
  assert.throws(() => parseObjectives('/x.json', () => '{"chat": "high"}'), (e: unknown) => e instanceof FlagError);
  assert.throws(() => parseObjectives('/x.json', () => '[1]'), (e: unknown) => e instanceof FlagError);
  assert.throws(() => parseObjectives('/x.txt', () => 'chat'), (e: unknown) => e instanceof FlagError && /name=priority/.test((e as Error).message));
  assert.equal(EPP_DEFAULTS, { port: 9002, healthPort: 9003, metricsPort: 9090 });
});

test('fatal start-up errors are one line: no --nats, a bad objective, the ext_proc port in use', async () => {
  const oneLine = async (args: string[], code: RegExp): Promise<string> => {
    const p = run(args);
    const exit = await p.exited;
    assert.ok(exit !== 0 && exit !== null, `exit ${exit}`);
    const lines = p.err().trim().split('\n').filter((l) => l.startsWith('kvgate epp:'));
    assert.is(lines.length, 1, p.err());
    assert.match(lines[0]!, code);
    assert.not.match(p.err(), /\n\s+at /); // no stack
    return lines[0]!;
  };
  await oneLine([], /--nats URL is required.*\[KVG_BAD_FLAG\]$/);
  nats ??= await startNatsServer();
  await oneLine(['--nats', nats.url, '--objectives', 'chat=high'], /priority of "chat" must be an integer.*\[KVG_BAD_FLAG\]$/);
  const nowhere = createServer();
  const dead = await new Promise<number>((r) => nowhere.listen(0, '127.0.0.1', () => r((nowhere.address() as { port: number }).port)));
  await new Promise((r) => nowhere.close(r));
  await oneLine(['--nats', `nats://127.0.0.1:${dead}`, '--nats-connect-timeout', '300'], /\[KVG_NATS_UNREACHABLE\]$/);
  const holder: Server = createServer();
  const port = await new Promise<number>((r) => holder.listen(0, '127.0.0.1', () => r((holder.address() as { port: number }).port)));
  try {
    const line = await oneLine(['--nats', nats.url, '--port', String(port), '--health-port', '0', '--metrics-port', '0', '--registry-ttl-ms', '0'], /\[KVG_PORT_IN_USE\]$/);
    assert.ok(line.includes(`127.0.0.1:${port} is already in use`), line);
  } finally {
    holder.close();
  }
});

test('one replica: gRPC health, /metrics, no OpenAI API on its HTTP port, a pick to the endpoint holding the prefix', async () => {
  const prompt = tokens(32, 3100);
  const ns = await cluster(new Map([['w1', new Set(prefixHashes('stub-model', null, 4, prompt))]]));
  const e = await startEpp(nats!.url, ns);
  const { ext, health } = clients(e);
  try {
    assert.is(await check(health, 'liveness'), SERVING);
    await eventually(async () => (await check(health, 'readiness')) === SERVING, 10_000, 'readiness SERVING');
    assert.is(await check(health, 'envoy.service.ext_proc.v3.ExternalProcessor'), SERVING);
    const p = await pick(ext, prompt);
    assert.is(p.dest, ENGINES[1]);
    await finish(p);
    const m = await request(`${e.http}/metrics`);
    assert.is(m.statusCode, 200);
    const text = await m.body.text();
    assert.match(text, /kvgate_epp_pick_seconds_count(\{[^}]*\})? [1-9]/);
    const c = await request(`${e.http}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stub-model', prompt: 'hi' }) });
    assert.is(c.statusCode, 404);
    assert.match(await c.body.text(), /endpoint picker/);
    ext.close();
    health.close();
    assert.is(await stop(e), 0, 'SIGTERM: exit 0');
  } finally {
    ext.close();
    health.close();
    if (e.child.exitCode === null) await stop(e);
  }
});

test('two replicas share in-flight load: picks held open on A move B away from the endpoint; their end clears it from B’s view', async () => {
  // B's prompt is cached on w0: alone, w0 wins (cost 0 against w1's 4 uncached blocks × 4)
  const probe = tokens(16, 5100);
  const ns = await cluster(new Map([['w0', new Set(prefixHashes('stub-model', null, 4, probe))]]));
  const [a, b] = await Promise.all([startEpp(nats!.url, ns), startEpp(nats!.url, ns)]);
  const ca = clients(a);
  const cb = clients(b);
  try {
    const before = await routeOnly(b, probe);
    assert.is(before.worker, 'w0');
    // on A: three long uncached prompts pinned to w0 by the gateway's subset hint, kept open (no response yet)
    const held = [];
    for (let i = 0; i < 3; i++) {
      const h = await pick(ca.ext, tokens(400, 6000 + i * 1000), [ENGINES[0]!]);
      assert.is(h.dest, ENGINES[0]);
      held.push(h);
    }
    // B hears A's in-flight batch on the bus: w0's prefill load in B's view, and B's own pick goes to w1
    await eventually(async () => ((await routeOnly(b, probe)).candidates.find((c) => c.worker === 'w0')?.load.inflightPrefillTokens ?? 0) >= 1200, 10_000, "A's load in B's view");
    const onB = await pick(cb.ext, probe);
    assert.is(onB.dest, ENGINES[1]);
    await finish(onB);
    // A's requests end: their load leaves B's view too, and B picks the holder again
    for (const h of held) await finish(h);
    await eventually(async () => ((await routeOnly(b, probe)).candidates.find((c) => c.worker === 'w0')?.load.inflightPrefillTokens ?? 1) === 0, 10_000, "A's load gone from B's view");
  } finally {
    for (const c of [ca, cb]) {
      c.ext.close();
      c.health.close();
    }
    await Promise.all([stop(a), stop(b)]);
  }
});

test.after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await bus?.close();
  await nats?.stop();
});

test.run();
