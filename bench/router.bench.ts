/**
 * Router figures (DESIGN.md section 7), each beside a baseline measured in the same run:
 *   router.overhead.p50 / .p99  ms, client send → upstream sees the request, through a router (real indexer over
 *                               the MemoryBus, 4 workers, a 2k-token prompt as token ids) at a fixed request rate;
 *                               baseline: the same client straight to the engine stub. Client and stubs run in a
 *                               process of their own (router-load.ts); the router process holds router + indexer.
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

const MODEL = 'bench-model';
const B = 16;

/** The load process (bench/router-load.ts): stub engines + HTTP client, off the router's process. */
function startLoadProcess() {
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
  ctx.progress('router up; measuring overhead');

  const prompts = Array.from({ length: 64 }, (_, p) => JSON.stringify({ model: MODEL, max_tokens: 1, prompt: Array.from({ length: 2048 }, (_, i) => ((p % 400) * 7919 + i * 31) % 150_000 + (i > 1024 ? p : 0)) }));
  await load.call({ op: 'prompts', bodies: prompts });
  const measure = (url: string, path: string, tag: string, count = n) => load.call<Timed[]>({ op: 'measure', url, path, tag, count, rate });
  // "request in" at the router: its HTTP server has the request's headers (same monotonic clock as the load process)
  const inAt = new Map<string, number>();
  router.server.prependListener('request', (req: IncomingMessage) => {
    const rid = req.headers['x-request-id'];
    if (typeof rid === 'string') inAt.set(rid, Number(process.hrtime.bigint()) / 1e6);
  });
  // warm-up both paths, then measure in alternating rounds (n requests per path in all), so both paths see the
  // same machine: a shared 2-core box drifts over a minute, and one window each would charge drift to one path
  await measure(router.url, '/v1/completions', 'warm-r');
  await measure(engines[0]!, '/v1/completions', 'warm-d');
  const rounds = ctx.quick ? 1 : 3;
  const via: Timed[] = [];
  const direct: Timed[] = [];
  const fallbacks0 = router.stats().indexFallbacks;
  for (let r = 0; r < rounds; r++) {
    const per = Math.ceil(n / rounds);
    via.push(...(await measure(router.url, '/v1/completions', `via${r}`, per)));
    direct.push(...(await measure(engines[0]!, '/v1/completions', `direct${r}`, per)));
  }
  const fallbacks = router.stats().indexFallbacks - fallbacks0;
  const inRouter = via.map((t) => t.at - inAt.get(t.id)!);
  if (inRouter.some((x) => !Number.isFinite(x) || x < 0)) throw new Error('router request-in times missing or after the upstream arrival');
  const viaTotal = via.map((t) => t.at - t.sent), directTotal = direct.map((t) => t.at - t.sent);
  const [r50, r99, v50, v99, d50, d99] = [percentile(inRouter, 50), percentile(inRouter, 99), percentile(viaTotal, 50), percentile(viaTotal, 99), percentile(directTotal, 50), percentile(directTotal, 99)];
  const how = `${rate} req/s, 2k-token prompts as token ids, 4 workers, real indexer over the MemoryBus; client and stub engines in another process; ${fallbacks} index fallbacks in ${via.length} requests (${rounds} alternating rounds)`;
  ctx.report({ bench: 'router.overhead.p50', value: r50, unit: 'ms', baseline: d50, note: `request in at the router (headers) → upstream sees it (tokens → hashes → index over the bus → score → proxy); baseline: client → engine directly; client-observed send → upstream: via router ${v50.toFixed(3)} ms, direct ${d50.toFixed(3)} ms; ${how}` });
  ctx.report({ bench: 'router.overhead.p99', value: r99, unit: 'ms', baseline: d99, note: `as p50; client-observed send → upstream at p99: via router ${v99.toFixed(3)} ms, direct ${d99.toFixed(3)} ms` });

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
  await indexer.close();
  await bus.close();
  load.close();
  clearInterval(heartbeat);

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
