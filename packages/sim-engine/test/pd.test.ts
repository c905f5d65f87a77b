/** P/D disaggregation between two engines over real HTTP: descriptor round trip, bad and expired descriptors. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { startSimEngine, type SimEngineHandle } from '@kvgate/sim-engine';
import { EventCollector, post, tokens, metricValue, sleep } from './helpers.js';

let prefill: SimEngineHandle;
let decode: SimEngineHandle;
let decodeEvents: EventCollector;

test.before(async () => {
  prefill = await startSimEngine({ role: 'prefill', engineId: 'pre-0', speedup: 50, numBlocks: 512, kvReplayEndpoint: null, kvHoldTimeoutS: 600 });
  decode = await startSimEngine({ role: 'decode', engineId: 'dec-0', speedup: 50, numBlocks: 512, kvReplayEndpoint: null });
  decodeEvents = await EventCollector.connect(decode.kvEventsEndpoint!);
});
test.after(async () => {
  await decodeEvents.close();
  await prefill.close();
  await decode.close();
});

async function prefillFor(prompt: number[]) {
  const r = await post(prefill.url + '/v1/completions', { prompt, max_tokens: 1, kv_transfer_params: { do_remote_decode: true } });
  assert.is(r.status, 200, r.text);
  return r.json.kv_transfer_params;
}

test('descriptor round trip: prefill holds blocks, decode pulls them and decodes without a local prefill', async () => {
  const prompt = tokens(700, 31);
  const d = await prefillFor(prompt);
  assert.is(d.do_remote_prefill, true);
  assert.is(d.do_remote_decode, false);
  assert.is(d.remote_engine_id, 'pre-0');
  assert.is(d.remote_block_ids.length, Math.ceil(700 / 16));
  assert.is(d.remote_host, '127.0.0.1');
  assert.is(d.remote_port, prefill.port);
  assert.is(d.tp_size, 1);
  assert.type(d.remote_request_id, 'string');
  assert.is(prefill.stats().held, 1, 'blocks pinned for the decode side');

  const before = await metricValue(decode.url, 'vllm:prompt_tokens_total');
  const r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 6, kv_transfer_params: d });
  assert.is(r.status, 200, r.text);
  assert.is(r.json.usage.completion_tokens, 6);
  assert.is(r.json.usage.prompt_tokens, 700);
  assert.is((await metricValue(decode.url, 'vllm:prompt_tokens_total')) - before, 1, 'decode computed only the last prompt token');
  assert.is(prefill.stats().held, 0, 'pull released the prefill side’s blocks');
  assert.is(prefill.stats().freeBlocks, 512);

  // the pulled blocks are the decode engine's own now: BlockStored with the prompt's tokens, its own hashes
  await decodeEvents.waitFor(() => decodeEvents.events().some((x) => x.type === 'BlockStored'), 'decode BlockStored');
  const stored = decodeEvents.events().filter((x) => x.type === 'BlockStored');
  assert.is(stored[0].parent_block_hash, null);
  assert.equal(stored.flatMap((x) => x.token_ids).slice(0, 688), prompt.slice(0, 688));

  // the same prompt again on the decode engine is now a local prefix hit
  const again = await post(decode.url + '/v1/completions', { prompt, max_tokens: 1 });
  assert.is(again.json.usage.prompt_tokens_details.cached_tokens, 688);
});

test('a used, unknown or malformed descriptor fails cleanly', async () => {
  const prompt = tokens(100, 32);
  const d = await prefillFor(prompt);
  const ok = await post(decode.url + '/v1/completions', { prompt, max_tokens: 2, kv_transfer_params: d });
  assert.is(ok.status, 200);
  // reused: the prefill engine no longer holds it
  let r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 2, kv_transfer_params: d });
  assert.is(r.status, 400);
  assert.is(r.json.error.kvg_code, 'KVG_BAD_DESCRIPTOR');
  assert.match(r.json.error.message, /unknown or expired/);
  // malformed
  r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 2, kv_transfer_params: { do_remote_prefill: true, remote_engine_id: 'x' } });
  assert.is(r.status, 400);
  assert.is(r.json.error.kvg_code, 'KVG_BAD_DESCRIPTOR');
  assert.match(r.json.error.message, /remote_block_ids/);
  // unreachable engine
  r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 2, kv_transfer_params: { ...d, remote_port: 1 } });
  assert.is(r.status, 502);
  assert.is(r.json.error.kvg_code, 'KVG_UPSTREAM');
  // a descriptor for another prompt
  const other = await prefillFor(tokens(100, 33));
  r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 2, kv_transfer_params: other });
  assert.is(r.status, 400);
  assert.match(r.json.error.message, /different prompt/);
  // roles are enforced
  r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 1, kv_transfer_params: { do_remote_decode: true } });
  assert.is(r.status, 400);
  r = await post(prefill.url + '/v1/completions', { prompt, max_tokens: 1, kv_transfer_params: d });
  assert.is(r.status, 400);
  assert.is((await fetch(decode.url + '/health')).status, 200);
});

test('held blocks expire after the hold timeout; the descriptor is then refused', async () => {
  const shortHold = await startSimEngine({ role: 'prefill', speedup: 50, numBlocks: 128, kvEventsEndpoint: null, kvHoldTimeoutS: 2 });
  try {
    const prompt = tokens(200, 34);
    const r0 = await post(shortHold.url + '/v1/completions', { prompt, max_tokens: 1, kv_transfer_params: { do_remote_decode: true } });
    const d = r0.json.kv_transfer_params;
    assert.is(d.remote_engine_id, shortHold.engineId);
    // 2 simulated seconds at speedup 50 = 40 ms of wall time
    for (let i = 0; i < 250 && shortHold.stats().held > 0; i++) await sleep(20);
    assert.is(shortHold.stats().held, 0);
    assert.is(shortHold.stats().freeBlocks, 128, 'expired blocks went back to the pool');
    const r = await post(decode.url + '/v1/completions', { prompt, max_tokens: 2, kv_transfer_params: d });
    assert.is(r.status, 400);
    assert.match(r.json.error.message, /unknown or expired/);
  } finally {
    await shortHold.close();
  }
});

test.run();
