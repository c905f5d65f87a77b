/**
 * Index shards (issue 18) under the shipped NATS permissions (deploy/nats/nats-server.conf + kvgate-auth.conf): two
 * `--shard i/2` indexers on the indexer user read the stream, answer `index.match.2.<i>` in their queue groups and
 * gossip on `index.gossip.2.<i>`; the router user's scatter (busIndexQuery, shards = 2) gets both answers; the shim
 * user's events reach them — without one permissions violation in the server's log. The shard subjects are still
 * refused to the other roles: a shim cannot answer `index.match.2.0`, a router cannot gossip as a shard.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { connect, type NatsConnection } from 'nats';
import { encode, initHashing, prefixHashes, subjects, type Bus, type EventBatch } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { shardOf, startIndexer, type RunningIndexer } from '@kvgate/indexer';
import { busIndexQuery } from '../../packages/router/src/index-query.js';
import { startNatsServer, type NatsServerHandle } from '../harness/nats-server.js';
import { violation } from '../harness/nats-violation.js';

await initHashing();
const root = new URL('../..', import.meta.url).pathname;
const S = subjects('default');
const ROLES = ['router', 'indexer', 'shim', 'admin'] as const;
const pw = Object.fromEntries(ROLES.map((r) => [r, `kvg-${randomBytes(12).toString('hex')}`])) as Record<(typeof ROLES)[number], string>;
const env = Object.fromEntries(ROLES.map((r) => [`KVGATE_NATS_${r.toUpperCase()}_PASSWORD`, pw[r]]));
const W = ['w0', 'w1', 'w2', 'w3'];

let nats: NatsServerHandle;
const closers: { close(): Promise<void> }[] = [];
test.before(async () => {
  nats = await startNatsServer({ configFile: join(root, 'deploy/nats/nats-server.conf'), env });
});
test.after(async () => {
  while (closers.length) await closers.pop()!.close().catch(() => undefined);
  await nats.stop();
});
const bus = async (role: (typeof ROLES)[number]): Promise<Bus> => {
  const b = await createBus({ nats: nats.url, user: role, pass: pw[role], connectTimeoutMs: 5000 });
  closers.push(b);
  return b;
};
async function eventually(what: string, cond: () => Promise<boolean> | boolean, boundMs = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > boundMs) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('2 shards on the indexer user, the router user scattering, the shim user publishing: both answers, no violation', async () => {
  assert.ok(W.some((w) => shardOf(w, 2) === 0) && W.some((w) => shardOf(w, 2) === 1));
  const ixs: RunningIndexer[] = [];
  for (const i of [0, 1]) {
    const ix = await startIndexer(await bus('indexer'), { id: `perm-${i}`, shard: { index: i, of: 2 }, gossipIntervalMs: 200 });
    closers.push(ix);
    ixs.push(ix);
  }
  // a second replica of shard 0 (gossip among the shard's replicas goes through too)
  const ix0b = await startIndexer(await bus('indexer'), { id: 'perm-0b', shard: { index: 0, of: 2 }, gossipIntervalMs: 200 });
  closers.push(ix0b);
  await Promise.all([...ixs, ix0b].map((ix) => ix.whenReady(30_000)));
  const shim = await bus('shim');
  const hs = prefixHashes('m', null, 16, Array.from({ length: 64 }, (_, i) => i + 1));
  W.forEach((w, k) => shim.publish(S.events(w), encode({ worker: w, seq: 0, ts: Date.now(), events: [{ t: 'stored', parent: null, hashes: hs.slice(0, k + 1) }] } satisfies EventBatch)));
  await shim.flush();
  const want = Object.fromEntries(W.map((w, k) => [w, k + 1]));
  const H = BigUint64Array.from(hs);
  const q = busIndexQuery(await bus('router'), S, 2000, { shards: 2, onShardMiss: (i) => assert.unreachable(`shard ${i} missed`) });
  await eventually('the router user gets both shards\' answers', async () => Object.keys((await q('m', null, H))!.overlaps).length === W.length);
  assert.equal((await q('m', null, H))!.overlaps, want);
  await eventually('the second replica of shard 0 holds its workers', async () => Object.keys(await ix0b.indexer.digests()).length === W.filter((w) => shardOf(w, 2) === 0).length);
  await new Promise((r) => setTimeout(r, 600)); // a few gossip ticks on the shard subjects: a refused publish would be logged
  const lines = nats.log().split('\n').filter((l) => /violation/i.test(l));
  assert.equal(lines, [], 'no permissions violation on the positive path');
});

test('the shard subjects stay refused to the other roles: a shim cannot answer index.match.2.0, a router cannot gossip as a shard', async () => {
  const shimNc: NatsConnection = await connect({ servers: nats.url, user: 'shim', pass: pw.shim, name: 'attacker-shim', reconnect: false });
  const routerNc: NatsConnection = await connect({ servers: nats.url, user: 'router', pass: pw.router, name: 'attacker-router', reconnect: false });
  try {
    const denied = violation(shimNc, 'subscription', S.indexMatchShard(0, 2));
    shimNc.subscribe(S.indexMatchShard(0, 2), { queue: S.indexShardQueue(0, 2) });
    await shimNc.flush();
    await denied;
    const gossip = violation(routerNc, 'publish', S.indexGossipShard(1, 2));
    routerNc.publish(S.indexGossipShard(1, 2), encode({ indexer: 'rogue', digests: {}, snapshotSeq: 0 }));
    await routerNc.flush();
    await gossip;
  } finally {
    await shimNc.close();
    await routerNc.close();
  }
});

test.run();
