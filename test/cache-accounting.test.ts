/**
 * Predicted vs actual cached tokens (issue 17), over real sockets: router → sim engine (the engine reports
 * usage.prompt_tokens_details.cached_tokens from its own prefix cache), the index a fake one answering from a table.
 *   hit     the engine holds the prompt (sent to it once, straight) and the index says so: predicted = actual
 *   miss    the index says the worker holds the prompt, the engine never saw it: predicted 48, actual 0
 *   stream  without stream_options.include_usage: the client's stream has no usage chunk (the router asked the
 *           engine for one and kept it), and the counters moved from it; with include_usage: the chunk is there
 * `/metrics` is read with a Prometheus text parser (the shim's, not prom-client's).
 * The shim side: its kvgate_shim_engine_prefix_cache_{queries,hits}_total follow the engine's own
 * vllm:prefix_cache_{queries,hits}_total (pure reading + counter mirror).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import WebSocket from 'ws';
import { Counter, Registry } from 'prom-client';
import { initHashing, prefixHashesU64 } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startRouter } from '../packages/router/src/index.js';
import { fakeIndex, register, registration, tokens } from '../packages/router/test/helpers.js';
import { parsePrometheusText, type Sample } from '../packages/worker-shim/src/prom-text.js';
import { enginePrefixCache } from '../packages/worker-shim/src/engine-load.js';
import { CounterMirror } from '../packages/worker-shim/src/metrics.js';

await initHashing();

const MODEL = 'acct-model';
const B = 16;
const bus = await createBus();
const holds = new Map<string, Set<bigint>>([['w1', new Set()]]);
const index = fakeIndex(bus, holds);
const engine = await startSimEngine({ model: MODEL, blockSize: B, numBlocks: 256, speedup: 50, kvEventsEndpoint: null, kvReplayEndpoint: null });
await register(bus, registration('w1', engine.url, { model: MODEL, blockSize: B }));
const router = await startRouter(bus, { port: 0, indexTimeoutMs: 1000, registryTtlMs: 0 });
await router.waitForWorkers(1);

/** the index answers that w1 holds every full block of `prompt` */
const indexHolds = (prompt: number[]) => {
  for (const h of prefixHashesU64(MODEL, null, B, prompt)) holds.get('w1')!.add(h);
};

async function post(url: string, body: Record<string, unknown>): Promise<{ status: number; text: string }> {
  const res = await request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, max_tokens: 4, ...body }) });
  return { status: res.statusCode, text: await res.body.text() };
}

async function routerSamples(): Promise<Sample[]> {
  const res = await request(`${router.url}/metrics`);
  const text = await res.body.text();
  const parsed = parsePrometheusText(text);
  assert.is(parsed.skipped, 0, 'every /metrics line parses');
  return parsed.samples;
}

function value(samples: Sample[], name: string, labels: Record<string, string> = { worker: 'w1', model: MODEL }): number {
  const s = samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s.reduce((a, x) => a + x.value, 0);
}

async function counters() {
  const s = await routerSamples();
  return {
    predicted: value(s, 'kvgate_router_predicted_cached_tokens_total'),
    actual: value(s, 'kvgate_router_actual_cached_tokens_total'),
    prompt: value(s, 'kvgate_router_prompt_tokens_total'),
    deltaCount: value(s, 'kvgate_router_cached_tokens_delta_count'),
    deltaSum: value(s, 'kvgate_router_cached_tokens_delta_sum'),
    /** requests with delta ≤ -1 (fewer cached than predicted) */
    short: value(s, 'kvgate_router_cached_tokens_delta_bucket', { worker: 'w1', model: MODEL, le: '-1' }),
  };
}

const diff = (a: Awaited<ReturnType<typeof counters>>, b: typeof a) => Object.fromEntries(Object.entries(b).map(([k, v]) => [k, v - a[k as keyof typeof a]]));

/** the dashboard's first picture: this router's predicted vs actual for w1 and where a gap comes from */
function dashboardCache(): Promise<{ cause: string; problem: boolean; predicted: number; actual: number; message: string } | null> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${router.url.replace('http', 'ws')}/dashboard/ws`);
    ws.once('message', (d) => {
      ws.close();
      resolve((JSON.parse(String(d)) as { workers: { worker: string; cache: never }[] }).workers.find((w) => w.worker === 'w1')!.cache);
    });
    ws.once('error', reject);
  });
}

/** SSE data payloads */
const events = (text: string) => text.split('\n\n').map((e) => e.trim()).filter((e) => e.startsWith('data:')).map((e) => e.slice(5).trim());

test('a cache hit: predicted = actual (64-token prompt, 4 blocks of 16: 48 tokens, the last block recomputes its last token)', async () => {
  const prompt = tokens(64, 1000);
  assert.is((await post(engine.url, { prompt })).status, 200); // the engine now holds it
  indexHolds(prompt);
  const before = await counters();
  const r = await post(router.url, { prompt });
  assert.is(r.status, 200);
  assert.is(JSON.parse(r.text).usage.prompt_tokens_details.cached_tokens, 48);
  assert.equal(diff(before, await counters()), { predicted: 48, actual: 48, prompt: 64, deltaCount: 1, deltaSum: 0, short: 0 });
  // the dashboard's cache column: the prediction holds
  const c = await dashboardCache();
  assert.equal([c?.cause, c?.problem, c?.predicted, c?.actual], ['holds', false, 0.75, 0.75]);
});

test('a miss: the index says held, the engine has nothing: predicted 48, actual 0, delta -48', async () => {
  const prompt = tokens(64, 5000);
  indexHolds(prompt);
  const before = await counters();
  const r = await post(router.url, { prompt });
  assert.is(r.status, 200);
  assert.is(JSON.parse(r.text).usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(diff(before, await counters()), { predicted: 48, actual: 0, prompt: 64, deltaCount: 1, deltaSum: -48, short: 1 });
  // the dashboard's cache column: 96 predicted, 48 actual of 128 prompt tokens — fewer cached than predicted, and
  // the engine found some of it (not a hash mismatch): blocks gone between the index's view and the prefill
  const c = await dashboardCache();
  assert.equal([c?.cause, c?.problem, c?.predicted, c?.actual], ['evicted-after-routing', true, 0.75, 0.375]);
  assert.match(c!.message, /1 of 2 requests found less cached than predicted/);
});

test('a stream without include_usage: no usage chunk reaches the client; the counters read it off the engine', async () => {
  const prompt = tokens(64, 9000);
  assert.is((await post(engine.url, { prompt })).status, 200);
  indexHolds(prompt);
  const before = await counters();
  const r = await post(router.url, { prompt, stream: true });
  assert.is(r.status, 200);
  const ev = events(r.text);
  assert.is(ev.at(-1), '[DONE]');
  assert.is(ev.length, 5, ev.join(' | ')); // 4 tokens + [DONE]
  for (const e of ev.slice(0, -1)) {
    const j = JSON.parse(e);
    assert.is(j.usage, undefined, e);
    assert.is(j.choices.length, 1, e);
  }
  assert.equal(diff(before, await counters()), { predicted: 48, actual: 48, prompt: 64, deltaCount: 1, deltaSum: 0, short: 0 });
});

test('a stream with include_usage: the usage chunk is passed on, last before [DONE]; continuous stats as asked', async () => {
  const prompt = tokens(64, 13000);
  indexHolds(prompt);
  const before = await counters();
  const r = await post(router.url, { prompt, stream: true, stream_options: { include_usage: true } });
  const ev = events(r.text);
  assert.is(ev.at(-1), '[DONE]');
  const usage = JSON.parse(ev.at(-2)!);
  assert.equal(usage.choices, []);
  assert.is(usage.usage.prompt_tokens, 64);
  assert.is(usage.usage.prompt_tokens_details.cached_tokens, 0);
  assert.is(ev.length, 6); // 4 tokens + usage + [DONE]
  assert.equal(diff(before, await counters()), { predicted: 48, actual: 0, prompt: 64, deltaCount: 1, deltaSum: -48, short: 1 });
  // continuous_usage_stats asked with include_usage: usage on every chunk, as the engine sends it
  const c = events((await post(router.url, { prompt, stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } })).text);
  assert.ok(c.slice(0, -1).every((e) => JSON.parse(e).usage !== undefined), c.join(' | '));
  // continuous_usage_stats alone (no effect at the engine without include_usage): still no usage at all
  const d = events((await post(router.url, { prompt, stream: true, stream_options: { continuous_usage_stats: true } })).text);
  assert.is(d.length, 5, d.join(' | '));
  assert.ok(d.slice(0, -1).every((e) => JSON.parse(e).usage === undefined), d.join(' | '));
});

test('shim: the engine\'s own prefix-cache counters read from its /metrics and mirrored as counters', async () => {
  const res = await request(`${engine.url}/metrics`);
  const { samples } = parsePrometheusText(await res.body.text());
  const pc = enginePrefixCache(samples);
  assert.ok(pc, 'vllm:prefix_cache_* found');
  assert.is(pc!.queries, value(samples, 'vllm:prefix_cache_queries_total', {}));
  assert.is(pc!.hits, value(samples, 'vllm:prefix_cache_hits_total', {}));
  assert.ok(pc!.hits >= 48 * 2, `${pc!.hits} hit tokens after two hits`);
  // older vLLM names, SGLang's, a DP rank's
  const s = (name: string, value: number, labels: Record<string, string> = {}): Sample => ({ name, labels, value });
  assert.equal(enginePrefixCache([s('vllm:gpu_prefix_cache_queries_total', 10), s('vllm:gpu_prefix_cache_hits_total', 4)]), { queries: 10, hits: 4 });
  assert.equal(enginePrefixCache([s('sglang:prompt_tokens_total', 100), s('sglang:cached_tokens_total', 30, { cache_source: 'device' }), s('sglang:cached_tokens_total', 5, { cache_source: 'host' })]), { queries: 100, hits: 35 });
  assert.equal(enginePrefixCache([s('vllm:prefix_cache_queries_total', 10, { engine: '0' }), s('vllm:prefix_cache_queries_total', 20, { engine: '1' }), s('vllm:prefix_cache_hits_total', 1, { engine: '0' }), s('vllm:prefix_cache_hits_total', 2, { engine: '1' })], { rank: 1, size: 2 }), { queries: 20, hits: 2 });
  assert.is(enginePrefixCache([s('vllm:num_requests_waiting', 0)]), undefined);
  // the mirror: level with the engine at first, rises with it, keeps counting across an engine restart
  const reg = new Registry();
  const m = new CounterMirror(new Counter({ name: 'x_total', help: 'x', registers: [reg] }));
  const read = async () => (await reg.getSingleMetricAsString('x_total')).split('\n').find((l) => l.startsWith('x_total'))!.split(' ')[1];
  m.set(100);
  assert.is(await read(), '100');
  m.set(130);
  assert.is(await read(), '130');
  m.set(20); // restarted: counts from 0 again
  assert.is(await read(), '150');
});

test.after(async () => {
  await router.close();
  index.unsubscribe();
  await engine.close();
  await bus.close();
});

test.run();
