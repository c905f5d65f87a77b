/** Simulation profiles: vLLM's KV sizing from published model shapes and GPU memory, worked by hand. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_TIMING, MODELS, formatCapacity, paramCount, resolveProfile, scaledTiming, GPUS } from '@kvgate/sim-engine';

test('parameter counts from the configs match the published totals', () => {
  // Hugging Face safetensors totals: Qwen3-8B 8.19 B, Qwen3-32B 32.8 B, Llama-3.1-8B 8,030,261,248, Llama-3.1-70B 70.6 B
  assert.is(paramCount(MODELS['qwen3-8b']!), 8_190_735_360);
  assert.is(paramCount(MODELS['llama-3.1-8b']!), 8_030_261_248);
  assert.is(paramCount(MODELS['qwen3-32b']!), 32_762_123_264);
  assert.is(paramCount(MODELS['llama-3.1-70b']!), 70_553_706_496);
});

test('qwen3-8b on one H100 80 GB at 0.9: 25,178 blocks of 16 tokens', () => {
  const p = resolveProfile();
  // 81,559 MiB × 0.9                                  = 76,968,728,985.6 B
  // weights 8,190,735,360 × 2                         = 16,381,470,720 B
  // activations 8192 × (3 × 12288 + 4 × 4096) × 2      =    872,415,232 B
  //           + 2 × 256 × 151,936 × 4                  =    311,164,928 B
  // left for KV                                       = 59,403,678,105.6 B
  // KV per token 2 × 36 × 8 × 128 × 2 = 147,456 B; per 16-token block 2,359,296 B → 25,178.6 blocks
  assert.is(p.model, 'qwen3-8b');
  assert.is(p.gpu, 'h100-80gb');
  assert.is(p.weightsBytes, 16_381_470_720);
  assert.is(p.activationBytes, 1_183_580_160);
  assert.is(p.kvBytesPerToken, 147_456);
  assert.ok(Math.abs(p.availableKvBytes - 59_403_678_105.6) < 1);
  assert.is(p.numBlocks, 25_178);
  assert.is(p.tokens, 402_848);
  assert.is(p.overridden, false);
  assert.equal(p.shape, { layers: 36, kvHeads: 8, headDim: 128, dtypeBytes: 2 });
  // the reference profile keeps the fitted timing as it is
  assert.equal(p.timing, DEFAULT_TIMING);
  assert.is(formatCapacity(p).split(':')[0], 'qwen3-8b, 1 × h100-80gb (TP 1), gpu-memory-utilization 0.9');
  assert.match(formatCapacity(p), '25178 blocks × 16 tokens = 402,848 tokens');
});

test('tensor parallelism splits weights and KV heads; blocks count per engine', () => {
  const one = resolveProfile({ model: 'qwen3-32b' });
  const two = resolveProfile({ model: 'qwen3-32b', tensorParallelSize: 2 });
  assert.is(two.weightsBytes, one.weightsBytes / 2);
  assert.is(two.kvBytesPerToken, one.kvBytesPerToken / 2); // 4 of the 8 KV heads on each GPU
  // 64 layers leave 8.9 GiB on one H100 (2,274 blocks); on two, 40 GiB per GPU at half the bytes per token
  assert.is(one.numBlocks, 2274);
  assert.is(two.numBlocks, 20_470);
  // more GPUs than KV heads: heads are replicated, not split below one
  assert.is(resolveProfile({ model: 'llama-3.1-70b', gpu: 'h200-141gb', tensorParallelSize: 16 }).kvBytesPerToken, 2 * 80 * 1 * 128 * 2);
  assert.throws(() => resolveProfile({ model: 'qwen3-8b', tensorParallelSize: 3 }), /does not divide/);
});

test('a model that does not fit is refused, utilisation scales the budget, --num-blocks overrides', () => {
  assert.throws(() => resolveProfile({ model: 'llama-3.1-70b' }), /does not fit on 1 × h100-80gb/);
  assert.throws(() => resolveProfile({ gpuMemoryUtilization: 1.5 }), /gpu-memory-utilization/);
  assert.throws(() => resolveProfile({ gpu: 'b200' }), /unknown GPU "b200"/);
  const lo = resolveProfile({ gpuMemoryUtilization: 0.5 });
  // 81,559 MiB × 0.5 − 16,381,470,720 − 1,183,580,160 = 25,195,354,112 B → 10,679 blocks
  assert.is(lo.numBlocks, 10_679);
  const o = resolveProfile({ numBlocksOverride: 1000, blockSize: 128 });
  assert.is(o.numBlocks, 1000);
  assert.is(o.tokens, 128_000);
  assert.is(o.derivedNumBlocks, 3147);
  assert.match(formatCapacity(o), '(--num-blocks; the profile gives 3147)');
});

test('timing scales with parameters per GPU over compute (prefill) and weight bytes over bandwidth (decode)', () => {
  const t = scaledTiming(MODELS['qwen3-8b']!, GPUS['a100-80gb']!, 1);
  assert.ok(Math.abs(t.prefillB / DEFAULT_TIMING.prefillB - 989 / 312) < 1e-9);
  assert.ok(Math.abs(t.decodeR / DEFAULT_TIMING.decodeR - 3350 / 2039) < 1e-9);
  assert.is(t.prefillC, DEFAULT_TIMING.prefillC);
  const big = resolveProfile({ model: 'llama-3.1-70b', tensorParallelSize: 4 }).timing;
  const ratio = 70_553_706_496 / 4 / 8_190_735_360;
  assert.ok(Math.abs(big.prefillB / DEFAULT_TIMING.prefillB - ratio) < 1e-9);
  assert.ok(Math.abs(big.decodeQ / DEFAULT_TIMING.decodeQ - ratio) < 1e-9);
});

test.run();
