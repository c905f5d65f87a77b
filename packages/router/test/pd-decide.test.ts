// Conditional disaggregation in the routing core (select.ts PdPolicy), no sockets: a P/D pool built by hand, an
// in-memory index. Split or not, and why, on the decision, the decision record and kvgate_router_pd_decisions_total.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { initHashing, prefixHashesU64, type LoadReport, type MatchReply, type WorkerRegistration } from '@kvgate/protocol';
import { WorkerHealth } from '../src/health.js';
import { Inflight } from '../src/inflight.js';
import { RouterMetrics } from '../src/metrics.js';
import { decisionRecord, RoutingCore, type IndexQuery, type PendingDecision, type RouteRequest } from '../src/routing-core.js';
import { DEFAULT_WEIGHTS } from '../src/scorer.js';
import { WorkerView } from '../src/workers.js';

await initHashing();

const B = 16;
const reg = (worker: string, role: WorkerRegistration['role']): WorkerRegistration => ({
  worker, model: 'm', role, url: `http://127.0.0.1:1/${worker}`, engineUrl: `http://engine-${worker}:8000`, blockSize: B, capacityBlocks: 100_000, loras: [], ts: 0,
});
const tokens = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
const completion = (ids: number[]): RouteRequest => ({ kind: 'completion', model: 'm', maxTokens: 4, promptIds: ids, raw: { length: 100 } });

function setup(minPrefillTokens = 512) {
  const workers = new WorkerView();
  for (const r of [reg('p0', 'prefill'), reg('p1', 'prefill'), reg('d0', 'decode'), reg('d1', 'decode')]) workers.upsert(r);
  const held = new Map<string, number>(); // worker → leading blocks it holds of any prompt
  const index: IndexQuery = async (_m, _l, hashes) => {
    const overlaps: Record<string, number> = {};
    for (const [w, n] of held) overlaps[w] = Math.min(n, hashes.length);
    return { overlaps, indexerSeq: 1 } satisfies MatchReply;
  };
  const pending: PendingDecision[] = [];
  const metrics = new RouterMetrics('r1');
  const core = new RoutingCore({
    id: 'r1', cluster: { workers, inflight: new Inflight({ routerId: 'r1' }), health: new WorkerHealth() }, tokenizer: { prompt: async () => null, chat: async () => null },
    index, policy: 'kv', weights: DEFAULT_WEIGHTS, decisions: { add: (p) => pending.push(p) }, metrics, random: () => 0, now: () => 1, pd: { minPrefillTokens },
  });
  const load = (worker: string, over: Partial<LoadReport>) => workers.load({ worker, model: 'm', role: 'prefill', waiting: 0, running: 0, kvUsage: 0, capacityBlocks: 100_000, url: '', ts: 0, ...over });
  const counted = async (decision: string, reason: string) => {
    const text = await metrics.registry.getSingleMetricAsString('kvgate_router_pd_decisions_total');
    return Number(text.split('\n').find((l) => l.includes(`decision="${decision}"`) && l.includes(`reason="${reason}"`))?.trim().split(/\s+/).pop() ?? 0);
  };
  return { core, held, pending, load, counted };
}

async function decide(s: ReturnType<typeof setup>, n: number) {
  const req = completion(tokens(n));
  const r = await s.core.route(req);
  s.core.finish(s.core.commit(r, req, `req-${n}`));
  return r;
}

test('a long uncached prompt is split: prefill worker + decode worker, reason split, counted, recorded', async () => {
  const s = setup();
  const r = await decide(s, 2048);
  assert.ok(r.decision.prefill, 'a prefill worker');
  assert.is(r.decision.prefill!.role, 'prefill');
  assert.is(r.decision.worker.role, 'decode');
  assert.equal([r.decision.pd?.split, r.decision.pd?.reason], [true, 'split']);
  assert.is(await s.counted('split', 'split'), 1);
  const rec = decisionRecord('r1', 'kv', s.pending[0]!) as unknown as { pd?: string; prefill?: string };
  assert.is(rec.pd, 'split');
  assert.is(rec.prefill, r.decision.prefill!.worker);
});

test('a short prompt (under pdMinPrefillTokens) is prefilled on the decode worker', async () => {
  const s = setup(512);
  const r = await decide(s, 300);
  assert.is(r.decision.prefill, undefined);
  assert.is(r.decision.worker.role, 'decode');
  assert.is(r.decision.prefillWorker.worker, r.decision.worker.worker);
  assert.equal(r.decision.pd?.reason, 'short_prompt');
  assert.is(await s.counted('local', 'short_prompt'), 1);
  // the threshold is the option's: at 0 the same prompt is split
  assert.is((await decide(setup(0), 300)).decision.pd?.reason, 'split');
});

test('a long prompt the decode worker already holds: not split, and that decode worker is the one chosen', async () => {
  const s = setup();
  s.held.set('d1', 2048 / B); // d1 holds the whole prompt, d0 none
  const r = await decide(s, 2048);
  assert.is(r.decision.worker.worker, 'd1', 'the decode worker by its own overlap');
  assert.is(r.decision.prefill, undefined);
  // the uncached part is then 0 tokens: short, or held — either way no remote prefill; the reason names it
  assert.ok(['decode_holds_prefix', 'short_prompt'].includes(r.decision.pd!.reason), r.decision.pd!.reason);
  assert.is(r.decision.overlap, 2048 / B);
});

test('most of the prompt held by the decode worker (≥ 80%), the rest still long: decode_holds_prefix', async () => {
  const s = setup(64);
  s.held.set('d0', Math.ceil((4096 / B) * 0.85));
  const r = await decide(s, 4096);
  assert.is(r.decision.worker.worker, 'd0');
  assert.is(r.decision.pd?.reason, 'decode_holds_prefix');
  assert.is(await s.counted('local', 'decode_holds_prefix'), 1);
});

test('every prefill worker busy: prefill_saturated, prefilled on the decode worker', async () => {
  const s = setup();
  for (const w of ['p0', 'p1']) s.load(w, { waiting: 1000, kvUsage: 0.99 });
  const r = await decide(s, 4096);
  assert.is(r.decision.prefill, undefined);
  assert.is(r.decision.pd?.reason, 'prefill_saturated');
  assert.is(await s.counted('local', 'prefill_saturated'), 1);
});

test.run();
