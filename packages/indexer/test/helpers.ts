/** Shared test helpers (not a test file). */

/** mulberry32: deterministic pseudo-random numbers in [0, 1) */
export { mulberry32 as rng } from '@kvgate/protocol';

/** a random 64-bit hash, often ≥ 2^63 */
export function randomHash(r: () => number): bigint {
  return (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32)) | 1n;
}

/** a forest of prefix chains; later chains often share a leading run with chain 0 (a system prompt) */
export function universe(r: () => number, chains: number, depth: number): bigint[][] {
  const out: bigint[][] = [];
  for (let c = 0; c < chains; c++) {
    const shared = c > 0 && r() < 0.5 ? Math.floor(r() * depth) : 0;
    out.push(Array.from({ length: depth }, (_, i) => (i < shared ? out[0]![i]! : randomHash(r))));
  }
  return out;
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
