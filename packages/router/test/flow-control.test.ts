/**
 * The flow-control queue (flow-control.ts) on an injected clock: the highest priority goes first, inside a
 * priority the fairness ids take turns (FIFO within each), a band holds at most maxQueue, waiters past their
 * deadline are refused, and closing refuses every waiter (and any later wait) as 'closed'.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FlowGate, FlowQueue, type FlowOutcome } from '../src/flow-control.js';

function queue(maxQueue = 10) {
  let t = 0;
  const q = new FlowQueue(maxQueue, () => t);
  const out: string[] = [];
  const push = (name: string, priority: number, tenant: string, deadline = 1000) => q.push(priority, tenant, deadline, (o: FlowOutcome) => out.push(`${name}:${o}`));
  return { q, out, push, advance: (ms: number) => (t += ms) };
}

test('highest priority first; fairness ids take turns inside a priority; FIFO within an id', () => {
  const { q, out, push } = queue();
  push('a1', 0, 'a');
  push('a2', 0, 'a');
  push('a3', 0, 'a');
  push('b1', 0, 'b');
  push('hi', 5, 'x');
  push('lo', -1, 'x');
  while (q.admitOne());
  assert.equal(out, ['hi:admitted', 'a1:admitted', 'b1:admitted', 'a2:admitted', 'a3:admitted', 'lo:admitted']);
  assert.is(q.size, 0);
});

test('a band holds maxQueue; other bands are not affected', () => {
  const { q, push } = queue(2);
  assert.ok(push('1', 0, 't'));
  assert.ok(push('2', 0, 'u'));
  assert.not.ok(push('3', 0, 'v'));
  assert.ok(push('4', 1, 't'));
  assert.equal([...q.depths()].sort(), [[0, 2], [1, 1]]);
});

test('waiters past their deadline are refused, the others stay', () => {
  const { q, out, push, advance } = queue();
  push('soon', 0, 'a', 100);
  push('later', 0, 'a', 500);
  advance(200);
  q.expire();
  assert.equal(out, ['soon:expired']);
  assert.is(q.size, 1);
});

test('FlowGate: admits while the pool has room; close refuses waiters and later waits as closed', async () => {
  const keepAlive = setInterval(() => {}, 1000); // the gate's own timer is unref'd
  let room = false;
  const gate = new FlowGate({ pollMs: 1, maxWaitMs: 10_000 }, () => room);
  const first = gate.wait('m', 0, 't');
  const second = gate.wait('m', 0, 't');
  assert.is(gate.waiting('m'), 2);
  room = true;
  assert.is((await first).outcome, 'admitted');
  gate.picked('m');
  assert.is((await second).outcome, 'admitted');
  gate.picked('m');
  room = false;
  const third = gate.wait('m', 3, 't');
  gate.close();
  assert.is((await third).outcome, 'closed');
  assert.is((await gate.wait('m', 0, 't')).outcome, 'closed');
  clearInterval(keepAlive);
});

test.run();
