/** The Bus conformance suite against NatsBus and a real nats-server -js (test/harness/nats-server.ts). */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connectNats, createBus } from '../packages/protocol/src/index.js';
import { freePort, startNatsServer } from './harness/nats-server.js';
import { defineConformance } from './_busdbg.js';

const test = defineConformance('nats', async () => {
  const server = await startNatsServer();
  return {
    name: 'nats',
    description: `nats (${server.url})`,
    // JetStream refuses max_age < 100 ms; 1 s keeps the expiry test short and far from timer noise
    ttlMs: 1000,
    connect: () => connectNats(server.url, { name: 'bus-conformance' }),
    restart: () => server.restart(),
    stop: () => server.stop(),
  };
}, { restart: true });

test.run();

const connecting = suite('bus[nats] connecting');

connecting('createBus: no URL gives a MemoryBus, a URL a NatsBus', async () => {
  const mem = await createBus({});
  assert.is(mem.kind, 'memory');
  await mem.close();
  const server = await startNatsServer();
  try {
    const nats = await createBus({ nats: server.url });
    assert.is(nats.kind, 'nats');
    await nats.close();
  } finally {
    await server.stop();
  }
});

connecting('an unreachable server is a KVG_BUS error naming the URL', async () => {
  const url = `nats://127.0.0.1:${await freePort()}`;
  try {
    await connectNats(url);
    assert.unreachable('connected to nothing');
  } catch (err) {
    assert.is((err as { code?: string }).code, 'KVG_BUS');
    assert.match((err as Error).message, url);
  }
});

connecting.run();
