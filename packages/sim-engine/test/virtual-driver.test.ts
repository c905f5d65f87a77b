/** What a virtual-clock driver (replay whatif) uses: precomputed digests and no event recording change nothing else. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Scheduler, type TokenOutput } from '@kvgate/sim-engine';
import { initHashing } from '@kvgate/protocol';

function run(s: Scheduler, prompts: number[][], withDigests: boolean) {
  const outs: TokenOutput[] = [];
  const events: unknown[] = [];
  prompts.forEach((p, i) => s.submit({ id: `r${i}`, promptTokens: p, maxTokens: 4, arrivalMs: i, ...(withDigests ? { digests: s.prefixDigests(p) } : {}) }));
  let now = 0;
  for (let r = s.step(now); r; r = s.step(now)) {
    outs.push(...r.outputs);
    events.push(...r.events);
    now = r.endMs;
  }
  return { outs, events };
}

test('digests handed to submit and recordEvents: false give the same tokens, hits and times, and no events', async () => {
  await initHashing();
  const shared = Array.from({ length: 96 }, (_, i) => 1000 + i);
  // more prompt blocks than the cache holds, so blocks are evicted too
  const prompts = Array.from({ length: 12 }, (_, i) => [...shared, ...Array.from({ length: 40 + i }, (_, j) => 5000 + i * 100 + j)]);
  const opts = { numBlocks: 40, blockSize: 16, hashSeed: 'v', hashAlgo: 'xxhash' as const };
  const plain = run(new Scheduler(opts), prompts, false);
  const fast = run(new Scheduler({ ...opts, recordEvents: false }), prompts, true);
  assert.ok(plain.events.length > 0);
  assert.is(fast.events.length, 0);
  assert.equal(fast.outs, plain.outs);
  assert.ok(plain.outs.some((o) => o.index === 0 && o.cachedTokens > 0), 'some prompt hits the shared prefix');
  const s = new Scheduler(opts);
  assert.is(s.cachedDigestBlocks(s.prefixDigests(prompts[0]!)), 0);
});

test.run();
