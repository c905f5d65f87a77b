/**
 * The whole stack over real sockets: simulated engines → ZMQ KV events → shims → bus → indexer; two routers in
 * front. Runs on the MemoryBus and on a real nats-server.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { initHashing } from '@kvgate/protocol';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { startStack, type Stack, type StackOptions } from '../src/stack.js';
import { authedStackOptions, E2E_AUTH_HEADERS, tokens, until } from './helpers.js';

await initHashing();

/** the running suite's client headers (the NATS variant's routers require an API key) */
let authHeaders: Record<string, string> = {};

async function post(url: string, body: unknown) {
  const res = await request(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...authHeaders } });
  return { status: res.statusCode, worker: res.headers['x-kvgate-worker'] as string | undefined, json: (await res.body.json()) as any };
}

/** `conn`: the bus (and, over NATS, auth) part of the stack options */
function build(name: string, conn: () => Promise<Partial<StackOptions>>) {
  const t = suite(`whole stack over ${name}`);
  let stack: Stack;
  t.before(async () => {
    const c = await conn();
    authHeaders = c.apiKeys ? E2E_AUTH_HEADERS : {};
    stack = await startStack({ engines: 3, routers: 2, ...c, engine: { speedup: 50, numBlocks: 4096, blockSize: 16 }, router: { indexTimeoutMs: 500 } });
  });
  t.after(async () => {
    await stack.close();
  });

  t('a prompt extending a cached prefix goes to the worker that holds it, via the other router', async () => {
    const [r0, r1] = stack.routers as [typeof stack.routers[0], typeof stack.routers[0]];
    const prefix = tokens(640, 20_000); // 40 blocks
    const first = await post(`${r0.url}/v1/completions`, { model: 'qwen3-8b', prompt: prefix, max_tokens: 2 });
    assert.is(first.status, 200);
    const holder = first.worker!;
    // r1 learns the prefix only from the engine's KV events through shim and indexer
    let seen = 0;
    await (async () => {
      for (let i = 0; i < 200 && seen < 40; i++) {
        const pick = await post(`${r1.url}/v1/route`, { model: 'qwen3-8b', prompt: [...prefix, ...tokens(64, 900)] });
        seen = pick.json.candidates.find((c: any) => c.worker === holder)?.indexOverlap ?? 0;
        if (seen < 40) await new Promise((r) => setTimeout(r, 25));
      }
    })();
    assert.is(seen, 40, 'index overlap of the holder');
    const second = await post(`${r1.url}/v1/completions`, { model: 'qwen3-8b', prompt: [...prefix, ...tokens(64, 900)], max_tokens: 2 });
    assert.is(second.status, 200);
    assert.is(second.worker, holder);
    assert.is(second.json.usage.prompt_tokens_details.cached_tokens, 640);
  });

  t('distinct prompts spread over the engines; errors stay OpenAI-shaped', async () => {
    const workers = new Set<string>();
    await Promise.all(
      Array.from({ length: 9 }, async (_, i) => {
        const r = await post(`${stack.routers[i % 2]!.url}/v1/completions`, { model: 'qwen3-8b', prompt: tokens(320, 50_000 + i * 1000), max_tokens: 4 });
        assert.is(r.status, 200);
        workers.add(r.worker!);
      }),
    );
    assert.is(workers.size, 3);
    const bad = await post(`${stack.routers[0]!.url}/v1/completions`, { model: 'nope', prompt: 'x' });
    assert.is(bad.status, 404);
    assert.is(bad.json.error.kvg_code, 'KVG_UNKNOWN_MODEL');
  });

  t('chat requests are tokenized through the engine when no local tokenizer is set', async () => {
    const messages = [{ role: 'system', content: 'You are terse. '.repeat(60) }, { role: 'user', content: 'Hello there, how are you?' }];
    const a = await post(`${stack.routers[0]!.url}/v1/chat/completions`, { model: 'qwen3-8b', messages, max_tokens: 3 });
    assert.is(a.status, 200);
    const pick = await post(`${stack.routers[0]!.url}/v1/route`, { model: 'qwen3-8b', messages });
    assert.ok(pick.json.promptTokens > 60, `promptTokens ${pick.json.promptTokens}`);
    assert.is(pick.json.promptTokens, a.json.usage.prompt_tokens);
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
