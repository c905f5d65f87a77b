/**
 * proxy.ts's upstream call and relay, on real loopback sockets (no router): a large body relayed to a client
 * that reads slowly arrives whole (the upstream parser is paused and resumed, onDone(true) once); a 5xx with a
 * large body rejects as UpstreamError before the first byte; an abort before the headers rejects; an upstream
 * that breaks mid-body ends the relay with onDone(false) and the client's response cut.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAgent, openUpstream, relay, UpstreamAbort, UpstreamError } from '../src/proxy.js';

const listen = async (s: Server) => {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
};
const close = (s: Server) => {
  s.closeAllConnections();
  return new Promise<void>((r) => s.close(() => r()));
};

/** 4 MiB of JSON-ish bytes, written in 64 KiB chunks */
const BIG = Buffer.alloc(4 * 1024 * 1024, 'x');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** an upstream answering /big, /fail (503 with 1 MiB), /hang (never), /break (half a body, then a reset) */
function upstream(): Server {
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/hang') return;
      if (req.url === '/fail') {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end(Buffer.alloc(1024 * 1024, 'e'));
        return;
      }
      if (req.url === '/break') {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(BIG.length) });
        res.write(BIG.subarray(0, 100_000), () => setTimeout(() => res.socket?.destroy(), 20));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(BIG.length), 'x-up': 'yes' });
      let at = 0;
      const more = () => {
        while (at < BIG.length) {
          const ok = res.write(BIG.subarray(at, (at += 65536)));
          if (!ok) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    });
  });
}

/** a front that relays `path` of the upstream; records onDone calls */
function front(upUrl: string, path: string, done: boolean[]): Server {
  const agent = createAgent();
  return createServer(async (req, res) => {
    req.resume();
    const abort = new UpstreamAbort();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    try {
      const up = await openUpstream(agent, upUrl, path, Buffer.from('{}'), { 'content-type': 'application/json' }, abort);
      relay(up, res, { 'x-front': '1' }, { onFirstByte() {}, onDone: (ok) => void done.push(ok) });
    } catch (e) {
      res.writeHead(502, { 'x-error': e instanceof UpstreamError ? `upstream ${e.status ?? 'connect'}` : 'other' });
      res.end();
    }
  });
}

/** GET through the front, reading slowly (the socket paused 30 ms every 256 KiB) */
function slowGet(url: string): Promise<{ status: number; headers: IncomingMessage['headers']; body: Buffer; error?: string }> {
  return new Promise((resolve, reject) => {
    const stuck = setTimeout(() => reject(new Error('no complete answer within 20 s (a relay that never resumed?)')), 20_000);
    const settle = resolve;
    resolve = (v) => (clearTimeout(stuck), settle(v));
    const req = httpRequest(url, { method: 'POST' }, (res) => {
      const chunks: Buffer[] = [];
      let since = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        since += c.length;
        if (since > 256 * 1024) {
          since = 0;
          res.pause();
          setTimeout(() => res.resume(), 30);
        }
      });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', (e) => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks), error: e.message }));
      res.on('aborted', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks), error: 'aborted' }));
    });
    req.on('error', (e) => resolve({ status: 0, headers: {}, body: Buffer.alloc(0), error: e.message }));
    req.end('{}');
  });
}

test('a 4 MiB answer relayed to a slow client arrives whole, headers passed, onDone(true) once', async () => {
  const up = upstream();
  const upUrl = await listen(up);
  const done: boolean[] = [];
  const f = front(upUrl, '/big', done);
  const fUrl = await listen(f);
  try {
    const r = await slowGet(fUrl);
    assert.is(r.status, 200);
    assert.is(r.error, undefined);
    assert.is(r.headers['x-up'], 'yes');
    assert.is(r.headers['x-front'], '1');
    assert.is(r.body.length, BIG.length);
    assert.is(sha(r.body), sha(BIG));
    await new Promise((res) => setTimeout(res, 20));
    assert.equal(done, [true]);
  } finally {
    await close(f);
    await close(up);
  }
});

test('a 5xx with a 1 MiB body rejects as UpstreamError(status) before the first byte', async () => {
  const up = upstream();
  const upUrl = await listen(up);
  const done: boolean[] = [];
  const f = front(upUrl, '/fail', done);
  const fUrl = await listen(f);
  try {
    const r = await slowGet(fUrl);
    assert.is(r.status, 502);
    assert.is(r.headers['x-error'], 'upstream 503');
    assert.equal(done, []);
  } finally {
    await close(f);
    await close(up);
  }
});

test('an abort before the headers rejects openUpstream; an upstream that breaks mid-body cuts the relay (onDone false)', async () => {
  const up = upstream();
  const upUrl = await listen(up);
  const agent = createAgent();
  try {
    const abort = new UpstreamAbort();
    const pending = openUpstream(agent, upUrl, '/hang', Buffer.from('{}'), {}, abort);
    setTimeout(() => abort.abort(), 50);
    const err = await pending.then(() => null, (e: unknown) => e);
    assert.ok(err instanceof UpstreamError, 'rejects with UpstreamError');
    assert.ok((err as UpstreamError).beforeFirstByte);
    assert.ok(abort.aborted);

    const done: boolean[] = [];
    const f = front(upUrl, '/break', done);
    const fUrl = await listen(f);
    try {
      const r = await slowGet(fUrl);
      assert.is(r.status, 200);
      assert.ok(r.body.length < BIG.length, `the client got ${r.body.length} of ${BIG.length} bytes: cut, not completed`);
      assert.ok(r.error !== undefined, 'the client sees the response cut');
      await new Promise((res) => setTimeout(res, 50));
      assert.equal(done, [false]);
    } finally {
      await close(f);
    }
  } finally {
    await agent.close();
    await close(up);
  }
});

test.run();
