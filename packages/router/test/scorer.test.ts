import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KvgateError } from '@kvgate/protocol';
import { DEFAULT_TIER_WEIGHTS, DEFAULT_WEIGHTS, parseTierWeights, pick, resolveWeights, score, type Candidate } from '../src/scorer.js';

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

test('tiers: a long CPU-held prefix beats an idle worker with nothing cached, and loses to a GPU holder of it', () => {
  // 64-block prompt; the CPU holder is busier (100 active blocks) than the idle worker
  const cpuHolder = cand('cpu', { overlap: 0, cpuOverlap: 60, diskOverlap: 60, inflightDecodeBlocks: 100 });
  const gpuHolder = cand('gpu', { overlap: 60, inflightDecodeBlocks: 100 });
  const idle = cand('idle');
  const s = score({ promptBlocks: 64, blockSize: 16, candidates: [cpuHolder, idle] });
  // 4·(64 − 60·0.8) + 0.1·100 against 4·64
  assert.is(s[0]!.cached, 48);
  assert.is(s[0]!.cost, 4 * 16 + 10);
  assert.is(s[1]!.cost, 4 * 64);
  assert.is(pick(s)!.worker, 'cpu');
  // weights that say a CPU block is worth nothing: the idle worker wins
  const noCpu = resolveWeights({ tierWeights: { cpu: 0 } });
  assert.is(pick(score({ promptBlocks: 64, blockSize: 16, candidates: [cpuHolder, idle] }, noCpu), noCpu)!.worker, 'idle');
  // the same prefix on GPU is worth more than on CPU
  const g = score({ promptBlocks: 64, blockSize: 16, candidates: [cpuHolder, gpuHolder, idle] });
  assert.is(pick(g)!.worker, 'gpu');
  assert.ok(g[1]!.cost < g[0]!.cost);
});

test('tiers: cached = gpu·wGpu + (cpu − gpu)·wCpu + (disk − cpu)·wDisk, cumulative', () => {
  const [s] = score({ promptBlocks: 64, blockSize: 16, candidates: [cand('a', { overlap: 10, cpuOverlap: 30, diskOverlap: 50 })] });
  assert.equal(s!.tiers, { gpu: 10, cpu: 30, disk: 50 });
  assert.is(s!.overlap, 10, 'overlap stays the GPU prefix');
  assert.is(s!.cached, 10 + 20 * 0.8 + 20 * 0.25);
  assert.is(s!.newPrefillBlocks, 64 - s!.cached);
  assert.is(s!.cost, DEFAULT_WEIGHTS.uncachedWeight * (64 - s!.cached));
  const w = resolveWeights({ tierWeights: { gpu: 1, cpu: 0.5, disk: 0.1 } });
  const [t] = score({ promptBlocks: 64, blockSize: 16, candidates: [cand('a', { overlap: 10, cpuOverlap: 30, diskOverlap: 50 })] }, w);
  assert.is(t!.cached, 10 + 20 * 0.5 + 20 * 0.1);
});

test('tiers: GPU-only candidates score exactly as before (no tiers, or tiers equal to the GPU prefix)', () => {
  for (const over of [{}, { cpuOverlap: 7, diskOverlap: 7 }]) {
    const [s] = score({ promptBlocks: 10, blockSize: 16, candidates: [cand('a', { overlap: 7, inflightPrefillTokens: 32, waiting: 2, ...over })] });
    assert.is(s!.cached, 7);
    assert.is(s!.newPrefillBlocks, 3);
    assert.is(s!.cost, 4 * 3 + 1 * 2 + 4 * 2);
    assert.equal(s!.tiers, { gpu: 7, cpu: 7, disk: 7 });
  }
});

test('tiers: capped at the prompt and made monotone (a lower tier never shortens the GPU prefix)', () => {
  const [s] = score({ promptBlocks: 20, blockSize: 16, candidates: [cand('a', { overlap: 12, cpuOverlap: 5, diskOverlap: 90 })] });
  assert.equal(s!.tiers, { gpu: 12, cpu: 12, disk: 20 });
  assert.is(s!.cached, 12 + 8 * 0.25);
  const [d] = score({ promptBlocks: 20, blockSize: 16, candidates: [cand('a', { overlap: 3, cpuOverlap: 9 })] });
  assert.equal(d!.tiers, { gpu: 3, cpu: 9, disk: 9 }, 'disk absent = cpu');
});

test('tier weights: flag syntax, defaults for what is left out, one clear error per mistake', () => {
  assert.equal(parseTierWeights('gpu=1,cpu=0.8,disk=0.25'), { gpu: 1, cpu: 0.8, disk: 0.25 });
  assert.equal(parseTierWeights(' CPU = 0.5 '), { ...DEFAULT_TIER_WEIGHTS, cpu: 0.5 });
  assert.equal(parseTierWeights('disk=0,cpu=1'), { gpu: 1, cpu: 1, disk: 0 });
  const err = (spec: string): string => {
    try {
      parseTierWeights(spec);
    } catch (e) {
      assert.instance(e, KvgateError);
      assert.is((e as KvgateError).code, 'KVG_CONFIG');
      return (e as Error).message;
    }
    throw new Error(`${spec} was accepted`);
  };
  assert.match(err('hbm=1'), /unknown tier "hbm"/);
  assert.match(err('cpu=0.5,cpu=0.6'), /cpu given twice/);
  assert.match(err('cpu=fast'), /cpu must be a number in \[0, 1\], got "fast"/);
  assert.match(err('cpu'), /cpu must be a number/);
  assert.match(err('disk=1.5'), /disk must be a number in \[0, 1\]/);
  assert.match(err('gpu=-0.1'), /gpu must be a number in \[0, 1\]/);
  assert.match(err(''), /expected e\.g\. gpu=1,cpu=0\.8,disk=0\.25/);
  assert.throws(() => resolveWeights({ tierWeights: { cpu: Number.NaN } }), /tier weight cpu must be a number in \[0, 1\]/);
  assert.equal(resolveWeights().tierWeights, DEFAULT_TIER_WEIGHTS);
});

test('empty candidate list picks nothing', () => {
  assert.is(pick([]), undefined);
});

test.run();
