/**
 * The shim's P/D front is no open relay: `x-prefiller-host-port` is honoured only for a live prefill worker of the
 * registry (else 403 KVG_BAD_PREFILL_TARGET and the named listener receives nothing), a transfer descriptor is
 * handed to the engine only when its peer is that worker (else local prefill: a descriptor pointing at
 * 169.254.169.254 or at a listener never reaches the engine, which would connect there), a body's own
 * `kv_transfer_params` naming a foreign peer is refused, and what a failing prefill endpoint answered is never
 * shown to the client. The registered prefill worker still works. Pure parts first: the registry view and the
 * descriptor check.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { encode, initHashing, MemoryBus, subjects, type WorkerRegistration } from '@kvgate/protocol';
import { startSimEngine } from '@kvgate/sim-engine';
import { startShim, registryKey } from '../src/index.js';
import { descriptorPeer, PrefillTargets, watchPrefillTargets } from '../src/prefill-targets.js';
import { waitFor } from './fake-engine.js';

await initHashing();

const MODEL = 'm-pd';
const S = subjects('default');

function reg(worker: string, role: WorkerRegistration['role'], engineUrl: string, extra: Partial<WorkerRegistration> = {}): WorkerRegistration {
  return { worker, model: MODEL, role, url: engineUrl, engineUrl, blockSize: 16, capacityBlocks: 100, loras: [], ts: Date.now(), ...extra };
}

// ---- pure: the registry view ----------------------------------------------------------------------------------

test('targets: prefill and both workers by engineUrl or url; decode workers, other ports and hosts are not targets', () => {
  const t = new PrefillTargets();
  t.apply({ key: 'p', op: 'put', revision: 1, reg: reg('p', 'prefill', 'http://10.0.0.1:8000', { url: 'http://10.0.0.1:9000' }) });
  t.apply({ key: 'b', op: 'put', revision: 2, reg: reg('b', 'both', 'http://Prefill-B.svc:8100') });
  t.apply({ key: 'd', op: 'put', revision: 3, reg: reg('d', 'decode', 'http://10.0.0.3:8000') });
  t.apply({ key: 'v6', op: 'put', revision: 4, reg: reg('v6', 'prefill', 'http://[fd00::1]:8000') });
  assert.equal(t.lookup('10.0.0.1:8000').map((r) => r.worker), ['p']);
  assert.equal(t.lookup('10.0.0.1:9000').map((r) => r.worker), ['p']);
  assert.equal(t.lookup('prefill-b.svc:8100').map((r) => r.worker), ['b']);
  assert.equal(t.lookup('[fd00::1]:8000').map((r) => r.worker), ['v6']);
  for (const no of ['10.0.0.3:8000', '10.0.0.1:8001', '10.0.0.2:8000', '169.254.169.254:80', 'garbage', '']) assert.equal(t.lookup(no), [], no);
  // a worker that changes role (or address) is looked up by what it registers now
  t.apply({ key: 'p', op: 'put', revision: 5, reg: reg('p', 'decode', 'http://10.0.0.1:8000') });
  assert.equal(t.lookup('10.0.0.1:8000'), []);
  assert.equal(t.lookup('10.0.0.1:9000'), []);
});

test('targets: a deregistration drops at once; a lapse is kept until a put is heard confirmMs later', () => {
  let now = 1000;
  const t = new PrefillTargets({ confirmMs: 3000, now: () => now });
  t.apply({ key: 'p', op: 'put', revision: 1, reg: reg('p', 'prefill', 'http://10.0.0.1:8000') });
  t.apply({ key: 'q', op: 'put', revision: 2, reg: reg('q', 'prefill', 'http://10.0.0.2:8000') });
  t.apply({ key: 'p', op: 'delete', revision: 7 });
  assert.equal(t.lookup('10.0.0.1:8000'), [], 'explicit delete: gone');
  // TTL lapse (the delete carries the last put's revision): held through a silent bus
  t.apply({ key: 'q', op: 'delete', revision: 2 });
  now += 60_000;
  assert.is(t.lookup('10.0.0.2:8000').length, 1, 'held while nothing is heard');
  // a put heard after confirmMs: the bus is up, q did not come back → gone
  t.apply({ key: 'other', op: 'put', revision: 9, reg: reg('other', 'decode', 'http://10.0.0.9:1') });
  assert.equal(t.lookup('10.0.0.2:8000'), []);
  // a lapse the worker recovers from (re-put) is no loss
  t.apply({ key: 'r', op: 'put', revision: 10, reg: reg('r', 'prefill', 'http://10.0.0.3:8000') });
  t.apply({ key: 'r', op: 'delete', revision: 10 });
  now += 10_000;
  t.apply({ key: 'r', op: 'put', revision: 11, reg: reg('r', 'prefill', 'http://10.0.0.3:8000') });
  assert.is(t.lookup('10.0.0.3:8000').length, 1);
  // keys missing from a fresh listing are lapses too
  t.reconcile(new Set(['other']));
  assert.is(t.lookup('10.0.0.3:8000').length, 1, 'held');
  now += 3000;
  t.apply({ key: 'other', op: 'put', revision: 12, reg: reg('other', 'decode', 'http://10.0.0.9:1') });
  assert.equal(t.lookup('10.0.0.3:8000'), []);
});

test('descriptor peer: the worker host with its registered port or its NIXL side channel (base + DP rank), nothing else', () => {
  const p = reg('p', 'prefill', 'http://10.0.0.1:8000');
  const p1 = reg('p-dp1', 'prefill', 'http://10.0.0.1:8000', { dpRank: 1 });
  const d = (remote_host: unknown, remote_port: unknown) => ({ remote_host, remote_port });
  assert.is(descriptorPeer(d('10.0.0.1', 8000), [p]), p);
  assert.is(descriptorPeer(d('10.0.0.1', 5600), [p]), p);
  assert.is(descriptorPeer(d('10.0.0.1', 5601), [p, p1]), p1);
  assert.is(descriptorPeer(d('10.0.0.1', 7000), [p], 7000), p);
  for (const [h, port] of [['169.254.169.254', 80], ['169.254.169.254', 5600], ['10.0.0.1', 5601], ['10.0.0.1', 22], ['10.0.0.2', 8000], ['localhost', 5600], [null, 5600], ['10.0.0.1', '5600']] as const)
    assert.is(descriptorPeer(d(h, port), [p]), undefined, `${h}:${port}`);
  assert.is(descriptorPeer(d('10.0.0.1', 8000), []), undefined);
});

test('watch: loaded once the entries present at the start were read (an empty bucket at once); changes follow', async () => {
  const b = new MemoryBus();
  try {
    const kv = await b.kv('watch-test', { ttlMs: 0 });
    const empty = new PrefillTargets();
    const w0 = watchPrefillTargets(kv, empty);
    await empty.loaded(5000);
    assert.ok(empty.isLoaded, 'an empty bucket is loaded');
    await w0.stop();
    for (let i = 0; i < 50; i++) await kv.put(`p${i}`, encode(reg(`p${i}`, 'prefill', `http://10.1.0.${i}:8000`)));
    const t = new PrefillTargets();
    const w = watchPrefillTargets(kv, t);
    await t.loaded(5000);
    assert.ok(t.isLoaded);
    assert.is(t.all().length, 50, 'every entry present at the start is in the view once loaded');
    await kv.delete('p7');
    await waitFor(() => t.lookup('10.1.0.7:8000').length === 0, 'deregistration seen');
    await w.stop();
  } finally {
    await b.close();
  }
});

// ---- the front against real listeners ---------------------------------------------------------------------------

interface Listener {
  server: Server;
  url: string;
  hostPort: string;
  calls: string[];
}
async function listen(handler: (path: string, body: string, res: import('node:http').ServerResponse) => void): Promise<Listener> {
  const calls: string[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      calls.push(`${req.method} ${req.url}`);
      handler(req.url ?? '/', body, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return { server, url: `http://127.0.0.1:${port}`, hostPort: `127.0.0.1:${port}`, calls };
}

// a listener that is no worker: anything that reaches it is the relay leaking
const rogue = await listen((_p, _b, res) => {
  res.writeHead(404, { 'content-type': 'text/html' });
  res.end('<h1>ROGUE-SECRET internal page</h1>');
});
// a registered prefill worker whose answers the test chooses
let fakeAnswer: { status: number; body: unknown } = { status: 200, body: {} };
const fakePrefill = await listen((_p, _b, res) => {
  res.writeHead(fakeAnswer.status, { 'content-type': 'application/json' });
  res.end(typeof fakeAnswer.body === 'string' ? fakeAnswer.body : JSON.stringify(fakeAnswer.body));
});
const prefill = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'prefill' });
const decode = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'decode' });

const bus = new MemoryBus();
const kv = await bus.kv(S.workersBucket, { ttlMs: 3000 });
const shim = await startShim(bus, { worker: 'pd-decode', model: MODEL, role: 'decode', engineUrl: decode.url, kvEvents: decode.kvEventsEndpoint!, port: 0 });
await kv.put(registryKey('pd-prefill'), encode(reg('pd-prefill', 'prefill', prefill.url)));
await kv.put(registryKey('pd-fake'), encode(reg('pd-fake', 'prefill', fakePrefill.url)));
await kv.put(registryKey('pd-other-decode'), encode(reg('pd-other-decode', 'decode', rogue.url)));

const prompt = Array.from({ length: 80 }, (_, i) => `t${i}`).join(' ');

async function post(headers: Record<string, string>, body: Record<string, unknown> = { model: MODEL, prompt, max_tokens: 3 }) {
  const res = await request(`${shim.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) };
}

async function metric(label: string): Promise<number> {
  const text = await shim.metrics.registry.getSingleMetricAsString('kvgate_shim_pd_prefills_total');
  let n = 0;
  for (const line of text.split('\n')) if (!line.startsWith('#') && line.includes(`result="${label}"`)) n += Number(line.trim().split(/\s+/).pop());
  return n;
}

const hp = new URL(prefill.url).host;
// the shim has read the registry once the registered prefill worker is accepted
await waitFor(async () => (await post({ 'x-prefiller-host-port': hp })).status === 200, 'registry read by the shim');

test('x-prefiller-host-port naming a listener that is no worker (or a decode worker): 403, the listener receives nothing', async () => {
  for (const target of [rogue.hostPort, '169.254.169.254:80', `localhost:${new URL(prefill.url).port}`]) {
    const r = await post({ 'x-prefiller-host-port': target });
    assert.is(r.status, 403, `${target}: ${r.text}`);
    assert.is(r.json().error.kvg_code, 'KVG_BAD_PREFILL_TARGET');
  }
  assert.equal(rogue.calls, []);
});

test('a descriptor whose peer is not the prefill worker (169.254.169.254, the listener) never reaches the engine: local prefill', async () => {
  const base = { do_remote_prefill: true, do_remote_decode: false, remote_engine_id: 'evil', remote_block_ids: [0, 1, 2], tp_size: 1, remote_request_id: 'x' };
  const before = await metric('foreign_descriptor');
  for (const [remote_host, remote_port] of [['169.254.169.254', 80], ['127.0.0.1', Number(new URL(rogue.url).port)]] as const) {
    fakeAnswer = { status: 200, body: { id: 'p', choices: [{ text: '' }], kv_transfer_params: { ...base, remote_host, remote_port } } };
    const r = await post({ 'x-prefiller-host-port': fakePrefill.hostPort });
    assert.is(r.status, 200, r.text);
    assert.is(r.headers['x-kvgate-prefill'], 'local');
    assert.ok(r.json().choices[0].text.length > 0);
  }
  assert.is(fakePrefill.calls.length, 2, 'the registered prefill worker was asked');
  assert.is((await metric('foreign_descriptor')) - before, 2);
  // the decode engine would have called the listener's /internal/kv/pull had the descriptor been passed on
  assert.equal(rogue.calls, []);
});

test("a request body's own kv_transfer_params naming a foreign peer: 403, nothing sent there", async () => {
  const kvp = { do_remote_prefill: true, do_remote_decode: false, remote_engine_id: 'evil', remote_block_ids: [0], remote_host: '127.0.0.1', remote_port: Number(new URL(rogue.url).port), tp_size: 1, remote_request_id: 'x' };
  const r = await post({}, { model: MODEL, prompt, max_tokens: 2, kv_transfer_params: kvp });
  assert.is(r.status, 403, r.text);
  assert.is(r.json().error.kvg_code, 'KVG_BAD_PREFILL_TARGET');
  const meta = await post({}, { model: MODEL, prompt, max_tokens: 2, kv_transfer_params: { ...kvp, remote_host: '169.254.169.254', remote_port: 80 } });
  assert.is(meta.status, 403);
  assert.equal(rogue.calls, []);
  // without a peer (nothing to connect to) the body passes
  const plain = await post({}, { model: MODEL, prompt, max_tokens: 2, kv_transfer_params: { do_remote_decode: false } });
  assert.is(plain.status, 200, plain.text);
});

test("a failing prefill endpoint's body is logged, not reflected: the decode engine prefills locally", async () => {
  fakeAnswer = { status: 500, body: '<html>FAKE-SECRET stack trace</html>' };
  const r = await post({ 'x-prefiller-host-port': fakePrefill.hostPort });
  assert.is(r.status, 200, r.text);
  assert.is(r.headers['x-kvgate-prefill'], 'local');
  assert.not.match(r.text, /SECRET|stack|html/);
});

test('the registered prefill worker: remote prefill, then decode with its descriptor; deregistered, refused', async () => {
  const ok = await metric('ok');
  const r = await post({ 'x-prefiller-host-port': hp });
  assert.is(r.status, 200, r.text);
  assert.is(r.headers['x-kvgate-prefill'], hp);
  assert.ok(r.json().choices[0].text.length > 0);
  assert.is((await metric('ok')) - ok, 1);
  await kv.delete(registryKey('pd-prefill'));
  await waitFor(async () => (await post({ 'x-prefiller-host-port': hp })).status === 403, 'deregistered prefill worker refused');
});

test.after(async () => {
  await shim.stop();
  await prefill.close();
  await decode.close();
  for (const l of [rogue, fakePrefill]) {
    l.server.closeAllConnections();
    l.server.close();
  }
  await bus.close();
});

test.run();
