/**
 * The P/D timing model: named KV fabrics and Gb/s (--kv-fabric), the decode engine's link as one FIFO resource,
 * the last prompt token after a transfer timed as a decode row, colocated prefill chunks stalling decodes in the
 * same step, and an engine with an API key (vLLM --api-key) guarding its /v1 routes; the pull's NIXL metrics.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_TIMING, KV_FABRICS, Scheduler, bytesPerBlock, decodeMs, linkTransfer, parseKvFabric, prefillMs, resolveProfile, startSimEngine } from '@kvgate/sim-engine';
import { post, tokens, metricValue } from './helpers.js';

test('--kv-fabric: names, Gb/s, and a clear error otherwise', () => {
  assert.equal(parseKvFabric('rdma-400g'), KV_FABRICS['rdma-400g']);
  assert.equal(parseKvFabric('TCP-25G'), { bandwidthGBps: 3.125, latencyMs: 2 });
  assert.equal(parseKvFabric('100'), { bandwidthGBps: 12.5, latencyMs: 1 });
  assert.equal(parseKvFabric('800g'), { bandwidthGBps: 100, latencyMs: 1 });
  for (const bad of ['', 'fast', '-5', '0', 'rdma']) assert.throws(() => parseKvFabric(bad), /rdma-400g, roce-200g, tcp-25g or a line rate/);
});

test('bytes per token from the profile\'s model shape; a pull costs latency + bytes / bandwidth, queued on the link', () => {
  const p = resolveProfile({ model: 'qwen3-8b' });
  // 2 (K and V) × 36 layers × 8 KV heads × 128 × 2 bytes
  assert.is(bytesPerBlock(p.shape, 1), 147_456);
  assert.is(bytesPerBlock(resolveProfile({ model: 'llama-3.1-70b', tensorParallelSize: 4 }).shape, 1), 2 * 80 * 8 * 128 * 2);
  const bytes = 6000 * 147_456; // a 6,000-token prompt: 885 MB
  const rdma = linkTransfer(KV_FABRICS['rdma-400g'], bytes, 100, 0);
  assert.ok(Math.abs(rdma.ms - (0.5 + bytes / 50e9 * 1e3)) < 1e-9, `${rdma.ms}`);
  const tcp = linkTransfer(KV_FABRICS['tcp-25g'], bytes, 100, 0);
  assert.ok(tcp.ms > 15 * rdma.ms, `tcp ${tcp.ms} vs rdma ${rdma.ms}`);
  // a second pull asked while the first is on the wire waits for it
  const second = linkTransfer(KV_FABRICS['rdma-400g'], bytes, 101, rdma.freeAtMs);
  assert.ok(Math.abs(second.doneMs - (rdma.freeAtMs + bytes / 50e9 * 1e3 + 0.5)) < 1e-9);
  assert.is(linkTransfer(KV_FABRICS['rdma-400g'], 0, 5, 3).ms, 0);
});

test('colocated: a prefill chunk runs in the same step as the decodes and stalls them; after a transfer the last token is a decode row', () => {
  const s = new Scheduler({ numBlocks: 4096, blockSize: 16, maxNumBatchedTokens: 8192, hashSeed: 'x' });
  s.submit({ id: 'a', promptTokens: tokens(160, 1), maxTokens: 50, arrivalMs: 0 });
  let now = 0;
  for (let i = 0; i < 3; i++) now = s.step(now)!.endMs; // a is decoding
  const plain = s.step(now)!;
  now = plain.endMs;
  assert.is(plain.prefillTokens, 0);
  assert.is(plain.decodeSeqs, 1);
  s.submit({ id: 'b', promptTokens: tokens(6000, 50_000), maxTokens: 4, arrivalMs: now });
  const mixed = s.step(now)!;
  now = mixed.endMs;
  assert.is(mixed.prefillTokens, 6000, 'the whole prompt in one chunk (budget 8192)');
  assert.is(mixed.decodeSeqs, 1, 'a decoded in the same step');
  assert.ok(mixed.outputs.some((o) => o.id === 'a'), 'a got its token at the end of the mixed step');
  assert.ok(mixed.durationMs > plain.durationMs + prefillMs(DEFAULT_TIMING, 6000) - 1, `a's gap: ${mixed.durationMs} ms vs ${plain.durationMs} ms`);
  // a smaller budget chunks the prompt: more steps carry prefill, each stalls a less
  const c = new Scheduler({ numBlocks: 4096, blockSize: 16, maxNumBatchedTokens: 2048, hashSeed: 'x' });
  c.submit({ id: 'a', promptTokens: tokens(160, 1), maxTokens: 50, arrivalMs: 0 });
  let t = c.step(0)!.endMs;
  t = c.step(t)!.endMs;
  c.submit({ id: 'b', promptTokens: tokens(6000, 50_000), maxTokens: 4, arrivalMs: t });
  const chunks: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = c.step(t)!;
    t = r.endMs;
    chunks.push(r.prefillTokens);
    assert.is(r.decodeSeqs, 1);
  }
  assert.equal(chunks, [2047, 2047, 1906], "2,048 tokens a step, one of them a's decode");
  // decode side of P/D: the prompt's KV arrived; its last token rides the decode batch (no prefill fixed cost)
  const d = new Scheduler({ numBlocks: 4096, blockSize: 16, hashSeed: 'y' });
  d.submit({ id: 'a', promptTokens: tokens(160, 1), maxTokens: 50, arrivalMs: 0 });
  t = d.step(0)!.endMs;
  t = d.step(t)!.endMs;
  d.submit({ id: 'r', promptTokens: tokens(6000, 50_000), maxTokens: 4, arrivalMs: t, remoteKv: true });
  const r = d.step(t)!;
  assert.is(r.prefillTokens, 0);
  assert.is(r.decodeSeqs, 2);
  assert.ok(Math.abs(r.durationMs - decodeMs(DEFAULT_TIMING, d.stats().kvUsage, 2)) < 5, `${r.durationMs}`);
  assert.is(d.stats().promptTokensTransferred, 5999);
});

test('an engine with an API key: /v1 needs the key (401 otherwise), /metrics and /health stay open; a pull is in the NIXL metrics', async () => {
  const pre = await startSimEngine({ role: 'prefill', engineId: 'kp', speedup: 50, numBlocks: 512, kvReplayEndpoint: null, kvEventsEndpoint: null, apiKey: 'k-1' });
  const dec = await startSimEngine({ role: 'decode', engineId: 'kd', speedup: 50, numBlocks: 512, kvReplayEndpoint: null, kvEventsEndpoint: null, transfer: KV_FABRICS['tcp-25g'] });
  try {
    const body = { prompt: tokens(320, 7), max_tokens: 1, kv_transfer_params: { do_remote_decode: true } };
    const no = await post(pre.url + '/v1/completions', body);
    assert.is(no.status, 401);
    assert.equal(no.json, { error: 'Unauthorized' });
    assert.is((await post(pre.url + '/v1/completions', body, { authorization: 'Bearer wrong' })).status, 401);
    const ok = await post(pre.url + '/v1/completions', body, { authorization: 'Bearer k-1' });
    assert.is(ok.status, 200, ok.text);
    assert.is((await fetch(pre.url + '/health')).status, 200);
    assert.is((await fetch(pre.url + '/metrics')).status, 200);
    const r = await post(dec.url + '/v1/completions', { prompt: tokens(320, 7), max_tokens: 2, kv_transfer_params: ok.json.kv_transfer_params });
    assert.is(r.status, 200, r.text);
    assert.is(await metricValue(dec.url, 'vllm:nixl_xfer_time_seconds_count'), 1);
    assert.is(await metricValue(dec.url, 'vllm:nixl_bytes_transferred_sum'), 20 * 16 * 147_456);
    // 20 blocks over 25 GbE: 2 ms + 47.2 MB / 3.125 GB/s = 17.1 ms of modelled time
    const xfer = await metricValue(dec.url, 'vllm:nixl_xfer_time_seconds_sum');
    assert.ok(Math.abs(xfer - 0.0171) < 0.0005, String(xfer));
  } finally {
    await pre.close();
    await dec.close();
  }
});

test.run();
