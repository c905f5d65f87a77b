/**
 * `kvgate replay`: .kvlog round trip, export → import over a real nats-server, inspect at a point in time,
 * what a router saw vs what the index held, and whatif on a small trace.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  connectNats, subjects, encode, encodeHeader, encodeRecord, parseKvlog, initHashing, prefixHashes, hashToHex,
  DecodeError, type EventBatch, type RouteDecision, type KvlogRecord,
} from '../packages/protocol/src/index.js';
import { inspect } from '../packages/cli/src/replay/inspect.js';
import { whatif } from '../packages/cli/src/replay/whatif.js';
import { startNatsServer } from './harness/nats-server.js';
import { sharedPrefixTrace } from './harness/traces.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'kvgate-replay-'));
const kvgate = (...args: string[]) => run(process.execPath, ['bin/kvgate.js', ...args], { encoding: 'utf8' });

// two workers; w1 stores a 3-block prompt, w2 its first block; later w1 evicts block 3 and w2 is cleared
let H: bigint[] = [];
test.before(async () => {
  await initHashing();
  H = prefixHashes('m', '', 4, Array.from({ length: 12 }, (_, i) => i + 1));
});
const batches = (): EventBatch[] => [
  { worker: 'w1', seq: 1, ts: 1000, events: [{ t: 'stored', parent: null, hashes: H }] },
  { worker: 'w2', seq: 1, ts: 1001, events: [{ t: 'stored', parent: null, hashes: [H[0]!] }] },
  { worker: 'w1', seq: 2, ts: 2000, events: [{ t: 'removed', hashes: [H[2]!] }] },
  { worker: 'w2', seq: 2, ts: 3000, events: [{ t: 'cleared' }] },
];
const decision = (): RouteDecision => ({
  router: 'r1', requestId: 'req-7', model: 'm', lora: null, promptTokens: 12, hashes: H,
  overlaps: { w2: 1 }, scores: { w1: 3, w2: 2 }, chosen: 'w2', policy: 'kv', ts: 1500,
});

function records(): KvlogRecord[] {
  const b = batches();
  const times = [1000, 1001, 2000, 3000];
  const out: KvlogRecord[] = b.map((batch, i) => ({ kind: 'event', seq: i + 1, time: times[i]!, subject: `kvgate.default.events.${batch.worker}`, batch }));
  out.splice(2, 0, { kind: 'route', seq: 1, time: 1500, subject: 'kvgate.default.decisions.r1', decision: decision() });
  return out;
}

test('.kvlog: header + records round trip; bad files give DecodeError', () => {
  const buf = Buffer.concat([encodeHeader({ namespace: 'default', createdAt: 5 }), ...records().map(encodeRecord)]);
  const { header, records: back } = parseKvlog(buf);
  assert.is(header.version, 1);
  assert.is(header.namespace, 'default');
  assert.is(back.length, 5);
  const first = back[0]!;
  assert.ok(first.kind === 'event' && first.batch.events[0]!.t === 'stored');
  if (first.kind === 'event' && first.batch.events[0]!.t === 'stored') assert.equal(first.batch.events[0]!.hashes, H);
  const route = back[2]!;
  assert.ok(route.kind === 'route' && route.decision.hashes[2] === H[2]);
  assert.throws(() => parseKvlog(Buffer.from('hello world, not a log')), (e: unknown) => e instanceof DecodeError);
  assert.throws(() => parseKvlog(buf.subarray(0, buf.length - 3)), (e: unknown) => e instanceof DecodeError && /truncated/.test((e as Error).message));
});

test('inspect: the index as it stood at a time and at a sequence', () => {
  const r = records();
  const early = inspect(r, { at: 1001, hashes: H });
  assert.equal(early.match, { w1: 3, w2: 1 });
  assert.is(early.workers.w1!.blocks, 3);
  const mid = inspect(r, { seq: 3, hashes: H });
  assert.equal(mid.match, { w1: 2, w2: 1 });
  const late = inspect(r, { at: 10_000, hashes: H });
  assert.equal(late.match, { w1: 2 });
  assert.is(late.workers.w2!.blocks, 0);
});

test('inspect --request: what the router saw vs what the index held then', () => {
  const rep = inspect(records(), { requestId: 'req-7' });
  assert.ok(rep.request);
  assert.is(rep.request!.decision.chosen, 'w2');
  assert.equal(rep.request!.indexAtDecision, { w1: 3, w2: 1 });
  assert.equal(rep.request!.betterHeld, ['w1']);
  assert.is(inspect(records(), { requestId: 'nope' }).request, undefined);
});

test('export → file → import → inspect, over a real nats-server', async () => {
  const server = await startNatsServer();
  try {
    const bus = await connectNats(server.url);
    const s = subjects('default');
    const ev = await bus.stream(s.eventStream, { subjects: [s.eventsAll] });
    const dec = await bus.stream(s.decisionStream, { subjects: [s.decisionsAll] });
    for (const b of batches()) await ev.append(s.events(b.worker), encode(b));
    await dec.append(s.decisions('r1'), encode(decision()));
    await bus.close();

    const file = join(dir, 'rec.kvlog');
    const ex = await kvgate('replay', 'export', '--nats', server.url, '--from=-1h', '-o', file, '--json');
    assert.equal(JSON.parse(ex.stdout), { out: file, events: 4, decisions: 1 });
    const parsed = parseKvlog(readFileSync(file));
    assert.is(parsed.records.filter((x) => x.kind === 'event').length, 4);

    const im = await kvgate('replay', 'import', file, '--nats', server.url, '--json');
    assert.equal(JSON.parse(im.stdout), { namespace: 'replay', events: 4, decisions: 1 });

    // inspect the imported copy straight from NATS, and the file; both tell the same story
    const fromNats = JSON.parse((await kvgate('replay', 'inspect', '--nats', server.url, '--namespace', 'replay', '--seq', '2', '--model', 'm', '--block-size', '4', '--tokens', '1,2,3,4,5,6,7,8,9,10,11,12', '--json')).stdout);
    assert.equal(fromNats.match, { w1: 3, w2: 1 });
    const fromFile = JSON.parse((await kvgate('replay', 'inspect', file, '--request', 'req-7', '--hashes', H.map(hashToHex).join(','), '--at', 'now', '--json')).stdout);
    assert.equal(fromFile.match, { w1: 2 });
    assert.equal(fromFile.request.betterHeld, ['w1']);
  } finally {
    await server.stop();
  }
});

test('replay with bad arguments fails with a clear message, not a stack', async () => {
  try {
    await kvgate('replay', 'inspect', join(dir, 'missing.kvlog'), '--at', 'now');
    assert.unreachable();
  } catch (e) {
    const err = e as { code: number; stderr: string };
    assert.is(err.code, 1);
    assert.match(err.stderr, /kvgate replay inspect: .*missing\.kvlog/);
    assert.not.match(err.stderr, /\n\s+at /);
  }
});

test('whatif: kv routing beats round-robin on a trace with shared prefixes', async () => {
  // sharedPrefixTrace: 7 conversations extending shared 4-block prefixes (test/harness/traces.ts)
  const trace = join(dir, 'trace.jsonl');
  writeFileSync(trace, sharedPrefixTrace());
  const r = await whatif({ trace, policies: ['kv', 'round-robin'], engines: 4, json: true, numBlocks: 1024, blockSize: 16 });
  assert.is(r.requests, 42);
  const [kv, rr] = r.policies;
  assert.ok(r.infiniteCacheHitRate > 0.5, `infinite ${r.infiniteCacheHitRate}`);
  assert.ok(kv!.hitRate > rr!.hitRate + 0.2, `kv ${kv!.hitRate} vs rr ${rr!.hitRate}`);
  assert.ok(kv!.hitRate <= r.infiniteCacheHitRate + 1e-9);
  assert.ok(kv!.ttftP50Ms < rr!.ttftP50Ms, `ttft kv ${kv!.ttftP50Ms} rr ${rr!.ttftP50Ms}`);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
