/**
 * The dashboard feed's cost on the request path (issue 17), beside the same router with no dashboard open:
 *   router.dashboard.overhead.p50 / .p99  ms, request in at the router (headers) → the upstream sees it, with one
 *                               dashboard client connected and receiving its 250 ms ticks (decisions sampled, TTFT
 *                               and cache tallies kept); baseline: the same router with no client (nothing kept,
 *                               no timer). Alternating rounds of the same router at 200 req/s, and at 1,000 req/s
 *                               (`.1k`: the rate the dashboard is meant to keep up with), 2k-token prompts as token ids, 4 stub workers in
 *                               another process (bench/router-load.ts), index fallbacks (no indexer: decisions by
 *                               load after the 5 ms budget would be slow) avoided with the least-loaded policy.
 */
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { encode, initHashing, subjects } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startRouter } from '@kvgate/router';
import { percentile, type BenchContext } from './figure.js';
import type { Timed } from './router-load.js';
import { startLoadProcess } from './router.bench.js';

const MODEL = 'bench-model';

export default async function (ctx: BenchContext): Promise<void> {
  await initHashing();
  const rounds = ctx.quick ? 2 : 3;
  const load = startLoadProcess();
  const engines = await load.call<string[]>({ op: 'engines', count: 4 });
  const bus = await createBus();
  const kv = await bus.kv(subjects('default').workersBucket, { ttlMs: 0 });
  for (const [i, e] of engines.entries()) await kv.put(`w${i}`, encode({ worker: `w${i}`, model: MODEL, role: 'both', url: e, engineUrl: e, blockSize: 16, capacityBlocks: 100_000, loras: [], ts: Date.now() }));
  const router = await startRouter(bus, { port: 0, id: 'bench-dash', registryTtlMs: 0, policy: 'least-loaded' });
  await router.waitForWorkers(4);
  const prompts = Array.from({ length: 64 }, (_, p) => JSON.stringify({ model: MODEL, max_tokens: 1, prompt: Array.from({ length: 2048 }, (_, i) => (p * 7919 + i * 31) % 150_000) }));
  await load.call({ op: 'prompts', bodies: prompts });
  const inAt = new Map<string, number>();
  router.server.prependListener('request', (req: IncomingMessage) => {
    const rid = req.headers['x-request-id'];
    if (typeof rid === 'string') inAt.set(rid, Number(process.hrtime.bigint()) / 1e6);
  });
  const measure = (tag: string, count: number, rate: number) => load.call<Timed[]>({ op: 'measure', url: router.url, path: '/v1/completions', tag, count, rate });
  let ticks = 0;
  let decisionsShown = 0;
  const open = () =>
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`${router.url.replace('http', 'ws')}/dashboard/ws`);
      ws.on('message', (d) => {
        ticks++;
        decisionsShown += (JSON.parse(String(d)) as { decisions: { count: number } }).decisions.count;
      });
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
    });
  for (const [rate, suffix] of [[200, ''], [1000, '.1k']] as const) {
    const perRound = Math.round((ctx.quick ? 3 : 8) * rate / (rate === 200 ? 1 : 2));
    ctx.progress(`warm-up at ${rate} req/s`);
    await measure(`warm-${rate}`, 2 * rate, rate);
    const closed: number[] = [], opened: number[] = [];
    const inRouter = (ts: Timed[]) => ts.map((t) => t.at - inAt.get(t.id)!);
    ticks = 0;
    decisionsShown = 0;
    for (let k = 0; k < rounds; k++) {
      ctx.progress(`${rate} req/s, round ${k + 1}/${rounds}: dashboard closed, then open`);
      closed.push(...inRouter(await measure(`closed-${rate}-${k}`, perRound, rate)));
      const ws = await open();
      opened.push(...inRouter(await measure(`open-${rate}-${k}`, perRound, rate)));
      await new Promise((r) => setTimeout(r, 300)); // the last tick of the round
      ws.close();
      await new Promise((r) => setTimeout(r, 100));
    }
    if ([...closed, ...opened].some((x) => !Number.isFinite(x) || x < 0)) throw new Error('request-in times missing or after the upstream arrival');
    const how = `${rate} req/s, ${opened.length} requests each way in ${rounds} alternating rounds of the same router; 2k-token prompts, 4 stub workers in another process; the open client received ${ticks} ticks showing ${decisionsShown} of ${opened.length} decisions`;
    for (const q of [50, 99] as const) {
      ctx.report({ bench: `router.dashboard.overhead${suffix}.p${q}`, value: percentile(opened, q), unit: 'ms', baseline: percentile(closed, q), note: `request in → upstream sees it with one dashboard client connected; baseline: the same router with none; ${how}` });
    }
  }
  await router.close();
  await bus.close();
  load.close();
}
