/** The Bus conformance suite against MemoryBus: every connection joins one MemoryHub. */
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

test.run();
