/**
 * The shipped NATS permissions (deploy/nats/nats-server.conf + kvgate-auth.conf) on a real nats-server:
 * - every forbidden publish/subscribe of issue 13 is refused by the server (a permissions violation reaches the
 *   client, and a watcher that gets everything on kvgate.default.> sees nothing of it): a forged load report, forged
 *   events, a rogue index.match responder, index.sync from a non-indexer, a fake registration in the workers bucket;
 *   with per-worker shim users (generate.mjs --shim) a shim cannot speak for another worker;
 * - no or wrong credentials are refused;
 * - the positive path: an indexer, a shim and a router each on its role's user route requests, fill the index,
 *   trim the event stream behind a snapshot, survive a NATS restart (the indexer's resync request answered by the
 *   shim), and admin runs doctor and replay
 *   export, all without one permissions violation in the server's log; a shim started before any indexer stops with
 *   one clear error (only indexers and admin create the event stream and the workers bucket); admin alone runs a
 *   whole `kvgate start --nats` stack.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { connect, type NatsConnection } from 'nats';
import { encode, eventStreamConfig, initHashing, subjects, BusError } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { natsAuthConfig } from '@kvgate/protocol/nats-permissions';
import { startIndexer, type RunningIndexer } from '@kvgate/indexer';
import { startSimEngine, type SimEngineHandle } from '@kvgate/sim-engine';
import { startShim, type ShimHandle } from '@kvgate/worker-shim';
import { startRouter, type RouterHandle } from '@kvgate/router';
import { startStack } from '@kvgate/workload';
import { examine } from '../../packages/cli/src/commands/doctor.js';
import { readStreams } from '../../packages/cli/src/replay/stream-io.js';
import { startNatsServer, type NatsServerHandle } from '../harness/nats-server.js';
import { violation } from '../harness/nats-violation.js';

await initHashing();

const root = new URL('../..', import.meta.url).pathname;
const shipped = join(root, 'deploy/nats');
const S = subjects('default');
const BUCKET = S.workersBucket;
const ROLES = ['router', 'indexer', 'shim', 'admin'] as const;
const pw = Object.fromEntries(ROLES.map((r) => [r, `kvg-${randomBytes(12).toString('hex')}`])) as Record<(typeof ROLES)[number], string>;
// nats-server parses a variable's value as a config value: a password must start with a letter (nats-server.conf)
const env = Object.fromEntries(ROLES.map((r) => [`KVGATE_NATS_${r.toUpperCase()}_PASSWORD`, pw[r]]));

// the shipped files as they are; a second server runs them with per-worker shim users (what generate.mjs --shim writes)
const nats: NatsServerHandle = await startNatsServer({ configFile: join(shipped, 'nats-server.conf'), env });
const perWorkerDir = mkdtempSync(join(tmpdir(), 'kvgate-natsperm-'));
copyFileSync(join(shipped, 'nats-server.conf'), join(perWorkerDir, 'nats-server.conf'));
writeFileSync(join(perWorkerDir, 'kvgate-auth.conf'), natsAuthConfig({ shims: [['w-a'], ['w-b']] }));
const pwA = `kvg-${randomBytes(12).toString('hex')}`;
const pwB = `kvg-${randomBytes(12).toString('hex')}`;
const natsPw: NatsServerHandle = await startNatsServer({
  configFile: join(perWorkerDir, 'nats-server.conf'),
  env: { ...env, KVGATE_NATS_SHIM_W_A_PASSWORD: pwA, KVGATE_NATS_SHIM_W_B_PASSWORD: pwB },
});

/**
 * polls `cond` until it holds; a generous bound turns a hang (a permission missing from the config) into a failure
 * that names what never happened — not a timing assertion
 */
async function eventually(what: string, cond: () => Promise<boolean> | boolean, everyMs = 25, boundMs = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > boundMs) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const conns: NatsConnection[] = [];
/** a raw nats.js connection as `user` (attackers are named so the server log tells them from the positive path) */
async function as(server: NatsServerHandle, user: string, pass: string, name = `attacker-${user}`): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url, user, pass, name, reconnect: false });
  conns.push(nc);
  return nc;
}


/** everything the admin sees on kvgate.default.> (the "would anyone have received it" witness) */
async function witness(server: NatsServerHandle): Promise<{ seen: string[]; until(subject: string): Promise<void>; close(): Promise<void> }> {
  const nc = await as(server, 'admin', pw.admin, 'witness');
  const seen: string[] = [];
  const waiters: Array<() => void> = [];
  nc.subscribe('kvgate.default.>', { callback: (_e, m) => { seen.push(m.subject); waiters.splice(0).forEach((f) => f()); } });
  await nc.flush();
  return {
    seen,
    async until(subject) {
      const t0 = Date.now();
      while (!seen.includes(subject)) {
        if (Date.now() - t0 > 30_000) throw new Error(`never happened: the witness got ${subject}`);
        await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 1000).unref(); });
      }
    },
    close: () => nc.close(),
  };
}

/**
 * `nc` publishes `forged` (expected refused), then `marker` (allowed to it): the violation comes back, and the
 * witness receives the marker but not the forged message (one publisher's messages arrive in order).
 */
async function refusedPublish(server: NatsServerHandle, nc: NatsConnection, forged: string, marker: string): Promise<void> {
  const w = await witness(server);
  const denied = violation(nc, 'publish', forged);
  nc.publish(forged, encode({ forged: true }));
  nc.publish(marker, encode({ marker: true }));
  await nc.flush();
  await denied;
  await w.until(marker);
  assert.not.ok(w.seen.includes(forged), `${forged} was delivered`);
  await w.close(); // its interest in kvgate.default.> would answer later no-responder checks
}

test('the shipped kvgate-auth.conf is what generate.mjs writes (regenerate it when subjects change)', () => {
  assert.fixture(readFileSync(join(shipped, 'kvgate-auth.conf'), 'utf8'), natsAuthConfig());
  assert.not.match(readFileSync(join(shipped, 'kvgate-auth.conf'), 'utf8'), /password:\s*"/, 'no literal password');
});

test('generate.mjs: another namespace and per-worker shim users; a bad worker id is one line, exit 2', async () => {
  const gen = (...args: string[]) => promisify(execFile)(process.execPath, [join(shipped, 'generate.mjs'), ...args], { encoding: 'utf8' });
  const { stdout } = await gen('--namespace', 'prod', '--shim', 'pod-a', '--shim', 'pod-b-dp0,pod-b-dp1');
  assert.is(stdout, natsAuthConfig({ namespace: 'prod', shims: [['pod-a'], ['pod-b-dp0', 'pod-b-dp1']] }));
  assert.match(stdout, /user: "shim-pod-b-dp0"\n\s+password: \$KVGATE_NATS_SHIM_POD_B_DP0_PASSWORD/);
  assert.match(stdout, /"kvgate\.prod\.load\.pod-b-dp1"/);
  assert.not.match(stdout, /user: "shim"\n/, 'no shared shim user beside the per-worker ones');
  const shimBlocks = stdout.split('# shim of ').slice(1);
  assert.is(shimBlocks.length, 2);
  for (const b of shimBlocks) assert.not.match(b, /\.load\.\*"|\.events\.\*"/, 'a per-worker shim may publish for any worker');
  const bad = await gen('--shim', 'a.b').then(() => null, (e: { code: number; stderr: string }) => e);
  assert.is(bad?.code, 2);
  assert.match(bad!.stderr, /^generate\.mjs: KVG_CONFIG: invalid worker id "a\.b"/);
  assert.is(bad!.stderr.trim().split('\n').length, 1);
});

test('no credentials, a wrong password, a user that does not exist: refused', async () => {
  for (const o of [{}, { user: 'router', pass: 'wrong' }, { user: 'shim', pass: pw.router }, { user: 'nobody', pass: 'x' }]) {
    const err = await connect({ servers: nats.url, reconnect: false, ...o }).then((nc) => { conns.push(nc); return null; }, (e: Error & { code?: string }) => e);
    assert.ok(err, `connected with ${JSON.stringify(o)}`);
    assert.is(err!.code, 'AUTHORIZATION_VIOLATION', JSON.stringify(o));
  }
  // through the bus: one clear error, the password never in it
  const e = await createBus({ nats: nats.url, user: 'router', pass: 'wrong-password-123', connectTimeoutMs: 2000 }).then(() => null, (x: unknown) => x);
  assert.instance(e, BusError);
  assert.match((e as Error).message, /rejected the credentials/);
  assert.not.match((e as Error).message, /wrong-password-123/);
});

test('a forged load report: a router or an indexer may not publish load; a shim user may not report for another worker', async () => {
  const router = await as(nats, 'router', pw.router);
  await refusedPublish(nats, router, S.load('w-a'), S.routerActive);
  const indexer = await as(nats, 'indexer', pw.indexer);
  await refusedPublish(nats, indexer, S.load('w-a'), S.indexGossip);
  const shimA = await as(natsPw, 'shim-w-a', pwA);
  await refusedPublish(natsPw, shimA, S.load('w-b'), S.load('w-a'));
});

test('a rogue index.match responder: routers and shims may not subscribe to it (plain or in the indexers\' group)', async () => {
  for (const [user, pass] of [['router', pw.router], ['shim', pw.shim]] as const) {
    const nc = await as(nats, user, pass);
    const plain = violation(nc, 'subscription', S.indexMatch);
    nc.subscribe(S.indexMatch, { callback: (e, m) => void (e || m.respond(encode({ overlaps: { evil: 1000 }, indexerSeq: 0 }))) });
    await nc.flush();
    await plain;
    const queued = violation(nc, 'subscription', S.indexMatch);
    nc.subscribe(S.indexMatch, { queue: S.indexQueue, callback: (e, m) => void (e || m.respond(encode({ overlaps: { evil: 1000 }, indexerSeq: 0 }))) });
    await nc.flush();
    await queued;
  }
  // with no indexer running, a router's question finds no responder at all: the rogues never answered it
  const router = await as(nats, 'router', pw.router);
  const err = await router.request(S.indexMatch, encode({ model: 'm', lora: null, hashes: [] }), { timeout: 5000 }).then(() => null, (e: Error & { code?: string }) => e);
  assert.is(err?.code, '503', 'no responders');
});

test('forged events: routers and indexers may not publish events; a shim user only its own workers\'', async () => {
  const router = await as(nats, 'router', pw.router);
  await refusedPublish(nats, router, S.events('w-a'), S.routerActive);
  const indexer = await as(nats, 'indexer', pw.indexer);
  await refusedPublish(nats, indexer, S.events('w-a'), S.indexGossip);
  const shimA = await as(natsPw, 'shim-w-a', pwA);
  await refusedPublish(natsPw, shimA, S.events('w-b'), S.load('w-a'));
  // nor clear the stream, or delete it
  for (const subject of [`$JS.API.STREAM.PURGE.${S.eventStream}`, `$JS.API.STREAM.DELETE.${S.eventStream}`]) {
    const err = await shimA.request(subject, new Uint8Array(0), { timeout: 5000 }).then(() => null, (e: Error & { code?: string }) => e);
    assert.is(err?.code, 'PERMISSIONS_VIOLATION', subject);
  }
});

test('index.sync from a non-indexer: refused, and no non-indexer may listen on it (a block-set dump)', async () => {
  const router = await as(nats, 'router', pw.router);
  await refusedPublish(nats, router, S.indexSync('ix1'), S.routerActive);
  const shim = await as(nats, 'shim', pw.shim);
  await refusedPublish(nats, shim, S.indexSync('ix1'), S.load('w-a'));
  const dump = violation(shim, 'subscription', S.indexSync('*'));
  shim.subscribe(S.indexSync('*'));
  await shim.flush();
  await dump;
  // nor make a shim republish its worker's block set, nor steer the routers' in-flight load
  const resync = await router.request(S.shimResync('w-a'), encode({ fromSeq: 0 }), { timeout: 5000 }).then(() => null, (e: Error & { code?: string }) => e);
  assert.is(resync?.code, 'PERMISSIONS_VIOLATION');
  await refusedPublish(nats, shim, S.routerActive, S.load('w-a'));
});

test('a fake registration: a router may not write the workers bucket; a shim user only its own key', async () => {
  // the bucket, made (and read) by the admin
  const adminBus = await createBus({ nats: nats.url, user: 'admin', pass: pw.admin, name: 'admin-reader' });
  const kvAdmin = await adminBus.kv(BUCKET, { ttlMs: 3000 });
  const router = await as(nats, 'router', pw.router);
  const key = `$KV.${BUCKET}.evil`;
  const denied = violation(router, 'publish', key);
  const put = await router.request(key, encode({ worker: 'evil', url: 'http://127.0.0.1:1/' }), { timeout: 5000 }).then(() => null, (e: Error & { code?: string }) => e);
  assert.is(put?.code, 'PERMISSIONS_VIOLATION');
  await denied;
  assert.is(await kvAdmin.get('evil'), null);
  // through kvgate's own bus, as a router would: the put rejects
  const rbus = await createBus({ nats: nats.url, user: 'router', pass: pw.router, name: 'attacker-router-bus' });
  const rkv = await rbus.kv(BUCKET, { ttlMs: 3000 });
  const viaBus = await rkv.put('evil', encode({ worker: 'evil' })).then(() => null, (e: unknown) => e);
  assert.ok(viaBus, 'router kv put accepted');
  assert.is(await kvAdmin.get('evil'), null);
  await rbus.close();
  // per-worker shim users: w-a may put w-a, not w-b
  await kvStoreReady(natsPw);
  const a = await createBus({ nats: natsPw.url, user: 'shim-w-a', pass: pwA, name: 'shim-w-a' });
  const akv = await a.kv(BUCKET, { ttlMs: 3000 });
  await akv.put('w-a', encode({ worker: 'w-a' }));
  assert.ok(await akv.get('w-a'));
  assert.ok(await akv.put('w-b', encode({ worker: 'w-b' })).then(() => false, () => true), 'shim w-a wrote w-b');
  assert.is(await akv.get('w-b'), null);
  await a.close();
  await adminBus.close();
});

/** the per-worker server's bucket and event stream, made as an indexer would (shims may not create them) */
let made = false;
async function kvStoreReady(server: NatsServerHandle): Promise<void> {
  if (made) return;
  const b = await createBus({ nats: server.url, user: 'indexer', pass: pw.indexer, name: 'indexer-setup' });
  await b.kv(BUCKET, { ttlMs: 3000 });
  await b.close();
  made = true;
}

test('only indexers (and admin) create the event stream: a shim started first stops with one clear error', async () => {
  const b = await createBus({ nats: nats.url, user: 'shim', pass: pw.shim, name: 'early-shim' });
  try {
    const err = await startShim(b, { worker: 'w-early', model: 'qwen3-8b', engineUrl: 'http://127.0.0.1:9', kvEvents: 'tcp://127.0.0.1:9', port: -1 }).then(() => null, (e: Error & { code?: string }) => e);
    assert.is(err?.code, 'KVG_BUS');
    assert.match(err!.message, /Permissions Violation for Publish to "\$JS\.API\.STREAM\.CREATE\.KVGATE_EVENTS_default"/);
  } finally {
    await b.close();
  }
});

test('the positive path on the shipped config: indexer, shim and router each as its role; admin runs doctor and replay', async () => {
  const buses = await Promise.all((['indexer', 'shim', 'shim', 'router', 'admin'] as const).map((u, i) => createBus({ nats: nats.url, user: u, pass: pw[u], name: `role-${u}-${i}`, reconnectWaitMs: 100 })));
  const [bi, bs1, bs2, br, ba] = buses as [typeof buses[0], typeof buses[0], typeof buses[0], typeof buses[0], typeof buses[0]];
  let indexer: RunningIndexer | undefined;
  const engines: SimEngineHandle[] = [];
  const shims: ShimHandle[] = [];
  let router: RouterHandle | undefined;
  try {
    indexer = await startIndexer(bi, { id: 'ix1', gossipIntervalMs: 200, resyncIntervalMs: 200, snapshotDir: perWorkerDir });
    await indexer.whenReady();
    for (const [i, bus] of [bs1, bs2].entries()) {
      const e = await startSimEngine({ model: 'qwen3-8b', engineId: `w-${i}`, prefixCachingHashAlgo: 'xxhash', speedup: 50, numBlocks: 2048, blockSize: 16 });
      engines.push(e);
      shims.push(await startShim(bus, {
        worker: `w-${i}`, model: 'qwen3-8b', role: e.role, engineUrl: e.url, kvEvents: e.kvEventsEndpoint!,
        ...(e.replayEndpoint ? { kvReplay: e.replayEndpoint } : {}), port: -1, blockSize: e.blockSize, capacityBlocks: e.numBlocks,
      }));
    }
    router = await startRouter(br, { id: 'r1', port: 0, indexTimeoutMs: 2000 });
    await router.waitForWorkers(2, 15_000);

    const prompt = Array.from({ length: 320 }, (_, i) => 7000 + i); // 20 blocks
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${router!.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return { status: res.status, worker: res.headers.get('x-kvgate-worker'), json: (await res.json()) as any };
    };
    const first = await post('/v1/completions', { model: 'qwen3-8b', prompt, max_tokens: 2 });
    assert.is(first.status, 200);
    const holder = first.worker!;
    // the index fills from the shim's events (stream read by the indexer), and the router sees it over index.match
    const overlapOf = async () => (await post('/v1/route', { model: 'qwen3-8b', prompt: [...prompt, 1, 2, 3] })).json.candidates.find((c: any) => c.worker === holder)?.indexOverlap ?? 0;
    await eventually('the index holds the prompt', async () => (await overlapOf()) >= 20);
    assert.ok(((await indexer.indexer.workers())[holder]?.blocks ?? 0) >= 20);
    const second = await post('/v1/completions', { model: 'qwen3-8b', prompt: [...prompt, 1, 2, 3], max_tokens: 2 });
    assert.is(second.status, 200);
    assert.is(second.worker, holder);

    // a snapshot lets the indexer trim the event stream behind it (STREAM.PURGE, the indexer's alone)
    await indexer.indexer.snapshotNow();
    const events = await ba.stream(S.eventStream, eventStreamConfig(S));
    await eventually('the event stream trimmed', async () => (await events.info()).firstSeq > 1, 50);

    // an outage: every client reconnects, the indexer asks each shim for a resync (a request on shim.resync.<w>)
    // and each shim republishes its block set and answers (allow_responses; a refused reply would be in the log)
    const requested = async () => (await Promise.all(shims.map(async (sh) => (await sh.metrics.resyncs.get()).values.find((v) => v.labels.reason === 'request')?.value ?? 0)));
    const before = await requested();
    await nats.restart();
    await eventually('every shim asked for a resync', async () => (await requested()).every((n, i) => n > before[i]!), 50);
    await eventually('the index holds the prompt after the outage', async () => (await overlapOf()) >= 20);
    const third = await post('/v1/completions', { model: 'qwen3-8b', prompt: [...prompt, 4, 5], max_tokens: 2 });
    assert.is(third.status, 200);
    assert.is(third.worker, holder);

    // admin: doctor sees both workers, replay export reads both streams
    const exam = await examine(ba, { waitMs: 800 });
    assert.equal(exam.verdicts.map((v) => v.worker).sort(), ['w-0', 'w-1']);
    const recs = await readStreams(ba, { namespace: 'default' });
    assert.ok(recs.some((r) => r.kind === 'event'), 'events exported');
    assert.ok(recs.some((r) => r.kind === 'route'), 'decisions exported');

    const lines = nats.log().split('\n').filter((l) => /violation/i.test(l));
    // the log names the client: the attackers' refusals above are there, none of the roles'
    assert.ok(lines.some((l) => l.includes('attacker-router')), 'violations are logged with the client name');
    assert.equal(lines.filter((l) => l.includes('role-')), [], 'the roles used only what they are allowed');
  } finally {
    await router?.close().catch(() => undefined);
    for (const s of shims) await s.stop().catch(() => undefined);
    for (const e of engines) await e.close().catch(() => undefined);
    await indexer?.close().catch(() => undefined);
    for (const b of buses) await b.close().catch(() => undefined);
  }
});

test('admin is enough for kvgate start --nats: the whole stack on one admin connection routes a request', async () => {
  const stack = await startStack({ engines: 1, routers: 1, nats: nats.url, natsAuth: { user: 'admin', pass: pw.admin }, engine: { speedup: 50, numBlocks: 1024, blockSize: 16 } });
  try {
    const res = await fetch(`${stack.routers[0]!.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-8b', prompt: 'hello '.repeat(40), max_tokens: 2 }) });
    assert.is(res.status, 200);
    await res.arrayBuffer();
  } finally {
    await stack.close();
  }
});

test.after(async () => {
  for (const nc of conns) await nc.close().catch(() => undefined);
  await nats.stop();
  await natsPw.stop();
  rmSync(perWorkerDir, { recursive: true, force: true });
});

test.run();
