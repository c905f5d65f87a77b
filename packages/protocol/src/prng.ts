/**
 * mulberry32: a tiny deterministic PRNG, numbers in [0, 1). For workloads, tests and benchmarks that must be
 * reproducible from a seed; not for anything that needs unpredictability.
 */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
