/** FaultyBus (bus/faulty.ts): seeded drops, duplicates and reorders on matching subjects only; parse errors are clear. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FaultyBus, KvgateError, MemoryBus, parseBusFaults } from '../src/index.js';
import { HOLD_MS } from '../src/bus/faulty.js';

const u32 = (n: number) => Uint8Array.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
const n32 = (b: Uint8Array) => ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;

test('publish: what arrives is the sent sequence with the counted drops, duplicates and adjacent swaps; other subjects pass', async () => {
  const inner = new MemoryBus();
  const bus = new FaultyBus(inner, parseBusFaults('events.>:drop=0.1,dup=0.1,reorder=0.1,seed=3'));
  const got: number[] = [], other: number[] = [];
  inner.subscribe('kvgate.default.events.w1', { callback: (m) => got.push(n32(m.data)) });
  inner.subscribe('kvgate.default.load.w1', { callback: (m) => other.push(n32(m.data)) });
  for (let i = 0; i < 1000; i++) {
    bus.publish('kvgate.default.events.w1', u32(i));
    bus.publish('kvgate.default.load.w1', u32(i));
  }
  await bus.flush();
  const c = bus.counts;
  assert.equal(other, Array.from({ length: 1000 }, (_, i) => i), 'a subject outside the pattern is untouched');
  assert.ok(c.dropped > 50 && c.duplicated > 50 && c.reordered > 50, JSON.stringify(c));
  assert.is(c.dropped + c.duplicated + c.reordered + c.passed, 1000);
  assert.is(got.length, 1000 - c.dropped + c.duplicated);
  const seen = new Set(got);
  assert.is(seen.size, 1000 - c.dropped, 'every message not dropped arrives');
  let inversions = 0;
  for (let i = 1; i < got.length; i++) if (got[i]! < got[i - 1]!) inversions++;
  assert.is(inversions, c.reordered, 'each reorder is one swap with the next message');
  // the same seed, the same faults
  const again = new FaultyBus(new MemoryBus(), parseBusFaults('events.>:drop=0.1,dup=0.1,reorder=0.1,seed=3'));
  for (let i = 0; i < 1000; i++) again.publish('kvgate.default.events.w1', u32(i));
  assert.equal(again.counts, c);
});

test('stream appends: a dropped append resolves -1 and stores nothing; a duplicated one is stored twice', async () => {
  const inner = new MemoryBus();
  const bus = new FaultyBus(inner, parseBusFaults('events.>:drop=0.3,dup=0.3,seed=5'));
  const s = await bus.stream('EV', { subjects: ['kvgate.default.events.>'] });
  const seqs: number[] = [];
  for (let i = 0; i < 200; i++) seqs.push(await s.append('kvgate.default.events.w', u32(i)));
  assert.is(seqs.filter((x) => x === -1).length, bus.counts.dropped);
  assert.is((await s.info()).messages, 200 - bus.counts.dropped + bus.counts.duplicated);
});

test('stream appends, reordered: a publisher that waits for each acknowledgement goes on, and its batches are stored out of order', async () => {
  const inner = new MemoryBus();
  const bus = new FaultyBus(inner, parseBusFaults('events.>:reorder=0.3,seed=9'));
  const s = await bus.stream('EV', { subjects: ['kvgate.default.events.>'] });
  // one append at a time, each awaited (the shim's publisher at low load): a held append that only the next
  // append released was never acknowledged, and this loop stopped at the first reorder
  for (let i = 0; i < 200; i++) await s.append('kvgate.default.events.w', u32(i));
  await bus.flush();
  const got: number[] = [];
  for await (const m of s.read({})) got.push(n32(m.data));
  assert.ok(bus.counts.reordered > 20, JSON.stringify(bus.counts));
  assert.is(got.length, 200, 'every append is stored');
  assert.equal([...got].sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i));
  let inversions = 0;
  for (let i = 1; i < got.length; i++) if (got[i]! < got[i - 1]!) inversions++;
  assert.is(inversions, bus.counts.reordered, 'each reorder is one swap with the next append');
  // the last one held back, with no append after it: stored anyway after HOLD_MS
  const t = await inner.stream('EV2', { subjects: ['kvgate.default.events2.>'] });
  const lone = new FaultyBus(inner, parseBusFaults('events2.>:reorder=1'));
  const t2 = await lone.stream('EV2', { subjects: ['kvgate.default.events2.>'] });
  await t2.append('kvgate.default.events2.w', u32(7));
  assert.is((await t.info()).messages, 0, 'held back');
  await new Promise((r) => setTimeout(r, HOLD_MS * 3));
  assert.is((await t.info()).messages, 1, 'sent without a next append');
});

test('bad specs are one clear KVG_CONFIG error', () => {
  for (const bad of ['drop=0.1', 'events.>:drop=2', 'events.>:lose=0.1', 'events.>:drop=0.6,dup=0.6', 'events.>:seed=x']) {
    assert.throws(() => parseBusFaults(bad), (e: unknown) => e instanceof KvgateError && e.code === 'KVG_CONFIG', bad);
  }
  assert.equal(parseBusFaults('events.>:dup=0.5'), { pattern: 'kvgate.*.events.>', drop: 0, dup: 0.5, reorder: 0, seed: 1 });
});

test.run();
