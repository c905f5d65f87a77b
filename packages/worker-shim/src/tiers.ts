/**
 * Engine `medium` → kvgate Tier (pure).
 *
 *   absent, "GPU"                     → gpu   (vLLM's MEDIUM_GPU, SGLang's StorageMedium.GPU: device HBM)
 *   "CPU", "CPU_PINNED"               → cpu   (vLLM's offloading connector MEDIUM_CPU; SGLang HiCache L2 host memory)
 *   "DISK", "EXTERNAL", anything else → disk  (SGLang L3 SSD / L4 shared or remote pool; vLLM's storage tier;
 *                                              a medium a newer engine invents)
 * Matching is case-insensitive. An unknown medium is never taken for GPU: the router would then promise a
 * hit on the fastest tier that the engine does not have. Reaching it through the slowest tier is the safe guess.
 */
import type { Tier } from '@kvgate/protocol';

export function tierOfMedium(medium: string | undefined): Tier {
  if (medium === undefined || medium === '') return 'gpu';
  const m = medium.toUpperCase();
  if (m === 'GPU') return 'gpu';
  if (m === 'CPU' || m === 'CPU_PINNED') return 'cpu';
  return 'disk';
}
