import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { LoadReport, WorkerRegistration } from '@kvgate/protocol';
import { Inflight } from '../src/inflight.js';
import { DEFAULT_WEIGHTS } from '../src/scorer.js';
import { Selector } from '../src/select.js';
import { WorkerView } from '../src/workers.js';

const reg = (worker: string, over: Partial<WorkerRegistration> = {}): WorkerRegistration => ({
  worker, model: 'm', role: 'both', url: `http://127.0.0.1:1/${worker}`, engineUrl: `http://127.0.0.1:2${worker.length}/`, blockSize: 4, capacityBlocks: 1000, loras: [], ts: 0, ...over,
});
const loadOf = (worker: string, over: Partial<LoadReport> = {}): LoadReport => ({
  worker, model: 'm', role: 'both', waiting: 0, running: 0, kvUsage: 0, capacityBlocks: 1000, url: '', ts: 0, ...over,
});
const hashes = (n: number, base = 0n) => Array.from({ length: n }, (_, i) => base + BigInt(i + 1));

function setup(n = 3) {
  let now = 1000;
  const view = new WorkerView({ staleMs: 500, now: () => now });
  for (let i = 0; i < n; i++) view.upsert(reg(`w${i}`));
  const inflight = new Inflight({ routerId: 'r' });
  return { view, inflight, tick: (ms: number) => (now += ms) };
}

test('pools: base model, LoRA adapter, unknown model, roles', () => {
  const { view } = setup(0);
  view.upsert(reg('a', { loras: ['sql'] }));
  view.upsert(reg('b'));
  view.upsert(reg('p', { role: 'prefill' }));
  view.upsert(reg('d', { role: 'decode' }));
  view.upsert(reg('x', { model: 'other' }));
  const p = view.pool('m')!;
  assert.equal(p.both.map((r) => r.worker), ['a', 'b']);
  assert.equal([p.prefill[0]!.worker, p.decode[0]!.worker], ['p', 'd']);
  assert.is(p.lora, null);
  const l = view.pool('sql')!;
  assert.equal([l.model, l.lora, l.both.map((r) => r.worker)], ['m', 'sql', ['a']]);
  assert.is(view.pool('nope'), undefined);
  assert.equal(view.models().map((m) => m.id).sort(), ['m', 'other', 'sql']);
});

test('a stale load report is ignored, the worker stays live; removal forgets it', () => {
  const { view, tick } = setup(2);
  view.load(loadOf('w0', { waiting: 7 }));
  tick(400);
  assert.is(view.lastLoad('w0')!.waiting, 7);
  tick(200);
  assert.is(view.lastLoad('w0'), undefined);
  assert.ok(view.isLive('w0'));
  assert.equal(view.pool('m')!.both.map((r) => r.worker), ['w0', 'w1']);
  view.remove('w1');
  assert.equal(view.pool('m')!.both.map((r) => r.worker), ['w0']);
});

test('kv policy follows the index overlap; least-loaded ignores it', () => {
  const { view, inflight } = setup(3);
  const s = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS);
  const d = s.select({ pool: view.pool('m')!, hashes: hashes(10), indexOverlaps: { w2: 8, w1: 3 } })!;
  assert.is(d.worker.worker, 'w2');
  assert.is(d.overlap, 8);
  inflight.start('w0', 1000, 10);
  inflight.start('w2', 1000, 10);
  s.policy = 'least-loaded';
  const l = s.select({ pool: view.pool('m')!, hashes: hashes(10), indexOverlaps: { w2: 8 } })!;
  assert.is(l.worker.worker, 'w1');
  assert.is(l.overlap, 0);
});

test('predicted prefixes make a burst of identical prompts stick before the index knows', () => {
  const { view, inflight } = setup(4);
  const s = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS);
  const h = hashes(50);
  const first = s.select({ pool: view.pool('m')!, hashes: h, indexOverlaps: {} })!;
  inflight.predict(first.worker.worker, h);
  inflight.start(first.worker.worker, 4, 60); // this prompt's tail + decode
  const second = s.select({ pool: view.pool('m')!, hashes: h, indexOverlaps: {} })!;
  assert.is(second.worker.worker, first.worker.worker);
  assert.is(second.overlap, 50);
});

test('index tiers: a CPU-held prefix counts at its tier weight; least-loaded ignores tiers too', () => {
  const { view, inflight } = setup(3);
  const s = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS);
  inflight.start('w1', 0, 50); // the CPU holder is not the idlest
  const d = s.select({ pool: view.pool('m')!, hashes: hashes(40), indexOverlaps: { w2: 4 }, indexTiers: { w1: { gpu: 0, cpu: 40, disk: 40 }, w2: { gpu: 4, cpu: 4, disk: 10 } } })!;
  assert.is(d.worker.worker, 'w1');
  assert.is(d.overlap, 0, 'overlap is the GPU prefix');
  assert.is(d.cached, 32);
  const byWorker = Object.fromEntries(d.scored.map((x) => [x.worker, x.tiers]));
  assert.equal(byWorker, { w0: { gpu: 0, cpu: 0, disk: 0 }, w1: { gpu: 0, cpu: 40, disk: 40 }, w2: { gpu: 4, cpu: 4, disk: 10 } });
  s.policy = 'least-loaded';
  const l = s.select({ pool: view.pool('m')!, hashes: hashes(40), indexOverlaps: {}, indexTiers: { w1: { gpu: 0, cpu: 40, disk: 40 } } })!;
  assert.is(l.cached, 0);
  assert.not.equal(l.worker.worker, 'w1');
});

test('index tiers: a predicted GPU prefix beyond the index tiers wins over them', () => {
  const { view, inflight } = setup(2);
  const s = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS);
  const h = hashes(30);
  inflight.predict('w0', h);
  const d = s.select({ pool: view.pool('m')!, hashes: h, indexOverlaps: {}, indexTiers: { w0: { gpu: 0, cpu: 10, disk: 20 } } })!;
  assert.is(d.worker.worker, 'w0');
  assert.equal(d.scored.find((x) => x.worker === 'w0')!.tiers, { gpu: 30, cpu: 30, disk: 30 });
  assert.is(d.cached, 30);
});

test('in-flight prefill spreads distinct prompts', () => {
  const { view, inflight } = setup(3);
  const s = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS);
  const seen = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const h = hashes(20, BigInt(i * 1000));
    const d = s.select({ pool: view.pool('m')!, hashes: h, indexOverlaps: {} })!;
    inflight.start(d.worker.worker, 80, 25);
    seen.add(d.worker.worker);
  }
  assert.is(seen.size, 3);
});

test('round-robin cycles; random stays in the pool; exclusions apply', () => {
  const { view, inflight } = setup(3);
  const s = new Selector(view, inflight, 'round-robin', DEFAULT_WEIGHTS);
  const pool = view.pool('m')!;
  const rr = Array.from({ length: 6 }, () => s.select({ pool, hashes: [], indexOverlaps: null })!.worker.worker);
  assert.equal(rr, ['w0', 'w1', 'w2', 'w0', 'w1', 'w2']);
  s.policy = 'random';
  for (let i = 0; i < 20; i++) assert.ok(['w0', 'w1', 'w2'].includes(s.select({ pool, hashes: [], indexOverlaps: null })!.worker.worker));
  s.policy = 'kv';
  const d = s.select({ pool, hashes: hashes(4), indexOverlaps: { w1: 4 }, exclude: new Set(['w1']) })!;
  assert.not.equal(d.worker.worker, 'w1');
  assert.is(s.select({ pool, hashes: [], indexOverlaps: null, exclude: new Set(['w0', 'w1', 'w2']) }), undefined);
});

test('P/D: prefill by overlap, decode by load', () => {
  const { view, inflight } = setup(0);
  view.upsert(reg('p1', { role: 'prefill' }));
  view.upsert(reg('p2', { role: 'prefill' }));
  view.upsert(reg('d1', { role: 'decode' }));
  view.upsert(reg('d2', { role: 'decode' }));
  inflight.start('d1', 0, 500);
  // every prompt split (10 blocks is under the default 512-token minimum): this test is about who is picked
  const s = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS, Math.random, { minPrefillTokens: 0, decodeHoldRatio: 2 });
  const d = s.select({ pool: view.pool('m')!, hashes: hashes(10), indexOverlaps: { p2: 10, d1: 10 } })!;
  assert.is(d.prefill!.worker, 'p2');
  assert.is(d.prefillWorker.worker, 'p2');
  assert.is(d.worker.worker, 'd2');
  assert.is(d.overlap, 10);
});

test('avoided (suspect) workers are skipped while any other is left, by every policy; P/D too', () => {
  const { view, inflight } = setup(3);
  const pool = view.pool('m')!;
  const hs = hashes(10);
  for (const policy of ['kv', 'least-loaded', 'round-robin', 'random'] as const) {
    const s = new Selector(view, inflight, policy, DEFAULT_WEIGHTS, () => 0);
    for (let i = 0; i < 6; i++) {
      const d = s.select({ pool, hashes: hs, indexOverlaps: { w0: 10 }, avoid: new Set(['w0', 'w1']) })!;
      assert.is(d.worker.worker, 'w2', `${policy}: the only worker not avoided, though w0 holds the prompt`);
    }
    const all = s.select({ pool, hashes: hs, indexOverlaps: { w0: 10 }, avoid: new Set(['w0', 'w1', 'w2']) })!;
    assert.ok(all, `${policy}: every worker avoided: still picks one`);
    const left = s.select({ pool, hashes: hs, indexOverlaps: { w0: 10 }, exclude: new Set(['w2']), avoid: new Set(['w0', 'w1']) })!;
    assert.ok(['w0', 'w1'].includes(left.worker.worker), `${policy}: exclusion is hard, avoidance soft`);
  }
  const kv = new Selector(view, inflight, 'kv', DEFAULT_WEIGHTS);
  assert.is(kv.select({ pool, hashes: hs, indexOverlaps: { w0: 10 }, avoid: new Set() })!.worker.worker, 'w0', 'nothing avoided: the holder');
  const { view: v2, inflight: f2 } = setup(0);
  for (const w of ['p0', 'p1']) v2.upsert(reg(w, { role: 'prefill' }));
  for (const w of ['d0', 'd1']) v2.upsert(reg(w, { role: 'decode' }));
  const pd = new Selector(v2, f2, 'kv', DEFAULT_WEIGHTS, Math.random, { minPrefillTokens: 0, decodeHoldRatio: 2 }).select({ pool: v2.pool('m')!, hashes: hs, indexOverlaps: { p0: 10 }, avoid: new Set(['p0', 'd0']) })!;
  assert.equal([pd.prefill?.worker, pd.worker.worker], ['p1', 'd1']);
});

test.run();
