/**
 * A stream through the router that is cut ends with an SSE error event and `data: [DONE]`, never a bare reset:
 * an upstream that dies mid-stream (a shim or engine killed -9) → KVG_UPSTREAM; the router closing with a drain →
 * KVG_SHUTTING_DOWN; a request still waiting for its upstream's headers at the end of the drain → 503
 * KVG_SHUTTING_DOWN. MemoryBus, a raw HTTP upstream on loopback.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { initHashing, MemoryBus } from '@kvgate/protocol';
import { startRouter } from '../src/index.js';
import { register, registration, tokens } from './helpers.js';

await initHashing();

const events = (body: string) => body.split('\n\n').map((e) => e.trim()).filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));

/** upstream: /v1/completions streams two events, then does what `then` says */
async function upstream(then: (res: ServerResponse) => void) {
  const server = createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += String(c);
    if (body.includes('"user":"wait"')) return; // never answers
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: {"choices":[{"text":"a"}]}\n\n');
    res.write('data: {"choices":[{"text":"b"}]}\n\n');
    setTimeout(() => then(res), 50);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function rig(then: (res: ServerResponse) => void) {
  const bus = new MemoryBus();
  const up = await upstream(then);
  await register(bus, registration('w', up.url));
  const router = await startRouter(bus, { port: 0, indexTimeoutMs: 50, registryTtlMs: 0 });
  await router.waitForWorkers(1);
  const stream = (extra: Record<string, string> = {}) =>
    request(`${router.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stub-model', prompt: tokens(16), stream: true, max_tokens: 100, ...extra }) });
  return {
    router,
    stream,
    close: async () => {
      await router.close();
      up.server.closeAllConnections();
      up.server.close();
      await bus.close();
    },
  };
}

test('an upstream that dies mid-stream: the client gets the KVG_UPSTREAM error event, then [DONE]', async () => {
  const r = await rig((res) => res.socket?.destroy());
  try {
    const res = await r.stream();
    assert.is(res.statusCode, 200);
    const ev = events(await res.body.text());
    assert.is(ev.length, 4, ev.join(' | '));
    assert.equal(ev.slice(0, 2).map((e) => JSON.parse(e).choices[0].text), ['a', 'b']);
    assert.is(JSON.parse(ev[2]!).error.kvg_code, 'KVG_UPSTREAM');
    assert.is(ev[3], '[DONE]');
  } finally {
    await r.close();
  }
});

test('close({drainMs}) while streaming: KVG_SHUTTING_DOWN error event and [DONE]; a request without headers yet: 503', async () => {
  const r = await rig(() => undefined); // the stream stays open
  try {
    const res = await r.stream();
    const body = res.body.text();
    const waiting = r.stream({ user: 'wait' });
    await new Promise((res) => setTimeout(res, 150));
    await r.router.close({ drainMs: 100 });
    const ev = events(await body);
    assert.is(ev.length, 4, ev.join(' | '));
    const err = JSON.parse(ev[2]!).error;
    assert.is(err.kvg_code, 'KVG_SHUTTING_DOWN');
    assert.is(err.type, 'server_error');
    assert.is(ev[3], '[DONE]');
    const w = await waiting;
    assert.is(w.statusCode, 503);
    // the router's own error carries the request's id (made here: the client sent none)
    assert.match(String(w.headers['x-request-id']), /^[0-9a-f-]{36}$/);
    assert.is(((await w.body.json()) as { error: { kvg_code: string } }).error.kvg_code, 'KVG_SHUTTING_DOWN');
  } finally {
    await r.close();
  }
});

test.run();
