/**
 * OpenTelemetry across the request path: one trace, router span → shim span → engine span, parented through the
 * W3C traceparent header on each HTTP hop (real sockets, in-memory span exporter). A P/D request: route → decode
 * shim → prefill leg → prefill engine, and decode shim → decode engine → KV transfer, then decode.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { NodeSDK, tracing } from '@opentelemetry/sdk-node';
import { MemoryBus } from '../packages/protocol/src/index.js';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startShim } from '../packages/worker-shim/src/index.js';
import { startIndexer } from '../packages/indexer/src/index.js';
import { startRouter } from '../packages/router/src/index.js';

const exporter = new tracing.InMemorySpanExporter();
const sdk = new NodeSDK({ serviceName: 'kvgate-test', spanProcessors: [new tracing.SimpleSpanProcessor(exporter)] });
sdk.start();

test('a routed request is one trace: kvgate.route → shim.proxy → engine.generate', async () => {
  const bus = new MemoryBus();
  const indexer = await startIndexer(bus, { namespace: 'trace' });
  const engine = await startSimEngine({ speedup: 50, numBlocks: 512, engineId: 'e0' });
  const shim = await startShim(bus, {
    worker: 'w0', model: engine.model, role: 'both', engineUrl: engine.url, kvEvents: engine.kvEventsEndpoint!,
    namespace: 'trace', port: 0, host: '127.0.0.1', blockSize: engine.blockSize, capacityBlocks: engine.numBlocks,
  });
  const router = await startRouter(bus, { port: 0, namespace: 'trace', id: 'r0', index: indexer.client });
  try {
    await router.waitForWorkers(1, 10_000);
    const res = await request(`${router.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: engine.model, prompt: Array.from({ length: 64 }, (_, i) => i + 100), max_tokens: 3 }),
    });
    assert.is(res.statusCode, 200);
    await res.body.text();
    let spans = exporter.getFinishedSpans();
    for (let i = 0; i < 100 && !['kvgate.route', 'shim.proxy', 'engine.generate'].every((n) => spans.some((s) => s.name === n)); i++) {
      await new Promise((r) => setTimeout(r, 20));
      spans = exporter.getFinishedSpans();
    }
    const byName = (n: string) => spans.find((s) => s.name === n);
    const route = byName('kvgate.route'), proxy = byName('shim.proxy'), gen = byName('engine.generate');
    assert.ok(route && proxy && gen, `spans seen: ${spans.map((s) => s.name).join(', ')}`);
    const traceId = route!.spanContext().traceId;
    assert.is(proxy!.spanContext().traceId, traceId, 'shim span in the router trace');
    assert.is(gen!.spanContext().traceId, traceId, 'engine span in the router trace');
    const parentOf = (s: typeof route) => (s as unknown as { parentSpanContext?: { spanId: string }; parentSpanId?: string }).parentSpanContext?.spanId ?? (s as unknown as { parentSpanId?: string }).parentSpanId;
    assert.is(parentOf(proxy), route!.spanContext().spanId, 'shim span is a child of the router span');
    assert.is(parentOf(gen), proxy!.spanContext().spanId, 'engine span is a child of the shim span');
    assert.is(gen!.attributes['gen_ai.usage.input_tokens'], 64);
  } finally {
    await router.close();
    await shim.stop();
    await engine.close();
    await indexer.close();
    await bus.close();
  }
});

test('a P/D request is one trace: route → shim → prefill (prefill engine) → transfer → decode (decode engine)', async () => {
  exporter.reset();
  const bus = new MemoryBus();
  const ns = 'trace-pd';
  const indexer = await startIndexer(bus, { namespace: ns });
  const pEngine = await startSimEngine({ speedup: 50, numBlocks: 1024, engineId: 'tp', role: 'prefill' });
  const dEngine = await startSimEngine({ speedup: 50, numBlocks: 1024, engineId: 'td', role: 'decode' });
  const shims = await Promise.all(
    [pEngine, dEngine].map((e) =>
      startShim(bus, { worker: `w-${e.role}`, model: e.model, role: e.role, engineUrl: e.url, kvEvents: e.kvEventsEndpoint!, namespace: ns, port: 0, host: '127.0.0.1', blockSize: e.blockSize, capacityBlocks: e.numBlocks }),
    ),
  );
  const router = await startRouter(bus, { port: 0, namespace: ns, id: 'r-pd', index: indexer.client, pdMinPrefillTokens: 64 });
  try {
    await router.waitForWorkers(2, 10_000);
    const res = await request(`${router.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: pEngine.model, prompt: Array.from({ length: 400 }, (_, i) => i + 500), max_tokens: 4 }),
    });
    assert.is(res.statusCode, 200);
    assert.is(res.headers['x-kvgate-prefill'], 'w-prefill');
    await res.body.text();
    const names = ['kvgate.route', 'shim.proxy', 'shim.prefill', 'engine.generate', 'engine.prefill', 'engine.kv_transfer', 'engine.decode'];
    let spans = exporter.getFinishedSpans();
    const ready = () => names.every((n) => spans.some((s) => s.name === n)) && spans.filter((s) => s.name === 'engine.generate').length === 2;
    for (let i = 0; i < 100 && !ready(); i++) {
      await new Promise((r) => setTimeout(r, 20));
      spans = exporter.getFinishedSpans();
    }
    assert.ok(ready(), `spans seen: ${spans.map((s) => s.name).join(', ')}`);
    const one = (name: string, engine?: string) => {
      const found = spans.filter((s) => s.name === name && (engine === undefined || s.attributes['kvgate.engine'] === engine));
      assert.is(found.length, 1, `${name}${engine ? ` on ${engine}` : ''}: ${found.length} spans`);
      return found[0]!;
    };
    type S = ReturnType<typeof one>;
    const parentOf = (s: S) => (s as unknown as { parentSpanContext?: { spanId: string }; parentSpanId?: string }).parentSpanContext?.spanId ?? (s as unknown as { parentSpanId?: string }).parentSpanId;
    const childOf = (c: S, p: S, what: string) => assert.is(parentOf(c), p.spanContext().spanId, what);
    const route = one('kvgate.route'), proxy = one('shim.proxy'), leg = one('shim.prefill');
    const pGen = one('engine.generate', 'tp'), pPhase = one('engine.prefill', 'tp');
    const dGen = one('engine.generate', 'td'), xfer = one('engine.kv_transfer', 'td'), decode = one('engine.decode', 'td');
    for (const s of [proxy, leg, pGen, pPhase, dGen, xfer, decode]) assert.is(s.spanContext().traceId, route.spanContext().traceId, `${s.name} in the request's trace`);
    childOf(proxy, route, 'the decode shim under the route');
    childOf(leg, proxy, 'the prefill leg under the decode shim');
    childOf(pGen, leg, 'the prefill engine under the prefill leg');
    childOf(pPhase, pGen, 'its prefill phase');
    childOf(dGen, proxy, 'the decode engine under the decode shim');
    childOf(xfer, dGen, 'the KV transfer under the decode engine');
    childOf(decode, dGen, 'the decode phase under the decode engine');
    // in that order: prefill, then transfer, then decode (a span's start time has ms resolution here: 1 ms slack)
    const t = (s: S, k: 'startTime' | 'endTime') => s[k][0] * 1e9 + s[k][1];
    assert.ok(t(leg, 'endTime') <= t(xfer, 'startTime') + 1e6, 'the transfer starts after the prefill leg');
    assert.ok(t(xfer, 'endTime') <= t(decode, 'startTime') + 1e6, `the decode after the transfer: ${t(xfer, 'startTime')} ${t(xfer, 'endTime')} ${t(decode, 'startTime')} ${t(decode, 'endTime')}`);
    assert.is(pGen.attributes['kvgate.pd'], 'prefill');
    assert.is(dGen.attributes['kvgate.pd'], 'decode');
    assert.is(xfer.attributes['kvgate.transfer.from'], 'tp');
    assert.is(xfer.attributes['kvgate.transfer.bytes'], 25 * 16 * 147_456, '25 blocks of the prompt, modelled bytes');
    assert.is(route.attributes['kvgate.pd.split'], true);
    assert.is(route.attributes['kvgate.pd.reason'], 'split');
    assert.is(route.attributes['kvgate.prefill.worker'], 'w-prefill');
  } finally {
    await router.close();
    for (const s of shims) await s.stop();
    await pEngine.close();
    await dEngine.close();
    await indexer.close();
    await bus.close();
  }
});

test.after(async () => {
  await sdk.shutdown();
});

test.run();
