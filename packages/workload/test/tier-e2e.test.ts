/**
 * Tiers end to end: simulated engines with a CPU offload tier (vLLM's OffloadingConnector, `--cpu-offload-blocks`)
 * → their real ZMQ KV events (GPU stores, then `medium: "CPU"` placeholders when the GPU pool evicts) → shims →
 * bus → indexer → router. A prompt the GPU lost but the CPU tier holds must show as CPU reach in the index and in
 * the router's /v1/route, must still win the routing, and the engine must serve it from cache (GPU + CPU hits).
 * Runs on the MemoryBus and on a real nats-server.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { initHashing, prefixHashes } from '@kvgate/protocol';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { startStack, type Stack, type StackOptions } from '../src/stack.js';
import { authedStackOptions, E2E_AUTH_HEADERS, tokens } from './helpers.js';

await initHashing();
const MODEL = 'qwen3-8b';
const B = 16;

/** the running suite's client headers (the NATS variant's routers require an API key) */
let authHeaders: Record<string, string> = {};

async function post(url: string, body: unknown) {
  const res = await request(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...authHeaders } });
  return { status: res.statusCode, worker: res.headers['x-kvgate-worker'] as string | undefined, json: (await res.body.json()) as any };
}

async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, what: string, timeoutMs = 15_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (ok(v)) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}: last ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `conn`: the bus (and, over NATS, auth) part of the stack options */
function build(name: string, conn: () => Promise<Partial<StackOptions>>) {
  const t = suite(`CPU tier end to end over ${name}`);
  let stack: Stack;
  t.before(async () => {
    const c = await conn();
    authHeaders = c.apiKeys ? E2E_AUTH_HEADERS : {};
    // 96 GPU blocks hold two 40-block prompts; the CPU tier holds 2048 blocks
    stack = await startStack({ engines: 2, routers: 2, ...c, engine: { speedup: 50, numBlocks: 96, blockSize: B, cpuOffloadBlocks: 2048 }, router: { indexTimeoutMs: 500 } });
  });
  t.after(async () => {
    await stack.close();
  });

  t('a prompt evicted from GPU but held on CPU: the index and /v1/route show its CPU reach, it routes to its holder, the engine serves it from cache', async () => {
    const [r0, r1] = stack.routers as [typeof stack.routers[0], typeof stack.routers[0]];
    const a = tokens(640, 70_000); // 40 blocks
    const first = await post(`${r0.url}/v1/completions`, { model: MODEL, prompt: a, max_tokens: 1 });
    assert.is(first.status, 200);
    const holder = first.worker!;
    const at = stack.shims.findIndex((s) => s.worker === holder);
    assert.ok(at >= 0, `holder ${holder} is one of the stack's shims`);
    const other = stack.shims[1 - at]!.worker;
    const hashes = prefixHashes(MODEL, null, B, a);
    await eventually(() => stack.indexer.client.match(MODEL, null, hashes), (m) => m.overlaps[holder] === 40, 'GPU overlap 40 on the holder');

    // three more 40-block prompts straight to the holder's engine: its 96-block GPU pool evicts prompt a,
    // whose blocks move to the CPU tier
    for (let i = 0; i < 3; i++) {
      const r = await post(`${stack.engines[at]!.url}/v1/completions`, { model: MODEL, prompt: tokens(640, 80_000 + i * 1000), max_tokens: 1 });
      assert.is(r.status, 200);
    }
    const m = await eventually(() => stack.indexer.client.match(MODEL, null, hashes), (v) => (v.overlaps[holder] ?? 0) < 40 && v.tiers?.[holder]?.cpu === 40, 'prompt a on CPU, not (all) on GPU');
    assert.is(m.tiers![holder]!.disk, 40, 'no disk tier: disk reach = cpu reach');
    assert.is(m.overlaps[other], undefined, 'the other worker holds nothing of it');

    // the other router learns the same from the index (it never saw the request)
    const tail = [...a, ...tokens(64, 900)];
    const pick = await eventually(() => post(`${r1.url}/v1/route`, { model: MODEL, prompt: tail }), (p) => p.json.candidates?.some((c: any) => c.worker === holder && c.indexTiers?.cpu === 40), '/v1/route shows the CPU reach');
    const c = pick.json.candidates.find((x: any) => x.worker === holder);
    assert.is(c.tiers.cpu, 40, 'the score used the CPU reach');
    assert.is(pick.json.chosen ?? pick.json.worker, holder, 'the CPU holder is picked');

    const second = await post(`${r1.url}/v1/completions`, { model: MODEL, prompt: tail, max_tokens: 1 });
    assert.is(second.status, 200);
    assert.is(second.worker, holder);
    assert.is(second.json.usage.prompt_tokens_details.cached_tokens, 640, 'served from GPU + CPU cache');
  });
  return t;
}

build('the memory bus', async () => ({})).run();
let nats: NatsServerHandle | undefined;
// over NATS with auth on: a password on nats-server, router API keys, the cluster secret through every shim front
const n = build('NATS (auth on)', async () => authedStackOptions((nats ??= await startNatsServer({ auth: 'password' }))));
n.after(async () => {
  await nats?.stop();
});
n.run();
