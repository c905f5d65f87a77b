/**
 * The HTTP-bound flags every serving command takes (http-flags.ts): parsed into HttpLimits (only the given ones),
 * a bad value is a FlagError, and on a real `kvgate router` process a body sent slower than
 * --http-body-timeout-ms gets 408 KVG_REQUEST_TIMEOUT and the socket is closed (the default bound, 30 s, would
 * keep it open past the test's 15 s guard).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { FlagError } from '../src/fatal.js';
import { httpLimitsFrom } from '../src/http-flags.js';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

test('httpLimitsFrom: only the given flags, validated', () => {
  assert.equal(httpLimitsFrom({}), {});
  assert.equal(httpLimitsFrom({ 'http-header-timeout-ms': '2000', 'http-body-timeout-ms': '9000', 'http-keepalive-timeout-ms': '1000', 'http-max-connections': '0' }), {
    headersTimeoutMs: 2000,
    bodyTimeoutMs: 9000,
    keepAliveTimeoutMs: 1000,
    maxConnections: 0,
  });
  for (const [k, v] of [['http-body-timeout-ms', '0'], ['http-header-timeout-ms', 'soon'], ['http-max-connections', '-1'], ['http-keepalive-timeout-ms', '1.5']] as const) {
    assert.throws(() => httpLimitsFrom({ [k]: v }), (e: unknown) => e instanceof FlagError && (e as Error).message.includes(`--${k}`), `${k}=${v}`);
  }
});

test('kvgate router --http-body-timeout-ms: a slow body gets 408 and the socket closes', async () => {
  const child = spawn(process.execPath, [BIN, 'router', '--port', '0', '--http-body-timeout-ms', '400', '--http-header-timeout-ms', '400'], {
    env: { ...process.env, KVGATE_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`router did not start:\n${err}`)), 30_000);
      const on = (c: Buffer) => {
        err += c.toString();
        const m = /127\.0\.0\.1:(\d+)/.exec(err);
        if (m) {
          clearTimeout(t);
          resolve(Number(m[1]));
        }
      };
      child.stderr!.on('data', on);
      child.stdout!.on('data', on);
      child.once('exit', (code) => reject(new Error(`router exited ${code}:\n${err}`)));
    });
    // a body promised as 100 bytes, one byte every 200 ms: the 400 ms bound passes long before it is complete
    const reply = await new Promise<{ text: string; closed: boolean }>((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      let text = '';
      let tick: NodeJS.Timeout | undefined;
      const guard = setTimeout(() => (s.destroy(), reject(new Error(`socket still open after 15 s: ${JSON.stringify(text)}`))), 15_000);
      s.on('connect', () => {
        s.write('POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{');
        tick = setInterval(() => s.writable && s.write(' '), 200);
      });
      s.on('data', (c) => (text += c.toString()));
      s.on('error', () => {});
      s.on('close', () => {
        clearInterval(tick);
        clearTimeout(guard);
        resolve({ text, closed: true });
      });
    });
    assert.ok(reply.closed);
    assert.match(reply.text, /^HTTP\/1\.1 408/);
    assert.match(reply.text, /KVG_REQUEST_TIMEOUT/);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
  }
});

test.run();
