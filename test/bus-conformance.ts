/**
 * One conformance suite for every Bus implementation (bus/bus.ts). Runner files:
 *   test/bus-conformance.memory.test.ts   — MemoryBus (connections share one MemoryHub)
 *   test/bus-conformance.nats.test.ts     — NatsBus against a real nats-server -js started by the harness
 * A target hands out fresh connections to one "server", so durability and cross-connection behaviour are
 * tested the same way on both. Every wait is bounded; nothing asserts on speed.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { subjectMatches, type Bus, type KvEntry, type Msg, type StreamMsg } from '../packages/protocol/src/index.js';

export interface BusTarget {
  /** short name: 'memory' | 'nats' */
  readonly name: string;
  /** what the suite ran against, for the '#' line (e.g. the server URL) */
  readonly description: string;
  /** a new connection to the same server (streams and buckets are shared between connections) */
  connect(): Promise<Bus>;
  /** restart the server, keeping its store (NATS only) */
  restart?(): Promise<void>;
  /** KV TTL used by the expiry tests; JetStream's max_age must be >= 100 ms and expires at ~ms precision */
  readonly ttlMs: number;
  stop(): Promise<void>;
}

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array | null): string | null => (b === null ? null : new TextDecoder().decode(b));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let uniqN = 0;
const uniq = (p: string): string => `${p}${Date.now().toString(36)}${(++uniqN).toString(36)}`;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]);
}

/** the first n items of an async iterable (bounded) */
async function take<T>(it: AsyncIterable<T>, n: number, ms = 5000): Promise<T[]> {
  const out: T[] = [];
  if (n === 0) return out;
  const iter = it[Symbol.asyncIterator]();
  await withTimeout((async () => {
    while (out.length < n) {
      const r = await iter.next();
      if (r.done) break;
      out.push(r.value);
    }
  })(), ms, `waiting for ${n} items (got ${out.length})`);
  return out;
}

/** the first n items matching `keep`, discarding the others (bounded) */
async function takeWhere<T>(it: AsyncIterable<T>, n: number, keep: (x: T) => boolean, ms = 5000): Promise<T[]> {
  const out: T[] = [];
  const iter = it[Symbol.asyncIterator]();
  await withTimeout((async () => {
    while (out.length < n) {
      const r = await iter.next();
      if (r.done) break;
      if (keep(r.value)) out.push(r.value);
    }
  })(), ms, `waiting for ${n} matching items (got ${out.length})`);
  return out;
}

/** everything until the iterable ends (bounded) */
async function drain<T>(it: AsyncIterable<T>, ms = 5000): Promise<T[]> {
  const out: T[] = [];
  await withTimeout((async () => {
    for await (const x of it) out.push(x);
  })(), ms, `waiting for the end (got ${out.length})`);
  return out;
}

/** poll until fn returns true (bounded) */
async function eventually(fn: () => Promise<boolean> | boolean, ms = 5000, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  while (!(await fn())) {
    if (Date.now() - t0 > ms) throw new Error(`not true within ${ms} ms: ${what}`);
    await sleep(20);
  }
}

async function rejects(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    assert.is((err as { code?: string }).code, code, `expected ${code}, got ${(err as Error).message}`);
    return;
  }
  assert.unreachable(`expected rejection with ${code}`);
}

function throwsCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (err) {
    assert.is((err as { code?: string }).code, code, `expected ${code}, got ${(err as Error).message}`);
    return;
  }
  assert.unreachable(`expected throw with ${code}`);
}

export interface ConformanceFeatures {
  /** the target can restart its server (adds the restart test) */
  restart?: boolean;
}

/** no conformance test may hang the run: one that has not finished by then fails, naming itself */
const TEST_DEADLINE_MS = 120_000;

export function defineConformance(name: string, makeTarget: () => Promise<BusTarget>, features: ConformanceFeatures = {}) {
  const s = suite(`bus[${name}]`);
  const test = (title: string, fn: () => unknown): void =>
    s(title, () => withTimeout(Promise.resolve().then(fn).then(() => undefined), TEST_DEADLINE_MS, `test "${title}" did not finish (a wait without its own deadline?)`));
  let target!: BusTarget;
  const open: Bus[] = [];
  const connect = async (): Promise<Bus> => {
    const b = await target.connect();
    open.push(b);
    return b;
  };

  s.before(async () => {
    target = await makeTarget();
    console.log(`\n# bus conformance ran against: ${target.description}`);
  });
  s.after.each(async () => {
    await Promise.all(open.splice(0).map((b) => b.close().catch(() => undefined)));
  });
  s.after(async () => {
    await target?.stop();
  });

  // ── pub/sub ────────────────────────────────────────────────────────────────

  test('kind names the implementation', async () => {
    const bus = await connect();
    assert.is(bus.kind, name);
  });

  test('subjectMatches: * is one token, > one or more trailing tokens', () => {
    assert.ok(subjectMatches('a.*.c', 'a.b.c'));
    assert.not.ok(subjectMatches('a.*.c', 'a.b.x.c'));
    assert.ok(subjectMatches('a.>', 'a.b'));
    assert.ok(subjectMatches('a.>', 'a.b.c.d'));
    assert.not.ok(subjectMatches('a.>', 'a'));
    assert.not.ok(subjectMatches('a.*', 'a'));
    assert.not.ok(subjectMatches('a.b', 'a.b.c'));
    assert.ok(subjectMatches('*.*', 'x.y'));
  });

  test('wildcard subscriptions get exactly the subjects they match', async () => {
    const bus = await connect();
    const p = uniq('w');
    const got: Record<string, string[]> = {};
    for (const pat of [`${p}.a`, `${p}.*`, `${p}.*.x`, `${p}.>`, `${p}.a.>`]) {
      got[pat] = [];
      bus.subscribe(pat, { callback: (m) => got[pat]!.push(m.subject) });
    }
    await bus.flush();
    for (const s of ['a', 'b', 'a.x', 'b.x', 'a.b.c', 'a.x.y']) bus.publish(`${p}.${s}`, enc(s));
    await bus.flush();
    await eventually(() => got[`${p}.>`]!.length === 6, 5000, 'all 6 on >');
    const strip = (xs: string[]): string[] => xs.map((x) => x.slice(p.length + 1)).sort();
    assert.equal(strip(got[`${p}.a`]!), ['a']);
    assert.equal(strip(got[`${p}.*`]!), ['a', 'b']);
    assert.equal(strip(got[`${p}.*.x`]!), ['a.x', 'b.x']);
    assert.equal(strip(got[`${p}.>`]!), ['a', 'a.b.c', 'a.x', 'a.x.y', 'b', 'b.x']);
    assert.equal(strip(got[`${p}.a.>`]!), ['a.b.c', 'a.x', 'a.x.y']);
  });

  test('invalid subjects are refused with KVG_BAD_REQUEST', async () => {
    const bus = await connect();
    throwsCode(() => bus.publish('a.*', enc('x')), 'KVG_BAD_REQUEST');
    throwsCode(() => bus.publish('a..b', enc('x')), 'KVG_BAD_REQUEST');
    throwsCode(() => bus.subscribe('a.>.b'), 'KVG_BAD_REQUEST');
    throwsCode(() => bus.subscribe(''), 'KVG_BAD_REQUEST');
  });

  test('delivery is asynchronous: publish never runs a callback before it returns', async () => {
    const bus = await connect();
    const s = uniq('async');
    let returned = false;
    let seenBeforeReturn: boolean | undefined;
    bus.subscribe(s, { callback: () => (seenBeforeReturn ??= !returned) });
    await bus.flush();
    bus.publish(s, enc('x'));
    returned = true;
    await eventually(() => seenBeforeReturn !== undefined);
    assert.is(seenBeforeReturn, false);
  });

  test('iterator subscription: in order, across connections, and closed resolves on unsubscribe', async () => {
    const a = await connect();
    const b = await connect();
    const s = uniq('ord');
    const sub = b.subscribe(s);
    await b.flush();
    const n = 500;
    for (let i = 0; i < n; i++) a.publish(s, enc(String(i)));
    const got = await take(sub, n);
    assert.equal(got.map((m) => Number(dec(m.data))), Array.from({ length: n }, (_, i) => i));
    assert.is(got[0]!.subject, s);
    let ended = false;
    const done = drain(sub).then(() => (ended = true));
    sub.unsubscribe();
    await withTimeout(sub.closed, 2000, 'closed');
    await withTimeout(done, 2000, 'iterator end');
    assert.ok(ended);
  });

  test('callback mode delivers in order and refuses iteration', async () => {
    const bus = await connect();
    const s = uniq('cb');
    const got: number[] = [];
    const sub = bus.subscribe(s, { callback: (m) => got.push(Number(dec(m.data))) });
    await bus.flush();
    for (let i = 0; i < 300; i++) bus.publish(s, enc(String(i)));
    await eventually(() => got.length === 300);
    assert.equal(got, Array.from({ length: 300 }, (_, i) => i));
    assert.throws(() => sub[Symbol.asyncIterator]());
    sub.unsubscribe();
    await withTimeout(sub.closed, 2000, 'closed');
  });

  test('leaving a for-await loop unsubscribes', async () => {
    const bus = await connect();
    const s = uniq('brk');
    const sub = bus.subscribe(s);
    await bus.flush();
    bus.publish(s, enc('1'));
    bus.publish(s, enc('2'));
    for await (const m of sub) {
      assert.is(dec(m.data), '1');
      break;
    }
    await withTimeout(sub.closed, 2000, 'closed after break');
  });

  test('queue group: each message reaches exactly one member; plain subscribers get all', async () => {
    const a = await connect();
    const b = await connect();
    const s = uniq('q');
    const members: string[][] = [[], [], []];
    [a, b, b].forEach((bus, i) => bus.subscribe(s, { queue: 'workers', callback: (m) => members[i]!.push(dec(m.data)!) }));
    const otherGroup: string[] = [];
    a.subscribe(s, { queue: 'others', callback: (m) => otherGroup.push(dec(m.data)!) });
    const plain: string[] = [];
    b.subscribe(s, { callback: (m) => plain.push(dec(m.data)!) });
    await a.flush();
    await b.flush();
    const pub = await connect();
    const n = 90;
    for (let i = 0; i < n; i++) pub.publish(s, enc(String(i)));
    await pub.flush();
    const all = (): string[] => members.flat();
    await eventually(() => all().length >= n && plain.length === n && otherGroup.length === n);
    await a.flush();
    await b.flush();
    const everything = all().map(Number).sort((x, y) => x - y);
    assert.equal(everything, Array.from({ length: n }, (_, i) => i), 'each message exactly once across the group');
    for (const m of members) assert.ok(m.length > 0, 'every member got some');
    assert.is(plain.length, n);
    assert.is(otherGroup.length, n, 'a second group gets its own copy');
  });

  test('request/reply: answered by a responder on another connection', async () => {
    const server = await connect();
    const client = await connect();
    const s = uniq('rpc');
    server.subscribe(s, {
      callback: (m) => {
        assert.ok(m.reply);
        m.respond(enc(`echo:${dec(m.data)}`));
      },
    });
    await server.flush();
    const replies = await Promise.all([1, 2, 3].map((i) => client.request(s, enc(String(i)), { timeoutMs: 3000 })));
    assert.equal(replies.map((r) => dec(r.data)), ['echo:1', 'echo:2', 'echo:3']);
  });

  test('a request answered by two subscribers resolves once, with one whole reply', async () => {
    const server = await connect();
    const client = await connect();
    const s = uniq('rpc2');
    server.subscribe(s, { callback: (m) => m.respond(enc('first')) });
    server.subscribe(s, { callback: (m) => m.respond(enc('second')) });
    await server.flush();
    // which reply wins depends on delivery order, which NATS does not fix between two subscriptions
    for (let i = 0; i < 5; i++) assert.ok(['first', 'second'].includes(dec((await client.request(s, enc('x'), { timeoutMs: 3000 })).data) ?? ''));
  });

  test('request/reply works with an iterating responder and a queue group', async () => {
    const s1 = await connect();
    const s2 = await connect();
    const client = await connect();
    const s = uniq('rpcq');
    const served = [0, 0];
    const serve = async (bus: Bus, i: number): Promise<void> => {
      for await (const m of bus.subscribe(s, { queue: 'g' })) {
        served[i]!++;
        m.respond(enc(`${i}:${dec(m.data)}`));
      }
    };
    void serve(s1, 0);
    void serve(s2, 1);
    await s1.flush();
    await s2.flush();
    const n = 40;
    const out = await Promise.all(Array.from({ length: n }, (_, i) => client.request(s, enc(String(i)), { timeoutMs: 3000 })));
    assert.equal(out.map((m) => Number(dec(m.data)!.split(':')[1])), Array.from({ length: n }, (_, i) => i));
    assert.is(served[0]! + served[1]!, n, 'each request served once');
  });

  test('a message without a reply subject cannot be answered', async () => {
    const bus = await connect();
    const s = uniq('norep');
    const sub = bus.subscribe(s);
    await bus.flush();
    bus.publish(s, enc('x'));
    const [m] = await take(sub, 1);
    assert.is(m!.reply, undefined);
    assert.is(m!.respond(enc('y')), false);
  });

  test('request times out with KVG_TIMEOUT when nobody answers', async () => {
    const bus = await connect();
    const s = uniq('silent');
    bus.subscribe(s, { callback: () => undefined });
    await bus.flush();
    await rejects(bus.request(s, enc('x'), { timeoutMs: 200 }), 'KVG_TIMEOUT');
  });

  test('request with no subscriber fails with KVG_NO_RESPONDERS (not a timeout)', async () => {
    const bus = await connect();
    // a long timeout: only a fast "no responders" answer yields this code
    await rejects(bus.request(uniq('nobody'), enc('x'), { timeoutMs: 20_000 }), 'KVG_NO_RESPONDERS');
  });

  test('payloads are isolated: a publisher reusing its buffer does not change what was sent', async () => {
    const bus = await connect();
    const s = uniq('iso');
    const sub = bus.subscribe(s);
    await bus.flush();
    const buf = enc('original');
    bus.publish(s, buf);
    buf.fill(0x21);
    const [m] = await take(sub, 1);
    assert.is(dec(m!.data), 'original');

    const st = await bus.stream(uniq('ISO'), { subjects: [`${s}.st.>`] });
    const b2 = enc('stored');
    await st.append(`${s}.st.x`, b2);
    b2.fill(0x21);
    const kv = await bus.kv(uniq('iso'));
    const b3 = enc('kvvalue');
    await kv.put('k', b3);
    b3.fill(0x21);
    const [sm] = await drain(st.read());
    assert.is(dec(sm!.data), 'stored');
    assert.is(dec(await kv.get('k')), 'kvvalue');
  });

  // ── durable streams ──────────────────────────────────────────────────────

  test('stream: append returns seq from 1; read returns everything then ends; info', async () => {
    const bus = await connect();
    const p = uniq('ev');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.>`] });
    assert.equal(await st.info(), { firstSeq: 0, lastSeq: 0, messages: 0 });
    assert.equal(await drain(st.read()), [], 'empty stream read ends at once');
    const seqs: number[] = [];
    for (let i = 0; i < 20; i++) seqs.push(await st.append(`${p}.w${i % 2}`, enc(String(i))));
    assert.equal(seqs, Array.from({ length: 20 }, (_, i) => i + 1));
    const all = await drain(st.read());
    assert.equal(all.map((m) => m.seq), seqs);
    assert.equal(all.map((m) => dec(m.data)), seqs.map((s) => String(s - 1)));
    assert.is(all[3]!.subject, `${p}.w1`);
    for (const m of all) assert.ok(Math.abs(m.time - Date.now()) < 60_000, 'time is ms since epoch');
    for (let i = 1; i < all.length; i++) assert.ok(all[i]!.time >= all[i - 1]!.time, 'time does not go back');
    assert.equal(await st.info(), { firstSeq: 1, lastSeq: 20, messages: 20 });
  });

  test('stream: a non-follow read ends where the stream was when it started, while appends go on', async () => {
    const bus = await connect();
    const writer = await connect();
    const p = uniq('snap');
    const name = uniq('S');
    const st = await bus.stream(name, { subjects: [`${p}.>`] });
    const sw = await writer.stream(name, { subjects: [`${p}.>`] });
    for (let i = 0; i < 30; i++) await st.append(`${p}.w`, enc(String(i)));
    let writing = true;
    const appender = (async () => {
      while (writing) {
        await sw.append(`${p}.w`, enc('more'));
        await sleep(2); // let timers run (MemoryBus appends resolve at once)
      }
    })();
    try {
      await eventually(async () => (await st.info()).lastSeq > 31, 10_000, 'the writer is appending');
      const before = (await st.info()).lastSeq;
      const got = await drain(st.read(), 15_000);
      const seqs = got.map((m) => m.seq);
      assert.ok(seqs.length >= before, `read ${seqs.length} messages, ${before} were stored before it started`);
      assert.equal(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'in order, none missing');
    } finally {
      writing = false;
      await withTimeout(appender, 10_000, 'the appender to stop');
    }
  });

  test('stream: read from seq, with a subject filter, and both', async () => {
    const bus = await connect();
    const p = uniq('ev');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.*`] });
    for (let i = 0; i < 30; i++) await st.append(`${p}.w${i % 3}`, enc(String(i)));
    assert.equal((await drain(st.read({ fromSeq: 26 }))).map((m) => m.seq), [26, 27, 28, 29, 30]);
    assert.equal((await drain(st.read({ fromSeq: 31 }))).map((m) => m.seq), [], 'past the end: nothing, and it ends');
    const w1 = await drain(st.read({ filter: `${p}.w1` }));
    assert.equal(w1.map((m) => m.seq), [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]);
    const w2late = await drain(st.read({ filter: `${p}.w2`, fromSeq: 20 }));
    assert.equal(w2late.map((m) => m.seq), [21, 24, 27, 30]);
    assert.equal(await drain(st.read({ filter: `${p}.none` })), [], 'filter with no match ends');
    assert.equal(await drain(st.read({ filter: `${p}.w0`, fromSeq: 29 })), [], 'no match after fromSeq ends');
  });

  test('stream: read from a time', async () => {
    const bus = await connect();
    const p = uniq('ev');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.>`] });
    for (let i = 0; i < 5; i++) await st.append(`${p}.a`, enc(`early${i}`));
    await sleep(30);
    const cut = Date.now();
    await sleep(30);
    for (let i = 0; i < 4; i++) await st.append(`${p}.b`, enc(`late${i}`));
    const late = await drain(st.read({ fromTime: cut }));
    assert.equal(late.map((m) => dec(m.data)), ['late0', 'late1', 'late2', 'late3']);
    assert.equal(late.map((m) => m.seq), [6, 7, 8, 9]);
    const fromStamp = await drain(st.read({ fromTime: late[1]!.time }));
    assert.equal(fromStamp[0]!.seq <= 7 && fromStamp[0]!.seq >= 6, true, 'starts at the message stored at that time');
    assert.equal(await drain(st.read({ fromTime: Date.now() + 60_000 })), [], 'future time: nothing, ends');
  });

  test('stream: publishing on a captured subject appends; live subscribers see appends', async () => {
    const bus = await connect();
    const p = uniq('cap');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.*`] });
    const sub = bus.subscribe(`${p}.*`);
    await bus.flush();
    bus.publish(`${p}.x`, enc('via-publish'));
    await bus.flush();
    await eventually(async () => (await st.info()).lastSeq === 1, 5000, 'publish stored');
    assert.is(await st.append(`${p}.y`, enc('via-append')), 2);
    const live = await take(sub, 2);
    assert.equal(live.map((m) => dec(m.data)), ['via-publish', 'via-append']);
    const stored = await drain(st.read());
    assert.equal(stored.map((m) => [m.seq, m.subject, dec(m.data)]), [[1, `${p}.x`, 'via-publish'], [2, `${p}.y`, 'via-append']]);
    await rejects(st.append(`other.${p}`, enc('x')), 'KVG_BUS');
  });

  test('stream: follow keeps delivering; stop ends the iterator', async () => {
    const a = await connect();
    const b = await connect();
    const p = uniq('fol');
    const name = uniq('S');
    const sa = await a.stream(name, { subjects: [`${p}.>`] });
    await sa.append(`${p}.x`, enc('0'));
    await sa.append(`${p}.y`, enc('1'));
    const sb = await b.stream(name, { subjects: [`${p}.>`] });
    const reader = sb.read({ follow: true, filter: `${p}.x`, fromSeq: 1 });
    const it = reader[Symbol.asyncIterator]();
    const first = await withTimeout(it.next(), 5000, 'first');
    assert.is(dec((first.value as StreamMsg).data), '0');
    await sa.append(`${p}.y`, enc('2'));
    await sa.append(`${p}.x`, enc('3'));
    a.publish(`${p}.x`, enc('4'));
    const next = await withTimeout(it.next(), 5000, 'followed append');
    assert.is(dec((next.value as StreamMsg).data), '3');
    assert.is((next.value as StreamMsg).seq, 4);
    const third = await withTimeout(it.next(), 5000, 'followed publish');
    assert.is(dec((third.value as StreamMsg).data), '4');
    reader.stop();
    const end = await withTimeout(it.next(), 5000, 'end after stop');
    assert.ok(end.done);
  });

  test('stream: lastSeqOf(filter) is the newest stored message matching a wildcard filter, 0 when none', async () => {
    const bus = await connect();
    const p = uniq('lso');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.>`] });
    assert.is(await st.lastSeqOf(`${p}.>`), 0, 'empty stream');
    for (const [i, sub] of [`${p}.0.0.a`, `${p}.1.0.b`, `${p}.0.1.c`, `${p}.1.1.d`, `${p}.old`].entries()) assert.is(await st.append(sub, enc(String(i))), i + 1);
    assert.is(await st.lastSeqOf(`${p}.0.>`), 3);
    assert.is(await st.lastSeqOf(`${p}.1.>`), 4);
    assert.is(await st.lastSeqOf(`${p}.1.0.>`), 2);
    assert.is(await st.lastSeqOf(`${p}.*.1.*`), 4);
    assert.is(await st.lastSeqOf(`${p}.2.>`), 0, 'nothing matches');
    assert.is(await st.lastSeqOf(`${p}.>`), 5);
    assert.is(await st.lastSeqOf(`${p}.0.0.a`), 1, 'a literal subject');
    await st.purgeBefore(4);
    assert.is(await st.lastSeqOf(`${p}.0.>`), 0, 'purged messages are gone');
    assert.is(await st.lastSeqOf(`${p}.1.>`), 4);
  });

  test('stream: purgeBefore trims behind a sequence; info follows', async () => {
    const bus = await connect();
    const p = uniq('pur');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.>`] });
    for (let i = 0; i < 10; i++) await st.append(`${p}.a`, enc(String(i)));
    await st.purgeBefore(7);
    assert.equal(await st.info(), { firstSeq: 7, lastSeq: 10, messages: 4 });
    assert.equal((await drain(st.read())).map((m) => m.seq), [7, 8, 9, 10]);
    assert.equal((await drain(st.read({ fromSeq: 2 }))).map((m) => m.seq), [7, 8, 9, 10], 'fromSeq before first starts at first');
    await st.purgeBefore(3);
    assert.equal(await st.info(), { firstSeq: 7, lastSeq: 10, messages: 4 }, 'purging behind the first is a no-op');
    await st.purgeBefore(1000);
    assert.equal(await st.info(), { firstSeq: 11, lastSeq: 10, messages: 0 }, 'purging everything keeps numbering');
    assert.is(await st.append(`${p}.a`, enc('next')), 11, 'sequence continues after a purge');
  });

  test('stream: maxMsgs keeps the newest; maxAge drops old messages', async () => {
    const bus = await connect();
    const p = uniq('lim');
    const st = await bus.stream(uniq('S'), { subjects: [`${p}.>`], maxMsgs: 5 });
    for (let i = 0; i < 12; i++) await st.append(`${p}.a`, enc(String(i)));
    assert.equal(await st.info(), { firstSeq: 8, lastSeq: 12, messages: 5 });
    assert.equal((await drain(st.read())).map((m) => dec(m.data)), ['7', '8', '9', '10', '11']);

    const q = uniq('age');
    const aged = await bus.stream(uniq('S'), { subjects: [`${q}.>`], maxAgeMs: 300 });
    for (let i = 0; i < 3; i++) await aged.append(`${q}.a`, enc(String(i)));
    assert.is((await aged.info()).messages, 3);
    await eventually(async () => (await aged.info()).messages === 0, 8000, 'aged out');
    assert.equal(await aged.info(), { firstSeq: 4, lastSeq: 3, messages: 0 });
    await rejects(bus.stream(uniq('S'), { subjects: [`${q}.zz.>`], maxAgeMs: 50 }), 'KVG_BAD_REQUEST');
  });

  test('stream: create-or-update changes subjects; overlapping streams are refused', async () => {
    const bus = await connect();
    const p = uniq('upd');
    const name = uniq('S');
    const st = await bus.stream(name, { subjects: [`${p}.a`] });
    await st.append(`${p}.a`, enc('1'));
    const st2 = await bus.stream(name, { subjects: [`${p}.a`, `${p}.b`] });
    assert.is(await st2.append(`${p}.b`, enc('2')), 2, 'updated stream keeps its data and captures the new subject');
    await rejects(bus.stream(uniq('S'), { subjects: [`${p}.*`] }), 'KVG_BUS');
  });

  test('stream: data outlives the connection that wrote it', async () => {
    const p = uniq('dur');
    const name = uniq('S');
    const a = await connect();
    const sa = await a.stream(name, { subjects: [`${p}.>`] });
    for (let i = 0; i < 10; i++) await sa.append(`${p}.w`, enc(String(i)));
    await a.close();
    const b = await connect();
    const sb = await b.stream(name, { subjects: [`${p}.>`] });
    assert.equal((await drain(sb.read())).map((m) => dec(m.data)), Array.from({ length: 10 }, (_, i) => String(i)));
    assert.is(await sb.append(`${p}.w`, enc('10')), 11);
  });

  // ── KV ───────────────────────────────────────────────────────────────────

  test('kv: put/get/delete/keys; revisions increase; bad keys refused', async () => {
    const bus = await connect();
    const kv = await bus.kv(uniq('b'));
    assert.is(await kv.get('missing'), null);
    assert.equal(await kv.keys(), []);
    const r1 = await kv.put('w1', enc('one'));
    const r2 = await kv.put('w2', enc('two'));
    const r3 = await kv.put('w1', enc('uno'));
    assert.ok(r1 >= 1 && r2 > r1 && r3 > r2, `revisions ${r1} ${r2} ${r3}`);
    assert.is(dec(await kv.get('w1')), 'uno');
    assert.equal((await kv.keys()).sort(), ['w1', 'w2']);
    await kv.delete('w1');
    assert.is(await kv.get('w1'), null);
    assert.equal(await kv.keys(), ['w2']);
    await kv.delete('never-there');
    for (const bad of ['a b', 'a*', '.a', 'a.', 'a>b', '']) await rejects(kv.put(bad, enc('x')), 'KVG_BAD_REQUEST');
    const other = await (await connect()).kv(kv.bucket);
    assert.is(dec(await other.get('w2')), 'two', 'another connection sees the bucket');
  });

  test('kv: watch gives current entries, then puts and deletes; newOnly skips the current', async () => {
    const a = await connect();
    const b = await connect();
    const bucket = uniq('b');
    const kv = await a.kv(bucket);
    await kv.put('x', enc('1'));
    await kv.put('y', enc('2'));
    await kv.delete('y');
    const kvb = await b.kv(bucket);
    const w = kvb.watch();
    const wNew = kvb.watch({ newOnly: true });
    const initial = await take(w, 1);
    assert.equal(initial.map((e) => [e.key, e.op, dec(e.value)]), [['x', 'put', '1']]);
    // a watcher on a server is ready some time after watch() returns: put a marker until the newOnly
    // watcher reports one, so the changes below happen after both watchers are live
    let primed = false;
    const primer = (async () => {
      for (let i = 0; !primed; i++) {
        await kv.put('ready', enc(String(i)));
        await sleep(50);
      }
    })();
    await takeWhere(wNew, 1, (e) => e.key === 'ready');
    primed = true;
    await primer;
    const notMarker = (e: KvEntry): boolean => e.key !== 'ready';
    const rz = await kv.put('z', enc('3'));
    await kv.delete('x');
    const rest = await takeWhere(w, 2, notMarker);
    assert.equal(rest.map((e) => [e.key, e.op, dec(e.value)]), [['z', 'put', '3'], ['x', 'delete', null]]);
    assert.is(rest[0]!.revision, rz);
    assert.ok(rest[1]!.revision > rz);
    const fresh = await takeWhere(wNew, 2, notMarker);
    assert.equal(fresh.map((e) => [e.key, e.op]), [['z', 'put'], ['x', 'delete']]);
    w.stop();
    wNew.stop();
    assert.equal(await drain(w, 2000), [], 'stopped watcher ends');
  });

  test('kv: TTL expiry removes entries and every watcher sees it as a delete', async () => {
    const ttl = target.ttlMs;
    const bus = await connect();
    const bucket = uniq('ttl');
    const kv = await bus.kv(bucket, { ttlMs: ttl });
    await kv.put('old', enc('before-watch'));
    const w = kv.watch();
    const wNew = (await (await connect()).kv(bucket, { ttlMs: ttl })).watch({ newOnly: true });
    const [first] = await take(w, 1);
    assert.equal([first!.key, first!.op], ['old', 'put']);
    await kv.put('lapse', enc('v'));
    // keep `alive` alive by re-putting well inside the TTL while the others lapse
    let keep = true;
    const keeper = (async () => {
      while (keep) {
        await kv.put('alive', enc('v')).catch(() => (keep = false));
        await sleep(Math.floor(ttl / 5));
      }
    })();
    try {
    const seen: KvEntry[] = [];
    await withTimeout((async () => {
      for await (const e of w) {
        seen.push(e);
        if (seen.filter((x) => x.op === 'delete').length === 2) break;
      }
    })(), ttl * 2 + 5000, 'two expiries');
    const deletes = seen.filter((e) => e.op === 'delete');
    assert.equal(deletes.map((e) => e.key).sort(), ['lapse', 'old']);
    for (const d of deletes) assert.is(d.value, null);
    assert.ok(seen.some((e) => e.key === 'alive' && e.op === 'put'));
    assert.is(await withTimeout(kv.get('old'), 10_000, "get('old')"), null);
    assert.is(await withTimeout(kv.get('lapse'), 10_000, "get('lapse')"), null);
    assert.is(dec(await withTimeout(kv.get('alive'), 10_000, "get('alive')")), 'v', 're-put keeps an entry alive');
    // keys() while `alive` is re-put all the time: it must still end (a read ends where the bucket was when it started)
    assert.equal(await withTimeout(kv.keys(), 10_000, 'keys() while a key is re-put'), ['alive']);
    // the newOnly watcher never saw 'old' put, yet hears of its expiry
    const newSeen: KvEntry[] = [];
    await withTimeout((async () => {
      for await (const e of wNew) {
        newSeen.push(e);
        if (newSeen.some((x) => x.key === 'old' && x.op === 'delete') && newSeen.some((x) => x.key === 'lapse' && x.op === 'delete')) break;
      }
    })(), 5000, 'newOnly sees expiries');
    assert.not.ok(newSeen.some((e) => e.key === 'old' && e.op === 'put'));
    } finally {
      keep = false;
      await withTimeout(keeper, 10_000, 'the keeper loop to end');
    }
  });

  // ── lifecycle ────────────────────────────────────────────────────────────

  test('close ends iterators, resolves closed, rejects pending requests and later calls', async () => {
    const bus = await connect();
    const helper = await connect();
    const s = uniq('cls');
    const sub = bus.subscribe(s);
    const st = await bus.stream(uniq('S'), { subjects: [`${s}.st`] });
    const reader = st.read({ follow: true });
    const kv = await bus.kv(uniq('cls'));
    const watcher = kv.watch();
    helper.subscribe(`${s}.slow`, { callback: () => undefined });
    await helper.flush();
    const pending = bus.request(`${s}.slow`, enc('x'), { timeoutMs: 10_000 }).then(() => 'answered', (e) => (e as { code?: string }).code);
    const ends = [drain(sub), drain(reader), drain(watcher)].map((p) => p.catch(() => []));
    await sleep(50);
    await bus.close();
    await withTimeout(Promise.all(ends), 5000, 'iterators end on close');
    await withTimeout(sub.closed, 2000, 'sub.closed');
    assert.is(await withTimeout(pending, 5000, 'pending request'), 'KVG_BUS_CLOSED');
    throwsCode(() => bus.publish(s, enc('x')), 'KVG_BUS_CLOSED');
    throwsCode(() => bus.subscribe(s), 'KVG_BUS_CLOSED');
    await rejects(bus.request(s, enc('x')), 'KVG_BUS_CLOSED');
    await rejects(st.append(`${s}.st`, enc('x')), 'KVG_BUS_CLOSED');
    await rejects(kv.put('k', enc('x')), 'KVG_BUS_CLOSED');
    await bus.close(); // idempotent
  });

  // ── server restart (targets that have a server) ──────────────────────────

  if (features.restart) test('stream and kv survive a server restart; a live connection reconnects', async () => {
    const live = await connect();
    const p = uniq('rst');
    const name = uniq('S');
    const st = await live.stream(name, { subjects: [`${p}.>`] });
    for (let i = 0; i < 20; i++) await st.append(`${p}.w`, enc(String(i)));
    const kv = await live.kv(uniq('rst'));
    await kv.put('k', enc('kept'));
    const gotAfter: Msg[] = [];
    live.subscribe(`${p}.ping`, { callback: (m) => gotAfter.push(m) });
    const follower = st.read({ follow: true, fromSeq: 20 });
    const followed = follower[Symbol.asyncIterator]();
    assert.is(((await withTimeout(followed.next(), 5000, 'follower before restart')).value as StreamMsg).seq, 20);
    const watcher = kv.watch();
    const watched = watcher[Symbol.asyncIterator]();
    assert.is(((await withTimeout(watched.next(), 5000, 'watcher before restart')).value as KvEntry).key, 'k');
    await live.flush();
    await target.restart!();
    // the live connection reconnects by itself; flush resolves once it is back
    await withTimeout(live.flush(), 15_000, 'reconnect');
    const fresh = await connect();
    const sf = await fresh.stream(name, { subjects: [`${p}.>`] });
    assert.equal((await drain(sf.read())).map((m) => dec(m.data)), Array.from({ length: 20 }, (_, i) => String(i)));
    assert.is(dec(await (await fresh.kv(kv.bucket)).get('k')), 'kept');
    await eventually(async () => {
      try {
        return (await st.append(`${p}.w`, enc('20'))) === 21;
      } catch {
        return false;
      }
    }, 10_000, 'append on the reconnected connection');
    fresh.publish(`${p}.ping`, enc('after'));
    await fresh.flush();
    await eventually(() => gotAfter.length === 1, 10_000, 'subscription restored after reconnect');
    // a follow reader and a KV watcher opened before the restart carry on after it
    const next = (await withTimeout(followed.next(), 15_000, 'follower after restart')).value as StreamMsg;
    assert.equal([next.seq, dec(next.data)], [21, '20']);
    await (await fresh.kv(kv.bucket)).put('k2', enc('after'));
    const w = (await withTimeout(watched.next(), 15_000, 'watcher after restart')).value as KvEntry;
    assert.equal([w.key, w.op, dec(w.value)], ['k2', 'put', 'after']);
    follower.stop();
    watcher.stop();
  });

  return s;
}
