/**
 * fleet.<N>.*: the fleet simulation (issue 18) at a size `npm run bench` can afford (~1 min): 100 engines × 2,048
 * blocks, N = 1, 2, 4 shard processes, 4 s of churn each at the sim engine's measured rate, 50 router queries/s
 * (the shards get 20 s to drain what they could not keep up with).
 * The full fleet (2,000 engines × 16,384 blocks) is `kvgate bench fleet` (bench/fleet.ts; figures in the indexer
 * README's Numbers). --quick: 50 engines × 512 blocks, N = 1, 2, 3 s.
 */
import { runFleet, fleetFigures } from './fleet.js';
import type { BenchContext } from './figure.js';

export default async function (ctx: BenchContext): Promise<void> {
  const o = ctx.quick
    ? { workers: 50, blocks: 512, shards: [1, 2], seconds: 3, qps: 50 }
    : { workers: 100, blocks: 2048, shards: [1, 2, 4], seconds: 4, qps: 50 };
  const opts = { ...o, drainTimeoutMs: 20_000, progress: ctx.progress };
  const res = await runFleet(opts);
  for (const f of fleetFigures(res, opts)) ctx.report(f);
}
