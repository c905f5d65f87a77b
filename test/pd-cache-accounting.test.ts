/**
 * Predicted vs actual cached tokens across a P/D split (issue 17): `startStack` with a simulated prefill engine and a
 * simulated decode engine behind their shims, the indexer and one router (MemoryBus). A split request's prediction
 * is the prefill worker's overlap, so its actual is the prefill engine's own hit, which the decode worker's shim
 * relays from the prefill leg (`x-kvgate-prefill-cached-tokens`); both are counted under the prefill worker, none
 * under the decode worker (whose usage counts the transferred KV as cached).
 *   miss  a fresh 900-token prompt: prompt tokens counted for sim-0, predicted and actual 0
 *   hit   the same 900 tokens and a long new tail, once the index knows sim-0 holds them: predicted and actual ≈ 896
 * Left out and counted by reason in kvgate_router_cache_uncompared_total: a batch, a split that fell back to a local
 * prefill, a split answered without the leg's usage (CacheAccounting directly: the simulated engine takes no batches).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { initHashing } from '../packages/protocol/src/index.js';
import { startStack, type Stack } from '../packages/workload/src/stack.js';
import { CacheAccounting } from '../packages/router/src/cache-accounting.js';
import { RouterMetrics } from '../packages/router/src/metrics.js';
import { metricSum } from './harness/metrics.js';

await initHashing();

const MODEL = 'qwen3-8b';
let base = 0;
const fresh = (n: number) => {
  base += 100_000;
  return Array.from({ length: n }, (_, i) => 1000 + ((base + i) % 140_000));
};

const metric = metricSum;

let stack: Stack;
const routerMetrics = async () => (await request(`${stack.routers[0]!.url}/metrics`)).body.text();
const post = async (path: string, body: unknown) => {
  const res = await request(`${stack.routers[0]!.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
};
/** the counters of one worker, as a snapshot */
const counts = async (worker: string) => {
  const t = await routerMetrics();
  const l = `worker="${worker}"`;
  return {
    predicted: metric(t, 'kvgate_router_predicted_cached_tokens_total', l),
    actual: metric(t, 'kvgate_router_actual_cached_tokens_total', l),
    prompt: metric(t, 'kvgate_router_prompt_tokens_total', l),
  };
};

test.before(async () => {
  stack = await startStack({
    roles: ['prefill', 'decode'],
    routers: 1,
    engine: { speedup: 50, numBlocks: 4096, blockSize: 16 },
    router: { indexTimeoutMs: 2000, pdMinPrefillTokens: 256 },
    shim: { prefillTimeoutMs: 10_000 },
  });
});
test.after(async () => {
  await stack.close();
});

test('a split request is counted by its prefill leg under the prefill worker: a miss, then a hit', async () => {
  const shared = fresh(900);
  const p0 = await counts('sim-0'), d0 = await counts('sim-1');
  const miss = await post('/v1/completions', { model: MODEL, prompt: shared, max_tokens: 4 });
  assert.is(miss.status, 200, miss.text);
  assert.ok(miss.headers['x-kvgate-prefill'] === 'sim-0', `split to sim-0: ${String(miss.headers['x-kvgate-prefill'])}`);
  assert.is(miss.headers['x-kvgate-prefill-cached-tokens'], '0', "the prefill leg's usage relayed by the decode shim");
  const p1 = await counts('sim-0');
  assert.is(p1.prompt - p0.prompt, 900, 'prompt tokens of the prefill leg');
  assert.is(p1.actual - p0.actual, 0);
  assert.is(p1.predicted - p0.predicted, 0);

  // the index learns that sim-0 holds the 900 tokens (its KV events); the decode worker holds them too, but a long
  // new tail keeps it under decodeHoldRatio, so the request is split again
  const prompt = [...shared, ...fresh(2000)];
  let route: { prefill?: string; overlap?: number; pd?: { split: boolean } } = {};
  for (let i = 0; i < 200; i++) {
    route = JSON.parse((await post('/v1/route', { model: MODEL, prompt })).text);
    if (route.pd?.split && route.prefill === 'sim-0' && (route.overlap ?? 0) >= 56) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.ok(route.pd?.split && (route.overlap ?? 0) >= 56, `split with sim-0's overlap: ${JSON.stringify(route)}`);
  const hit = await post('/v1/completions', { model: MODEL, prompt, max_tokens: 4 });
  assert.is(hit.status, 200, hit.text);
  assert.is(hit.headers['x-kvgate-prefill'], 'sim-0');
  const cached = Number(hit.headers['x-kvgate-prefill-cached-tokens']);
  assert.ok(cached >= 880, `the prefill engine's hit: ${cached}`);
  const p2 = await counts('sim-0');
  assert.is(p2.actual - p1.actual, cached, 'actual = the prefill leg\'s cached tokens');
  assert.is(p2.prompt - p1.prompt, 2900);
  assert.ok(p2.predicted - p1.predicted >= 880, `predicted ${p2.predicted - p1.predicted}`);
  // nothing under the decode worker for split requests
  const d2 = await counts('sim-1');
  assert.equal([d2.predicted - d0.predicted, d2.actual - d0.actual, d2.prompt - d0.prompt], [0, 0, 0]);
});

test('left out, counted by reason: a batch, a split that fell back to a local prefill, a split without the leg\'s usage', async () => {
  // (the simulated engine refuses batched prompts: CacheAccounting itself, as the edge hands it a prediction)
  const metrics = new RouterMetrics('acct-unit');
  const acct = new CacheAccounting(metrics);
  const base = { worker: 'w', model: 'm', overlapBlocks: 2, blockSize: 16, routerTokens: 64 };
  const usage = { promptTokens: 64, cachedTokens: 63 };
  acct.record({ ...base, uncompared: 'batch' }, usage);
  acct.record({ ...base, uncompared: 'pd_local_prefill' }, usage);
  acct.record({ ...base, uncompared: 'pd_no_prefill_usage' }, usage);
  acct.record({ ...base, uncompared: 'pd_no_prefill_usage' }, usage);
  const t = await metrics.registry.metrics();
  assert.is(metric(t, 'kvgate_router_cache_uncompared_total', 'reason="batch"'), 1);
  assert.is(metric(t, 'kvgate_router_cache_uncompared_total', 'reason="pd_local_prefill"'), 1);
  assert.is(metric(t, 'kvgate_router_cache_uncompared_total', 'reason="pd_no_prefill_usage"'), 2);
  assert.is(metric(t, 'kvgate_router_prompt_tokens_total'), 0);
  assert.equal(acct.totals(), { predicted: 0, actual: 0, prompt: 0, requests: 0 });
  // a split's prefill leg wins over the decode leg's usage (which counts the transferred KV)
  acct.record({ ...base, prefillLeg: { cachedTokens: 32, promptTokens: 64 } }, usage);
  assert.equal(acct.totals(), { predicted: 32, actual: 32, prompt: 64, requests: 1 });
});

test.run();
