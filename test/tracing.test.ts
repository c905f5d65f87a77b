/**
 * OpenTelemetry across the request path: one trace, router span → shim span → engine span, parented through the
 * W3C traceparent header on each HTTP hop (real sockets, in-memory span exporter).
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
    await sdk.shutdown();
  }
});

test.run();
