/** The Bus conformance suite against MemoryBus: every connection joins one MemoryHub. */
import * as assert from 'uvu/assert';
import { MemoryBus, MemoryHub } from '../packages/protocol/src/index.js';
import { defineConformance } from './bus-conformance.js';

const test = defineConformance('memory', async () => {
  const hub = new MemoryHub();
  return {
    name: 'memory',
    description: 'memory (in-process MemoryHub)',
    ttlMs: 300,
    connect: async () => new MemoryBus({ hub }),
    stop: async () => undefined,
  };
});

// MemoryBus fixes the order: subscribers run in subscription order, and the first reply must not be replaced by a
// second one that arrives in the same delivery batch
test('memory: two replies in one batch, the first wins', async () => {
  const bus = new MemoryBus();
  bus.subscribe('rpc.two', { callback: (m) => m.respond(new TextEncoder().encode('first')) });
  bus.subscribe('rpc.two', { callback: (m) => m.respond(new TextEncoder().encode('second')) });
  await bus.flush();
  for (let i = 0; i < 5; i++) assert.is(new TextDecoder().decode((await bus.request('rpc.two', new Uint8Array(1), { timeoutMs: 1000 })).data), 'first');
  await bus.close();
});

test.run();
