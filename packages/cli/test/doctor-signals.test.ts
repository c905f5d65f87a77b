/**
 * `kvgate doctor` (examine + formatLine) against each misconfiguration made to happen for real, on the MemoryBus:
 *   - events-stale and block-size-mismatch: a real shim beside the FakeEngine (ZMQ events + /metrics);
 *   - prompt-token-mismatch and cache-prediction-mismatch: a real router in front of an upstream engine whose
 *     `usage` disagrees with the router, the index answering from a table;
 *   - a healthy stack (simulated engines, shims, indexer, router) where every worker is ok.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { initHashing, prefixHashes, type Bus, type WorkerVerdict } from '@kvgate/protocol';
import { MemoryBus } from '@kvgate/protocol/bus/index';
import { startShim, type ShimHandle } from '@kvgate/worker-shim';
import { startRouter, type RouterHandle } from '@kvgate/router';
import { startStack } from '@kvgate/workload/stack';
import { FakeEngine, vllmArrayBatch } from '../../worker-shim/test/fake-engine.js';
import { fakeIndex, register, registration, tokens } from '../../router/test/helpers.js';
import { examine, formatLine, jsonLine } from '../src/commands/doctor.js';

await initHashing();

const metrics = (blockSize: number, running: number) =>
  `vllm:cache_config_info{block_size="${blockSize}",num_gpu_blocks="1000",enable_prefix_caching="True"} 1.0\n` +
  `vllm:num_requests_running{model_name="m"} ${running}\nvllm:num_requests_waiting{model_name="m"} 0\nvllm:kv_cache_usage_perc{model_name="m"} 0.1\n`;

/** examines until `cond` holds for the worker's verdict (each examination listens `waitMs`) */
async function verdictUntil(bus: Bus, worker: string, cond: (v: WorkerVerdict) => boolean, what: string, ns = 'default'): Promise<{ v: WorkerVerdict; line: string }> {
  let last = '';
  for (let i = 0; i < 100; i++) {
    const ex = await examine(bus, { namespace: ns, waitMs: 100 });
    const v = ex.verdicts.find((x) => x.worker === worker);
    if (v) {
      last = formatLine(v, ex);
      if (cond(v)) return { v, line: last };
    }
  }
  throw new Error(`timed out waiting for ${what}; last line: ${last}`);
}

async function gauge(shim: ShimHandle, name: string): Promise<number> {
  const m = await shim.metrics.registry.getSingleMetric(name)?.get();
  return m?.values[0]?.value ?? NaN;
}

// ---- shim side ------------------------------------------------------------------------------------------
const shimSide = suite('doctor: shim-side signals over a real shim');

async function shimRig(metricsText: string) {
  const bus = new MemoryBus();
  const engine = await new FakeEngine({ metricsText }).start();
  const shim = await startShim(bus, {
    worker: 'w-shim',
    model: 'm',
    engineUrl: engine.url,
    kvEvents: engine.kvEvents,
    kvReplay: engine.kvReplay,
    port: -1,
    scrapeIntervalMs: 50,
    replayProbeMs: 600_000,
    staleEventsMs: 300,
    diagIntervalMs: 100,
  });
  await engine.subscribed();
  return {
    bus,
    engine,
    shim,
    async close() {
      await shim.stop();
      await engine.close();
      await bus.close();
    },
  };
}

shimSide('serving without KV events: events-stale, then ok once events flow', async () => {
  const r = await shimRig(metrics(4, 2));
  try {
    const { v, line } = await verdictUntil(r.bus, 'w-shim', (x) => x.problems.some((p) => p.code === 'events-stale'), 'events-stale');
    assert.not.ok(v.ok);
    assert.match(line, /^w-shim {2}PROBLEM {2}events-stale: served requests for \d+\.\d s but has published no KV event since the shim started: routers see no cache on it and route it by load alone \(check: the engine publishes KV events/);
    assert.is(await gauge(r.shim, 'kvgate_shim_kv_events_stale'), 1);
    // the engine's events arrive (and it goes idle): the worker is fine again
    r.engine.metricsText = metrics(4, 0);
    await r.engine.send(vllmArrayBatch([{ type: 'stored', hashes: [11n, 12n], parent: null, tokens: tokens(8), blockSize: 4 }]));
    const ok = await verdictUntil(r.bus, 'w-shim', (x) => x.ok, 'ok after events');
    assert.match(ok.line, /^w-shim {2}ok {2}\(last KV event \d+\.\d s ago; block size 4; no router has proxied to it yet/);
    assert.is(await gauge(r.shim, 'kvgate_shim_kv_events_stale'), 0);
  } finally {
    await r.close();
  }
});

shimSide('an idle engine without KV events is not stale', async () => {
  const r = await shimRig(metrics(4, 0));
  try {
    // long past the threshold (300 ms), with scrapes all along
    const { v, line } = await verdictUntil(r.bus, 'w-shim', (x) => x.shim !== undefined && Date.now() - x.shim.startedAt > 1500, 'time past the threshold');
    assert.ok(v.ok, line);
    assert.match(line, /no KV event yet \(idle\)/);
  } finally {
    await r.close();
  }
});

shimSide("events in 8-token blocks on an engine whose cache_config_info says 4: block-size-mismatch", async () => {
  const r = await shimRig(metrics(4, 0));
  try {
    await r.engine.send(vllmArrayBatch([{ type: 'stored', hashes: [21n, 22n], parent: null, tokens: tokens(16), blockSize: 8 }]));
    const { v, line } = await verdictUntil(r.bus, 'w-shim', (x) => x.problems.some((p) => p.code === 'block-size-mismatch' && p.from.includes('registry')), 'block-size-mismatch');
    assert.not.ok(v.ok);
    assert.match(line, /^w-shim {2}PROBLEM {2}block-size-mismatch: its KV events carry block size 8 but it is registered with block size 4: routers hash prompts in 4-token blocks, so no prefix matches what it holds \(check: the engine's --block-size/);
    assert.match(line, /seen by shim w-shim, registry\)/);
    assert.is(await gauge(r.shim, 'kvgate_shim_block_size_mismatch'), 1);
    assert.equal(JSON.parse(jsonLine(v)).problems.map((p: { code: string }) => p.code), ['block-size-mismatch']);
  } finally {
    await r.close();
  }
});
shimSide.run();

// ---- router side -----------------------------------------------------------------------------------------
/** An upstream engine whose usage says what the test wants: prompt_tokens = token ids + `extraTokens`, `cached`. */
class UsageEngine {
  extraTokens = 0;
  cached: number | null = 0;
  url = '';
  readonly #server: Server = createServer(async (req, res) => {
    let raw = '';
    for await (const c of req) raw += c;
    const body = JSON.parse(raw) as { prompt: number[]; stream?: boolean; stream_options?: { include_usage?: boolean } };
    const usage = { prompt_tokens: body.prompt.length + this.extraTokens, completion_tokens: 1, total_tokens: body.prompt.length + this.extraTokens + 1, ...(this.cached === null ? {} : { prompt_tokens_details: { cached_tokens: this.cached } }) };
    if (body.stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, text: 'a' }] })}\n\n`);
      if (body.stream_options?.include_usage) res.write(`data: ${JSON.stringify({ choices: [], usage })}\n\n`);
      res.end('data: [DONE]\n\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: 'a', finish_reason: 'length' }], usage }));
  });
  async listen(): Promise<this> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }
  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

const routerSide = suite('doctor: router-side signals over a real router');
const ns = 'diagr';
let bus: Bus;
let engine: UsageEngine;
let router: RouterHandle;
const holds = new Map<string, Set<bigint>>();

routerSide.before(async () => {
  bus = new MemoryBus();
  engine = await new UsageEngine().listen();
  await register(bus, registration('w-up', engine.url, { model: 'm', blockSize: 4 }), ns);
  fakeIndex(bus, holds, ns);
  router = await startRouter(bus, { port: 0, namespace: ns, id: 'r-diag', indexTimeoutMs: 500, registryTtlMs: 0, diagIntervalMs: 100 });
  await router.waitForWorkers(1);
});
routerSide.after(async () => {
  await router.close();
  await engine.close();
  await bus.close();
});

async function complete(body: Record<string, unknown>): Promise<string> {
  const res = await request(`${router.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'm', max_tokens: 1, ...body }), headers: { 'content-type': 'application/json' } });
  const text = await res.body.text();
  assert.is(res.statusCode, 200, text);
  return text;
}

async function routerGauge(name: string): Promise<number | undefined> {
  const m = await router.metrics.registry.getSingleMetric(name)?.get();
  return m?.values.find((v) => v.labels.worker === 'w-up')?.value;
}

routerSide('engine and router agree: no router finding (the line still says no shim reports on the stub)', async () => {
  engine.extraTokens = 0;
  engine.cached = 0;
  await complete({ prompt: tokens(40, 500) });
  const { v, line } = await verdictUntil(bus, 'w-up', (x) => (x.router?.promptCompared ?? 0) >= 1, 'a compared request', ns);
  assert.equal(v.problems, [], line);
  assert.ok(v.noShim);
  assert.match(line, /^w-up {2}PROBLEM {2}no-shim: registered, but no shim reported on it/);
});

routerSide("the engine counts 3 more prompt tokens than the router: prompt-token-mismatch (JSON and a stream's usage chunk)", async () => {
  engine.extraTokens = 3;
  await complete({ prompt: tokens(40, 600) });
  const sse = await complete({ prompt: tokens(44, 700), stream: true, stream_options: { include_usage: true } });
  assert.match(sse, /"prompt_tokens":47/, 'the client stream is passed through whole');
  assert.match(sse, /data: \[DONE\]/);
  const { v, line } = await verdictUntil(bus, 'w-up', (x) => x.problems.some((p) => p.code === 'prompt-token-mismatch') && x.router!.lastRouterTokens === 44, 'prompt-token-mismatch', ns);
  assert.not.ok(v.ok);
  assert.match(line, /prompt-token-mismatch: the router counted 44 prompt tokens where the engine's usage.prompt_tokens said 47 \(2 of the last 3 requests differ\): the router's tokenizer or chat template is not the engine's/);
  assert.match(line, /check: kvgate router --tokenizer must be the served model's tokenizer.json/);
  assert.is(await routerGauge('kvgate_router_worker_prompt_token_mismatch'), 1);
  engine.extraTokens = 0;
});

routerSide('the index predicts a cached prefix the engine never reports: cache-prediction-mismatch', async () => {
  const prompt = tokens(64, 900); // 16 blocks of 4
  holds.set('w-up', new Set(prefixHashes('m', '', 4, prompt)));
  engine.cached = 0;
  for (let i = 0; i < 4; i++) await complete({ prompt });
  const four = await examine(bus, { namespace: ns, waitMs: 100 });
  assert.not.ok(four.verdicts[0]!.problems.some((p) => p.code === 'cache-prediction-mismatch'), 'four samples are not enough');
  await complete({ prompt });
  const { v, line } = await verdictUntil(bus, 'w-up', (x) => x.problems.some((p) => p.code === 'cache-prediction-mismatch'), 'cache-prediction-mismatch', ns);
  assert.is(v.router!.cacheSamples, 5);
  assert.match(line, /cache-prediction-mismatch: the index predicted 300 cached prompt tokens over its last 5 requests with a predicted hit, the engine reported 0 \(usage.prompt_tokens_details.cached_tokens\): the index claims blocks the engine does not reuse \(check: the shim's --kv-events endpoint belongs to this engine/);
  assert.is(await routerGauge('kvgate_router_worker_cache_prediction_mismatch'), 1);
  holds.clear();
});
routerSide.run();

// ---- a healthy stack ---------------------------------------------------------------------------------------
const healthy = suite('doctor: a healthy stack');
healthy('simulated engines, shims, indexer and a router: every worker ok, with checks done', async () => {
  const stack = await startStack({ engines: 2, routers: 1, engine: { speedup: 50, numBlocks: 2048, blockSize: 16 }, router: { indexTimeoutMs: 500 } });
  try {
    const r = stack.routers[0]!;
    const prefix = tokens(320, 40_000); // 20 blocks
    const post = async (body: unknown) => {
      const res = await request(`${r.url}/v1/completions`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
      return { worker: res.headers['x-kvgate-worker'] as string, json: (await res.body.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } } };
    };
    const first = await post({ model: 'qwen3-8b', prompt: prefix, max_tokens: 2 });
    // wait until the index holds the prefix (events: engine → shim → indexer)
    for (let i = 0; i < 200; i++) {
      const pick = await request(`${r.url}/v1/route`, { method: 'POST', body: JSON.stringify({ model: 'qwen3-8b', prompt: prefix }), headers: { 'content-type': 'application/json' } });
      const j = (await pick.body.json()) as { candidates: { worker: string; indexOverlap: number }[] };
      if (j.candidates.find((c) => c.worker === first.worker)?.indexOverlap === 20) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    for (let i = 0; i < 6; i++) {
      const again = await post({ model: 'qwen3-8b', prompt: [...prefix, ...tokens(16, 90_000 + i * 100)], max_tokens: 2 });
      assert.is(again.json.usage.prompt_tokens_details.cached_tokens, 320);
    }
    const ex = await examine(stack.bus, { namespace: stack.namespace, waitMs: 300 });
    const lines = ex.verdicts.map((v) => formatLine(v, ex));
    assert.equal(ex.verdicts.map((v) => [v.worker, v.ok]), [['sim-0', true], ['sim-1', true]], lines.join('\n'));
    const holder = ex.verdicts.find((v) => v.worker === first.worker)!;
    assert.ok(holder.router!.cacheSamples >= 5, 'the cache prediction was checked');
    assert.is(holder.router!.predictedTokens, holder.router!.cachedTokens);
    assert.match(formatLine(holder, ex), new RegExp(`^${first.worker} {2}ok {2}\\(last KV event \\d+\\.\\d s ago; block size 16; \\d+ prompt counts and \\d+ cache predictions checked by 1 router\\)$`));
  } finally {
    await stack.close();
  }
});
healthy.run();


