/**
 * A flood of bad ZMQ frames logs a rate-limited summary, not one line per frame (issue 17): LogSummary itself
 * (log-summary.ts) with a captured log and hand-fired timers, then the relay fed 600 malformed frames of three
 * kinds: every one counted in kvgate_shim_malformed_frames_total, one line at once, one summary line per window
 * with counts by reason, and a good frame after the flood still applies.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { initHashing, type EventBatch } from '@kvgate/protocol';
import { LogSummary, type SummaryTimers } from '../src/log-summary.js';
import { EventRelay } from '../src/relay.js';
import { createMetrics, type ShimMetrics } from '../src/metrics.js';
import { LoraNames } from '../src/lora.js';
import { seqFrame, vllmArrayBatch } from './fake-engine.js';

await initHashing();

interface Line {
  obj: Record<string, unknown>;
  msg: string;
}

/** a captured log and timers fired by hand (`fire` runs the pending one, as its window's end) */
function harness() {
  const lines: Line[] = [];
  let pending: (() => void) | undefined;
  let armed = 0;
  const timers: SummaryTimers = {
    set(fn) {
      pending = fn;
      armed++;
      return armed;
    },
    clear() {
      pending = undefined;
    },
  };
  return {
    lines,
    log: { warn: (obj: Record<string, unknown>, msg: string) => void lines.push({ obj, msg }) },
    timers,
    pending: () => pending !== undefined,
    fire() {
      const f = pending;
      pending = undefined;
      f?.();
    },
  };
}

test('LogSummary: the first is logged at once, the rest of a window summed up in one line by reason; a quiet window closes', () => {
  const h = harness();
  const s = new LogSummary({ log: h.log, one: 'bad thing', what: 'bad things', bindings: { worker: 'w' }, timers: h.timers });
  s.note('a', 'first error');
  assert.is(h.lines.length, 1);
  assert.equal(h.lines[0]!.obj, { worker: 'w', reason: 'a', err: 'first error' });
  assert.match(h.lines[0]!.msg, /^bad thing \(more are summed up every 10 s\)$/);
  for (let i = 0; i < 1000; i++) s.note(i % 3 === 0 ? 'b' : 'a', `error ${i}`);
  assert.is(h.lines.length, 1, 'nothing more until the window ends');
  h.fire();
  assert.is(h.lines.length, 2);
  const sum = h.lines[1]!;
  assert.is(sum.obj.count, 1000);
  assert.equal(sum.obj.byReason, { b: 334, a: 666 });
  assert.is(sum.obj.lastErr, 'error 999');
  assert.is(sum.msg, '1000 more bad things in the last 10 s');
  // the next window: quiet → no line, and the window closes
  assert.ok(h.pending(), 'a new window after a busy one');
  h.fire();
  assert.is(h.lines.length, 2);
  assert.not.ok(h.pending(), 'no timer after a quiet window');
  // the next one is logged at once again
  s.note('c', 'later');
  assert.is(h.lines.length, 3);
  assert.is(h.lines[2]!.obj.reason, 'c');
  // stop writes what was counted, and nothing after
  s.note('c', 'x');
  s.note('c', 'y');
  s.stop();
  assert.is(h.lines.length, 4);
  assert.is(h.lines[3]!.obj.count, 2);
  s.note('c', 'after stop');
  assert.is(h.lines.length, 4);
  assert.not.ok(h.pending());
});

async function malformed(metrics: ShimMetrics): Promise<number> {
  const text = await metrics.registry.getSingleMetricAsString('kvgate_shim_malformed_frames_total');
  const line = text.split('\n').find((l) => l.startsWith('kvgate_shim_malformed_frames_total'));
  return Number(line?.trim().split(/\s+/).pop() ?? 0);
}

test('relay: 600 malformed frames → all counted, 1 line at once + 1 summary per window by reason; a good frame still applies', async () => {
  const h = harness();
  const metrics = createMetrics('w');
  const out: EventBatch[] = [];
  const relay = new EventRelay({
    worker: 'w',
    model: 'm',
    metrics,
    loras: new LoraNames(),
    maxMapEntries: 1000,
    maxMailbox: 10_000,
    publish: (b) => out.push(b),
    replay: async () => null,
    refreshLoras: async () => undefined,
    malformedLog: { log: h.log, timers: h.timers },
  });
  const topic = Buffer.alloc(0);
  for (let i = 0; i < 200; i++) {
    relay.post([topic, seqFrame(i)]); // two frames
    relay.post([topic, Buffer.from([1, 2, 3]), Buffer.from([0x90])]); // a 3-byte seq frame
    relay.post([topic, seqFrame(i), Buffer.from([0xc1, 0xc1])]); // a payload that is not msgpack
  }
  await relay.idle();
  assert.is(await malformed(metrics), 600);
  assert.is(h.lines.length, 1, h.lines.map((l) => l.msg).join(' | '));
  assert.equal(h.lines[0]!.obj.reason, 'frame-count');
  assert.is(h.lines[0]!.obj.worker, 'w');
  h.fire();
  assert.is(h.lines.length, 2);
  const sum = h.lines[1]!.obj;
  assert.is(sum.count, 599);
  assert.equal(sum.byReason, { seq: 200, payload: 200, 'frame-count': 199 });
  assert.type(sum.lastErr, 'string');
  // the flood is over: a good batch applies (the relay kept going)
  relay.post([topic, seqFrame(0), Buffer.from(vllmArrayBatch([{ type: 'stored', hashes: [1n], parent: null, tokens: [1, 2, 3, 4], blockSize: 4 }]))]);
  await relay.idle();
  assert.ok(out.some((b) => b.events.some((e) => e.t === 'stored')), JSON.stringify(out.map((b) => b.events), (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
  assert.is(h.lines.length, 2);
  relay.stop();
  assert.not.ok(h.pending(), 'stop leaves no timer');
});

test.run();
