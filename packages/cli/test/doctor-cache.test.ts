/**
 * `kvgate doctor --router URL` (cache-gap.ts): predicted vs actual cache hits per worker and where a gap comes from.
 * The judge on hand-made facts, then as a user runs it against a real router in front of a sim engine (fake index):
 * requests the index predicts and the engine holds (the prediction holds), then requests the index predicts and
 * the engine never saw (a gap; the router's diag gauge flags the worker as well → hash mismatch). The other causes
 * (eviction after routing, index lag, index fallbacks) on hand-made facts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { request } from 'undici';
import { initHashing, prefixHashesU64 } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startSimEngine } from '@kvgate/sim-engine';
import { startRouter } from '@kvgate/router';
import { explainGap, scrapeCacheFacts, type CacheFacts } from '../src/commands/cache-gap.js';
import { fakeIndex, register, registration, tokens } from '../../router/test/helpers.js';

await initHashing();
const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

const facts = (over: Partial<CacheFacts>): CacheFacts => ({ worker: 'w', promptTokens: 1000, predictedTokens: 500, actualTokens: 500, requests: 10, shortRequests: 0, predictionMismatch: false, indexFallbacks: 0, ...over });

test('the judge: holds, hash mismatch, eviction after routing, index lag, index fallbacks, no traffic', () => {
  assert.is(explainGap(facts({})).cause, 'holds');
  assert.is(explainGap(facts({ actualTokens: 470 })).problem, false); // 3 points: within GAP_POINTS
  assert.is(explainGap(facts({ actualTokens: 0 })).cause, 'hash-mismatch');
  assert.is(explainGap(facts({ actualTokens: 300, predictionMismatch: true })).cause, 'hash-mismatch');
  const ev = explainGap(facts({ actualTokens: 300, shortRequests: 4, kvUsage: 0.97 }));
  assert.is(ev.cause, 'evicted-after-routing');
  assert.ok(ev.message.includes('4 of 10') && ev.message.includes('97.0% full'), ev.message);
  assert.is(explainGap(facts({ actualTokens: 800 })).cause, 'index-lag');
  assert.is(explainGap(facts({ actualTokens: 800, indexFallbacks: 3 })).cause, 'index-fallback');
  const none = explainGap(facts({ promptTokens: 0, predictedTokens: 0, actualTokens: 0, requests: 0 }));
  assert.is(none.cause, 'no-traffic');
  assert.is(none.problem, false);
  assert.is(explainGap(facts({ engine: { queries: 200, hits: 50 } })).engine, 0.25);
});

function doctor(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'doctor', ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'error' }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('against a real router and sim engine: the prediction holds, then a gap, each explained; --json', async () => {
  const MODEL = 'doc-model';
  const bus = await createBus();
  const held = new Set<bigint>();
  const index = fakeIndex(bus, new Map([['w1', held]]));
  const engine = await startSimEngine({ model: MODEL, blockSize: 16, numBlocks: 256, speedup: 50, kvEventsEndpoint: null, kvReplayEndpoint: null });
  await register(bus, registration('w1', engine.url, { model: MODEL, blockSize: 16 }));
  const router = await startRouter(bus, { port: 0, indexTimeoutMs: 1000, registryTtlMs: 0 });
  const post = async (url: string, prompt: number[]) => {
    const res = await request(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }) });
    assert.is(res.statusCode, 200);
    await res.body.dump();
  };
  try {
    await router.waitForWorkers(1);
    for (let i = 0; i < 3; i++) {
      const p = tokens(64, 100 + i * 1000);
      await post(engine.url, p); // the engine holds it
      for (const h of prefixHashesU64(MODEL, null, 16, p)) held.add(h);
      await post(router.url, p);
    }
    const a = await scrapeCacheFacts([router.url], new Map([['w1', engine.url]]));
    assert.equal(a.errors, []);
    const va = explainGap(a.facts[0]!);
    assert.is(va.cause, 'holds', va.message);
    assert.is(va.predicted, 0.75);
    assert.ok(va.engine !== null && va.engine > 0, 'the engine\'s own counters read');
    const ok = await doctor('--router', router.url);
    assert.is(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /^w1 {2}cache ok {2}predicted 75\.0%, actual 75\.0% of 192 prompt tokens over 3 requests: the prediction holds/m);

    for (let i = 0; i < 9; i++) {
      const p = tokens(64, 50_000 + i * 1000); // predicted by the index, never seen by the engine
      for (const h of prefixHashesU64(MODEL, null, 16, p)) held.add(h);
      await post(router.url, p);
    }
    const bad = await doctor('--router', router.url, '--json');
    assert.is(bad.code, 1, bad.stdout + bad.stderr);
    const line = JSON.parse(bad.stdout.trim().split('\n')[0]!);
    assert.is(line.worker, 'w1');
    assert.is(line.ok, false);
    assert.is(line.cache.predicted, 0.75);
    assert.is(line.cache.actual, 0.1875); // 3 × 48 of 12 × 64
    // 9 of 12 found nothing the index promised: the router's own diag flags the worker too → a hash mismatch
    assert.is(line.cache.cause, 'hash-mismatch', line.cache.message);
    assert.ok(line.cache.message.includes('PYTHONHASHSEED'), line.cache.message);
  } finally {
    await router.close();
    index.unsubscribe();
    await engine.close();
    await bus.close();
  }
});

test.run();
