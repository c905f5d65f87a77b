/** The router's usage tap and per-worker judge (diag.ts), without sockets. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Registry } from 'prom-client';
import { logger } from '@kvgate/protocol';
import { RouterDiag, UsageTap } from '../src/diag.js';

const sse = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;

test('JSON body: usage read across chunk boundaries', () => {
  const body = JSON.stringify({ id: 'x', choices: [{ text: 'hi' }], usage: { prompt_tokens: 120, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 96 } } });
  const tap = new UsageTap(false);
  for (let i = 0; i < body.length; i += 7) tap.push(Buffer.from(body.slice(i, i + 7)));
  assert.equal(tap.usage(), { promptTokens: 120, cachedTokens: 96 });
});

test('JSON body without prompt_tokens_details: cached tokens unknown, not 0', () => {
  const tap = new UsageTap(false);
  tap.push(Buffer.from(JSON.stringify({ usage: { prompt_tokens: 5 } })));
  assert.equal(tap.usage(), { promptTokens: 5, cachedTokens: null });
  const none = new UsageTap(false);
  none.push(Buffer.from('{"choices":[]}'));
  assert.is(none.usage(), null);
});

test('a JSON body over 4 MiB is not kept', () => {
  const tap = new UsageTap(false);
  const big = Buffer.alloc(1024 * 1024, 0x20);
  tap.push(Buffer.from('{"usage":{"prompt_tokens":1},"pad":"'));
  for (let i = 0; i < 5; i++) tap.push(big);
  tap.push(Buffer.from('"}'));
  assert.is(tap.usage(), null);
});

test('SSE: the final usage chunk after many tokens, [DONE] last; only the tail is kept', () => {
  const tap = new UsageTap(true);
  for (let i = 0; i < 5000; i++) tap.push(Buffer.from(sse({ choices: [{ index: 0, text: `token${i} ` }], usage: null })));
  tap.push(Buffer.from(sse({ choices: [], usage: { prompt_tokens: 77, completion_tokens: 5000, prompt_tokens_details: { cached_tokens: 64 } } })));
  tap.push(Buffer.from('data: [DONE]\n\n'));
  assert.equal(tap.usage(), { promptTokens: 77, cachedTokens: 64 });
  const noUsage = new UsageTap(true);
  noUsage.push(Buffer.from(sse({ choices: [{ text: 'a' }] }) + 'data: [DONE]\n\n'));
  assert.is(noUsage.usage(), null, 'the client did not ask for include_usage');
});

async function gauge(reg: Registry, name: string, worker: string): Promise<number | undefined> {
  const m = await reg.getSingleMetric(name)?.get();
  return m?.values.find((v) => v.labels.worker === worker)?.value;
}

test('RouterDiag: prompt counts and cache predictions per worker set the gauges; a batch is not compared', async () => {
  const registry = new Registry();
  const d = new RouterDiag({ registry, log: logger('test') });
  d.observe('a', { routerTokens: 64, overlapBlocks: 16, blockSize: 4, batch: false }, { promptTokens: 64, cachedTokens: 60 });
  d.observe('b', { routerTokens: 64, overlapBlocks: null, blockSize: 4, batch: false }, { promptTokens: 70, cachedTokens: null });
  d.observe('a', { routerTokens: 10, overlapBlocks: null, blockSize: 4, batch: true }, { promptTokens: 99, cachedTokens: 0 });
  assert.is(await gauge(registry, 'kvgate_router_worker_prompt_token_mismatch', 'a'), 0);
  assert.is(await gauge(registry, 'kvgate_router_worker_prompt_token_mismatch', 'b'), 1);
  for (let i = 0; i < 4; i++) d.observe('c', { routerTokens: 64, overlapBlocks: 16, blockSize: 4, batch: false }, { promptTokens: 64, cachedTokens: 0 });
  assert.is(await gauge(registry, 'kvgate_router_worker_cache_prediction_mismatch', 'c'), 0, 'four samples: not yet');
  d.observe('c', { routerTokens: 64, overlapBlocks: 16, blockSize: 4, batch: false }, { promptTokens: 64, cachedTokens: 0 });
  assert.is(await gauge(registry, 'kvgate_router_worker_cache_prediction_mismatch', 'c'), 1);
  const entries = d.check();
  assert.equal(entries.map((e) => [e.worker, e.findings.map((f) => f.code)]), [['a', []], ['b', ['prompt-token-mismatch']], ['c', ['cache-prediction-mismatch']]]);
  assert.is(entries[0]!.router!.promptCompared, 1, 'the batch was not counted');
  assert.is(entries[2]!.router!.predictedTokens, 5 * 60, 'capped at 15 of 16 blocks: the last token is always computed');
  d.forget('c');
  assert.is(await gauge(registry, 'kvgate_router_worker_cache_prediction_mismatch', 'c'), undefined);
});

test.run();
