/**
 * The shim's engine health (engine-health.ts): the state machine on its own, then a shim on MemoryBus in front of
 * an engine HTTP server that is closed and started again on the same port — its load reports flip to
 * healthy: false and /healthz to 503 (OpenAI-shaped, KVG_ENGINE_DOWN) once the engine is gone, its registration
 * is deleted after the bound, and all of it comes back when the engine answers again; kvgate_shim_engine_up
 * follows. Bounded waits for each event, no timing assertions.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type Server } from 'node:http';
import { request } from 'undici';
import { decodeLoad, decodeRegistration, initHashing, MemoryBus, subjects, type LoadReport } from '@kvgate/protocol';
import { EngineHealth } from '../src/engine-health.js';
import { registryKey, startShim } from '../src/index.js';
import { freePort } from '../../../test/harness/nats-server.js';
import { waitFor } from './fake-engine.js';

await initHashing();

test('state machine: down at the first failed probe, withdrawn past the bound, rejoin + up on an answer', () => {
  const h = new EngineHealth(30_000);
  assert.equal(h.observe(true, 0), []);
  assert.equal(h.observe(false, 1_000), ['down']);
  assert.is(h.up, false);
  assert.equal(h.observe(false, 2_000), []);
  assert.equal(h.observe(false, 30_999), []);
  assert.equal(h.observe(false, 31_000), ['withdraw']);
  assert.is(h.withdrawn, true);
  assert.equal(h.observe(false, 60_000), []);
  assert.equal(h.observe(true, 61_000), ['rejoin', 'up']);
  assert.is(h.up, true);
  assert.is(h.withdrawn, false);
  // back before the bound: up again without a withdrawal
  assert.equal(h.observe(false, 70_000), ['down']);
  assert.equal(h.observe(true, 71_000), ['up']);
  // a bound of 0 withdraws at once
  assert.equal(new EngineHealth(0).observe(false, 5), ['down', 'withdraw']);
});

test('state machine: one slow probe (timeout) is not a death; two in a row are; a refusal is at once', () => {
  const h = new EngineHealth(30_000);
  assert.equal(h.observe(false, 1_000, true), []);
  assert.is(h.up, true);
  // an answer in between resets the count
  assert.equal(h.observe(true, 2_000), []);
  assert.equal(h.observe(false, 3_000, true), []);
  assert.equal(h.observe(false, 4_000, true), ['down']);
  assert.is(h.up, false);
  // once down, the bound counts from the second timeout
  assert.equal(h.observe(false, 33_999, true), []);
  assert.equal(h.observe(false, 34_000, true), ['withdraw']);
  assert.equal(h.observe(true, 35_000), ['rejoin', 'up']);
  // a slow probe then a refusal: down at the refusal
  assert.equal(h.observe(false, 36_000, true), []);
  assert.equal(h.observe(false, 37_000), ['down']);
  // slowProbesToDown 1: a timeout is down at once
  assert.equal(new EngineHealth(30_000, 1).observe(false, 1, true), ['down']);
});

/** an engine's HTTP side: /health 200, /metrics, /v1/models — closed and reopened on one port */
class EngineHttp {
  server: Server | undefined;
  constructor(readonly port: number) {}
  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      if (req.url === '/health') {
        res.writeHead(200, { 'content-length': 0 });
        return void res.end();
      }
      if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        return void res.end('vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n');
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [] }));
    });
    await new Promise<void>((r) => this.server!.listen(this.port, '127.0.0.1', r));
  }
  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }
}

test('shim: healthy:false and /healthz 503 while the engine is gone, deregistered past the bound, back when it answers', async () => {
  const bus = new MemoryBus();
  const s = subjects('default');
  const engine = new EngineHttp(await freePort());
  await engine.start();
  const kv = await bus.kv(s.workersBucket, { ttlMs: 60_000 });
  const reports: LoadReport[] = [];
  const sub = bus.subscribe(s.load('w-health'), { callback: (m) => reports.push(decodeLoad(m.data)) });
  const shim = await startShim(bus, {
    worker: 'w-health',
    model: 'qwen3-8b',
    engineUrl: `http://127.0.0.1:${engine.port}`,
    kvEvents: `tcp://127.0.0.1:${await freePort()}`,
    port: 0,
    registryTtlMs: 60_000, // only a deregistration can remove the key within the test
    engineProbeMs: 200,
    engineProbeTimeoutMs: 500,
    engineDownDeregisterMs: 1_500,
    loadIntervalMs: 100,
  });
  const healthz = async () => {
    const r = await request(`${shim.url}/healthz`);
    return { status: r.statusCode, body: (await r.body.json()) as Record<string, unknown> };
  };
  const registered = async () => (await kv.get(registryKey('w-health'))) !== null;
  const gauge = async () => /kvgate_shim_engine_up\{[^}]*\} (\d)/.exec(await shim.metrics.registry.metrics())?.[1];
  try {
    await waitFor(() => reports.length > 0 && reports.at(-1)!.healthy === true, 'a healthy load report');
    assert.is((await healthz()).status, 200);
    assert.ok(await registered());
    assert.is(await gauge(), '1');

    await engine.stop();
    const downAt = reports.length;
    await waitFor(() => reports.slice(downAt).some((r) => r.healthy === false), 'a healthy:false load report', 5_000);
    const h = await healthz();
    assert.is(h.status, 503);
    const err = h.body.error as { code: number; kvg_code: string; type: string; message: string };
    assert.is(err.kvg_code, 'KVG_ENGINE_DOWN');
    assert.is(err.code, 503);
    assert.is(err.type, 'server_error');
    assert.match(err.message, /does not answer GET \/health/);
    assert.is(await gauge(), '0');
    await waitFor(async () => !(await registered()), 'deregistered after the bound', 10_000);

    await engine.start();
    const upAt = reports.length;
    await waitFor(() => reports.slice(upAt).some((r) => r.healthy === true), 'a healthy load report again', 5_000);
    await waitFor(registered, 'registered again', 5_000);
    const reg = decodeRegistration((await kv.get(registryKey('w-health')))!);
    assert.is(reg.worker, 'w-health');
    assert.is((await healthz()).status, 200);
    assert.is(await gauge(), '1');
  } finally {
    sub.unsubscribe();
    await shim.stop();
    await engine.stop().catch(() => undefined);
    await bus.close();
  }
});

test('shim: an engine without a /health route (404) that answers is up', async () => {
  const bus = new MemoryBus();
  const port = await freePort();
  const server = createServer((req, res) => {
    res.writeHead(req.url === '/metrics' ? 200 : 404);
    res.end(req.url === '/metrics' ? 'vllm:num_requests_running 0\n' : '');
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  const shim = await startShim(bus, { worker: 'w-404', model: 'qwen3-8b', engineUrl: `http://127.0.0.1:${port}`, kvEvents: `tcp://127.0.0.1:${await freePort()}`, port: 0, engineProbeMs: 100 });
  try {
    const r = await request(`${shim.url}/healthz`);
    assert.is(r.statusCode, 200);
    assert.is(((await r.body.json()) as { status: string }).status, 'ok');
  } finally {
    await shim.stop();
    server.closeAllConnections();
    server.close();
    await bus.close();
  }
});

test.run();
