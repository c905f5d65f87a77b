/**
 * deploy/grafana/kvgate.json: valid JSON with panels, and every kvgate metric its queries name is one a router or a
 * shim registers (a renamed metric breaks this test, not a dashboard in production).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { MemoryBus } from '@kvgate/protocol';
import { startRouter } from '../packages/router/src/index.js';
import { createMetrics } from '../packages/worker-shim/src/metrics.js';

const file = new URL('../deploy/grafana/kvgate.json', import.meta.url);

test('every metric the Grafana dashboard queries exists', async () => {
  const dash = JSON.parse(readFileSync(file, 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
  assert.ok(dash.panels.length >= 6);
  const used = new Set<string>();
  for (const p of dash.panels) for (const t of p.targets) for (const m of t.expr.matchAll(/\b(kvgate_[a-z0-9_]+)/g)) used.add(m[1]!.replace(/_(bucket|sum|count)$/, ''));
  const bus = new MemoryBus();
  const router = await startRouter(bus, { port: 0, registryTtlMs: 0 });
  try {
    const known = new Set([...router.metrics.registry.getMetricsAsArray(), ...createMetrics('w').registry.getMetricsAsArray()].map((m) => m.name));
    const missing = [...used].filter((m) => !known.has(m));
    assert.equal(missing, [], `queried but not registered: ${missing.join(', ')}`);
    assert.ok(used.has('kvgate_router_predicted_cached_tokens_total') && used.has('kvgate_router_ttft_seconds'));
  } finally {
    await router.close();
    await bus.close();
  }
});

test.run();
