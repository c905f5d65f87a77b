/**
 * The simulation-profile flags shared by `kvgate sim-engine`, `kvgate start` and `kvgate replay whatif` (names as
 * vLLM's where it has one: --tensor-parallel-size, --gpu-memory-utilization), and their ProfileSpec.
 */
import { GPUS, MODELS, resolveProfile, type ProfileSpec } from '@kvgate/sim-engine/profile';
import { FlagError } from './fatal.js';
import { numberFlag } from './flags.js';

export const PROFILE_SPEC = {
  'model-profile': { type: 'string', help: `simulated model (sizes KV and timing): ${Object.keys(MODELS).join(' | ')}`, default: 'qwen3-8b' },
  gpu: { type: 'string', help: `simulated GPU: ${Object.keys(GPUS).join(' | ')}`, default: 'h100-80gb' },
  'tensor-parallel-size': { type: 'string', help: 'GPUs per engine (weights and KV heads split across them)', default: '1' },
  'gpu-memory-utilization': { type: 'string', help: 'share of GPU memory for weights, activations and KV, as vLLM', default: '0.9' },
} as const;

export interface ProfileFlags {
  'model-profile'?: string | undefined;
  gpu?: string | undefined;
  'tensor-parallel-size'?: string | undefined;
  'gpu-memory-utilization'?: string | undefined;
}

/** The ProfileSpec these flags ask for; a bad model, GPU, TP or utilisation is a FlagError. */
export function profileFrom(f: ProfileFlags): ProfileSpec {
  const spec: ProfileSpec = {
    model: f['model-profile'] ?? 'qwen3-8b',
    gpu: f.gpu ?? 'h100-80gb',
    tensorParallelSize: numberFlag(f['tensor-parallel-size'], 'tensor-parallel-size', 1, { min: 1, integer: true }),
    gpuMemoryUtilization: numberFlag(f['gpu-memory-utilization'], 'gpu-memory-utilization', 0.9),
  };
  try {
    resolveProfile(spec);
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
  return spec;
}
