/** Passive health (health.ts) on a fake clock: back-off, probes, peers, load reports. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { WorkerHealth } from '../src/health.js';
import { decodeSuspect, encodeSuspect } from '../src/suspect-wire.js';
import { encode } from '@kvgate/protocol';

function clock(start = 10_000) {
  let now = start;
  return { now: () => now, tick: (ms: number) => (now += ms) };
}

test('one failure makes a worker suspect at once; it is usable again after the back-off, and a success clears it', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 1000, now: c.now });
  assert.ok(h.quiet);
  assert.ok(h.usable('w0'));
  const s = h.fail('w0');
  assert.equal(s, { worker: 'w0', backoffMs: 1000, newly: true, changed: true });
  assert.not.ok(h.quiet);
  assert.ok(h.isSuspect('w0'));
  assert.not.ok(h.usable('w0'));
  assert.ok(h.usable('w1'), 'others untouched');
  c.tick(999);
  assert.not.ok(h.usable('w0'));
  assert.is(h.backoffLeft('w0'), 1);
  c.tick(1);
  assert.ok(h.usable('w0'), 'back-off over: on probation');
  assert.ok(h.isSuspect('w0'), 'still suspect until a request succeeds');
  assert.ok(h.succeed('w0'));
  assert.not.ok(h.isSuspect('w0'));
  assert.ok(h.quiet);
  assert.not.ok(h.succeed('w0'), 'nothing left to clear');
});

test('back-off doubles with each failed probe up to the ceiling, and starts over after a success', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 1000, maxBackoffMs: 5000, now: c.now });
  const seen: number[] = [];
  seen.push(h.fail('w0').backoffMs);
  for (let i = 0; i < 5; i++) {
    c.tick(h.backoffLeft('w0'));
    assert.ok(h.usable('w0'));
    h.sent('w0'); // the probe
    assert.not.ok(h.usable('w0'), 'one probe at a time');
    const s = h.fail('w0');
    assert.ok(s.changed);
    assert.not.ok(s.newly);
    seen.push(s.backoffMs);
  }
  assert.equal(seen, [1000, 2000, 4000, 5000, 5000, 5000]);
  c.tick(5000);
  h.sent('w0');
  assert.ok(h.succeed('w0'));
  assert.is(h.fail('w0').backoffMs, 1000, 'a fresh failure after a success starts from the base again');
});

test('failures inside a running back-off (requests already on their way) do not escalate it', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 1000, now: c.now });
  h.fail('w0');
  c.tick(300);
  for (let i = 0; i < 10; i++) assert.equal(h.fail('w0'), { worker: 'w0', backoffMs: 1000, newly: false, changed: false });
  assert.is(h.backoffLeft('w0'), 700);
});

test('a probe whose client went away frees the probe slot without a verdict', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 100, now: c.now });
  h.fail('w0');
  c.tick(100);
  h.sent('w0');
  assert.not.ok(h.usable('w0'));
  h.abandoned('w0');
  assert.ok(h.usable('w0'));
  assert.ok(h.isSuspect('w0'));
});

test('a request sent before the back-off ran out is not the probe', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 1000, now: c.now });
  h.fail('w0');
  h.sent('w0'); // every worker was suspect: the selector took it anyway
  c.tick(1000);
  assert.ok(h.usable('w0'), 'its probe is still to come');
});

test('peer suspicion: starts or extends a back-off, never escalates; a peer success clears', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 1000, maxBackoffMs: 30_000, now: c.now });
  assert.ok(h.peerSuspect('w0', 4000), 'newly suspect');
  assert.not.ok(h.usable('w0'));
  c.tick(3999);
  assert.not.ok(h.usable('w0'));
  c.tick(1);
  assert.ok(h.usable('w0'));
  assert.not.ok(h.peerSuspect('w0', 500), 'already suspect');
  assert.is(h.backoffLeft('w0'), 500);
  assert.not.ok(h.peerSuspect('w0', 100), 'a shorter one does not cut a longer one');
  assert.is(h.backoffLeft('w0'), 500);
  h.peerSuspect('w0', 10 ** 9);
  assert.is(h.backoffLeft('w0'), 30_000, 'capped at the ceiling');
  assert.ok(h.peerCleared('w0'));
  assert.ok(h.usable('w0'));
  // a local first failure after a peer's: no escalation inside the running back-off
  h.peerSuspect('w1', 2000);
  assert.not.ok(h.fail('w1').changed);
});

test('load reports: healthy:false takes a worker out until a report without it, or until the flag ages out', () => {
  const c = clock();
  const h = new WorkerHealth({ reportTtlMs: 3000, now: c.now });
  h.report('w0', false);
  assert.ok(h.isUnhealthy('w0'));
  assert.not.ok(h.usable('w0'));
  assert.not.ok(h.quiet);
  assert.equal(h.unhealthy(), ['w0']);
  c.tick(2000);
  h.report('w0', false);
  c.tick(2999);
  assert.ok(h.isUnhealthy('w0'), 'a fresh report renews it');
  c.tick(2);
  assert.not.ok(h.isUnhealthy('w0'), 'no report for reportTtlMs: no longer known to be down');
  assert.ok(h.usable('w0'));
  h.report('w1', false);
  h.report('w1', undefined);
  assert.not.ok(h.isUnhealthy('w1'), 'a report without the field ends it');
  h.report('w2', false);
  h.report('w2', true);
  assert.not.ok(h.isUnhealthy('w2'));
  assert.ok(h.quiet);
});

test('a healthy report clears a suspicion only when it is news: after a down report, or well after the failure', () => {
  const c = clock();
  const h = new WorkerHealth({ baseBackoffMs: 10_000, reportGraceMs: 2500, now: c.now });
  h.fail('w0');
  c.tick(100);
  assert.not.ok(h.report('w0', true), 'too soon: the shim may not have probed since the failure');
  assert.not.ok(h.report('w0', undefined), 'an older shim (no field) says nothing about the engine');
  assert.ok(h.isSuspect('w0'));
  c.tick(2400);
  assert.ok(h.report('w0', true), 'a healthy report 2.5 s after the failure comes from a later probe');
  assert.ok(h.usable('w0'));
  h.fail('w1');
  h.report('w1', false);
  assert.not.ok(h.usable('w1'));
  assert.ok(h.report('w1', true), 'the shim saw the engine go down and come back');
  assert.ok(h.usable('w1'));
  assert.not.ok(h.isSuspect('w1'));
});

test('forget drops everything about a worker', () => {
  const h = new WorkerHealth();
  h.fail('w0');
  h.report('w0', false);
  h.forget('w0');
  assert.ok(h.quiet);
  assert.equal(h.suspects(), []);
});

test('suspect messages round-trip and bad ones are rejected', () => {
  const m = { router: 'r0', worker: 'w1', suspect: true, reason: 'connect' as const, backoffMs: 2000, ts: 5 };
  assert.equal(decodeSuspect(encodeSuspect(m)), m);
  assert.equal(decodeSuspect(encodeSuspect({ router: 'r0', worker: 'w1', suspect: false, ts: 6 })), { router: 'r0', worker: 'w1', suspect: false, ts: 6 });
  for (const bad of [
    [1, 2],
    { router: 'r0', worker: 'w1', suspect: true, ts: 1 },
    { router: 'r0', worker: 'w1', suspect: true, reason: 'nope', backoffMs: 1, ts: 1 },
    { router: 'r0', worker: 'w1', suspect: true, reason: 'status', backoffMs: -1, ts: 1 },
    { router: '', worker: 'w1', suspect: false, ts: 1 },
    { router: 'r0', worker: 'w1', suspect: 'yes', ts: 1 },
  ]) {
    assert.throws(() => decodeSuspect(encode(bad)), /suspect message/);
  }
  assert.throws(() => decodeSuspect(new Uint8Array([0xc1])));
});

test.run();
