import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Figure } from '../../../../bench/figure.js';
import { parseFlags } from '../flags.js';

export const summary = 'run the benchmarks (one human table, or --json: one JSON line per figure)';

const USAGE = 'kvgate bench [--json] [--quick] [name-filter...]\n       kvgate bench fleet [--workers W] [--blocks B] [--shards 1,2,4] [--seconds S] [--json]   (the fleet simulation: kvgate bench fleet --help)';
const SPEC = {
  json: { type: 'boolean', help: 'one JSON object per line: {bench, value, unit, baseline, note}' },
  quick: { type: 'boolean', help: 'smaller sizes (smoke run)' },
} as const;

const BENCH_DIR = new URL('../../../../bench/', import.meta.url).pathname;

export async function run(argv: string[]): Promise<number> {
  if (argv[0] === 'fleet') return runFleet(argv.slice(1));
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const { flags, positionals } = parsed;
  const files = readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith('.bench.ts'))
    .filter((f) => positionals.length === 0 || positionals.some((p) => f.includes(p)))
    .sort();
  const figures: Figure[] = [];
  const fmt = (n: number | undefined) => (n === undefined ? '' : Math.abs(n) >= 100 ? n.toFixed(0) : n.toPrecision(3));
  if (!flags.json) console.log(`${'bench'.padEnd(28)} ${'value'.padStart(12)} ${'unit'.padEnd(10)} ${'baseline'.padStart(12)} ${'ratio'.padStart(7)}  note`);
  const report = (fig: Figure) => {
    figures.push(fig);
    if (flags.json) console.log(JSON.stringify(fig));
    else {
      const ratio = fig.baseline ? (fig.value / fig.baseline).toFixed(2) + 'x' : '';
      console.log(`${fig.bench.padEnd(28)} ${fmt(fig.value).padStart(12)} ${fig.unit.padEnd(10)} ${fmt(fig.baseline).padStart(12)} ${ratio.padStart(7)}  ${fig.note ?? ''}`);
    }
  };
  // each bench file in its own process: one bench's heap (the index bench holds 1.3 M entries) and JIT state
  // must not colour the next one's latency figures
  let failed = 0;
  for (const f of files) {
    process.stderr.write(`[bench] ${f}\n`);
    // the actors a bench starts log at info; in a results table that is noise (KVGATE_LOG_LEVEL still wins)
    const env = { ...process.env, KVGATE_LOG_LEVEL: process.env.KVGATE_LOG_LEVEL ?? 'warn' };
    const child = spawn(process.execPath, ['--import', 'tsx', join(BENCH_DIR, 'run-one.ts'), join(BENCH_DIR, f), ...(flags.quick ? ['--quick'] : [])], { stdio: ['ignore', 'pipe', 'inherit'], env });
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      if (line.startsWith('FIGURE ')) report(JSON.parse(line.slice(7)) as Figure);
      else process.stderr.write(line + '\n');
    });
    const code = await new Promise<number>((res) => child.on('close', (c) => res(c ?? 1)));
    if (code !== 0) {
      failed++;
      process.stderr.write(`[bench] ${f} failed (exit ${code})\n`);
    }
  }
  if (failed > 0) return 1;
  return figures.length > 0 ? 0 : 1;
}

/** `kvgate bench fleet …`: the fleet simulation (bench-fleet.ts), its figures in the same table / --json lines */
async function runFleet(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const fmt = (n: number | undefined) => (n === undefined ? '' : Math.abs(n) >= 100 ? n.toFixed(0) : n.toPrecision(3));
  if (!json && !argv.includes('--help') && !argv.includes('-h')) console.log(`${'bench'.padEnd(28)} ${'value'.padStart(12)} ${'unit'.padEnd(10)} ${'baseline'.padStart(12)} ${'ratio'.padStart(7)}  note`);
  const { run: fleet } = await import('./bench-fleet.js');
  return fleet(argv, (fig) => {
    if (json) console.log(JSON.stringify(fig));
    else {
      const ratio = fig.baseline ? (fig.value / fig.baseline).toFixed(2) + 'x' : '';
      console.log(`${fig.bench.padEnd(28)} ${fmt(fig.value).padStart(12)} ${fig.unit.padEnd(10)} ${fmt(fig.baseline).padStart(12)} ${ratio.padStart(7)}  ${fig.note ?? ''}`);
    }
  });
}
