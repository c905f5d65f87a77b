/**
 * Sizing the index on a registration storm (found by the fleet bench, notes/shard-bugs.md #2): 2,000 workers
 * registering one by one must not rehash the slot table once per registration — PrefixIndex.reserve grows by at
 * least 1.5× when it grows, and the indexer sizes once per burst of registrations.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBus, MemoryHub, encode, initHashing, subjects } from '@kvgate/protocol';
import { PrefixIndex, startIndexer } from '../src/index.js';
import { waitFor } from './helpers.js';

test('reserve in 2,000 small steps up to the cap reallocates the slot table a few dozen times, not per step', () => {
  const ix = new PrefixIndex();
  let grows = 0;
  let bytes = ix.stats().arrayBytes;
  for (let w = 1; w <= 2000; w++) {
    ix.reserve(w * 16_384);
    const now = ix.stats().arrayBytes;
    if (now !== bytes) grows++;
    bytes = now;
  }
  assert.ok(grows > 0 && grows <= 40, `slot table reallocated ${grows} times`);
  assert.ok(bytes >= 4 * (1 << 24), 'sized to the cap');
  // one big step from empty: exactly the capacity asked for (no 1.5× overshoot)
  const one = new PrefixIndex();
  const empty = one.stats().arrayBytes;
  one.reserve(80_000);
  const grownBy = one.stats().arrayBytes - empty; // the new table replaces the initial one (a few slots)
  assert.ok(grownBy > 4 * 100_000 - 4096 && grownBy <= 4 * 100_000, `${grownBy} B`);
});

test('the indexer sizes once per burst of registrations, to their summed capacity', async () => {
  await initHashing();
  const hub = new MemoryHub();
  const shim = new MemoryBus({ hub });
  const S = subjects('default');
  const ix = await startIndexer(new MemoryBus({ hub }), { id: 'storm' });
  try {
    await ix.whenReady(20_000);
    const bytesOf = async () => Number(/kvgate_indexer_index_bytes (\d+)/.exec(await ix.indexer.metrics.metrics())![1]);
    const before = await bytesOf();
    const kv = await shim.kv(S.workersBucket, { ttlMs: 3000 });
    for (let w = 0; w < 200; w++) {
      await kv.put(`w${w}`, encode({ worker: `w${w}`, model: 'm', role: 'both', url: 'http://127.0.0.1:1', engineUrl: 'http://127.0.0.1:1', blockSize: 16, capacityBlocks: 1000, loras: [], ts: Date.now() }));
    }
    // 200 × 1000 blocks / 0.8 load = 250,000 slots of 4 B (the table replaces the one of `before`)
    await waitFor(async () => (await bytesOf()) >= 4 * 250_000 && (await bytesOf()) > before, 20_000, 'sized for the burst');
  } finally {
    await ix.close();
  }
});

test.run();
