import { initHashing } from '@kvgate/protocol';
import { loadTokenizer } from '@kvgate/protocol/tokenizer';
import { startStack } from '../src/workload/stack.js';
import { LoadClient } from '../src/workload/client.js';
await initHashing();
const tokenizer = await loadTokenizer();
for (const policy of ['kv', 'round-robin'] as const) {
  const st = await startStack({ engines: 4, tokenizer, engine: { speedup: 4, numBlocks: 2048 }, router: { policy, indexTimeoutMs: 50 } });
  const c = new LoadClient(st.routers.map((r) => r.url));
  const sys = 'You are helpful. ' + 'lorem ipsum dolor sit amet '.repeat(250);
  const out: string[] = [];
  for (let i = 0; i < 8; i++) {
    const body = JSON.stringify({ model: 'qwen3-8b', messages: [{ role: 'system', content: sys }, { role: 'user', content: `question ${i} ` + 'why '.repeat(100) }], max_tokens: 8, ignore_eos: true });
    const t0 = performance.now();
    const r = await c.send('/v1/chat/completions', body);
    out.push(`${r.worker} ttft=${r.ttftMs.toFixed(1)} cached=${r.cachedTokens}/${r.promptTokens} e2e=${(performance.now() - t0).toFixed(1)}`);
  }
  const m = await st.routers[0]!.metrics.registry.getSingleMetricAsString('kvgate_router_route_seconds');
  console.log(policy, out.join('\n  '), '\n', m.split('\n').filter((l) => /_sum|_count/.test(l)).join(' '));
  await c.close();
  await st.close();
}
