/**
 * The decode shim's prefill leg over real sockets (a fake prefill engine and a fake decode engine, both HTTP
 * servers): what the prefill engine is asked (request id, engine key, no min-tokens fields, stream off), and the
 * failures that fall back to a local prefill on the decode engine (still served, counted): prefill engine gone,
 * prefill timed out, descriptor expired.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import type { WorkerRegistration } from '@kvgate/protocol';
import { HttpFront } from '../src/http.js';
import { createMetrics } from '../src/metrics.js';

interface Seen { headers: IncomingHttpHeaders; body: Record<string, unknown> }

async function serve(handler: (seen: Seen, res: import('node:http').ServerResponse) => void): Promise<{ server: Server; port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    let b = '';
    req.on('data', (c) => (b += c));
    req.on('end', () => {
      const s = { headers: req.headers, body: b ? JSON.parse(b) : {} };
      seen.push(s);
      handler(s, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port, seen };
}

function close(s: Server): void {
  s.closeAllConnections();
  s.close();
}

async function setup(prefill: (seen: Seen, res: import('node:http').ServerResponse, port: number) => void, opts: { prefillTimeoutMs?: number } = {}) {
  let pPort = 0;
  const p = await serve((s, res) => prefill(s, res, pPort));
  pPort = p.port;
  const dec = await serve((s, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ choices: [{ text: 'ok' }], got: s.body.kv_transfer_params ?? null })));
  const reg: WorkerRegistration = { worker: 'p0', model: 'm', role: 'prefill', url: `http://127.0.0.1:${pPort}`, engineUrl: `http://127.0.0.1:${pPort}`, blockSize: 16, capacityBlocks: 100, loras: [], ts: Date.now() };
  const metrics = createMetrics('d0');
  const front = new HttpFront({
    worker: 'd0', role: 'decode', engineUrl: `http://127.0.0.1:${dec.port}`, maxBodyBytes: 1 << 20, metrics, health: () => ({}), engineApiKey: 'engine-key',
    prefillTargets: { lookup: (hp: string) => (hp === `127.0.0.1:${pPort}` ? [reg] : []), all: () => [reg], isLoaded: true, loaded: async () => {} },
    ...opts,
  });
  const url = await front.listen(0, '127.0.0.1');
  const call = async (body: Record<string, unknown>, headers: Record<string, string> = {}) => {
    const res = await request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-prefiller-host-port': `127.0.0.1:${pPort}`, ...headers }, body: JSON.stringify(body) });
    return { status: res.statusCode, prefill: res.headers['x-kvgate-prefill'], json: JSON.parse(await res.body.text()) as { got: Record<string, unknown> | null } };
  };
  const local = async (reason: string) => {
    const text = await metrics.registry.getSingleMetricAsString('kvgate_shim_pd_local_prefills_total');
    return Number(text.split('\n').find((l) => l.includes(`reason="${reason}"`))?.trim().split(/\s+/).pop() ?? 0);
  };
  return { p, dec, call, local, done: async () => { await front.close(); close(p.server); close(dec.server); } };
}

const descriptor = (port: number, extra: Record<string, unknown> = {}) => ({ do_remote_prefill: true, do_remote_decode: false, remote_engine_id: 'pe', remote_block_ids: [[1, 2], [3]], remote_host: '127.0.0.1', remote_port: port, tp_size: 1, remote_request_id: 'r1', remote_num_tokens: 40, ...extra });

test('prefill leg: request id, engine key, max_tokens 1, stream off, no min-tokens fields; newest descriptor fields reach the decode engine', async () => {
  const s = await setup((_, res, port) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ choices: [{ text: 'x' }], kv_transfer_params: descriptor(port, { remote_blocks_expiry_time: Date.now() / 1000 + 60, pp_size: 1 }) })));
  try {
    const r = await s.call({ model: 'm', prompt: 'hello', max_tokens: 50, min_tokens: 10, min_completion_tokens: 10, stream: true, stream_options: { include_usage: true } }, { 'x-request-id': 'req-42', authorization: 'Bearer client-or-router' });
    assert.is(r.status, 200);
    const leg = s.p.seen[0]!;
    assert.is(leg.headers['x-request-id'], 'req-42');
    assert.is(leg.headers.authorization, 'Bearer engine-key');
    assert.is(leg.body.max_tokens, 1);
    assert.is(leg.body.stream, false);
    for (const k of ['min_tokens', 'min_completion_tokens', 'stream_options']) assert.not.ok(k in leg.body, k);
    assert.equal((leg.body.kv_transfer_params as { do_remote_decode: boolean }).do_remote_decode, true);
    assert.equal(r.json.got?.remote_block_ids, [[1, 2], [3]]);
    assert.is(r.json.got?.remote_num_tokens, 40);
    assert.is(r.json.got?.pp_size, 1);
    assert.is(s.dec.seen[0]!.headers['x-request-id'], 'req-42', 'the decode leg carries the same id');
    assert.is(r.prefill, `127.0.0.1:${s.p.port}`);
  } finally {
    await s.done();
  }
});

test('no x-request-id from the caller: one is made, the same on both legs', async () => {
  const s = await setup((_, res, port) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kv_transfer_params: descriptor(port) })));
  try {
    assert.is((await s.call({ model: 'm', prompt: 'x' })).status, 200);
    const id = s.p.seen[0]!.headers['x-request-id'];
    assert.type(id, 'string');
    assert.is(s.dec.seen[0]!.headers['x-request-id'], id);
  } finally {
    await s.done();
  }
});

test('prefill engine gone (connection refused): local prefill, served, counted', async () => {
  const s = await setup(() => {});
  close(s.p.server);
  await new Promise((r) => s.p.server.once('close', r));
  try {
    const r = await s.call({ model: 'm', prompt: 'x', max_tokens: 3 });
    assert.is(r.status, 200);
    assert.is(r.prefill, 'local');
    assert.is(r.json.got, null, 'no descriptor reached the decode engine');
    assert.is(await s.local('error'), 1);
  } finally {
    await s.done();
  }
});

test('prefill engine never answers: timed out, local prefill, served, counted as timeout', async () => {
  const s = await setup(() => {}, { prefillTimeoutMs: 300 });
  try {
    const r = await s.call({ model: 'm', prompt: 'x' });
    assert.is(r.status, 200);
    assert.is(r.prefill, 'local');
    assert.is(r.json.got, null);
    assert.is(await s.local('timeout'), 1);
  } finally {
    await s.done();
  }
});

test('prefill answers 500 or no descriptor: local prefill, nothing of its body reflected', async () => {
  let n = 0;
  const s = await setup((_, res) => (n++ === 0 ? res.writeHead(500).end('secret internals') : res.writeHead(200, { 'content-type': 'application/json' }).end('{"choices":[]}')));
  try {
    for (let i = 0; i < 2; i++) {
      const r = await s.call({ model: 'm', prompt: 'x' });
      assert.is(r.status, 200);
      assert.is(r.prefill, 'local');
      assert.not.match(JSON.stringify(r.json), 'secret');
    }
    assert.is(await s.local('error'), 2);
  } finally {
    await s.done();
  }
});

test('descriptor expired (remote_blocks_expiry_time past): local prefill, counted as expired', async () => {
  const s = await setup((_, res, port) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kv_transfer_params: descriptor(port, { remote_blocks_expiry_time: Date.now() / 1000 - 1 }) })));
  try {
    const r = await s.call({ model: 'm', prompt: 'x' });
    assert.is(r.status, 200);
    assert.is(r.prefill, 'local');
    assert.is(r.json.got, null);
    assert.is(await s.local('expired'), 1);
  } finally {
    await s.done();
  }
});

test.run();
