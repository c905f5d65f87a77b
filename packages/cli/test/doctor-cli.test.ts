/**
 * `kvgate doctor` as a user runs it, over a real nats-server: a healthy stack (exit 0, one `ok` line per worker),
 * the same with a misconfigured worker beside it (exit 1, its problem line), `--json`, and a bus that is not
 * there (exit 2, one line, no stack).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { request } from 'undici';
import { initHashing } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startShim } from '@kvgate/worker-shim';
import { startStack, type Stack } from '@kvgate/workload/stack';
import { freePort, startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { FakeEngine, vllmArrayBatch } from '../../worker-shim/test/fake-engine.js';
import { tokens } from '../../router/test/helpers.js';

await initHashing();
const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

function doctor(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'doctor', ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'error' }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

let nats: NatsServerHandle;
let stack: Stack;

test.before(async () => {
  nats = await startNatsServer();
  stack = await startStack({ nats: nats.url, engines: 2, routers: 1, engine: { speedup: 50, numBlocks: 1024, blockSize: 16 }, router: { indexTimeoutMs: 500 } });
  const r = stack.routers[0]!;
  for (let i = 0; i < 3; i++) {
    const res = await request(`${r.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'qwen3-8b', prompt: tokens(100, i * 1000), max_tokens: 2 }), headers: { 'content-type': 'application/json' } });
    assert.is(res.statusCode, 200);
    await res.body.dump();
  }
});
test.after(async () => {
  await stack?.close();
  await nats?.stop();
});

test('a healthy stack: exit 0, one ok line per worker', async () => {
  const out = await doctor('--nats', nats.url, '--namespace', stack.namespace, '--wait-ms', '1000');
  assert.is(out.code, 0, out.stdout + out.stderr);
  const lines = out.stdout.trim().split('\n');
  assert.is(lines.length, 2, out.stdout);
  assert.match(lines[0]!, /^sim-0 {2}ok {2}\(/);
  assert.match(lines[1]!, /^sim-1 {2}ok {2}\(/);
  assert.match(out.stdout, /prompt counts and \d+ cache predictions checked by 1 router/);
});

test('a worker whose events carry another block size: exit 1, its problem line; --json', async () => {
  const bus = await createBus({ nats: nats.url });
  const engine = await new FakeEngine({ metricsText: 'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1\nvllm:num_requests_running 0\nvllm:num_requests_waiting 0\n' }).start();
  const shim = await startShim(bus, { worker: 'odd', model: 'qwen3-8b', engineUrl: engine.url, kvEvents: engine.kvEvents, kvReplay: engine.kvReplay, namespace: stack.namespace, port: -1, scrapeIntervalMs: 50, replayProbeMs: 600_000 });
  try {
    await engine.subscribed();
    await engine.send(vllmArrayBatch([{ type: 'stored', hashes: [1n, 2n], parent: null, tokens: tokens(64), blockSize: 32 }]));
    let out = await doctor('--nats', nats.url, '--namespace', stack.namespace, '--wait-ms', '1000');
    for (let i = 0; i < 5 && !out.stdout.includes('odd  PROBLEM'); i++) out = await doctor('--nats', nats.url, '--namespace', stack.namespace, '--wait-ms', '1000');
    assert.is(out.code, 1, out.stdout + out.stderr);
    const lines = out.stdout.trim().split('\n');
    assert.is(lines.length, 3);
    assert.match(lines[0]!, /^odd {2}PROBLEM {2}block-size-mismatch: its KV events carry block size 32 but it is registered with block size 16/);
    assert.match(lines[1]!, /^sim-0 {2}ok/);
    const json = await doctor('--nats', nats.url, '--namespace', stack.namespace, '--wait-ms', '1000', '--json');
    assert.is(json.code, 1);
    const rows = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { worker: string; ok: boolean; problems: { code: string }[] });
    assert.equal(rows.map((r) => [r.worker, r.ok, r.problems.map((p) => p.code)]), [['odd', false, ['block-size-mismatch']], ['sim-0', true, []], ['sim-1', true, []]]);
  } finally {
    await shim.stop();
    await engine.close();
    await bus.close();
  }
});

test('no NATS at the URL: exit 2, one clear line', async () => {
  const port = await freePort();
  const out = await doctor('--nats', `nats://127.0.0.1:${port}`, '--wait-ms', '100');
  assert.is(out.code, 2, out.stdout + out.stderr);
  assert.is(out.stdout, '');
  const lines = out.stderr.trim().split('\n');
  assert.is(lines.length, 1, out.stderr);
  assert.match(lines[0]!, /^kvgate doctor: cannot reach the bus: cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+/);
});

test('an empty namespace: exit 1, says no worker is registered', async () => {
  const out = await doctor('--nats', nats.url, '--namespace', 'nobody_here', '--wait-ms', '100');
  assert.is(out.code, 1);
  assert.match(out.stdout, /^no worker is registered in namespace nobody_here/);
});

test.run();
