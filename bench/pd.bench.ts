/**
 * P/D against colocated on the same simulated GPUs: `kvgate start --disagg --json` (the command a user runs; one
 * colocated run, one disaggregated run per fabric, same workload, same process), its rows as figures with the
 * colocated row of the same run as baseline:
 *   pd.<fabric>.ttft.p50 / .ttft.p99 / .itl.p50 / .itl.p99   ms (ITL per request: the mean gap after the first token)
 *   pd.<fabric>.tokps                                         output tokens per modelled second
 *   pd.<fabric>.transferShare                                 % of TTFT spent on the modelled KV pull (baseline 0)
 * Modelled GPU time; the KV bytes are modelled, not moved (kvgate moves descriptors; NIXL over RDMA/UCX moves bytes).
 */
import { execFile } from 'node:child_process';
import type { BenchModule } from './figure.js';

const BIN = new URL('../bin/kvgate.js', import.meta.url).pathname;

interface Row { row: string; fabric: string | null; ttftP50Ms: number; ttftP99Ms: number; itlP50Ms: number; itlP99Ms: number; outputTokensPerS: number; transferShare: number; errors: number }

const bench: BenchModule = async (ctx) => {
  const args = ['start', '--disagg', '--json', ...(ctx.quick ? ['--requests', '16'] : [])];
  ctx.progress(`kvgate ${args.join(' ')} (colocated, then disaggregated per fabric)`);
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = execFile(process.execPath, [BIN, ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'warn' }, maxBuffer: 64 * 1024 * 1024 }, (err, out) => (err ? reject(err) : resolve(out)));
    child.stderr?.on('data', (c: Buffer) => {
      for (const line of c.toString().split('\n')) if (/^\s+(colocated|disagg)/.test(line)) ctx.progress(line.trim());
    });
  });
  const { rows, workload } = JSON.parse(stdout.trim().split('\n').at(-1)!) as { rows: Row[]; workload: { requests: number; promptTokens: number; outputTokens: number; ratePerS: number; engines: number; prefillEngines: number } };
  const base = rows.find((r) => r.row === 'colocated')!;
  for (const r of rows.filter((x) => x.row === 'disaggregated')) {
    const note = `${workload.prefillEngines}P+${workload.engines - workload.prefillEngines}D vs ${workload.engines} colocated, same run: ${workload.requests} × ${workload.promptTokens}-token prompts → ${workload.outputTokens} tokens at ${workload.ratePerS} req/s; modelled time, KV bytes modelled${r.errors || base.errors ? `; errors ${r.errors}/${base.errors}` : ''}`;
    const f = r.fabric!;
    ctx.report({ bench: `pd.${f}.ttft.p50`, value: r.ttftP50Ms, unit: 'ms', baseline: base.ttftP50Ms, note });
    ctx.report({ bench: `pd.${f}.ttft.p99`, value: r.ttftP99Ms, unit: 'ms', baseline: base.ttftP99Ms, note });
    ctx.report({ bench: `pd.${f}.itl.p50`, value: r.itlP50Ms, unit: 'ms', baseline: base.itlP50Ms, note });
    ctx.report({ bench: `pd.${f}.itl.p99`, value: r.itlP99Ms, unit: 'ms', baseline: base.itlP99Ms, note });
    ctx.report({ bench: `pd.${f}.tokps`, value: r.outputTokensPerS, unit: 'tok/s', baseline: base.outputTokensPerS, note });
    ctx.report({ bench: `pd.${f}.transferShare`, value: r.transferShare * 100, unit: '%', baseline: 0, note });
  }
};

export default bench;
