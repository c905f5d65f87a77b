/** Small shared pieces of the workload package's tests. */

/** n token ids from base + 1 */
export const tokens = (n: number, base = 0) => Array.from({ length: n }, (_, i) => base + i + 1);

/** resolves once cond() holds; throws after timeoutMs */
export async function until(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** the e2e auth setup (password NATS, API keys, cluster secret) is the router suites' own: one definition */
export { authedStackOptions, E2E_AUTH_HEADERS } from '../../router/test/helpers.js';
