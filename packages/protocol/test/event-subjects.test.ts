/**
 * Event subjects with shard bits (issue 18): `kvgate.<ns>.events.<b0>…<b5>.<worker>`, b0…b5 the low 6 bits of the
 * worker id's FNV-1a (32), and the one-filter-per-shard rule. The expected hash is an independent FNV-1a (BigInt
 * arithmetic, checked against the published FNV test vectors), never the code under test.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { subjects } from '../src/subjects.js';
import { eventFilterBits, workerHash } from '../src/worker-hash.js';
import { subjectMatches } from '../src/bus/bus.js';
import { rolePermissions } from '../src/nats-permissions.js';

/** FNV-1a 32 over the id's bytes (worker ids are ASCII: one byte per character), in BigInt */
function fnv1a(s: string): number {
  let h = 0x811c9dc5n;
  for (const b of Buffer.from(s, 'latin1')) h = ((h ^ BigInt(b)) * 0x01000193n) % 0x1_0000_0000n;
  return Number(h);
}
/** the 6 tokens, least significant bit first */
const bits = (h: number) => Array.from({ length: 6 }, (_, b) => String(Math.floor(h / 2 ** b) % 2)).join('.');

/** deterministic worker ids: letters, digits and the token punctuation ids may use */
function randomWorkers(n: number, seed = 12345): string[] {
  const abc = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:@';
  let x = seed;
  const next = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8;
  return Array.from({ length: n }, () => Array.from({ length: 1 + (next() % 24) }, () => abc[next() % abc.length]).join(''));
}
const WORKERS = randomWorkers(3000);

test('the independent FNV-1a agrees with the published FNV-1a 32 test vectors', () => {
  assert.is(fnv1a(''), 0x811c9dc5);
  assert.is(fnv1a('a'), 0xe40c292c);
  assert.is(fnv1a('foobar'), 0xbf9cf968);
});

test('workerHash is FNV-1a 32', () => {
  for (const w of ['', 'a', 'foobar', 'sim-0', 'w1', ...WORKERS.slice(0, 500)]) assert.is(workerHash(w), fnv1a(w), w);
});

test('events(w): the 6 low hash bits, least significant first, then the worker id', () => {
  const s = subjects('ns1');
  // 'foobar' = 0xbf9cf968: low byte 0x68 = 0b0110_1000 → b0…b5 = 0 0 0 1 0 1
  assert.is(s.events('foobar'), 'kvgate.ns1.events.0.0.0.1.0.1.foobar');
  for (const w of ['sim-0', 'sim-1', 'w1', 'pod-a-dp3', 'a:b@c']) assert.is(s.events(w), `kvgate.ns1.events.${bits(fnv1a(w))}.${w}`);
  assert.is(subjects().events('sim-0').split('.').length, 10, 'kvgate, ns, events, 6 bits, worker');
});

test('eventsAll captures every event subject, the old events.<worker> form too; no shard filter matches that form', () => {
  const s = subjects('ns1');
  assert.is(s.eventsAll, 'kvgate.ns1.events.>');
  for (const w of WORKERS) assert.ok(subjectMatches(s.eventsAll, s.events(w)), w);
  assert.ok(subjectMatches(s.eventsAll, 'kvgate.ns1.events.sim-0'), 'old form captured');
  assert.not.ok(subjectMatches(s.eventsAll, subjects('ns2').events('sim-0')), 'another namespace');
  for (const n of [2, 4, 64]) for (let i = 0; i < n; i++) for (const w of ['sim-0', '0', '1', 'w']) assert.not.ok(subjectMatches(s.eventsShard(i, n), `kvgate.ns1.events.${w}`), `${i}/${n} ${w}`);
});

test('eventFilterBits: log2 of the power of two in N, at most 6', () => {
  assert.equal([1, 2, 3, 4, 6, 8, 12, 16, 32, 48, 64, 96, 128, 1024].map(eventFilterBits), [0, 1, 0, 2, 1, 3, 2, 4, 5, 4, 6, 5, 6, 6]);
});

test('shard filter of i/N, N a power of two ≤ 64: selects exactly the workers with hash mod N = i', () => {
  const s = subjects('default');
  for (const n of [2, 4, 8, 16, 32, 64]) {
    const seen = new Array<number>(n).fill(0);
    for (const w of WORKERS) {
      const subject = s.events(w);
      const want = fnv1a(w) % n;
      for (let i = 0; i < n; i++) assert.is(subjectMatches(s.eventsShard(i, n), subject), i === want, `${w} in ${i}/${n}?`);
      seen[want]!++;
    }
    assert.ok(seen.every((c) => c > 0), `every shard of ${n} has workers (${seen.join(',')})`);
  }
  assert.is(s.eventsShard(1, 2), 'kvgate.default.events.1.>');
  assert.is(s.eventsShard(6, 8), 'kvgate.default.events.0.1.1.>');
  assert.is(s.eventsShard(0, 1), 'kvgate.default.events.>');
});

test('shard filter of other N: every worker of the shard, and only those sharing its low bits', () => {
  const s = subjects('default');
  for (const n of [3, 6, 12, 96, 128, 1000]) {
    const k = 2 ** eventFilterBits(n);
    for (const w of WORKERS) {
      const h = fnv1a(w);
      for (const i of [0, 1, n - 1]) assert.is(subjectMatches(s.eventsShard(i, n), s.events(w)), h % k === i % k, `${w} in ${i}/${n}`);
      assert.ok(subjectMatches(s.eventsShard(h % n, n), s.events(w)), `${w} reaches its own shard of ${n}`);
    }
  }
  assert.is(s.eventsShard(2, 3), 'kvgate.default.events.>', 'odd N: no filter');
  for (const [i, n] of [[2, 2], [-1, 4], [0, 0], [1.5, 4]]) assert.throws(() => s.eventsShard(i!, n!), /invalid index shard/);
});

test('nats permissions: a named shim may publish its workers\' exact event subjects; the shared one every event subject', () => {
  const s = subjects('default');
  const named = rolePermissions('shim', { workers: ['pod-a', 'pod-b-dp0'] }).publish;
  assert.ok(named.includes(s.events('pod-a')) && named.includes(s.events('pod-b-dp0')));
  assert.is(named.filter((p) => p.startsWith(`${s.prefix}.events.`)).length, 2, 'nothing else under events');
  const shared = rolePermissions('shim').publish.filter((p) => p.startsWith(`${s.prefix}.events.`));
  assert.equal(shared, [s.eventsAll]);
});

test.run();
