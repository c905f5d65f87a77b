/** The misconfiguration judges (diag.ts): each condition on both sides of its threshold; the wire; the verdicts. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encode as independentEncode } from '@msgpack/msgpack';
import {
  decodeDiag,
  encodeDiag,
  judgeBlockSize,
  judgeCachePrediction,
  judgeEventsStale,
  judgePromptTokens,
  predictedCachedTokens,
  RateGate,
  RouterWindow,
  verdicts,
  type DiagReport,
  type ShimFacts,
} from '../src/diag.js';
import { DecodeError } from '../src/errors.js';
import { subjects } from '../src/subjects.js';

const T0 = 1_700_000_000_000;

test('events-stale: serving for the threshold without an event; not before, not when idle', () => {
  const f = { servingSince: T0, lastEventAt: null, staleEventsMs: 60_000 };
  assert.is(judgeEventsStale(f, T0 + 59_999), null);
  const got = judgeEventsStale(f, T0 + 60_000);
  assert.is(got?.code, 'events-stale');
  assert.match(got!.message, /served requests for 60 s but has published no KV event since the shim started/);
  assert.match(got!.check, /--kv-events-config/);
  assert.is(judgeEventsStale({ ...f, servingSince: null }, T0 + 600_000), null, 'idle: no requests, no events expected');
  assert.match(judgeEventsStale({ ...f, lastEventAt: T0 - 30_000 }, T0 + 90_000)!.message, /no KV event for 120 s/);
});

test('block-size-mismatch: events ≠ registration; equal or no event yet is fine', () => {
  assert.is(judgeBlockSize(null, 16), null);
  assert.is(judgeBlockSize(16, 16), null);
  const got = judgeBlockSize(32, 16);
  assert.is(got?.code, 'block-size-mismatch');
  assert.match(got!.message, /events carry block size 32 but it is registered with block size 16/);
});

test('prompt-token-mismatch: one differing request of few flags; one in twenty does not', () => {
  const base = { lastRouterTokens: 10, lastEngineTokens: 12 };
  assert.is(judgePromptTokens({ ...base, promptCompared: 20, promptMismatched: 0 }), null);
  assert.is(judgePromptTokens({ ...base, promptCompared: 20, promptMismatched: 1 }), null, '5% < 10%');
  assert.is(judgePromptTokens({ ...base, promptCompared: 20, promptMismatched: 2 })?.code, 'prompt-token-mismatch');
  const got = judgePromptTokens({ ...base, promptCompared: 1, promptMismatched: 1 });
  assert.match(got!.message, /router counted 10 prompt tokens where the engine's usage.prompt_tokens said 12 \(1 of the last 1 requests differ\)/);
});

test('cache-prediction-mismatch: Σpredicted ≥ 2·Σcached + one block over ≥ 5 samples', () => {
  const f = { cacheSamples: 5, predictedTokens: 2 * 100 + 16, cachedTokens: 100, blockSize: 16 };
  assert.is(judgeCachePrediction(f)?.code, 'cache-prediction-mismatch');
  assert.is(judgeCachePrediction({ ...f, predictedTokens: 2 * 100 + 15 }), null, 'just under the threshold');
  assert.is(judgeCachePrediction({ ...f, cacheSamples: 4 }), null, 'too few samples');
  assert.match(judgeCachePrediction({ ...f, cachedTokens: 0, predictedTokens: 640 })!.message, /predicted 640 cached prompt tokens over its last 5 requests .* reported 0/);
});

test('predicted cached tokens are capped at the longest hit an engine can report', () => {
  assert.is(predictedCachedTokens(4, 16, 64), 48, 'a prompt of exactly 4 blocks hits at most 3');
  assert.is(predictedCachedTokens(4, 16, 65), 64);
  assert.is(predictedCachedTokens(2, 16, 100), 32);
  assert.is(predictedCachedTokens(1, 16, 16), 0);
});

test('the router window keeps the last N samples and sums them', () => {
  const w = new RouterWindow(4);
  for (let i = 0; i < 4; i++) w.add({ routerTokens: 10, engineTokens: 11, predictedTokens: 32, cachedTokens: 0, blockSize: 16 });
  let f = w.facts();
  assert.equal([f.promptCompared, f.promptMismatched, f.cacheSamples, f.predictedTokens], [4, 4, 4, 128]);
  for (let i = 0; i < 3; i++) w.add({ routerTokens: 7, engineTokens: 7, predictedTokens: 0, cachedTokens: 0, blockSize: 16 });
  f = w.facts();
  assert.equal([f.promptCompared, f.promptMismatched, f.cacheSamples, f.predictedTokens], [4, 1, 1, 32], 'three of the four old samples pushed out');
  w.add({ routerTokens: null, engineTokens: 9, predictedTokens: null, cachedTokens: null, blockSize: 16 });
  f = w.facts();
  assert.equal([f.promptCompared, f.promptMismatched, f.cacheSamples], [3, 0, 0], 'unknown counts compare nothing');
});

test('the rate gate passes once per key per period', () => {
  const g = new RateGate(60_000);
  assert.ok(g.pass('w1|events-stale', T0));
  assert.not.ok(g.pass('w1|events-stale', T0 + 59_999));
  assert.ok(g.pass('w2|events-stale', T0 + 1));
  assert.ok(g.pass('w1|events-stale', T0 + 60_000));
});

const shim = (over: Partial<ShimFacts> = {}): ShimFacts => ({ startedAt: T0, lastEventAt: T0, servingSince: null, eventBlockSize: 16, registeredBlockSize: 16, staleEventsMs: 60_000, ...over });

test('diag reports round-trip; a bad payload is a DecodeError', () => {
  const r: DiagReport = {
    source: 'router',
    id: 'r0',
    ts: T0,
    workers: [{ worker: 'w', findings: [judgeBlockSize(32, 16)!], router: { promptCompared: 1, promptMismatched: 0, lastRouterTokens: 0, lastEngineTokens: 0, cacheSamples: 0, predictedTokens: 0, cachedTokens: 0, blockSize: 16 } }],
  };
  assert.equal(decodeDiag(encodeDiag(r)), r);
  const s: DiagReport = { source: 'shim', id: 'w', ts: T0, workers: [{ worker: 'w', findings: [], shim: shim({ lastEventAt: null }) }] };
  assert.equal(decodeDiag(encodeDiag(s)), s);
  // written by another msgpack library, as a peer on another version might
  assert.equal(decodeDiag(independentEncode(s)), s);
  assert.throws(() => decodeDiag(independentEncode({ source: 'gateway', id: 'x', ts: 1, workers: [] })), (e: unknown) => e instanceof DecodeError);
  assert.throws(() => decodeDiag(independentEncode({ source: 'shim', id: 'x', ts: 1, workers: [{ worker: 'w', findings: [{ code: 'nope', message: '', check: '' }] }] })), /unknown finding code/);
  assert.throws(() => decodeDiag(independentEncode({ source: 'shim', id: 'x', ts: 1, workers: [{ worker: 'w', findings: [], shim: { startedAt: 'x' } }] })), /shim.startedAt must be a number/);
});

test('verdicts: ok needs a shim report; findings merge per code; the registry cross-checks block size', () => {
  const reg = new Map([
    ['a', { blockSize: 16 }],
    ['b', { blockSize: 16 }],
    ['c', { blockSize: 32 }],
  ]);
  const stale = judgeEventsStale({ servingSince: T0, lastEventAt: null, staleEventsMs: 1 }, T0 + 10)!;
  const mismatch = judgePromptTokens({ promptCompared: 1, promptMismatched: 1, lastRouterTokens: 5, lastEngineTokens: 6 })!;
  const rf = { promptCompared: 1, promptMismatched: 1, lastRouterTokens: 5, lastEngineTokens: 6, cacheSamples: 0, predictedTokens: 0, cachedTokens: 0, blockSize: 16 };
  const reports: DiagReport[] = [
    { source: 'shim', id: 'a', ts: T0, workers: [{ worker: 'a', findings: [], shim: shim() }] },
    { source: 'shim', id: 'c', ts: T0, workers: [{ worker: 'c', findings: [stale], shim: shim({ servingSince: T0 }) }] },
    { source: 'router', id: 'r0', ts: T0, workers: [{ worker: 'c', findings: [mismatch], router: rf }] },
    { source: 'router', id: 'r1', ts: T0, workers: [{ worker: 'c', findings: [mismatch], router: rf }] },
  ];
  const [a, b, c] = verdicts(reg, reports);
  assert.equal([a!.worker, a!.ok, a!.noShim, a!.problems.length], ['a', true, false, 0]);
  assert.equal([b!.worker, b!.ok, b!.noShim], ['b', false, true]);
  assert.equal(c!.problems.map((p) => p.code), ['events-stale', 'block-size-mismatch', 'prompt-token-mismatch']);
  assert.equal(c!.problems[1]!.from, ['registry'], 'events say 16, the bucket says 32');
  assert.equal(c!.problems[2]!.from, ['router r0', 'router r1']);
  assert.is(c!.router?.routers, 2);
  assert.is(c!.router?.promptCompared, 2);
});

test('diag subjects', () => {
  const s = subjects('ns1');
  assert.is(s.diagShim('w-1'), 'kvgate.ns1.diag.shim.w-1');
  assert.is(s.diagRouter('r0'), 'kvgate.ns1.diag.router.r0');
  assert.is(s.diagAll, 'kvgate.ns1.diag.*.*');
  assert.is(s.diagAsk, 'kvgate.ns1.diag.ask');
});

test.run();
