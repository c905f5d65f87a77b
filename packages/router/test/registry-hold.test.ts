/** The last-known registry through a bus outage (registry-hold.ts), on a fake clock. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RegistryHold } from '../src/registry-hold.js';

function clock(start = 50_000) {
  let now = start;
  return { now: () => now, tick: (ms: number) => (now += ms) };
}

/** advance `ms` in steps of `step`, hearing the bus at each step when `busUp` */
function run(c: ReturnType<typeof clock>, h: RegistryHold, ms: number, busUp: boolean, step = 250): string[] {
  const dropped: string[] = [];
  for (let t = 0; t < ms; t += step) {
    c.tick(step);
    if (busUp) h.heard();
    dropped.push(...h.due());
  }
  return dropped;
}

test('a lapse on a live bus drops the worker once the bus confirmed it for confirmMs', () => {
  const c = clock();
  const h = new RegistryHold({ busGapMs: 2000, confirmMs: 2500, now: c.now });
  h.lapsed('w0');
  assert.ok(h.isHeld('w0'));
  assert.equal(run(c, h, 2250, true), []);
  assert.equal(run(c, h, 250, true), ['w0']);
  assert.not.ok(h.isHeld('w0'));
  assert.equal(h.due(), []);
});

test('through an outage every lapsed worker is kept, however long; they leave only if not back after the bus returns', () => {
  const c = clock();
  const h = new RegistryHold({ busGapMs: 2000, confirmMs: 2500, staleViewMs: 60_000, now: c.now });
  run(c, h, 1000, true);
  // the bus goes away; the watcher's own clock lapses every key a little later
  run(c, h, 2250, false);
  h.lapsed('w0');
  h.lapsed('w1');
  assert.not.ok(h.busUp());
  assert.equal(run(c, h, 57_000, false), [], 'nothing dropped while nothing is heard');
  assert.not.ok(h.stale());
  assert.equal(run(c, h, 5000, false), []);
  assert.ok(h.stale(), 'silent past staleViewMs: stale, still held');
  assert.equal(h.held().sort(), ['w0', 'w1']);
  // the bus is back: the first message ends the silence
  c.tick(250);
  assert.ok(h.heard(), 'a silence ended');
  assert.not.ok(h.heard(), 'only once');
  assert.not.ok(h.stale());
  h.renewed('w0'); // its shim re-registered
  assert.equal(run(c, h, 2000, true), [], 'a grace after the bus returned');
  assert.equal(run(c, h, 500, true), ['w1'], 'w1 did not come back');
  assert.equal(h.held(), []);
});

test('a lapse the watcher reports just before the silence is noticed is not confirmed by that silence', () => {
  const c = clock();
  const h = new RegistryHold({ busGapMs: 2000, confirmMs: 2500, now: c.now });
  h.heard();
  c.tick(1900); // the bus went quiet at 0; still within busGapMs when the key lapses
  h.lapsed('w0');
  assert.ok(h.busUp());
  assert.equal(run(c, h, 10_000, false), [], 'never confirmed: nothing was heard after the lapse');
});

test('load reports from a held worker keep it (its shim is alive, only its registration is missing)', () => {
  const c = clock();
  const h = new RegistryHold({ busGapMs: 2000, confirmMs: 2500, now: c.now });
  h.lapsed('w0');
  for (let i = 0; i < 40; i++) {
    c.tick(250);
    h.heard();
    h.reported('w0');
    assert.equal(h.due(), []);
  }
  assert.equal(run(c, h, 2500, true), ['w0'], 'reports stopped: dropped after confirmMs');
  h.reported('w9');
  assert.not.ok(h.isHeld('w9'), 'a report does not hold a worker that never lapsed');
});

test('an explicit removal ends the hold; confirmMs is kept above busGapMs', () => {
  const c = clock();
  const h = new RegistryHold({ busGapMs: 2000, confirmMs: 10, now: c.now });
  assert.is(h.confirmMs, 2001);
  h.lapsed('w0');
  h.removed('w0');
  assert.equal(h.held(), []);
  assert.is(h.silentMs(), 0);
  c.tick(700);
  assert.is(h.silentMs(), 700);
});

test.run();
