/**
 * P/D end to end on both buses (the MemoryBus, and a real nats-server with auth on: password, router API keys, the
 * cluster secret through every shim front): `startStack` with a simulated prefill engine and a simulated decode
 * engine, each behind its shim, the indexer and a router. Every engine is started with an API key (vLLM --api-key:
 * its /v1 routes refuse calls without it); shims and router send it.
 *   - a long prompt goes prefill → decode: the decode engine reports the prompt's KV as transferred
 *     (vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}, one NIXL pull), not recomputed;
 *   - the keyed prefill engine served the prefill leg, and that leg carried the client's x-request-id (the engines'
 *     spans, in-memory OpenTelemetry exporter);
 *   - a short prompt is not split (short_prompt); a prompt the decode worker already holds is not split either;
 *   - the prefill engine closed with requests in flight: every request still completes.
 * (test/pd-failover.test.ts does the kill with a SIGKILLed child process; worker-shim pd-fallback.test.ts the leg's
 * contents field by field; router pd-decide.test.ts every reason.)
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { NodeSDK, tracing } from '@opentelemetry/sdk-node';
import { initHashing } from '../packages/protocol/src/index.js';
import { startStack, type Stack, type StackOptions } from '../packages/workload/src/stack.js';
import { startNatsServer, type NatsServerHandle } from './harness/nats-server.js';
import { authedStackOptions, E2E_AUTH_HEADERS } from '../packages/router/test/helpers.js';
import { metricSum } from './harness/metrics.js';

await initHashing();
const exporter = new tracing.InMemorySpanExporter();
const sdk = new NodeSDK({ serviceName: 'kvgate-pd-e2e', spanProcessors: [new tracing.SimpleSpanProcessor(exporter)] });
sdk.start();

const MODEL = 'qwen3-8b';
const ENGINE_KEY = 'pd-e2e-engine-key';
let base = 0;
/** n fresh token ids no earlier prompt shares */
const fresh = (n: number) => {
  base += 100_000;
  return Array.from({ length: n }, (_, i) => 1000 + ((base + i) % 140_000));
};

const metric = metricSum;

function build(name: string, conn: () => Promise<Partial<StackOptions>>) {
  const t = suite(`P/D over ${name}`);
  let stack: Stack;
  let headers: Record<string, string> = {};
  const engineMetrics = async (i: number) => (await request(`${stack.engines[i]!.url}/metrics`)).body.text();
  const complete = async (prompt: number[], extra: Record<string, string> = {}) => {
    const res = await request(`${stack.routers[0]!.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers, ...extra }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 6 }) });
    const text = await res.body.text();
    return { status: res.statusCode, text, prefill: res.headers['x-kvgate-prefill'] as string | undefined, worker: res.headers['x-kvgate-worker'] as string | undefined };
  };
  const route = async (prompt: number[]) => {
    const res = await request(`${stack.routers[0]!.url}/v1/route`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model: MODEL, prompt }) });
    return (await res.body.json()) as { pd?: { split: boolean; reason: string } };
  };

  t.before(async () => {
    const c = await conn();
    headers = c.apiKeys ? E2E_AUTH_HEADERS : {};
    stack = await startStack({
      ...c,
      roles: ['prefill', 'decode'],
      routers: 1,
      engineApiKey: ENGINE_KEY,
      engine: { speedup: 50, numBlocks: 4096, blockSize: 16, kvLoadFailurePolicy: 'recompute' },
      router: { indexTimeoutMs: 500, pdMinPrefillTokens: 256 },
      shim: { prefillTimeoutMs: 5_000, engineProbeMs: 100 },
    });
  });
  t.after(async () => {
    await stack.close();
  });

  t('a long prompt goes prefill → decode: the decode engine reports it transferred, not recomputed; the keyed prefill engine served the leg, with the request id', async () => {
    // the key is on: without it the prefill engine refuses
    const bare = await request(`${stack.engines[0]!.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: [1, 2, 3], max_tokens: 1 }) });
    assert.is(bare.statusCode, 401);
    await bare.body.text();
    const before = await engineMetrics(1);
    const rid = `pd-e2e-${name.replace(/\W+/g, '-')}-${Date.now()}`;
    const r = await complete(fresh(900), { 'x-request-id': rid });
    assert.is(r.status, 200, r.text);
    assert.is(r.worker, 'sim-1');
    assert.ok(r.prefill && r.prefill !== 'local', `x-kvgate-prefill ${r.prefill}`);
    const after = await engineMetrics(1);
    const transferred = metric(after, 'vllm:prompt_tokens_by_source_total', 'external_kv_transfer') - metric(before, 'vllm:prompt_tokens_by_source_total', 'external_kv_transfer');
    const computed = metric(after, 'vllm:prompt_tokens_by_source_total', 'local_compute') - metric(before, 'vllm:prompt_tokens_by_source_total', 'local_compute');
    assert.ok(transferred >= 880, `transferred ${transferred}`);
    assert.ok(computed <= 1, `the decode engine computed ${computed} prompt tokens`);
    assert.is(metric(after, 'vllm:nixl_xfer_time_seconds_count') - metric(before, 'vllm:nixl_xfer_time_seconds_count'), 1);
    // the engines' own spans: the prefill engine (sim-0) served the do_remote_decode leg with the client's request id
    let spans = exporter.getFinishedSpans();
    const leg = () => spans.find((s) => s.name === 'engine.generate' && s.attributes['kvgate.engine'] === 'sim-0' && s.attributes['kvgate.request_id'] === rid);
    for (let i = 0; i < 100 && !leg(); i++) {
      await new Promise((res) => setTimeout(res, 20));
      spans = exporter.getFinishedSpans();
    }
    assert.ok(leg(), 'prefill engine span with the request id');
    assert.is(leg()!.attributes['kvgate.pd'], 'prefill');
    const dec = spans.find((s) => s.name === 'engine.generate' && s.attributes['kvgate.engine'] === 'sim-1' && s.attributes['kvgate.request_id'] === rid);
    assert.is(dec?.attributes['kvgate.pd'], 'decode', 'the decode leg carries the same id');
  });

  t('a short prompt skips the remote prefill', async () => {
    const r = await complete(fresh(40));
    assert.is(r.status, 200, r.text);
    assert.is(r.worker, 'sim-1');
    assert.ok(r.prefill === undefined || r.prefill === 'local', `x-kvgate-prefill ${r.prefill}`);
    assert.equal((await route(fresh(40))).pd, { split: false, reason: 'short_prompt' });
  });

  t('a prompt the decode worker already holds skips the remote prefill', async () => {
    const held = fresh(1400);
    const first = await complete(held);
    assert.is(first.status, 200, first.text);
    assert.ok(first.prefill && first.prefill !== 'local', 'the first time it is split');
    // the decode engine now caches it (KV events → shim → bus → indexer): the same prompt and a longer tail
    const longer = [...held, ...fresh(300)];
    let pd: { split: boolean; reason: string } | undefined;
    for (let i = 0; i < 200; i++) {
      pd = (await route(longer)).pd;
      if (pd && !pd.split) break;
      await new Promise((res) => setTimeout(res, 25));
    }
    assert.equal(pd, { split: false, reason: 'decode_holds_prefix' });
    const before = metric(await engineMetrics(1), 'vllm:nixl_xfer_time_seconds_count');
    const r = await complete(longer);
    assert.is(r.status, 200, r.text);
    assert.ok(r.prefill === undefined || r.prefill === 'local', `x-kvgate-prefill ${r.prefill}`);
    assert.is(metric(await engineMetrics(1), 'vllm:nixl_xfer_time_seconds_count'), before, 'no pull');
  });

  t('the prefill engine gone with requests in flight: every request completes', async () => {
    const inflight: Promise<{ status: number; text: string }>[] = [];
    for (let i = 0; i < 5; i++) inflight.push(complete(fresh(700)));
    await new Promise((r) => setTimeout(r, 20));
    const closing = stack.engines[0]!.close();
    for (let i = 0; i < 5; i++) inflight.push(complete(fresh(700)));
    await closing;
    for (const r of await Promise.all(inflight)) assert.is(r.status, 200, r.text);
    const after = await complete(fresh(700));
    assert.is(after.status, 200, after.text);
  });
  return t;
}

build('the memory bus', async () => ({})).run();
let nats: NatsServerHandle | undefined;
const n = build('NATS (auth on)', async () => authedStackOptions((nats ??= await startNatsServer({ auth: 'password' }))));
n.after(async () => {
  await nats?.stop();
  await sdk.shutdown();
});
n.run();
