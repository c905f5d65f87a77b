/**
 * http-limits.ts on a real node:http server, over raw sockets: a body at 1 byte/s and headers at 1 byte/s get an
 * OpenAI-shaped 408 KVG_REQUEST_TIMEOUT and the socket is closed long before the request could have arrived (the
 * handler never sees a whole body); connections over the cap are closed while the others keep working; a long
 * SSE response (many times the bounds) is not cut. Bounds are short (1 s); assertions are on what happened, with
 * generous slack, not on timings.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { request } from 'undici';
import { applyHttpLimits, httpServerOptions, KvgateError, resolveHttpLimits, type HttpLimits } from '../src/index.js';

async function serve(limits: HttpLimits, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; port: number }> {
  const l = resolveHttpLimits(limits);
  const server = createServer(httpServerOptions(l), handler);
  applyHttpLimits(server, l, 'test');
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

function stop(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((r) => server.close(() => r()));
}

interface Trickle {
  /** bytes of `rest` sent before the server closed the socket */
  sent: number;
  /** what the server wrote */
  reply: string;
}

/** sends `head` at once, then `rest` one byte per `everyMs`, until the server closes the socket */
function trickle(port: number, head: string, rest: string, everyMs = 1000): Promise<Trickle> {
  return new Promise((resolve, reject) => {
    const s: Socket = connect(port, '127.0.0.1');
    let reply = '';
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    s.on('data', (d) => (reply += d.toString()));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearInterval(timer);
      resolve({ sent, reply });
    });
    s.on('connect', () => {
      s.write(head);
      timer = setInterval(() => {
        if (sent >= rest.length) {
          clearInterval(timer);
          reject(new Error('the whole request went out: the server never timed it out'));
          return;
        }
        if (!s.destroyed && s.writable) s.write(rest[sent++]!);
      }, everyMs);
    });
  });
}

test('resolveHttpLimits: defaults, a base, headers never past the body bound, bad values are KVG_CONFIG', () => {
  assert.equal(resolveHttpLimits(), { headersTimeoutMs: 10_000, bodyTimeoutMs: 30_000, keepAliveTimeoutMs: 5_000, maxConnections: 10_000 });
  assert.is(resolveHttpLimits({}, { keepAliveTimeoutMs: 65_000 }).keepAliveTimeoutMs, 65_000);
  assert.is(resolveHttpLimits({ keepAliveTimeoutMs: 1000 }, { keepAliveTimeoutMs: 65_000 }).keepAliveTimeoutMs, 1000);
  assert.is(resolveHttpLimits({ headersTimeoutMs: 5000, bodyTimeoutMs: 2000 }).headersTimeoutMs, 2000);
  for (const bad of [{ headersTimeoutMs: 0 }, { bodyTimeoutMs: -1 }, { maxConnections: 1.5 }, { keepAliveTimeoutMs: Number.NaN }, { keepAliveTimeoutMs: 0 }]) {
    try {
      resolveHttpLimits(bad);
      assert.unreachable(JSON.stringify(bad));
    } catch (e) {
      assert.is((e as KvgateError).code, 'KVG_CONFIG');
    }
  }
  // the sweep that enforces them runs often enough (Node's default is 30 s)
  assert.ok(httpServerOptions(resolveHttpLimits({ headersTimeoutMs: 800, bodyTimeoutMs: 1000 })).connectionsCheckingInterval! <= 250);
});

test('a body at 1 byte/s: 408 KVG_REQUEST_TIMEOUT, socket closed, the handler never gets the body', async () => {
  let bodies = 0;
  const { server, port } = await serve({ headersTimeoutMs: 800, bodyTimeoutMs: 1000 }, (req, res) => {
    req.on('end', () => {
      bodies++;
      res.end('{}');
    });
    req.resume();
  });
  try {
    const t = await trickle(port, 'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n', 'x'.repeat(20));
    assert.match(t.reply, /^HTTP\/1\.1 408 /);
    const json = JSON.parse(t.reply.slice(t.reply.indexOf('\r\n\r\n') + 4));
    assert.is(json.error.kvg_code, 'KVG_REQUEST_TIMEOUT');
    assert.ok(t.sent < 5, `closed after ${t.sent} of 20 body bytes (bound 1 s at 1 byte/s)`);
    assert.is(bodies, 0);
  } finally {
    await stop(server);
  }
});

test('headers at 1 byte/s: 408, socket closed, no request reaches the handler', async () => {
  let calls = 0;
  const { server, port } = await serve({ headersTimeoutMs: 1000, bodyTimeoutMs: 1000 }, (_req, res) => {
    calls++;
    res.end();
  });
  try {
    const t = await trickle(port, 'GET /healthz HTTP/1.1\r\nhost: x\r\n', 'x-slow: ' + 'a'.repeat(12));
    assert.match(t.reply, /^HTTP\/1\.1 408 /);
    assert.match(t.reply, /KVG_REQUEST_TIMEOUT/);
    assert.ok(t.sent < 5, `closed after ${t.sent} header bytes`);
    assert.is(calls, 0);
  } finally {
    await stop(server);
  }
});

test('over the connection cap: the extra connection is closed, the others still work', async () => {
  const { server, port } = await serve({ maxConnections: 2 }, (_req, res) => res.end('ok'));
  const open = (): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(s));
      s.on('error', reject);
    });
  const ask = (s: Socket): Promise<string> =>
    new Promise((resolve) => {
      let got = '';
      s.on('data', (d) => {
        got += d.toString();
        if (got.includes('\r\n\r\nok')) resolve(got);
      });
      s.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
    });
  try {
    const a = await open();
    const b = await open();
    // the server has counted both before the third arrives
    assert.match(await ask(a), /^HTTP\/1\.1 200/);
    const c = connect(port, '127.0.0.1');
    let extraGot = '';
    c.on('data', (d) => (extraGot += d.toString()));
    c.on('error', () => undefined);
    c.on('connect', () => c.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n'));
    // a server without the cap would answer it (and keep it open): give up on it after a while
    const byServer = await new Promise<boolean>((r) => {
      const t = setTimeout(() => {
        r(false);
        c.destroy();
      }, 10_000);
      c.on('close', () => {
        clearTimeout(t);
        r(true);
      });
    });
    assert.ok(byServer, 'the server closed the extra connection');
    assert.is(extraGot, '', 'the extra connection got no answer');
    assert.match(await ask(b), /^HTTP\/1\.1 200/);
    a.destroy();
    b.destroy();
  } finally {
    await stop(server);
  }
});

test('a long SSE response (many times the bounds) is not cut', async () => {
  const { server, port } = await serve({ headersTimeoutMs: 300, bodyTimeoutMs: 400, keepAliveTimeoutMs: 300 }, (req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let i = 0;
      const t = setInterval(() => {
        if (i < 15) res.write(`data: {"i":${i++}}\n\n`);
        else {
          clearInterval(t);
          res.end('data: [DONE]\n\n');
        }
      }, 150);
    });
  });
  try {
    const res = await request(`http://127.0.0.1:${port}/v1/completions`, { method: 'POST', body: '{"stream":true}', headers: { 'content-type': 'application/json' } });
    assert.is(res.statusCode, 200);
    const text = await res.body.text();
    assert.is(text.split('\n\n').filter((e) => e.startsWith('data: {')).length, 15);
    assert.ok(text.trim().endsWith('data: [DONE]'));
  } finally {
    await stop(server);
  }
});

test.run();
