/**
 * Runs one bench file in its own process (so one bench's heap and JIT state cannot colour the next one's
 * figures) and writes each figure as a `FIGURE {json}` line on stdout; progress goes to stderr.
 * Usage (by `kvgate bench`): node --import tsx bench/run-one.ts <file.bench.ts> [--quick]
 */
import { pathToFileURL } from 'node:url';
import type { BenchModule } from './figure.js';

const [file, ...rest] = process.argv.slice(2);
if (!file) {
  console.error('usage: run-one.ts <file.bench.ts> [--quick]');
  process.exit(2);
}
const mod = (await import(pathToFileURL(file).href)) as { default: BenchModule };
await mod.default({
  quick: rest.includes('--quick'),
  progress: (m) => process.stderr.write(`[bench] ${file.split('/').pop()}: ${m}\n`),
  report: (fig) => process.stdout.write(`FIGURE ${JSON.stringify(fig)}\n`),
});
process.exit(0);
