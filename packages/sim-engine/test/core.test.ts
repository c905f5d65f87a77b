/** The pure core on a virtual clock: KV cache bookkeeping, prefix hits, eviction, preemption, timing. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KvCache, Scheduler, BlockHasher, type StepResult, type KvCacheEvent } from '@kvgate/sim-engine';
import { tokens } from './helpers.js';
import { initHashing } from '@kvgate/protocol';

/** Runs the scheduler until idle on a virtual clock; returns first-token times and all events. */
function drain(s: Scheduler, start = 0) {
  let now = start;
  const first = new Map<string, number>();
  const finished = new Map<string, number>();
  const events: KvCacheEvent[] = [];
  const steps: StepResult[] = [];
  for (let i = 0; i < 100_000; i++) {
    const r = s.step(now);
    if (!r) break;
    steps.push(r);
    now = r.endMs;
    events.push(...r.events);
    for (const o of r.outputs) {
      if (o.index === 0) first.set(o.id, o.atMs);
      if (o.finishReason) finished.set(o.id, o.atMs);
    }
  }
  return { now, first, finished, events, steps };
}

test('kv cache: allocate, cache, touch, free and LRU eviction order', () => {
  const h = new BlockHasher('t');
  const c = new KvCache(4, 2);
  const toks = [1, 2, 3, 4, 5, 6];
  const d: ReturnType<BlockHasher['hashBlock']>[] = [];
  h.extend(d, toks, 2);
  assert.is(d.length, 3);
  const ids = c.allocate(3)!;
  assert.is(c.freeBlocks, 1);
  ids.forEach((id, i) => assert.ok(c.cacheBlock(id, d[i]!).stored));
  assert.is(c.cachedBlocks, 3);
  assert.is(c.longestHit(d), 3);
  c.free([...ids].reverse()); // tail first → the last block is evicted first
  assert.is(c.freeBlocks, 4);
  assert.is(c.usage, 0);
  // a hit takes cached blocks back out of the free queue
  const hit = c.touch(d, 2);
  assert.equal(hit, ids.slice(0, 2));
  assert.is(c.freeBlocks, 2);
  c.drainEvents();
  // two fresh blocks: the never-cached one first, then the cached third block (evicted → BlockRemoved)
  const fresh = c.allocate(2)!;
  assert.is(fresh.length, 2);
  const ev = c.drainEvents();
  assert.is(ev.length, 1);
  assert.is(ev[0]!.type, 'BlockRemoved');
  assert.is((ev[0] as { hashes: unknown[] }).hashes[0], d[2]);
  assert.is(c.longestHit(d), 2);
  assert.is(c.allocate(1), null);
  assert.not.ok(c.reset(), 'reset refused while blocks are in use');
  c.free(fresh);
  c.free(hit);
  assert.ok(c.reset());
  assert.is(c.cachedBlocks, 0);
  assert.equal(c.drainEvents(), [{ type: 'AllBlocksCleared' }]);
});

test('kv cache: a hash is cached once; a duplicate block is released', () => {
  const h = new BlockHasher('t');
  const c = new KvCache(4, 2);
  const d: ReturnType<BlockHasher['hashBlock']>[] = [];
  h.extend(d, [7, 8], 2);
  const [a, b] = c.allocate(2)!;
  assert.ok(c.cacheBlock(a!, d[0]!).stored);
  const r = c.cacheBlock(b!, d[0]!);
  assert.is(r.id, a);
  assert.not.ok(r.stored);
  assert.is(c.freeBlocks, 3, 'the duplicate went back to the pool');
});

test('hasher: chained, seeded per engine, 8-byte key = last 8 digest bytes', () => {
  const t = tokens(64, 3);
  const a: ReturnType<BlockHasher['hashBlock']>[] = [], b: typeof a = [], c: typeof a = [];
  new BlockHasher('x').extend(a, t, 16);
  new BlockHasher('x').extend(b, t, 16);
  new BlockHasher('y').extend(c, t, 16);
  assert.equal(a.map((d) => d.key), b.map((d) => d.key));
  assert.not.equal(a[0]!.key, c[0]!.key);
  assert.is(a[0]!.bytes.length, 32);
  assert.is(a[1]!.key, a[1]!.bytes.readBigUInt64BE(24));
  // changing one token of block 0 changes every later hash (chaining)
  const t2 = t.slice();
  t2[0]! += 1;
  const e: typeof a = [];
  new BlockHasher('x').extend(e, t2, 16);
  for (let i = 0; i < 4; i++) assert.not.equal(e[i]!.key, a[i]!.key);
});

test('scheduler: a repeated prompt hits the prefix cache and has a much lower TTFT', () => {
  const s = new Scheduler({ numBlocks: 2048, blockSize: 16, hashSeed: 's' });
  const prompt = tokens(4000, 1);
  s.submit({ id: 'a', promptTokens: prompt, maxTokens: 4, arrivalMs: 0 });
  const r1 = drain(s, 0);
  const ttft1 = r1.first.get('a')!;
  s.submit({ id: 'b', promptTokens: prompt, maxTokens: 4, arrivalMs: r1.now });
  const r2 = drain(s, r1.now);
  const ttft2 = r2.first.get('b')! - r1.now;
  const cached = r2.steps[0]!.outputs.length ? r2.steps[0]!.outputs[0]!.cachedTokens : r2.steps.flatMap((x) => x.outputs).find((o) => o.id === 'b')!.cachedTokens;
  assert.is(cached, Math.floor(3999 / 16) * 16);
  assert.ok(ttft2 * 3 < ttft1, `cached TTFT ${ttft2} should be far below uncached ${ttft1}`);
  const st = s.stats();
  assert.is(st.prefixQueries, 8000);
  assert.is(st.prefixHits, cached);
});

test('scheduler: TTFT grows when the engine is busy', () => {
  const probe = tokens(1000, 9);
  const idle = new Scheduler({ numBlocks: 8192, hashSeed: 's' });
  idle.submit({ id: 'p', promptTokens: probe, maxTokens: 2, arrivalMs: 0 });
  const alone = drain(idle).first.get('p')!;

  const busy = new Scheduler({ numBlocks: 8192, hashSeed: 's' });
  for (let i = 0; i < 16; i++) busy.submit({ id: `bg${i}`, promptTokens: tokens(3000, 100 + i), maxTokens: 64, arrivalMs: 0 });
  busy.submit({ id: 'p', promptTokens: probe, maxTokens: 2, arrivalMs: 0 });
  const loaded = drain(busy).first.get('p')!;
  assert.ok(loaded > alone * 2, `busy TTFT ${loaded} should exceed idle TTFT ${alone}`);
});

test('scheduler: chunked prefill respects the token budget', () => {
  const s = new Scheduler({ numBlocks: 1024, maxNumBatchedTokens: 512, hashSeed: 's' });
  s.submit({ id: 'a', promptTokens: tokens(2000, 2), maxTokens: 1, arrivalMs: 0 });
  const { steps } = drain(s);
  assert.ok(steps.every((x) => x.prefillTokens + x.decodeSeqs <= 512));
  assert.is(steps.filter((x) => x.prefillTokens > 0).length, 4);
  assert.is(steps.reduce((a, x) => a + x.prefillTokens, 0), 2000);
});

test('scheduler: eviction under pressure emits BlockRemoved; preemption keeps every request correct', () => {
  const s = new Scheduler({ numBlocks: 40, blockSize: 16, hashSeed: 's' });
  for (let i = 0; i < 6; i++) s.submit({ id: `r${i}`, promptTokens: tokens(200, 50 + i), maxTokens: 120, arrivalMs: 0 });
  const { events, finished } = drain(s);
  assert.is(finished.size, 6, 'every request finishes despite the tiny cache');
  assert.ok(s.stats().preemptions > 0, 'the cache was too small for all at once');
  assert.ok(events.some((e) => e.type === 'BlockRemoved'));
  // event stream consistency: stored parents are live, removed hashes were stored
  const live = new Set<bigint>();
  for (const e of events) {
    if (e.type === 'BlockStored') {
      if (e.parent) assert.ok(live.has(e.parent.key), 'parent of a stored block is cached');
      assert.is(e.tokenIds.length, e.hashes.length * 16);
      for (const h of e.hashes) {
        assert.not.ok(live.has(h.key), 'no duplicate store');
        live.add(h.key);
      }
    } else if (e.type === 'BlockRemoved') {
      for (const h of e.hashes) assert.ok(live.delete(h.key), 'removed hash was stored');
    }
  }
  assert.is(live.size, s.cache.cachedBlocks);
  assert.is(s.stats().freeBlocks, 40);
});

test('scheduler: remote KV skips local prefill; held blocks stay until released', () => {
  const prompt = tokens(1000, 4);
  const p = new Scheduler({ numBlocks: 256, hashSeed: 'p' });
  p.submit({ id: 'pre', promptTokens: prompt, maxTokens: 1, arrivalMs: 0, holdOnFinish: true });
  drain(p);
  const held = p.held('pre')!;
  assert.is(held.blockIds.length, Math.ceil(1000 / 16));
  assert.is(p.stats().freeBlocks, 256 - held.blockIds.length);
  assert.ok(p.releaseHeld('pre'));
  assert.is(p.stats().freeBlocks, 256);

  const d = new Scheduler({ numBlocks: 256, hashSeed: 'd' });
  d.submit({ id: 'dec', promptTokens: prompt, maxTokens: 5, arrivalMs: 0, remoteKv: true });
  const r = drain(d);
  assert.is(d.stats().promptTokensComputed, 1, 'only the last prompt token is computed locally');
  assert.is(r.finished.size, 1);
  const stored = r.events.filter((e) => e.type === 'BlockStored').flatMap((e) => (e as { hashes: unknown[] }).hashes);
  assert.ok(stored.length >= Math.floor(1000 / 16), 'pulled blocks become the decode engine’s own cached blocks');
});

test('scheduler: abort frees blocks; bad submissions are refused', () => {
  const s = new Scheduler({ numBlocks: 64, hashSeed: 's' });
  s.submit({ id: 'a', promptTokens: tokens(300, 1), maxTokens: 50, arrivalMs: 0 });
  s.step(0);
  assert.ok(s.stats().freeBlocks < 64);
  assert.ok(s.abort('a'));
  assert.is(s.stats().freeBlocks, 64);
  assert.not.ok(s.abort('a'));
  assert.throws(() => s.submit({ id: 'b', promptTokens: [], maxTokens: 1, arrivalMs: 0 }));
  assert.throws(() => s.submit({ id: 'c', promptTokens: tokens(2000, 1), maxTokens: 1, arrivalMs: 0 }), /capacity/);
});

test('hasher (xxhash): chained like sha256 mode, prefix-stable, seeded per engine', async () => {
  await initHashing();
  const t = tokens(64, 7);
  const a = new BlockHasher('e1', 'xxhash');
  const whole: ReturnType<BlockHasher['hashBlock']>[] = [];
  a.extend(whole, t, 16);
  assert.is(whole.length, 4);
  // one block at a time gives the same chain as the batched fast path
  let parent: ReturnType<BlockHasher['hashBlock']> | null = null;
  for (let i = 0; i < 4; i++) {
    parent = a.hashBlock(parent, t, i * 16, 16);
    assert.is(parent.key, whole[i]!.key);
  }
  assert.is(whole[3]!.bytes.readBigUInt64BE(0), whole[3]!.key);
  const half: ReturnType<BlockHasher['hashBlock']>[] = [];
  a.extend(half, t.slice(0, 40), 16);
  assert.equal(half.map((d) => d.key), whole.slice(0, 2).map((d) => d.key));
  const b = new BlockHasher('e2', 'xxhash');
  const other: ReturnType<BlockHasher['hashBlock']>[] = [];
  b.extend(other, t, 16);
  assert.is.not(other[0]!.key, whole[0]!.key);
});

test.run();
