/**
 * `kvgate bench fleet` (issue 18): the fleet simulation — a sharded index (N indexer processes, `--shard i/N`) over
 * a real nats-server under a fleet's KV event load while a router queries it, for each N; prints events/s absorbed,
 * match p50/p99 and RSS per shard as bench figures (bench/fleet.ts does the work; the human table or --json lines
 * are the ones `kvgate bench` prints).
 */
import type { Figure } from '../../../../bench/figure.js';
import { parseFlags, numberFlag } from '../flags.js';
import { FlagError } from '../fatal.js';

export const USAGE = 'kvgate bench fleet [--workers W] [--blocks B] [--shards 1,2,4] [--seconds S] [--qps Q] [--json]';
const SPEC = {
  workers: { type: 'string', help: 'engines in the fleet', default: '2000' },
  blocks: { type: 'string', help: 'KV blocks cached per engine (the fill; churn keeps it there)', default: '16384' },
  shards: { type: 'string', help: 'shard counts to run, comma-separated (one fresh nats-server and N shard processes each)', default: '1,2,4' },
  seconds: { type: 'string', help: 'seconds of steady churn (and queries) per shard count', default: '20' },
  qps: { type: 'string', help: 'router index queries per second during the churn', default: '200' },
  'qlen': { type: 'string', help: 'prompt blocks per query', default: '256' },
  'churn-scale': { type: 'string', help: 'share of the sim engine\'s measured (busy) churn each engine produces', default: '1' },
  json: { type: 'boolean', help: 'one JSON object per line: {bench, value, unit, baseline, note}' },
} as const;

export async function run(argv: string[], print: (f: Figure) => void): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const f = parsed.flags;
  if (parsed.positionals.length > 0) throw new FlagError(`kvgate bench fleet: unexpected ${JSON.stringify(parsed.positionals[0])}`);
  const workers = numberFlag(f.workers, 'workers', 2000, { min: 1, integer: true });
  const blocks = numberFlag(f.blocks, 'blocks', 16384, { min: 64, integer: true });
  const seconds = numberFlag(f.seconds, 'seconds', 20, { min: 1 });
  const qps = numberFlag(f.qps, 'qps', 200, { min: 1 });
  const qlen = numberFlag(f.qlen, 'qlen', 256, { min: 1, integer: true });
  const scale = numberFlag(f['churn-scale'], 'churn-scale', 1, { min: 0.001 });
  const shards = (f.shards ?? '1,2,4').split(',').map((x) => Number(x.trim()));
  if (shards.some((n) => !Number.isInteger(n) || n < 1 || n > 64)) throw new FlagError(`--shards must be a comma-separated list of integers 1…64, got ${JSON.stringify(f.shards)}`);
  const { runFleet, fleetFigures } = await import('../../../../bench/fleet.js');
  const { measureEngineChurn } = await import('../../../../bench/fleet-churn.js');
  const progress = (m: string) => process.stderr.write(`[bench] fleet: ${m}\n`);
  const measured = await measureEngineChurn({ numBlocks: Math.max(1024, blocks), seconds: 90 });
  progress(`sim engine measured (busy, ${measured.numBlocks} blocks): ${measured.storedPerS.toFixed(0)} blocks/s stored, ${measured.batchesPerS.toFixed(1)} batches/s; --churn-scale ${scale}`);
  const churn = { ...measured, storedPerS: measured.storedPerS * scale, removedPerS: measured.removedPerS * scale, batchesPerS: measured.batchesPerS * scale };
  const opts = { workers, blocks, shards, seconds, qps, qlen, churn, progress };
  const res = await runFleet(opts);
  for (const fig of fleetFigures(res, opts)) print(fig);
  return 0;
}
