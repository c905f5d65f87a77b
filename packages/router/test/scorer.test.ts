import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_WEIGHTS, pick, score, type Candidate } from '../src/scorer.js';

const cand = (worker: string, over: Partial<Candidate> = {}): Candidate => ({
  worker, overlap: 0, inflightPrefillTokens: 0, inflightDecodeBlocks: 0, waiting: 0, running: 0, kvUsage: 0, capacityBlocks: 1000, ...over,
});

test('cost is uncached prefill + queued prefill + decode + queue, weighted', () => {
  const w = { ...DEFAULT_WEIGHTS, uncachedWeight: 3, prefillWeight: 2, decodeWeight: 0.5, queueWeight: 3 };
  const [s] = score({ promptBlocks: 10, blockSize: 16, candidates: [cand('a', { overlap: 4, inflightPrefillTokens: 32, inflightDecodeBlocks: 20, waiting: 1 })] }, w);
  // 3·6 + 2·2 + 0.5·20 + 3·1
  assert.is(s!.cost, 18 + 4 + 10 + 3);
  assert.is(s!.newPrefillBlocks, 6);
});

test('overlap beyond the prompt is capped', () => {
  const [s] = score({ promptBlocks: 3, blockSize: 16, candidates: [cand('a', { overlap: 9 })] });
  assert.is(s!.overlap, 3);
  assert.is(s!.newPrefillBlocks, 0);
});

test('the worker holding the prefix wins when loads are equal', () => {
  const s = score({ promptBlocks: 20, blockSize: 16, candidates: [cand('a'), cand('b', { overlap: 15 }), cand('c', { overlap: 5 })] });
  assert.is(pick(s)!.worker, 'b');
});

test('load outweighs a small overlap', () => {
  const s = score({ promptBlocks: 20, blockSize: 16, candidates: [cand('a', { overlap: 2, inflightPrefillTokens: 16 * 100 }), cand('b')] });
  assert.is(pick(s)!.worker, 'b');
});

test('engine-reported KV usage counts as active blocks when above the router accounting', () => {
  const s = score({ promptBlocks: 4, blockSize: 16, candidates: [cand('a', { kvUsage: 0.5, inflightDecodeBlocks: 10 })] });
  assert.is(s[0]!.cost, DEFAULT_WEIGHTS.uncachedWeight * 4 + 0.1 * 500);
});

test('busy workers are excluded unless all are busy', () => {
  const s = score({ promptBlocks: 20, blockSize: 16, candidates: [cand('a', { overlap: 20, waiting: 1000 }), cand('b', { inflightPrefillTokens: 16 * 50 })] });
  assert.ok(s[0]!.busy);
  assert.is(pick(s)!.worker, 'b');
  const all = score({ promptBlocks: 20, blockSize: 16, candidates: [cand('a', { kvUsage: 0.99 }), cand('b', { kvUsage: 0.995 })] });
  assert.ok(all.every((x) => x.busy));
  assert.ok(pick(all) !== undefined);
});

test('ties go to the least loaded, then random', () => {
  const w = { ...DEFAULT_WEIGHTS, decodeWeight: 0 };
  // equal cost (decode weight 0) but b carries more active blocks
  const s = score({ promptBlocks: 8, blockSize: 16, candidates: [cand('a', { inflightDecodeBlocks: 50 }), cand('b')] }, w);
  assert.is(s[0]!.cost, s[1]!.cost);
  assert.is(pick(s, w)!.worker, 'b');
  const eq = score({ promptBlocks: 8, blockSize: 16, candidates: [cand('a'), cand('b'), cand('c')] });
  assert.is(pick(eq, DEFAULT_WEIGHTS, () => 0)!.worker, 'a');
  assert.is(pick(eq, DEFAULT_WEIGHTS, () => 0.99)!.worker, 'c');
});

test('softmax temperature samples, favouring low cost', () => {
  const w = { ...DEFAULT_WEIGHTS, temperature: 0.1 };
  const s = score({ promptBlocks: 100, blockSize: 16, candidates: [cand('a', { overlap: 100 }), cand('b')] }, w);
  let seed = 1;
  const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const counts: Record<string, number> = { a: 0, b: 0 };
  for (let i = 0; i < 2000; i++) counts[pick(s, w, rnd)!.worker]!++;
  assert.ok(counts.a! > counts.b! * 10, JSON.stringify(counts));
  const hot = { ...DEFAULT_WEIGHTS, temperature: 100 };
  const c2: Record<string, number> = { a: 0, b: 0 };
  for (let i = 0; i < 2000; i++) c2[pick(s, hot, rnd)!.worker]!++;
  assert.ok(c2.b! > 500, JSON.stringify(c2));
});

test('empty candidate list picks nothing', () => {
  assert.is(pick([]), undefined);
});

test.run();
