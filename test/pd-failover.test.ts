/**
 * P/D with a prefill engine that dies mid-run, over real processes and sockets: the prefill engine is a
 * `kvgate sim-engine --role prefill` child process, SIGKILLed while requests are in flight; router → decode shim →
 * (prefill shim's engine) → decode engine. Every request still completes: the decode shim prefills locally when
 * the prefill leg fails, the decode engine (kv_load_failure_policy recompute) recomputes when a pull fails, and
 * the router stops splitting once the prefill engine is reported down. Before the kill, the decode engine reports
 * the prompt's KV as transferred (vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { request } from 'undici';
import { MemoryBus } from '../packages/protocol/src/index.js';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startShim, type ShimHandle } from '../packages/worker-shim/src/index.js';
import { startIndexer } from '../packages/indexer/src/index.js';
import { startRouter } from '../packages/router/src/index.js';

const MODEL = 'qwen3-8b';
const BIN = new URL('../bin/kvgate.js', import.meta.url).pathname;
const child = spawn(process.execPath, [BIN, 'sim-engine', '--model', MODEL, '--role', 'prefill', '--port', '0', '--host', '127.0.0.1', '--kv-events-endpoint', 'tcp://127.0.0.1:0', '--speedup', '50', '--num-blocks', '4096'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KVGATE_LOG_LEVEL: 'warn' } });
let stderr = '';
const started = new Promise<{ url: string; kv: string }>((resolve, reject) => {
  const t = setTimeout(() => reject(new Error(`prefill engine did not start: ${stderr}`)), 20_000);
  child.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString();
    const u = /listening on (http:\/\/\S+)/.exec(stderr);
    const k = /KV events: (tcp:\/\/\S+)/.exec(stderr);
    if (u && k) {
      clearTimeout(t);
      resolve({ url: u[1]!, kv: k[1]! });
    }
  });
});
const pEngine = await started;
const bus = new MemoryBus();
const dEngine = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 50, role: 'decode', kvLoadFailurePolicy: 'recompute' });
const pShim = await startShim(bus, { model: MODEL, port: 0, worker: 'fo-p0', role: 'prefill', engineUrl: pEngine.url, kvEvents: pEngine.kv, engineProbeMs: 100 });
const dShim = await startShim(bus, { model: MODEL, port: 0, worker: 'fo-d0', role: 'decode', engineUrl: dEngine.url, kvEvents: dEngine.kvEventsEndpoint!, prefillTimeoutMs: 5_000 });
const indexer = await startIndexer(bus, {});
const router = await startRouter(bus, { port: 0, index: indexer.client, recordDecisions: false, pdMinPrefillTokens: 256 });
await router.waitForWorkers(2);

async function metric(text: string, name: string, label: string): Promise<number> {
  let n = 0;
  for (const line of text.split('\n')) if (line.startsWith(name) && line.includes(label)) n += Number(line.trim().split(/\s+/).pop());
  return n;
}
const engineMetrics = async () => (await (await request(`${dEngine.url}/metrics`)).body.text());
const shimCount = async (shim: ShimHandle, name: string, label: string) => metric(await shim.metrics.registry.getSingleMetricAsString(name), name, label);

let seq = 0;
const longPrompt = () => Array.from({ length: 700 }, (_, i) => `w${seq}x${i}`).join(' ') + ` ${seq++}`;
async function complete(prompt: string) {
  const res = await request(`${router.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 8 }) });
  const text = await res.body.text();
  return { status: res.statusCode, text, prefill: res.headers['x-kvgate-prefill'] };
}

test('a long prompt goes prefill → decode: the decode engine reports its KV as transferred, not recomputed', async () => {
  const before = await metric(await engineMetrics(), 'vllm:prompt_tokens_by_source_total', 'external_kv_transfer');
  const computedBefore = await metric(await engineMetrics(), 'vllm:prompt_tokens_by_source_total', 'local_compute');
  const r = await complete(longPrompt());
  assert.is(r.status, 200, r.text);
  assert.is(r.prefill, 'fo-p0');
  const m = await engineMetrics();
  const transferred = (await metric(m, 'vllm:prompt_tokens_by_source_total', 'external_kv_transfer')) - before;
  const computed = (await metric(m, 'vllm:prompt_tokens_by_source_total', 'local_compute')) - computedBefore;
  assert.ok(transferred > 600, `transferred ${transferred}`);
  assert.ok(computed <= 1, `the decode engine computed ${computed} prompt tokens`);
});

test('a short prompt skips the remote prefill (router: short_prompt)', async () => {
  const okBefore = await shimCount(dShim, 'kvgate_shim_pd_prefills_total', 'result="ok"');
  const r = await complete('a short prompt');
  assert.is(r.status, 200, r.text);
  assert.is(r.prefill, undefined);
  assert.is(await shimCount(dShim, 'kvgate_shim_pd_prefills_total', 'result="ok"'), okBefore);
  assert.ok((await metric(await router.metrics.registry.metrics(), 'kvgate_router_pd_decisions_total', 'reason="short_prompt"')) >= 1);
});

test('the prefill engine SIGKILLed mid-run: every request still completes', async () => {
  const inflight: Promise<{ status: number; text: string }>[] = [];
  for (let i = 0; i < 6; i++) inflight.push(complete(longPrompt()));
  await new Promise((r) => setTimeout(r, 30));
  child.kill('SIGKILL');
  for (let i = 0; i < 6; i++) inflight.push(complete(longPrompt()));
  const results = await Promise.all(inflight);
  for (const r of results) assert.is(r.status, 200, r.text);
  // and after it: still served, prefilled on the decode worker
  const after = await complete(longPrompt());
  assert.is(after.status, 200, after.text);
  // the failure was seen and handled: local prefills on the decode shim, or the router no longer splitting
  const local = await shimCount(dShim, 'kvgate_shim_pd_local_prefills_total', 'reason=');
  const unsplit = await metric(await router.metrics.registry.metrics(), 'kvgate_router_pd_decisions_total', 'reason="no_prefill_worker"');
  assert.ok(local + unsplit >= 1, `local prefills ${local}, unsplit decisions ${unsplit}`);
});

test.after(async () => {
  child.kill('SIGKILL');
  await router.close();
  await dShim.stop();
  await pShim.stop();
  await indexer.close();
  await dEngine.close();
  await bus.close();
});

test.run();
