/** `kvgate indexer` as a process: serves HTTP against a real nats-server, exits cleanly on SIGTERM. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { startNatsServer, freePort } from '../../../test/harness/nats-server.js';
import { waitFor } from './helpers.js';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

test('kvgate indexer --port --nats --shards: healthz, readyz, debug routes, clean exit', async () => {
  const nats = await startNatsServer();
  const port = await freePort();
  const child = spawn(process.execPath, [BIN, 'indexer', '--port', String(port), '--host', '127.0.0.1', '--nats', nats.url, '--id', 'cli-ix', '--shards', '1'], {
    env: { ...process.env, KVGATE_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.status === 200, 20_000, `readyz (${out})`);
    const h = (await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()) as { indexer: string };
    assert.is(h.indexer, 'cli-ix');
    const m = await fetch(`http://127.0.0.1:${port}/debug/match`, { method: 'POST', body: JSON.stringify({ model: 'x', tokens: [1, 2, 3, 4], blockSize: 2 }) });
    assert.equal(await m.json(), { overlaps: {}, blockSize: 2, indexerSeq: 0 });
    child.kill('SIGTERM');
    assert.is(await exited, 0);
  } finally {
    child.kill('SIGKILL');
    await nats.stop();
  }
});

test('kvgate indexer rejects a bad flag value', async () => {
  const child = spawn(process.execPath, [BIN, 'indexer', '--shards', 'lots'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  assert.is(code, 2);
  assert.match(err, /--shards/);
});

test.run();
