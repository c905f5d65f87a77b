/**
 * Gateway picker figures (DESIGN.md section 7), beside the HTTP router's in the same run — one router process
 * serving both edges over the same routing core (real indexer over the MemoryBus, 4 workers, ~100k indexed
 * blocks, 2k-token prompts as token ids):
 *   epp.pick.p50 / .p99   ms from the last request-body chunk in to the headers answer out, in the picker (the
 *                         stream's own clock: the figure kvgate_epp_pick_seconds records), 200 req/s of ext_proc
 *                         streams played as Envoy sends them (bench/epp-load.ts, another process: headers, the
 *                         body in 8 KiB chunks, response headers and body once the body came back);
 *                         baseline: the HTTP router's overhead at that percentile in the same alternating rounds
 *                         (request in at the router → the stub engine sees it: router.overhead's definition)
 *   epp.rps               whole ext_proc conversations per second, 32 streams in flight (the note adds 128: each
 *                         conversation waits on the picker twice, so 32 streams are latency-bound); baseline: pick-only
 *                         POST /v1/route requests/s on the same router, 32 in flight (router.route.rps's load)
 */
import { fork } from 'node:child_process';
import type { IncomingMessage } from 'node:http';
import { fileURLToPath } from 'node:url';
import { encode, initHashing, prefixHashes, subjects } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startIndexer } from '@kvgate/indexer';
import { startRouter } from '@kvgate/router';
import { percentile, type BenchContext } from './figure.js';
import type { Timed } from './router-load.js';
import type { EppLoadRequest, EppTimed } from './epp-load.js';
import { startLoadProcess } from './router.bench.js';

const MODEL = 'bench-model';
const B = 16;

function startEppLoad() {
  const child = fork(fileURLToPath(new URL('./epp-load.ts', import.meta.url)), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let next = 1;
  child.on('message', (m: { id: number; value?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.error !== undefined) p?.reject(new Error(`epp load process: ${m.error}`));
    else p?.resolve(m.value);
  });
  child.on('exit', (code) => {
    for (const p of pending.values()) p.reject(new Error(`epp load process exited (${code})`));
    pending.clear();
  });
  return {
    call<T>(req: EppLoadRequest): Promise<T> {
      const id = next++;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, req });
      });
    },
    close: () => child.disconnect(),
  };
}

export default async function (ctx: BenchContext): Promise<void> {
  await initHashing();
  const n = ctx.quick ? 400 : 3000;
  const rate = 200;
  const rounds = ctx.quick ? 1 : 3;

  const load = startLoadProcess();
  const envoy = startEppLoad();
  const engines = await load.call<string[]>({ op: 'engines', count: 4 });
  const bus = await createBus();
  const s = subjects('default');
  const indexer = await startIndexer(bus, { registryTtlMs: 15_000 });
  const kv = await bus.kv(s.workersBucket, { ttlMs: 15_000 });
  const registerAll = () => Promise.all(engines.map((e, i) => kv.put(`w${i}`, encode({ worker: `w${i}`, model: MODEL, role: 'both', url: e, engineUrl: e, blockSize: B, capacityBlocks: 100_000, loras: [], ts: Date.now() }))));
  await registerAll();
  const heartbeat = setInterval(() => void registerAll(), 5_000);
  for (let p = 0; p < 400; p++) {
    const toks = Array.from({ length: 256 * B }, (_, i) => (p * 7919 + i * 31) % 150_000);
    bus.publish(s.events(`w${p % 4}`), encode({ worker: `w${p % 4}`, seq: Math.floor(p / 4) + 1, ts: Date.now(), model: MODEL, events: [{ t: 'stored', parent: null, hashes: prefixHashes(MODEL, null, B, toks) }] }));
  }
  await bus.flush();
  await indexer.whenReady();
  const picks: number[] = [];
  let recording = false;
  const router = await startRouter(bus, { port: 0, id: 'bench-epp', registryTtlMs: 15_000, epp: { port: 0, healthPort: 0, onPick: (ms) => recording && picks.push(ms) } });
  await router.waitForWorkers(4);
  const inAt = new Map<string, number>();
  router.server.prependListener('request', (req: IncomingMessage) => {
    const rid = req.headers['x-request-id'];
    if (typeof rid === 'string') inAt.set(rid, Number(process.hrtime.bigint()) / 1e6);
  });

  const prompts = Array.from({ length: 64 }, (_, p) => JSON.stringify({ model: MODEL, max_tokens: 1, prompt: Array.from({ length: 2048 }, (_, i) => ((p % 400) * 7919 + i * 31) % 150_000 + (i > 1024 ? p : 0)) }));
  await load.call({ op: 'prompts', bodies: prompts });
  await envoy.call({ op: 'connect', target: `127.0.0.1:${router.epp!.port}`, bodies: prompts });
  ctx.progress(`router + picker up; ${n} requests per edge at ${rate} req/s`);

  // warm-up both edges, then alternating rounds (a shared 2-core box drifts; one window each would charge it to one edge)
  await envoy.call<EppTimed[]>({ op: 'measure', count: Math.min(n, 2 * rate), rate });
  await load.call<Timed[]>({ op: 'measure', url: router.url, path: '/v1/completions', tag: 'warm', count: Math.min(n, 2 * rate), rate });
  const client: number[] = [];
  const http: number[] = [];
  for (let k = 0; k < rounds; k++) {
    recording = true;
    const t = await envoy.call<EppTimed[]>({ op: 'measure', count: Math.ceil(n / rounds), rate });
    recording = false;
    client.push(...t.map((x) => x.headersIn - x.lastChunk));
    const via = await load.call<Timed[]>({ op: 'measure', url: router.url, path: '/v1/completions', tag: `http-${k}`, count: Math.ceil(n / rounds), rate });
    for (const v of via) {
      const at = inAt.get(v.id);
      if (at === undefined || v.at < at) throw new Error('router request-in times missing or after the upstream arrival');
      http.push(v.at - at);
    }
  }
  if (picks.length < client.length) throw new Error(`${picks.length} picks recorded for ${client.length} streams`);
  const how = `${rate} req/s, 2k-token prompts as token ids (~${Math.round(prompts[0]!.length / 1024)} KiB bodies, 8 KiB chunks), 4 workers, real indexer over the MemoryBus, one router process serving both edges, Envoy-side client and stub engines in other processes, ${rounds} alternating rounds of ${Math.ceil(n / rounds)} per edge`;
  for (const [q, p] of [['p50', 50], ['p99', 99]] as const) {
    ctx.report({
      bench: `epp.pick.${q}`,
      value: percentile(picks, p),
      unit: 'ms',
      baseline: percentile(http, p),
      note: `last request-body chunk in → headers answer out, in the picker; client-observed last chunk written → headers answer in: ${percentile(client, p).toFixed(3)} ms; baseline: the HTTP router's overhead (request in → upstream sees it) at ${q}, same router and rounds; ${how}`,
    });
  }

  ctx.progress('epp rps');
  const secs = ctx.quick ? 1.5 : 5;
  await envoy.call<number>({ op: 'rps', seconds: 0.5, inFlight: 32 });
  const eppRps = await envoy.call<number>({ op: 'rps', seconds: secs, inFlight: 32 });
  const eppRps128 = await envoy.call<number>({ op: 'rps', seconds: secs, inFlight: 128 });
  await load.call<number>({ op: 'rps', url: router.url, path: '/v1/route', seconds: 0.5, inFlight: 32 });
  const routeRps = await load.call<number>({ op: 'rps', url: router.url, path: '/v1/route', seconds: secs, inFlight: 32 });
  ctx.report({ bench: 'epp.rps', value: Math.round(eppRps), unit: 'req/s', baseline: Math.round(routeRps), note: `whole ext_proc conversations (headers, body in and back, response headers and body), 32 streams in flight, 2k-token prompts (each conversation waits on the picker twice: at 128 streams ${Math.round(eppRps128)}/s); baseline: pick-only POST /v1/route on the same router, 32 in flight (router.route.rps's load)` });

  envoy.close();
  load.close();
  clearInterval(heartbeat);
  await router.close();
  await indexer.close();
  await bus.close();
}
