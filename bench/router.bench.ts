/**
 * Router figures (DESIGN.md section 7), each beside a baseline measured in the same run:
 *   router.overhead.p50 / .p99  ms, client send → upstream sees the request, through a router (real indexer over
 *                               the MemoryBus, 4 workers, a 2k-token prompt as token ids) at a fixed request rate;
 *                               baseline: the same client straight to the engine stub. Client and stubs run in a
 *                               process of their own (router-load.ts); the router process holds router + indexer.
 *   router.overhead.auth.p50 / .p99  the same through a second router on the same bus with auth on (an API key,
 *                               the rate limiter, the engine's key upstream), measured in the same alternating
 *                               rounds; baseline: router.overhead.* (auth off) — the cost of the checks.
 *   router.added.p50 / .p99     ms, client-observed latency (send → whole response in) through the router minus
 *                               the same straight to the engine, at 200 req/s; baseline: nginx.added (so the ratio
 *                               column is router/nginx). Same client, payloads and rate for every path, measured in
 *                               the same alternating rounds as router.overhead.
 *   nginx.added.p50 / .p99      the same through nginx, haproxy.added.* through HAProxy (plain round-robin proxies
 *                               over the same 4 engines, bench/peers.ts: installed with apt-get when missing, run
 *                               from a generated config as the current user; skipped with a note when they cannot
 *                               be); baseline: the direct client-observed latency at that percentile.
 *   node.added.p50 / .p99       the same through a bare Node.js round-robin proxy (bench/node-proxy.ts: node:http +
 *                               an undici Pool, the router's own HTTP stack, nothing else) in a process of its own:
 *                               the runtime's floor, so router/node is the router's own cost and node/nginx Node's.
 *   router.added.1k.p50 / .p99  (and nginx.added.1k.*, haproxy.added.1k.*, node.added.1k.*) the same at 1,000 req/s.
 *   router.fallback.nats        % of routing decisions that missed the index budget (5 ms) and went by load only,
 *                               200 req/s, with a real nats-server and the indexer in its own process
 *                               (bench/router-nats.ts); baseline: the same share over the MemoryBus in this run.
 *   router.fallback.nats.floor  % of plain 1 KiB request/reply round trips from the router's NATS connection to an
 *                               echo process (bench/nats-echo.ts) that miss the same 5 ms deadline, sent at the
 *                               same rate in the same windows as the router's requests (the same CPU contention);
 *                               baseline: router.fallback.nats.
 *   router.route.rps            pick-only POST /v1/route requests/s (32 in flight); baseline: the same requests
 *                               answered by a bare HTTP server that only parses the JSON.
 *   router.tokenize.prompt8k    ms to tokenize a new 8k-token prompt (local Qwen3 tokenizer); baseline: a repeat
 *                               (digest-keyed cache hit).
 *   router.tokenize.chatTurn    ms to tokenize turn 6 of a conversation whose turns 1-5 were seen; baseline: the
 *                               same request tokenized whole without the piece cache.
 */
import { fork } from 'node:child_process';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { encode, initHashing, prefixHashes, subjects } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { loadTokenizer, type ChatMessage } from '@kvgate/protocol/tokenizer';
import { startIndexer } from '@kvgate/indexer';
import { startRouter, PromptTokenizer } from '@kvgate/router';
import { percentile, type BenchContext } from './figure.js';
import type { LoadRequest, Timed } from './router-load.js';
import { startPeer, type Peer } from './peers.js';
import { startNatsLeg } from './router-nats.js';

const MODEL = 'bench-model';
const B = 16;

/** The load process (bench/router-load.ts): stub engines + HTTP client, off the router's process. */
export function startLoadProcess() {
  const child = fork(fileURLToPath(new URL('./router-load.ts', import.meta.url)), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let next = 1;
  child.on('message', (m: { id: number; value?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.error !== undefined) p?.reject(new Error(`load process: ${m.error}`));
    else p?.resolve(m.value);
  });
  child.on('exit', (code) => {
    for (const p of pending.values()) p.reject(new Error(`load process exited (${code})`));
    pending.clear();
  });
  return {
    call<T>(req: LoadRequest): Promise<T> {
      const id = next++;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, req });
      });
    },
    close(): void {
      child.disconnect();
    },
  };
}

const words = (n: number, seed: number) => {
  const w = ['cache', 'router', 'token', 'engine', 'prefix', 'block', 'worker', 'latency', 'queue', 'model', 'the', 'of', 'and', 'a', 'in'];
  let s = seed;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out.push(w[s % w.length]! + (s % 7 === 0 ? String(s % 1000) : ''));
  }
  return out.join(' ');
};

/**
 * `<path>.added<suffix>.p50/.p99` for the router and each peer: client-observed latency (send → whole response)
 * at that percentile minus direct's. The router's baseline is nginx's added (the ratio the goals are set on).
 */
function reportAdded(ctx: BenchContext, samples: Map<string, Timed[]>, suffix: string, how: string, skipped: string[]): void {
  const total = (name: string) => samples.get(name)!.map((t) => t.done - t.sent);
  const direct = total('direct');
  const added = new Map<string, { p50: number; p99: number }>();
  for (const name of samples.keys()) {
    if (name === 'direct') continue;
    const xs = total(name);
    added.set(name, { p50: percentile(xs, 50) - percentile(direct, 50), p99: percentile(xs, 99) - percentile(direct, 99) });
  }
  const skipNote = skipped.length ? `; skipped: ${skipped.join('; ')}` : '';
  for (const q of ['p50', 'p99'] as const) {
    const r = added.get('router')![q];
    const ng = added.get('nginx')?.[q], hp = added.get('haproxy')?.[q], nd = added.get('node')?.[q];
    const ratios = [ng !== undefined ? `router/nginx ${(r / ng).toFixed(2)}×` : '', hp !== undefined ? `router/haproxy ${(r / hp).toFixed(2)}×` : '', nd !== undefined ? `router/node ${(r / nd).toFixed(2)}×` : '', nd !== undefined && ng !== undefined ? `node/nginx ${(nd / ng).toFixed(2)}×` : ''].filter(Boolean).join(', ');
    const base = `client-observed send → whole response, ${q} minus direct's (direct ${percentile(direct, q === 'p50' ? 50 : 99).toFixed(3)} ms), ${samples.get('router')!.length} requests per path, ${how}`;
    ctx.report({ bench: `router.added${suffix}.${q}`, value: r, unit: 'ms', ...(ng !== undefined ? { baseline: ng } : {}), note: `through the router; baseline: nginx.added${suffix}.${q}; ${ratios || 'no peer ran'}; ${base}${skipNote}` });
    for (const peer of ['nginx', 'haproxy', 'node'] as const) {
      const a = added.get(peer);
      const what = peer === 'node' ? 'a bare Node.js proxy (node:http + undici, no parse, no routing: the runtime floor)' : peer;
      if (a) ctx.report({ bench: `${peer}.added${suffix}.${q}`, value: a[q], unit: 'ms', baseline: percentile(direct, q === 'p50' ? 50 : 99), note: `through ${what} (round-robin over the same 4 engines); baseline: direct ${q}; ${base}` });
    }
  }
}

export default async function (ctx: BenchContext): Promise<void> {
  await initHashing();
  const n = ctx.quick ? 400 : 3000;
  const rate = 200; // requests per second

  // ---- a router with a real indexer on the MemoryBus, 4 stub workers -----------------------------------------
  const load = startLoadProcess();
  const engines = await load.call<string[]>({ op: 'engines', count: 4 });
  const bus = await createBus();
  const s = subjects('default');
  const indexer = await startIndexer(bus, { registryTtlMs: 15_000 });
  const kv = await bus.kv(s.workersBucket, { ttlMs: 15_000 });
  // registrations with a heartbeat, as shims keep them (the bench outlives one TTL: expired workers would turn
  // the measured requests into 503s)
  const registerAll = () => Promise.all(engines.map((e, i) => kv.put(`w${i}`, encode({ worker: `w${i}`, model: MODEL, role: 'both', url: e, engineUrl: e, blockSize: B, capacityBlocks: 100_000, loras: [], ts: Date.now() }))));
  await registerAll();
  const heartbeat = setInterval(() => void registerAll(), 5_000);
  // ~100k indexed blocks: 400 distinct 256-block prefixes spread over the workers
  for (let p = 0; p < 400; p++) {
    const toks = Array.from({ length: 256 * B }, (_, i) => (p * 7919 + i * 31) % 150_000);
    const hashes = prefixHashes(MODEL, null, B, toks);
    bus.publish(s.events(`w${p % 4}`), encode({ worker: `w${p % 4}`, seq: Math.floor(p / 4) + 1, ts: Date.now(), model: MODEL, events: [{ t: 'stored', parent: null, hashes }] }));
  }
  await bus.flush();
  await indexer.whenReady();
  const router = await startRouter(bus, { port: 0, id: 'bench-router', registryTtlMs: 15_000 });
  await router.waitForWorkers(4);
  // the same router with auth on (API key, per-key rate limits that never bite, the engine's own key upstream)
  const AUTH = { authorization: 'Bearer bench-api-key' };
  const routerAuth = await startRouter(bus, { port: 0, id: 'bench-router-auth', registryTtlMs: 15_000, apiKeys: ['bench-api-key'], rateLimit: { requestsPerS: 1e6, tokensPerS: 1e9 }, engineApiKey: 'bench-engine-key' });
  await routerAuth.waitForWorkers(4);
  ctx.progress('router up; measuring overhead');

  const prompts = Array.from({ length: 64 }, (_, p) => JSON.stringify({ model: MODEL, max_tokens: 1, prompt: Array.from({ length: 2048 }, (_, i) => ((p % 400) * 7919 + i * 31) % 150_000 + (i > 1024 ? p : 0)) }));
  await load.call({ op: 'prompts', bodies: prompts });
  // "request in" at the router: its HTTP server has the request's headers (same monotonic clock as the load process)
  const inAt = new Map<string, number>();
  const requestIn = (req: IncomingMessage) => {
    const rid = req.headers['x-request-id'];
    if (typeof rid === 'string') inAt.set(rid, Number(process.hrtime.bigint()) / 1e6);
  };
  router.server.prependListener('request', requestIn);
  routerAuth.server.prependListener('request', requestIn);
  // the peers: nginx and HAProxy as plain round-robin proxies in front of the same engines
  const peers: Peer[] = [];
  const skipped: string[] = [];
  for (const name of ['nginx', 'haproxy', 'node'] as const) {
    const p = await startPeer(name, engines, ctx.progress);
    if ('skipped' in p) {
      skipped.push(p.skipped);
      ctx.progress(`${name} skipped: ${p.skipped}`);
    } else peers.push(p);
  }
  // the paths measured side by side: direct first (the baseline of every .added figure)
  const allPaths: { name: string; url: string; headers?: Record<string, string> }[] = [{ name: 'direct', url: engines[0]! }, { name: 'router', url: router.url }, { name: 'router-auth', url: routerAuth.url, headers: AUTH }, ...peers.map((p) => ({ name: p.name as string, url: p.url }))];
  // warm-up every path, then measure in alternating rounds (n requests per path in all), so all paths see the
  // same machine: a shared 2-core box drifts over a minute, and one window each would charge drift to one path
  const roundsAt = async (r: number, count: number, rounds: number): Promise<Map<string, Timed[]>> => {
    // the auth-on router only at the base rate (router.overhead.auth), so the 1k rounds stay as they were
    const paths = allPaths.filter((p) => r === rate || p.name !== 'router-auth');
    for (const p of paths) await load.call<Timed[]>({ op: 'measure', url: p.url, path: '/v1/completions', tag: `warm-${p.name}-${r}`, count: Math.min(count, 2 * r), rate: r, ...(p.headers ? { headers: p.headers } : {}) });
    const out = new Map<string, Timed[]>(paths.map((p) => [p.name, []]));
    for (let k = 0; k < rounds; k++) {
      for (const p of paths) out.get(p.name)!.push(...(await load.call<Timed[]>({ op: 'measure', url: p.url, path: '/v1/completions', tag: `${p.name}-${r}-${k}`, count: Math.ceil(count / rounds), rate: r, ...(p.headers ? { headers: p.headers } : {}) })));
    }
    return out;
  };
  const rounds = ctx.quick ? 1 : 3;
  const fallbacks0 = router.stats().indexFallbacks;
  const at200 = await roundsAt(rate, n, rounds);
  const via = at200.get('router')!, direct = at200.get('direct')!;
  const fallbacks = router.stats().indexFallbacks - fallbacks0;
  const memoryFallbackShare = (100 * fallbacks) / via.length;
  const inRouter = via.map((t) => t.at - inAt.get(t.id)!);
  if (inRouter.some((x) => !Number.isFinite(x) || x < 0)) throw new Error('router request-in times missing or after the upstream arrival');
  const viaTotal = via.map((t) => t.at - t.sent), directTotal = direct.map((t) => t.at - t.sent);
  const [r50, r99, v50, v99, d50, d99] = [percentile(inRouter, 50), percentile(inRouter, 99), percentile(viaTotal, 50), percentile(viaTotal, 99), percentile(directTotal, 50), percentile(directTotal, 99)];
  const how = `${rate} req/s, 2k-token prompts as token ids, 4 workers, real indexer over the MemoryBus; client and stub engines in another process; ${fallbacks} index fallbacks in ${via.length} requests (${rounds} alternating rounds)`;
  ctx.report({ bench: 'router.overhead.p50', value: r50, unit: 'ms', baseline: d50, note: `request in at the router (headers) → upstream sees it (tokens → hashes → index over the bus → score → proxy); baseline: client → engine directly; client-observed send → upstream: via router ${v50.toFixed(3)} ms, direct ${d50.toFixed(3)} ms; ${how}` });
  ctx.report({ bench: 'router.overhead.p99', value: r99, unit: 'ms', baseline: d99, note: `as p50; client-observed send → upstream at p99: via router ${v99.toFixed(3)} ms, direct ${d99.toFixed(3)} ms` });
  const inAuth = at200.get('router-auth')!.map((t) => t.at - inAt.get(t.id)!);
  if (inAuth.some((x) => !Number.isFinite(x) || x < 0)) throw new Error('auth-on router: request-in times missing or after the upstream arrival');
  for (const [q, off] of [['p50', r50], ['p99', r99]] as const) {
    ctx.report({ bench: `router.overhead.auth.${q}`, value: percentile(inAuth, q === 'p50' ? 50 : 99), unit: 'ms', baseline: off, note: `as router.overhead.${q}, through a router with auth on (API key, per-key rate limiter on requests and prompt tokens, engine key upstream); baseline: router.overhead.${q} (auth off), same alternating rounds` });
  }
  reportAdded(ctx, at200, '', `${rate} req/s`, skipped);

  ctx.progress('added latency at 1,000 req/s');
  const fb1k0 = router.stats().indexFallbacks;
  const at1k = await roundsAt(1000, ctx.quick ? 2000 : 6000, rounds);
  reportAdded(ctx, at1k, '.1k', `1,000 req/s; ${router.stats().indexFallbacks - fb1k0} index fallbacks in ${at1k.get('router')!.length} routed requests`, skipped);
  for (const p of peers) await p.stop();

  // ---- pick-only throughput ---------------------------------------------------------------------------------
  ctx.progress('route rps');
  const bare = createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => (raw += c));
    req.on('end', () => {
      JSON.parse(raw);
      const out = '{"worker":"w0"}';
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': out.length });
      res.end(out);
    });
  });
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
  const bareUrl = `http://127.0.0.1:${(bare.address() as AddressInfo).port}`;
  const rps = (url: string, path: string, seconds: number) => load.call<number>({ op: 'rps', url, path, seconds, inFlight: 32 });
  const secs = ctx.quick ? 1.5 : 5;
  await rps(router.url, '/v1/route', 0.5);
  const routeRps = await rps(router.url, '/v1/route', secs);
  const bareRps = await rps(bareUrl, '/v1/route', secs);
  ctx.report({ bench: 'router.route.rps', value: Math.round(routeRps), unit: 'req/s', baseline: Math.round(bareRps), note: 'pick-only /v1/route, 2k-token prompts, 32 in flight from another process; baseline: bare HTTP server that only parses the JSON' });
  bare.closeAllConnections();
  bare.close();
  await router.close();
  await routerAuth.close();
  await indexer.close();
  await bus.close();
  clearInterval(heartbeat);

  // ---- the index budget over a real nats-server (indexer in its own process) --------------------------------
  ctx.progress('router over NATS: index fallbacks at 200 req/s');
  try {
    const leg = await startNatsLeg({ engines, model: MODEL, blockSize: B, prefixes: 400, progress: ctx.progress });
    try {
      const url = leg.router.url;
      await load.call<Timed[]>({ op: 'measure', url, path: '/v1/completions', tag: 'warm-nats', count: 400, rate });
      // rounds of the router's requests with as many plain echo round trips to another process over the same
      // nats-server and the same 5 ms deadline, at the same time (the floor this machine's scheduling puts under
      // any budget while the router's load runs)
      const count = ctx.quick ? 1000 : 6000;
      const natsRounds = ctx.quick ? 1 : 3;
      const timed: Timed[] = [];
      let fb = 0, echoMissed = 0, echoSent = 0;
      for (let k = 0; k < natsRounds; k++) {
        const f0 = leg.router.stats().indexFallbacks;
        // the echo round trips run in the same window as the router's requests: the floor is what the machine's
        // scheduling costs a 5 ms cross-process budget *under this load* (an idle machine misses almost none)
        const echo = leg.echoMisses(Math.ceil(count / natsRounds), rate, 5);
        timed.push(...(await load.call<Timed[]>({ op: 'measure', url, path: '/v1/completions', tag: `nats${k}`, count: Math.ceil(count / natsRounds), rate })));
        fb += leg.router.stats().indexFallbacks - f0;
        echoMissed += await echo;
        echoSent += Math.ceil(count / natsRounds);
      }
      const total = timed.map((t) => t.done - t.sent);
      const share = (100 * fb) / timed.length, echoShare = (100 * echoMissed) / echoSent;
      ctx.report({ bench: 'router.fallback.nats', value: share, unit: '%', baseline: memoryFallbackShare, note: `${fb} of ${timed.length} routing decisions went by load only (index budget 5 ms missed, no fault), ${rate} req/s over a real nats-server, indexer in its own process; client-observed p50 ${percentile(total, 50).toFixed(3)} ms, p99 ${percentile(total, 99).toFixed(3)} ms; baseline: the share over the MemoryBus in this run; plain echo round trips missed the same deadline ${echoShare.toFixed(2)}% (router.fallback.nats.floor)` });
      ctx.report({ bench: 'router.fallback.nats.floor', value: echoShare, unit: '%', baseline: share, note: `${echoMissed} of ${echoSent} plain request/reply round trips (1 KiB, the index query's size) from the router's NATS connection to an echo process (bench/nats-echo.ts) missed the same 5 ms deadline, ${rate} req/s, in the same windows as the router's requests (same load): what this machine's scheduling costs any 5 ms budget across processes; baseline: router.fallback.nats` });
    } finally {
      await leg.close();
    }
  } catch (e) {
    ctx.progress(`router over NATS skipped: ${(e as Error).message}`);
  }
  load.close();

  // ---- tokenization -----------------------------------------------------------------------------------------
  ctx.progress('tokenize');
  const tok = await loadTokenizer();
  const pt = new PromptTokenizer({ tokenizer: tok });
  const reps = ctx.quick ? 3 : 10;
  let text = words(6000, 1);
  while (tok.encode(text).length < 8192) text += ' ' + words(200, text.length);
  const fresh: number[] = [];
  const cached: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t = `${r} ${text}`;
    let t0 = performance.now();
    await pt.prompt(t, MODEL);
    fresh.push(performance.now() - t0);
    t0 = performance.now();
    await pt.prompt(t, MODEL);
    cached.push(performance.now() - t0);
  }
  ctx.report({ bench: 'router.tokenize.prompt8k', value: percentile(fresh, 50), unit: 'ms', baseline: percentile(cached, 50), note: `new ~${tok.encode(text).length}-token prompt, local Qwen3 tokenizer (median of ${reps}); baseline: the same prompt again (cache hit)` });

  const turnMs: number[] = [];
  const wholeMs: number[] = [];
  for (let r = 0; r < reps; r++) {
    const pr = new PromptTokenizer({ tokenizer: tok });
    const msgs: ChatMessage[] = [{ role: 'system', content: `Conversation ${r}. ${words(1500, r + 7)}` }];
    for (let t = 0; t < 5; t++) {
      msgs.push({ role: 'user', content: words(120, r * 100 + t) });
      pr.chatLocal({ messages: msgs });
      msgs.push({ role: 'assistant', content: words(80, r * 100 + t + 50) });
    }
    msgs.push({ role: 'user', content: words(120, r * 100 + 99) });
    let t0 = performance.now();
    const ids = pr.chatLocal({ messages: msgs });
    turnMs.push(performance.now() - t0);
    t0 = performance.now();
    const whole = tok.encode(tok.applyChatTemplate(msgs), { addSpecialTokens: false });
    wholeMs.push(performance.now() - t0);
    if (whole.length !== ids.length) throw new Error('chat tokenization disagrees with the whole-prompt encoding');
  }
  ctx.report({ bench: 'router.tokenize.chatTurn', value: percentile(turnMs, 50), unit: 'ms', baseline: percentile(wholeMs, 50), note: 'turn 6 of a chat (~2.5k-token history seen before) with the piece cache; baseline: template + encode of the whole request' });
}
