/**
 * The index reconverges after any loss (issue 12), over a real nats-server (JetStream), a real shim on a fake
 * engine (real ZMQ) and the real indexer:
 *   - kill -9 of nats-server while the engine stores and evicts, restart on the same port and store: the
 *     indexer keeps the worker through the outage and its digest comes back to what the engine holds; the shim
 *     stored what it made meanwhile from its buffer;
 *   - a batch lost on the way to the indexer (a fault-injecting bus drops one append): one resync, converged;
 *   - an outage longer than the shim's buffer bound: the shim resyncs instead of replaying.
 * Waits are bounded (30 s), never timed assertions. The file must end on its own once the tests are done: a
 * follow reader the indexer stops while nats.js re-creates its consumer after the restart used to leave a pull
 * and its heartbeat timer running (NatsBus keepStopped), so the process never exited.
 */
import { connect } from 'nats';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createBus, decodeEventBatch, initHashing, prefixHashes, subjects, type Bus, type DurableStream } from '@kvgate/protocol';
import { NaiveIndex, startIndexer, type RunningIndexer } from '@kvgate/indexer';
import { startShim, type ShimHandle } from '../src/index.js';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { FakeEngine, vllmArrayBatch, waitFor } from './fake-engine.js';

await initHashing();
const MODEL = 'm-resync';
const B = 4;
const W = 'w-resync';
const CONVERGE_MS = 30_000;

/** what the engine holds, as the shim should publish it (prefix hashes), in a reference index */
class EngineModel {
  readonly ref = new NaiveIndex();
  readonly chains = new Map<number, { engine: bigint[]; prefix: bigint[] }>();
  constructor(readonly engine: FakeEngine) {}
  /** a new prompt of n blocks */
  async store(chain: number, n: number): Promise<void> {
    const tokens = Array.from({ length: n * B }, (_, i) => chain * 10_000 + i);
    const engine = Array.from({ length: n }, (_, i) => 0xe000_0000_0000_0000n + BigInt(chain) * 1000n + BigInt(i));
    const prefix = prefixHashes(MODEL, '', B, tokens);
    this.chains.set(chain, { engine, prefix });
    this.ref.store(W, null, prefix);
    await this.engine.send(vllmArrayBatch([{ type: 'stored', hashes: engine, parent: null, tokens, blockSize: B }]));
  }
  /** evict the last k blocks of a prompt */
  async evict(chain: number, k: number): Promise<void> {
    const c = this.chains.get(chain)!;
    const gone = c.engine.splice(c.engine.length - k, k);
    const prefixes = c.prefix.splice(c.prefix.length - k, k);
    this.ref.remove(W, prefixes);
    await this.engine.send(vllmArrayBatch([{ type: 'removed', hashes: gone }]));
  }
}

const metric = async (text: Promise<string> | string, name: string, labels = ''): Promise<number> => {
  const t = await text;
  let sum = 0;
  for (const line of t.split('\n')) {
    if (!line.startsWith(name) || line.startsWith('#')) continue;
    const [series, value] = [line.slice(0, line.lastIndexOf(' ')), line.slice(line.lastIndexOf(' ') + 1)];
    if (series !== name && !series.startsWith(`${name}{`)) continue;
    if (labels && !series.includes(labels)) continue;
    sum += Number(value);
  }
  return sum;
};
const shimMetric = (shim: ShimHandle, name: string, labels = '') => metric(shim.metrics.registry.metrics(), `kvgate_shim_${name}`, labels);
const ixMetric = (ix: RunningIndexer, name: string, labels = '') => metric(ix.indexer.metrics.metrics(), `kvgate_indexer_${name}`, labels);

async function sameAsEngine(ix: RunningIndexer, model: EngineModel): Promise<boolean> {
  const d = (await ix.indexer.digests())[W];
  const want = model.ref.digest(W);
  return d !== undefined && d.count === want.count && d.xor === want.xor;
}

/** the shim's bus, passing everything through except the appends a test chooses to lose on the way */
function lossyBus(inner: Bus): Bus & { dropAppends: number } {
  const wrap = (st: DurableStream): DurableStream => ({
    name: st.name,
    append: (subject, data) => (lossy.dropAppends > 0 && lossy.dropAppends-- > 0 ? Promise.resolve(0) : st.append(subject, data)),
    read: (o) => st.read(o),
    info: () => st.info(),
    lastSeqOf: (f) => st.lastSeqOf(f),
    purgeBefore: (n) => st.purgeBefore(n),
  });
  const lossy = {
    dropAppends: 0,
    kind: inner.kind,
    get connected() {
      return inner.connected;
    },
    onStatus: inner.onStatus?.bind(inner),
    publish: inner.publish.bind(inner),
    subscribe: inner.subscribe.bind(inner),
    request: inner.request.bind(inner),
    stream: async (name: string, config: Parameters<Bus['stream']>[1]) => wrap(await inner.stream(name, config)),
    kv: inner.kv.bind(inner),
    flush: inner.flush.bind(inner),
    close: inner.close.bind(inner),
  };
  return lossy;
}

let nats: NatsServerHandle;
const cleanup: (() => Promise<unknown>)[] = [];
test.before(async () => {
  nats = await startNatsServer();
});
test.after.each(async () => {
  await nats.start(); // a failed test may leave it down
  while (cleanup.length) await cleanup.pop()!().catch(() => undefined);
});
test.after(async () => {
  await nats.stop();
});

async function rig(namespace: string, shimOpts: { publishBufferBatches?: number } = {}) {
  const shimBus = lossyBus(await createBus({ nats: nats.url }));
  const idxBus = await createBus({ nats: nats.url });
  const engine = await new FakeEngine().start();
  const ix = await startIndexer(idxBus, { namespace, gossipIntervalMs: 200, resyncIntervalMs: 2000 });
  const shim = await startShim(shimBus, { worker: W, model: MODEL, namespace, engineUrl: engine.url, kvEvents: engine.kvEvents, kvReplay: engine.kvReplay, port: -1, blockSize: B, ...shimOpts });
  cleanup.push(() => idxBus.close(), () => shimBus.close(), () => engine.close(), () => ix.close(), () => shim.kill());
  await ix.whenReady();
  await engine.subscribed();
  await waitFor(async () => (await shimMetric(shim, 'replay_probes_total')) >= 1, 'start-up replay probe done');
  return { shimBus, idxBus, engine, ix, shim, model: new EngineModel(engine) };
}

test('kill -9 nats-server, the engine stores and evicts meanwhile, restart: no worker dropped, the index equals the engine again', async () => {
  const { shimBus, idxBus, ix, shim, model } = await rig('rs-outage');
  for (let c = 0; c < 6; c++) await model.store(c, 8);
  await model.evict(0, 3);
  await waitFor(() => sameAsEngine(ix, model), 'index equals the engine before the outage', CONVERGE_MS);

  await nats.kill();
  await waitFor(() => shimBus.connected === false && idxBus.connected === false, 'both sides saw the outage');
  for (let c = 6; c < 12; c++) await model.store(c, 5);
  await model.evict(1, 8); // a whole prompt evicted while nobody can hear it
  await model.evict(6, 2);
  await waitFor(async () => (await shimMetric(shim, 'publish_buffer_batches')) >= 8, 'the shim keeps what it cannot publish');
  // longer than the registry TTL (3 s): a watch that judged liveness by its own clock dropped every worker here
  await new Promise((r) => setTimeout(r, 4000));
  assert.ok((await ix.indexer.workers())[W]?.registered, 'still registered in the indexer during the outage');
  await nats.start();

  await waitFor(() => sameAsEngine(ix, model), 'index equals the engine after the restart', CONVERGE_MS);
  assert.is(await ixMetric(ix, 'workers_dropped_total'), 0, 'no worker dropped');
  assert.ok((await ix.indexer.workers())[W]?.registered);
  assert.ok((await shimMetric(shim, 'publish_replayed_batches_total')) >= 8, 'the outage batches were stored from the buffer');
  assert.is(await shimMetric(shim, 'publish_buffer_overflows_total'), 0);
  assert.ok((await ixMetric(ix, 'stream_reopens_total')) >= 1, 'the stream was read again from our position');
  // and it keeps following: a store after the restart arrives as usual
  await model.store(20, 3);
  await waitFor(() => sameAsEngine(ix, model), 'index follows after the restart', CONVERGE_MS);
});

test('a batch lost on the way to the indexer: the gap triggers exactly one resync and the index converges', async () => {
  const { shimBus, ix, shim, model } = await rig('rs-gap');
  for (let c = 0; c < 4; c++) await model.store(c, 6);
  await waitFor(() => sameAsEngine(ix, model), 'index equals the engine', CONVERGE_MS);
  shimBus.dropAppends = 1;
  await model.store(10, 4); // lost on the way
  await shim.idle();
  await model.evict(2, 2); // the batch after it shows the gap
  await waitFor(() => sameAsEngine(ix, model), 'index converged after the resync', CONVERGE_MS);
  assert.is(shimBus.dropAppends, 0, 'the batch was really dropped');
  await new Promise((r) => setTimeout(r, 1000)); // a few gossip ticks more: nothing else is asked
  assert.is(await ixMetric(ix, 'resyncs_requested_total', 'reason="gap"'), 1, 'one resync asked');
  assert.is(await ixMetric(ix, 'resyncs_requested_total'), 1);
  assert.is(await shimMetric(shim, 'resyncs_total', 'reason="request"'), 1, 'one resync published');
  assert.ok(await sameAsEngine(ix, model));
});

test('a bus outage longer than the shim buffer bound: the shim drops the buffer and resyncs instead of replaying', async () => {
  const { shimBus, idxBus, ix, shim, model } = await rig('rs-overflow', { publishBufferBatches: 5 });
  for (let c = 0; c < 3; c++) await model.store(c, 6);
  await waitFor(() => sameAsEngine(ix, model), 'index equals the engine before the outage', CONVERGE_MS);
  const before = shim.eventSeq; // stored: the index has it
  await nats.kill();
  await waitFor(() => shimBus.connected === false && idxBus.connected === false, 'both sides saw the outage');
  for (let c = 3; c < 15; c++) await model.store(c, 3);
  await model.evict(0, 6);
  const outage = 13; // batches the shim makes of them while the bus is down
  await waitFor(() => shim.eventSeq === before + outage, 'the shim relayed the outage batches');
  await waitFor(async () => (await shimMetric(shim, 'publish_buffer_overflows_total')) >= 1, 'the buffer overflowed');
  await nats.start();
  await waitFor(() => sameAsEngine(ix, model), 'index equals the engine after the restart', CONVERGE_MS);
  assert.is(await shimMetric(shim, 'resyncs_total', 'reason="overflow"'), 1, 'one resync of its own');
  // what the stream holds of this worker past `before`: none of the outage batches, a resync batch first.
  // Read by direct gets, not a consumer: a bounded consumer read that ends can leave nats.js recreating its
  // ordered consumer after the stop, whose heartbeat timer then outlives the connection (the process never exits).
  const nc = await connect({ servers: nats.url });
  cleanup.push(() => nc.close());
  const S = subjects('rs-overflow');
  const jsm = await nc.jetstreamManager();
  const { state } = await jsm.streams.info(S.eventStream);
  const stored: { seq: number; clears: boolean }[] = [];
  for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(S.eventStream, { seq }).catch(() => null); // null: deleted
    if (m?.subject !== S.events(W)) continue;
    const b = decodeEventBatch(m.data);
    if (b.seq > before) stored.push({ seq: b.seq, clears: b.events[0]?.t === 'cleared' });
  }
  assert.equal(stored.filter((x) => x.seq <= before + outage), [], 'no outage batch was replayed');
  assert.ok(stored.length > 0 && stored[0]!.clears, 'the first batch stored after the outage is a resync');
  assert.ok((await shimMetric(shim, 'publish_dropped_batches_total')) >= 6);
  assert.is(await ixMetric(ix, 'workers_dropped_total'), 0, 'no worker dropped');
});

test.run();
