// The routing core without sockets: a cluster state built by hand (the pure WorkerView / Inflight / WorkerHealth a
// ClusterView feeds from the bus), an in-memory index answering prefix overlaps, a tokenizer stub and a sink that
// keeps the decisions.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { initHashing, KvgateError, prefixHashesU64, unpackHashes, type LoadReport, type MatchReply, type WorkerRegistration } from '@kvgate/protocol';
import { WorkerHealth } from '../src/health.js';
import { Inflight } from '../src/inflight.js';
import { RouterMetrics } from '../src/metrics.js';
import { decisionRecord, RoutingCore, type IndexQuery, type PendingDecision, type RouteRequest, type TokenizerPort } from '../src/routing-core.js';
import { DEFAULT_WEIGHTS } from '../src/scorer.js';
import type { Policy } from '../src/select.js';
import { WorkerView } from '../src/workers.js';

await initHashing();

const B = 4;
const reg = (worker: string, over: Partial<WorkerRegistration> = {}): WorkerRegistration => ({
  worker, model: 'm', role: 'both', url: `http://127.0.0.1:1/${worker}`, engineUrl: `http://engine-${worker}:8000`, blockSize: B, capacityBlocks: 1000, loras: [], ts: 0, ...over,
});
const loadOf = (worker: string, over: Partial<LoadReport> = {}): LoadReport => ({
  worker, model: 'm', role: 'both', waiting: 0, running: 0, kvUsage: 0, capacityBlocks: 1000, url: '', ts: 0, ...over,
});
const tokens = (n: number, base = 0) => Array.from({ length: n }, (_, i) => base + i + 1);
const completion = (ids: number[], over: Partial<RouteRequest> = {}): RouteRequest => ({ kind: 'completion', model: 'm', maxTokens: 4, promptIds: ids, raw: { length: 100 }, ...over });

/** An index in memory: per worker, the prefix hashes it holds; a match is the run of leading hashes it has. */
class MemoryIndex {
  held = new Map<string, Set<bigint>>();
  queries: { model: string; lora: string | null; hashes: bigint[] }[] = [];
  silent = false;
  store(worker: string, hashes: ArrayLike<bigint>): void {
    const s = this.held.get(worker) ?? new Set<bigint>();
    for (let i = 0; i < hashes.length; i++) s.add(hashes[i]!);
    this.held.set(worker, s);
  }
  query: IndexQuery = async (model, lora, hashes) => {
    this.queries.push({ model, lora, hashes: [...hashes] });
    if (this.silent) return null;
    const overlaps: Record<string, number> = {};
    for (const [w, s] of this.held) {
      let n = 0;
      while (n < hashes.length && s.has(hashes[n]!)) n++;
      if (n > 0) overlaps[w] = n;
    }
    return { overlaps, indexerSeq: 1 } satisfies MatchReply;
  };
}

function setup(opts: { workers?: WorkerRegistration[]; policy?: Policy; tokenizer?: TokenizerPort } = {}) {
  const workers = new WorkerView();
  for (const r of opts.workers ?? [reg('w0'), reg('w1'), reg('w2')]) workers.upsert(r);
  const inflight = new Inflight({ routerId: 'r1' });
  const health = new WorkerHealth();
  const index = new MemoryIndex();
  const pending: PendingDecision[] = [];
  const tokenizerCalls: string[] = [];
  const tokenizer: TokenizerPort = opts.tokenizer ?? {
    prompt: async (text, _model, engineUrl) => (tokenizerCalls.push(`prompt:${engineUrl}`), text.split(' ').map((w) => w.length)),
    chat: async (input, _model, engineUrl) => (tokenizerCalls.push(`chat:${engineUrl}`), input.messages.map((m) => String(m.content).length)),
  };
  const metrics = new RouterMetrics('r1');
  const policy = opts.policy ?? 'kv';
  const core = new RoutingCore({ id: 'r1', cluster: { workers, inflight, health }, tokenizer, index: index.query, policy, weights: DEFAULT_WEIGHTS, decisions: { add: (p) => pending.push(p) }, metrics, random: () => 0, now: () => 42 });
  return { core, workers, inflight, health, index, pending, tokenizerCalls, metrics, policy };
}

/** the KVG_* code a promise rejects with ('resolved' when it does not) */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    assert.instance(e, KvgateError);
    return (e as KvgateError).code;
  }
}

const hashesOf = (ids: number[], salt?: string) => prefixHashesU64('m', null, B, ids, undefined, salt);

test('kv: the index is asked with the prompt\'s prefix hashes and the worker holding the prefix is chosen', async () => {
  const { core, index } = setup();
  const ids = tokens(32);
  index.store('w2', hashesOf(ids));
  index.store('w1', hashesOf(ids).subarray(0, 2));
  const r = await core.route(completion(ids));
  assert.equal(index.queries.length, 1);
  assert.equal(index.queries[0]!.hashes, [...hashesOf(ids)]);
  assert.equal([index.queries[0]!.model, index.queries[0]!.lora], ['m', null]);
  assert.is(r.decision.worker.worker, 'w2');
  assert.is(r.decision.overlap, 8);
  assert.is(r.decision.promptBlocks, 8);
  assert.ok(r.indexAnswered);
  assert.equal(r.overlaps, { w2: 8, w1: 2 });
  assert.equal(core.stats(), { indexFallbacks: 0, noWorker: 0, lastResort: 0 });
});

test('an index that does not answer (null or a throw): routed by load alone, counted as a fallback, the record says degraded', async () => {
  const { core, index, workers, pending, policy } = setup();
  workers.load(loadOf('w0', { waiting: 9, running: 9 }));
  workers.load(loadOf('w2', { waiting: 5, running: 5 }));
  index.store('w0', hashesOf(tokens(16)));
  index.silent = true;
  const r = await core.route(completion(tokens(16)));
  assert.not.ok(r.indexAnswered);
  assert.is(r.decision.worker.worker, 'w1');
  core.commit(r, completion(tokens(16)), 'req-1');
  const rec = decisionRecord('r1', policy, pending[0]!);
  assert.is(rec.degraded, true);
  assert.is(rec.chosen, 'w1');
  const throwing = setup();
  const failing = new RoutingCore({ id: 'r1', cluster: { workers: throwing.workers, inflight: throwing.inflight, health: throwing.health }, tokenizer: { prompt: async () => null, chat: async () => null }, index: async () => { throw new Error('index timeout'); }, policy: 'kv', weights: DEFAULT_WEIGHTS, metrics: throwing.metrics });
  const r2 = await failing.route(completion(tokens(8)));
  assert.not.ok(r2.indexAnswered);
  assert.equal([core.stats().indexFallbacks, failing.stats().indexFallbacks], [1, 1]);
});

test('commit credits the uncached prefill tokens and the decode blocks, and hands the decision to the sink', async () => {
  const { core, index, inflight, pending, policy } = setup();
  const ids = tokens(40);
  index.store('w1', hashesOf(ids).subarray(0, 6));
  const req = completion(ids, { maxTokens: 8 });
  const r = await core.route(req);
  assert.is(r.decision.worker.worker, 'w1');
  const tickets = core.commit(r, req, 'req-7');
  assert.is(tickets.length, 1);
  // 40 prompt tokens, 6 blocks × 4 cached → 16 to prefill; (40 + 8) / 4 = 12 decode blocks
  assert.equal(inflight.local('w1'), { prefillTokens: 16, decodeBlocks: 12 });
  core.firstByte(tickets);
  assert.equal(inflight.local('w1'), { prefillTokens: 0, decodeBlocks: 12 });
  core.finish(tickets);
  assert.equal(inflight.local('w1'), { prefillTokens: 0, decodeBlocks: 0 });
  assert.is(pending.length, 1);
  const rec = decisionRecord('r1', policy, pending[0]!);
  assert.equal([rec.router, rec.requestId, rec.model, rec.chosen, rec.promptTokens, rec.ts, rec.policy], ['r1', 'req-7', 'm', 'w1', 40, 42, 'kv']);
  assert.equal([...unpackHashes(rec.hashes as Uint8Array)], [...hashesOf(ids)]);
  assert.is(rec.overlaps.w1, 6);
  assert.is(rec.degraded, undefined);
});

test('a committed prompt is predicted on its worker: the same prompt again sticks there before the index knows it', async () => {
  const { core } = setup();
  const req = completion(tokens(64), { maxTokens: 1 });
  const first = await core.route(req);
  assert.is(first.decision.overlap, 0);
  core.commit(first, req, 'a');
  const again = await core.route(req);
  assert.is(again.decision.worker.worker, first.decision.worker.worker);
  assert.is(again.decision.overlap, 16);
});

test('reroute: the same hashes and index answer without the workers tried; none left is KVG_NO_WORKER', async () => {
  const { core, index, tokenizerCalls } = setup();
  const req: RouteRequest = { kind: 'completion', model: 'm', maxTokens: 4, prompt: 'a bb ccc dddd a bb ccc dddd', raw: { length: 30 } };
  const r = await core.route(req);
  const tried = new Set([r.decision.worker.worker]);
  const next = core.reroute(r, tried);
  assert.is.not(next.decision.worker.worker, r.decision.worker.worker);
  assert.is(next.hashes, r.hashes);
  tried.add(next.decision.worker.worker);
  const third = core.reroute(next, tried);
  tried.add(third.decision.worker.worker);
  assert.is(tried.size, 3);
  try {
    core.reroute(third, tried);
    assert.unreachable('no worker left');
  } catch (e) {
    assert.instance(e, KvgateError);
    assert.is((e as KvgateError).code, 'KVG_NO_WORKER');
  }
  assert.equal([index.queries.length, tokenizerCalls.length], [1, 1]);
  assert.is(core.stats().noWorker, 1);
});

test('pools: an unknown model, no worker at all, a LoRA adapter hashed under its base model', async () => {
  const { core, index } = setup({ workers: [reg('w0', { loras: ['sql'] }), reg('w1')] });
  assert.is(await codeOf(core.route(completion(tokens(8), { model: 'nope' }))), 'KVG_UNKNOWN_MODEL');
  const r = await core.route(completion(tokens(8), { model: 'sql' }));
  assert.is(r.decision.worker.worker, 'w0');
  assert.equal([r.pool.model, r.pool.lora, r.model], ['m', 'sql', 'sql']);
  assert.equal(index.queries[0]!.lora, 'sql');
  assert.equal(index.queries[0]!.hashes, [...prefixHashesU64('m', 'sql', B, tokens(8))]);
  const empty = setup({ workers: [] });
  assert.is(await codeOf(empty.core.route(completion(tokens(8)))), 'KVG_NO_WORKER');
  assert.is(empty.core.stats().noWorker, 1);
});

test('tokens: chat and text go to the tokenizer with the pool engine\'s URL; none to be had routes by load without asking the index', async () => {
  const s = setup();
  await s.core.route({ kind: 'chat', model: 'm', maxTokens: undefined, messages: [{ role: 'user', content: 'hello there' }], raw: { length: 40 } });
  await s.core.route({ kind: 'completion', model: 'm', maxTokens: undefined, prompt: 'one two', raw: { length: 20 } });
  assert.equal(s.tokenizerCalls, ['chat:http://engine-w0:8000', 'prompt:http://engine-w0:8000']);
  const none = setup({ tokenizer: { prompt: async () => null, chat: async () => null } });
  const req: RouteRequest = { kind: 'completion', model: 'm', maxTokens: 2, prompt: 'x', raw: { length: 400 } };
  const r = await none.core.route(req);
  assert.equal([r.tokens, r.hashes.length, none.index.queries.length], [null, 0, 0]);
  assert.is((await none.metrics.tokenizeFailures.get()).values[0]!.value, 1);
  // no tokens: the prompt is estimated from the body size (400 bytes / 4)
  none.core.commit(r, req, 'x');
  assert.equal(none.inflight.local(r.decision.worker.worker), { prefillTokens: 100, decodeBlocks: Math.ceil(102 / B) });
});

test('cache_salt: the chain starts at the salted root; the record says salted', async () => {
  const { core, index, pending, policy } = setup();
  const ids = tokens(16);
  index.store('w2', hashesOf(ids));
  const r = await core.route(completion(ids, { cacheSalt: 'tenant-a' }));
  assert.equal([...r.hashes], [...hashesOf(ids, 'tenant-a')]);
  assert.is.not(r.hashes[0], hashesOf(ids)[0]);
  assert.is(r.overlaps?.w2, undefined);
  core.commit(r, completion(ids, { cacheSalt: 'tenant-a' }), 's');
  assert.is(decisionRecord('r1', policy, pending[0]!).salted, true);
});

test('passive health: an engine reported down is never picked, a suspect one only when nothing else is left', async () => {
  const { core, health, index } = setup({ workers: [reg('w0'), reg('w1')] });
  const ids = tokens(16);
  index.store('w0', hashesOf(ids));
  health.report('w0', false);
  assert.is((await core.route(completion(ids))).decision.worker.worker, 'w1');
  health.report('w0', true);
  health.fail('w1');
  assert.is((await core.route(completion(tokens(16, 100)))).decision.worker.worker, 'w0');
  health.report('w0', false);
  // w0 down, w1 suspect: the suspect is still tried
  assert.is((await core.route(completion(ids))).decision.worker.worker, 'w1');
});

test('every worker reported down: the router still tries them (a last resort, counted) rather than answer 503; tried ones are not retried', async () => {
  const { core, health, index } = setup({ workers: [reg('w0'), reg('w1')] });
  const ids = tokens(16);
  index.store('w0', hashesOf(ids));
  health.report('w0', false);
  health.report('w1', false);
  const r = await core.route(completion(ids));
  // by overlap, as ever: the reports do not make it pick at random
  assert.is(r.decision.worker.worker, 'w0');
  assert.is(core.stats().lastResort, 1);
  assert.is(core.reroute(r, new Set(['w0'])).decision.worker.worker, 'w1');
  try {
    core.reroute(r, new Set(['w0', 'w1']));
    assert.unreachable('both tried');
  } catch (e) {
    assert.is((e as { code?: string }).code, 'KVG_NO_WORKER');
  }
});

test('P/D: the prefill worker by overlap, the decode worker by load; two tickets', async () => {
  const { core, index, workers, inflight } = setup({ workers: [reg('p0', { role: 'prefill' }), reg('p1', { role: 'prefill' }), reg('d0', { role: 'decode' }), reg('d1', { role: 'decode' })] });
  core.selector.pdPolicy = { minPrefillTokens: 0, decodeHoldRatio: 2 }; // split every prompt: this test is about who is picked
  const ids = tokens(24);
  index.store('p1', hashesOf(ids));
  workers.load(loadOf('d0', { role: 'decode', waiting: 8, running: 8 }));
  const req = completion(ids, { maxTokens: 4 });
  const r = await core.route(req);
  assert.equal([r.decision.prefill?.worker, r.decision.worker.worker], ['p1', 'd1']);
  const tickets = core.commit(r, req, 'pd');
  assert.is(tickets.length, 2);
  assert.equal(inflight.local('p1'), { prefillTokens: 0, decodeBlocks: 0 });
  assert.equal(inflight.local('d1'), { prefillTokens: 0, decodeBlocks: 7 });
});

test('round-robin takes turns and asks no index; the record carries the policy and no degraded flag', async () => {
  const { core, index, pending, policy } = setup({ policy: 'round-robin' });
  const picks: string[] = [];
  for (let i = 0; i < 4; i++) {
    const req = completion(tokens(8, i * 10));
    const r = await core.route(req);
    core.commit(r, req, `q${i}`);
    picks.push(r.decision.worker.worker);
  }
  assert.equal(picks, ['w0', 'w1', 'w2', 'w0']);
  assert.is(index.queries.length, 0);
  const rec = decisionRecord('r1', policy, pending[3]!);
  assert.equal([rec.policy, rec.degraded], ['round-robin', undefined]);
});

test.run();
