/**
 * http-drain.ts over real sockets: a drain lets a response that ends in time finish; past drainMs a response not
 * started answers 503 KVG_SHUTTING_DOWN, an SSE stream ends with the error event and [DONE] — at an event boundary
 * even when the last chunk written ended mid-event (the relay's SseCutter waits for the chunk that ends it) — and
 * the listener stops accepting.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { HttpDrain, SseCutter } from '../src/http-drain.js';

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const events = (body: string) => body.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));

test('a response that ends within drainMs is not cut; the listener stops accepting', async () => {
  let arrived!: () => void;
  const inHandler = new Promise<void>((r) => (arrived = r));
  const server = createServer((_req, res) => (arrived(), setTimeout(() => res.end('done'), 100)));
  const drain = new HttpDrain(server, 'test');
  const url = await listen(server);
  const pending = request(url).then(async (r) => ({ status: r.statusCode, body: await r.body.text() }));
  // the drain starts once the request is in the handler (a connection still in the backlog would be refused)
  await inHandler;
  const closing = drain.close(server, 5_000);
  const got = await pending;
  assert.equal(got, { status: 200, body: 'done' });
  assert.equal(await closing, { cut: 0 });
  await request(url).then(
    () => assert.unreachable('accepted after the drain'),
    (e: Error) => assert.match(String((e as { code?: string }).code ?? e.message), /ECONNREFUSED/),
  );
});

test('past drainMs: 503 KVG_SHUTTING_DOWN before the headers, the SSE error event + [DONE] on a stream', async () => {
  let sse: ServerResponse | undefined;
  const server = createServer((req, res) => {
    if (req.url === '/wait') return; // never answers by itself
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: {"n":1}\n\n');
    sse = res;
  });
  const drain = new HttpDrain(server, 'test');
  const url = await listen(server);
  const waiting = request(`${url}/wait`).then(async (r) => ({ status: r.statusCode, body: (await r.body.json()) as { error: { code: number; kvg_code: string; type: string } } }));
  const stream = await request(`${url}/s`);
  const body = stream.body.text();
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(sse);
  const { cut } = await drain.close(server, 100);
  assert.is(cut, 2);
  const w = await waiting;
  assert.is(w.status, 503);
  assert.is(w.body.error.kvg_code, 'KVG_SHUTTING_DOWN');
  assert.is(w.body.error.code, 503);
  assert.is(w.body.error.type, 'server_error');
  const ev = events(await body);
  assert.is(ev[0], '{"n":1}');
  assert.is(JSON.parse(ev[1]!).error.kvg_code, 'KVG_SHUTTING_DOWN');
  assert.is(ev[2], '[DONE]');
  assert.is(ev.length, 3);
});

test('SseCutter: a cut after a chunk that ended mid-event waits for the chunk that ends it', async () => {
  let cutter: SseCutter | undefined;
  let stopped = 0;
  let write!: (s: string) => void;
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    cutter = new SseCutter(res, () => stopped++, 10_000);
    write = (s) => {
      if (cutter!.done) return;
      const b = Buffer.from(s);
      res.write(b);
      cutter!.wrote(b);
    };
    drain.onCut(res, (e) => cutter!.cut(e));
    write('data: {"n":1}\n\ndata: {"n":');
  });
  const drain = new HttpDrain(server, 'relay');
  const url = await listen(server);
  const res = await request(url);
  const body = res.body.text();
  await new Promise((r) => setTimeout(r, 50));
  const closing = drain.close(server, 0);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(cutter!.done, false, 'no cut inside an event');
  write('2}\n\n'); // the event ends: the cut goes out right after it
  write('data: {"n":3}\n\n'); // after the cut: not sent
  await closing;
  const ev = events(await body);
  assert.equal(ev.slice(0, 2), ['{"n":1}', '{"n":2}']);
  assert.is(JSON.parse(ev[2]!).error.message, 'relay is shutting down: the response was cut');
  assert.is(ev[3], '[DONE]');
  assert.is(ev.length, 4);
  assert.is(stopped, 1);
});

test.run();
