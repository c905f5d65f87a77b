/**
 * Every kvgate HTTP server takes `httpLimits` (protocol http-limits.ts): the router, the shim's front, the indexer
 * and the sim engine each answer a body trickling in at 1 byte/s with 408 KVG_REQUEST_TIMEOUT and close the socket;
 * and a streamed generation through router → shim → sim engine, all with bounds far shorter than the stream, is
 * not cut. Bounds are short (1 s); assertions are on behaviour, with generous slack.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from 'node:net';
import { request } from 'undici';
import { MemoryBus, type HttpLimits } from '../packages/protocol/src/index.js';
import { startSimEngine } from '../packages/sim-engine/src/index.js';
import { startShim } from '../packages/worker-shim/src/index.js';
import { startIndexer } from '../packages/indexer/src/index.js';
import { startRouter } from '../packages/router/src/index.js';

const limits: HttpLimits = { headersTimeoutMs: 800, bodyTimeoutMs: 1000 };
const MODEL = 'qwen3-8b';

const bus = new MemoryBus();
const engine = await startSimEngine({ model: MODEL, blockSize: 16, speedup: 1, httpLimits: limits });
const shim = await startShim(bus, { worker: 'lim-w0', model: MODEL, engineUrl: engine.url, kvEvents: engine.kvEventsEndpoint!, port: 0, httpLimits: limits });
const indexer = await startIndexer(bus, { port: 0, httpLimits: limits });
const router = await startRouter(bus, { port: 0, index: indexer.client, recordDecisions: false, httpLimits: limits });
await router.waitForWorkers(1);

/** a POST whose 20-byte body goes out at 1 byte/s; resolves with what the server wrote and the bytes sent before it closed */
function slowBody(url: string, path: string): Promise<{ reply: string; sent: number }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(u.port), u.hostname);
    let reply = '';
    let sent = 0;
    let t: NodeJS.Timeout | undefined;
    s.on('data', (d) => (reply += d.toString()));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearInterval(t);
      resolve({ reply, sent });
    });
    s.on('connect', () => {
      s.write(`POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n`);
      t = setInterval(() => {
        if (sent >= 20) {
          clearInterval(t);
          reject(new Error(`${url}${path}: the whole body went out, never timed out`));
        } else if (s.writable) {
          s.write(' ');
          sent++;
        }
      }, 1000);
    });
  });
}

for (const [name, url, path] of [
  ['router', () => router.url, '/v1/completions'],
  ['shim front', () => shim.url, '/v1/completions'],
  ['indexer', () => `http://127.0.0.1:${indexer.port}`, '/debug/match'],
  ['sim engine', () => engine.url, '/v1/completions'],
] as const) {
  test(`${name}: a body at 1 byte/s gets 408 KVG_REQUEST_TIMEOUT and the socket is closed`, async () => {
    const r = await slowBody(url(), path);
    assert.match(r.reply, /^HTTP\/1\.1 408 /, r.reply);
    assert.match(r.reply, /KVG_REQUEST_TIMEOUT/);
    assert.ok(r.sent < 5, `closed after ${r.sent} of 20 bytes`);
  });
}

test('a streamed generation far longer than the bounds, router → shim → engine, is not cut', async () => {
  const res = await request(`${router.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'a long story please', max_tokens: 400, stream: true, ignore_eos: true }),
  });
  assert.is(res.statusCode, 200);
  const t0 = Date.now();
  const text = await res.body.text();
  const events = text.split('\n\n').filter((e) => e.startsWith('data: {'));
  assert.ok(text.trim().endsWith('data: [DONE]'), text.slice(-300));
  assert.not.match(text, /KVG_/);
  assert.ok(events.length >= 100, `${events.length} events`);
  // informative: the stream lasted beyond the bounds (else this test proves nothing about them)
  if (Date.now() - t0 < 1000) console.warn(`stream lasted only ${Date.now() - t0} ms`);
});

test.after(async () => {
  await router.close();
  await shim.stop();
  await indexer.close();
  await engine.close();
  await bus.close();
});

test.run();
