/**
 * Reads counters from the engines' Prometheus `/metrics` (vLLM names), summed over engines, so a launcher can
 * take the delta of one run: e.g. `vllm:external_prefix_cache_hits_total`, the prompt tokens the CPU offload
 * tier served. A counter an engine does not export counts 0.
 */

/** The sum of every sample of `name` (any labels) in a Prometheus text exposition. */
export function sumCounter(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    // the name must end here: `vllm:x_total{…} v` or `vllm:x_total v`, not a longer metric name
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) sum += v;
  }
  return sum;
}

/** `name` summed over the engines at `urls` (their /metrics, fetched in parallel). */
export async function engineCounter(urls: readonly string[], name: string): Promise<number> {
  const texts = await Promise.all(
    urls.map(async (u) => {
      const res = await fetch(new URL('/metrics', u));
      if (!res.ok) throw new Error(`GET ${u}/metrics: HTTP ${res.status}`);
      return res.text();
    }),
  );
  return texts.reduce((a, t) => a + sumCounter(t, name), 0);
}
