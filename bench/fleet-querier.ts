/**
 * The fleet simulation's router (issue 18): a process of its own that asks the sharded index what a router asks
 * it, at a steady rate, through the router's own index query (packages/router index-query.ts busIndexQuery with
 * `shards: N`: the match scattered to every shard's subject in parallel and the answers merged), and times each
 * query as the router sees it (request sent → merged reply, over NATS).
 *
 * Prompts: `qlen` blocks; 90 % are the head of a document a random engine holds for sure (fleet-model.ts heldDocs,
 * from the window the publisher reports and the churn's schedule), so the merged reply must give that engine exactly `qlen`; 10 % are
 * blocks nobody holds. The timeout is generous (default 1 s) so the latency distribution is measured, not cut at
 * the budget; how many took longer than the budget is counted separately.
 *
 * IPC from bench/fleet.ts: {cmd: 'window', stored} (the slowest engine's), {cmd: 'start', evicted} (the churn starts now,
 * every engine having evicted `evicted`; `batchesPerS` steps per engine per second at most),
 * {cmd: 'stop'} → {ev: 'result', latencies: number[] (ms), echoLatencies, echoFailures, hitsExpected, hitsExact,
 * shardMisses, failures}.
 * Usage (forked): fleet-querier.ts <json: {nats, namespace, shards, workers, blocks, qps, qlen, timeoutMs, k, batchesPerS, echo?: subjects}>
 */
import { subjects, initHashing, mulberry32 } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { busIndexQuery } from '@kvgate/router/index-query';
import { docLength, FLEET_MODEL, hashArray, heldDocs, workerName } from './fleet-model.js';

interface Args { nats: string; namespace: string; shards: number; workers: number; blocks: number; qps: number; qlen: number; timeoutMs: number; k: number; batchesPerS: number; echo?: string[] }
const a = JSON.parse(process.argv[2] ?? '{}') as Args;
await initHashing();
const DOC = docLength(a.blocks), QLEN = Math.min(a.qlen, DOC);
const bus = await createBus({ nats: a.nats, name: 'kvgate-bench-fleet-router' });
let shardMisses = 0;
const query = busIndexQuery(bus, subjects(a.namespace), a.timeoutMs, { shards: a.shards, onShardMiss: () => void shardMisses++ });
const r = mulberry32(4242);
let stored = a.blocks;
/** the window when the churn started, and when it did (performance.now(); 0 = not yet) */
let evicted0 = 0, churnStart = 0;
let running = false, timer: NodeJS.Timeout | undefined;
const latencies: number[] = [];
const echoLatencies: number[] = [];
let echoFailures = 0;
let hitsExpected = 0, hitsExact = 0, failures = 0, inflight = 0, sent = 0;

function one(): void {
  const w = Math.floor(r() * a.workers);
  // stored: the slowest engine's, as last reported (it only grows: safe). evicted: at most what the churn's
  // schedule allows by now (the publisher runs behind its schedule, never ahead; engines are served round-robin)
  // (+ 0.25 s and 2 steps: the publisher's clock may have started a little before ours)
  const dueSteps = churnStart === 0 ? 0 : Math.floor(((performance.now() - churnStart) / 1000 + 0.25) * a.batchesPerS) + 2;
  const [first, last] = heldDocs(stored, evicted0, DOC, QLEN, a.k * dueSteps);
  const hit = r() < 0.9 && first <= last;
  let hashes: BigUint64Array;
  let d = -1;
  if (hit) {
    d = first + Math.floor(r() * (last - first + 1));
    hashes = hashArray(w, d * DOC, QLEN);
  } else {
    // a worker id past the fleet: nobody holds these
    hashes = hashArray(a.workers + 1 + Math.floor(r() * 1e6), 0, QLEN);
  }
  inflight++;
  sent++;
  const t = performance.now();
  query(FLEET_MODEL, null, hashes).then(
    (reply) => {
      if (!reply) return void failures++;
      latencies.push(performance.now() - t);
      if (hit) {
        hitsExpected++;
        if (reply.overlaps[workerName(w)] === QLEN) hitsExact++;
        else if (process.env.FLEET_DEBUG) process.stderr.write(`miss w=${w} d=${d} got=${reply.overlaps[workerName(w)]} first=${first} last=${last} stored=${stored} evicted0=${evicted0} keys=${Object.keys(reply.overlaps).length}\n`);
      }
    },
    () => void failures++,
  ).finally(() => void inflight--);
}

/**
 * The floor: the same scatter (one request per shard, in parallel, all awaited) of a body the size of the index
 * query to N echo processes (bench/nats-echo.ts) — what this machine's scheduling costs any N-way round trip to
 * other processes, with no index, decode or match in it — sent half a period after each index query.
 */
function echoOne(): void {
  if (!a.echo?.length) return;
  const body = new Uint8Array(8 * QLEN + 40);
  const t = performance.now();
  Promise.all(a.echo.map((subject) => bus.request(subject, body, { timeoutMs: a.timeoutMs }))).then(
    () => void echoLatencies.push(performance.now() - t),
    () => void echoFailures++,
  );
}

function start(): void {
  running = true;
  const t0 = performance.now();
  let done = 0;
  const tick = () => {
    if (!running) return;
    const due = Math.floor(((performance.now() - t0) / 1000) * a.qps);
    for (; done < due; done++) {
      one();
      setTimeout(echoOne, 500 / a.qps);
    }
    timer = setTimeout(tick, Math.max(1, Math.min(20, 1000 / a.qps / 2)));
  };
  tick();
}

process.on('message', (m: { cmd: string; stored?: number; evicted?: number }) => {
  if (m.cmd === 'window') stored = m.stored!;
  else if (m.cmd === 'start') {
    evicted0 = m.evicted ?? 0;
    churnStart = performance.now();
    start();
  }
  else if (m.cmd === 'stop') {
    running = false;
    clearTimeout(timer);
    void (async () => {
      const t = Date.now();
      while (inflight > 0 && Date.now() - t < a.timeoutMs + 2000) await new Promise((res) => setTimeout(res, 10));
      process.send?.({ ev: 'result', latencies, echoLatencies, echoFailures, hitsExpected, hitsExact, shardMisses, failures, sent });
      await bus.close().catch(() => undefined);
      process.exit(0);
    })();
  }
});
process.on('disconnect', () => process.exit(0));
process.send?.({ ev: 'ready' });
