/**
 * The shim's own /v1 call to its engine (GET /v1/models, for LoRA names) carries --engine-api-key (vLLM's --api-key
 * guards /v1/*): the engine sees `Authorization: Bearer <key>` with it, and no Authorization without it (it then
 * answers 401 and the shim goes on without the adapter names). /health and /metrics are asked without a key.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createBus } from '@kvgate/protocol/bus/index';
import { initHashing } from '@kvgate/protocol';
import { startShim } from '../src/index.js';
import { freePort } from '../../../test/harness/nats-server.js';

await initHashing();

/** an engine whose /v1/models needs `Bearer secret-engine-key`; it records the Authorization of every /v1 call */
async function keyedEngine() {
  const seen: (string | undefined)[] = [];
  const server = createServer((req, res) => {
    if (req.url?.startsWith('/v1/')) {
      seen.push(req.headers.authorization);
      if (req.headers.authorization !== 'Bearer secret-engine-key') {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"Unauthorized"}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ data: [{ id: 'qwen3-8b', parent: null }, { id: 'sql-lora', parent: 'qwen3-8b' }] }));
      return;
    }
    res.writeHead(req.url === '/health' ? 200 : 404).end(req.url === '/metrics' ? '' : undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, close: () => { server.closeAllConnections(); server.close(); } };
}

for (const withKey of [true, false]) {
  test(`GET /v1/models ${withKey ? 'with --engine-api-key carries the key' : 'without a key carries none'}`, async () => {
    const engine = await keyedEngine();
    const bus = await createBus();
    const shim = await startShim(bus, {
      worker: `w-key-${withKey}`,
      model: 'qwen3-8b',
      engineUrl: engine.url,
      kvEvents: `tcp://127.0.0.1:${await freePort()}`,
      port: -1,
      ...(withKey ? { engineApiKey: 'secret-engine-key' } : {}),
    });
    try {
      assert.ok(engine.seen.length >= 1, 'the shim asked /v1/models');
      assert.equal([...new Set(engine.seen)], [withKey ? 'Bearer secret-engine-key' : undefined]);
    } finally {
      await shim.stop();
      engine.close();
      await bus.close();
    }
  });
}

test.run();
