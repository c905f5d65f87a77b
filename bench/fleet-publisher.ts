/**
 * The fleet simulation's engines (issue 18), one process playing W worker shims: it registers every worker in
 * the workers bucket and appends their KV event batches to the durable event stream, on the shim's subjects
 * (`…events.<hash bits>.<worker>`) in the shim's wire format (protocol's EventBatch through protocol's `encode`, appended
 * with a stream acknowledgement as the shim's EventPublisher does), gap-free `seq` per worker from 1, the first
 * batch a `cleared` as a starting shim sends. Block identities come from fleet-model.ts.
 *
 * Driven over IPC by bench/fleet.ts:
 *   {cmd: 'fill'}                              every worker stores positions [0, B) in prefill-step batches of
 *                                              512 blocks (8,192 tokens), workers interleaved; → {ev: 'filled'}
 *   {cmd: 'churn', seconds, stepsPerS, k}      steady churn for `seconds`: `stepsPerS` steps per second over the
 *                                              fleet, round-robin over the workers, each step one batch storing k
 *                                              new blocks and evicting k; → {ev: 'churned'}
 *   {cmd: 'exit'}
 * and reports {ev: 'progress', phase, batches, blocks, lastSeq, stored, evicted} every 500 ms (stored / evicted:
 * positions the slowest worker has stored / evicted, for the querier's window).
 *
 * Two ways onto the stream: `acks: true` appends each batch with a stream acknowledgement, as one shim does
 * (`window` appends in flight, default 1024); but one process asking for 2,000 shims' acknowledgements is bound by
 * its own request/reply work (~4.5 k appends/s on this box, a tenth of a 2,000-engine fleet's rate), which a real
 * fleet spreads over 2,000 processes. The default publishes the same bytes on the same subjects without a reply
 * (captured by the stream all the same, as bench/router-nats.ts does) and paces itself by the stream's own count
 * (at most `window` × 16 batches ahead of what the stream holds, read every 100 ms); at the end of each phase it
 * waits until the stream holds every batch it sent and reports any it did not take as `lost`.
 * Usage (forked): fleet-publisher.ts <json: {nats, namespace, workers, blocks, ttlMs, window?, acks?}>
 */
import { encode, subjects, eventStreamConfig, registryKey, type EventBatch, type KvEvent } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { BLOCK_SIZE, docLength, evictedPosition, FLEET_MODEL, hashesOf, range, workerName } from './fleet-model.js';

interface Args { nats: string; namespace: string; workers: number; blocks: number; ttlMs: number; window?: number; acks?: boolean }
const a = JSON.parse(process.argv[2] ?? '{}') as Args;
const W = a.workers, B = a.blocks, DOC = docLength(B), WINDOW = a.window ?? 1024, FILL_BATCH = 512;
const s = subjects(a.namespace);
const bus = await createBus({ nats: a.nats, name: 'kvgate-bench-fleet-publisher' });
const stream = await bus.stream(s.eventStream, eventStreamConfig(s));
const kv = await bus.kv(s.workersBucket, { ttlMs: a.ttlMs });

const names = Array.from({ length: W }, (_, w) => workerName(w));
/** each worker's event subject (its hash bits in it: worked out once, not per batch) */
const eventSubjects = names.map((n) => s.events(n));
const seq = new Array<number>(W).fill(0);
const stored = new Array<number>(W).fill(0);
const evicted = new Array<number>(W).fill(0);
let phase = 'register', batches = 0, blocks = 0, lastSeq = 0, inflight = 0, failed = 0, sent = 0, lost = 0;
/** the stream's last sequence before our first batch, and as last read (core publishing) */
const seq0 = (await stream.info()).lastSeq;
let streamSeq = seq0;
let wake: (() => void) | null = null;

function send(w: number, events: KvEvent[], nBlocks: number): Promise<void> | void {
  const batch: EventBatch = { worker: names[w]!, seq: ++seq[w]!, ts: Date.now(), events, model: FLEET_MODEL };
  const data = encode(batch);
  sent++;
  if (!a.acks) {
    bus.publish(eventSubjects[w]!, data);
    pendingBlocks += nBlocks;
    if (sent - (streamSeq - seq0) > WINDOW * 16 || sent % 256 === 0) return pace();
    return;
  }
  inflight++;
  stream.append(eventSubjects[w]!, data).then(
    (sq) => {
      if (sq > lastSeq) lastSeq = sq;
      batches++;
      blocks += nBlocks;
    },
    () => void failed++,
  ).finally(() => {
    inflight--;
    if (wake && inflight < WINDOW / 2) {
      const f = wake;
      wake = null;
      f();
    }
  });
  if (inflight >= WINDOW) return new Promise<void>((r) => (wake = r));
}

/** core publishing: blocks published but not yet seen stored */
let pendingBlocks = 0;
let lastRead = 0;

/** read the stream's count (at most every 100 ms); wait while we are too far ahead of it */
async function pace(): Promise<void> {
  for (;;) {
    const now = performance.now();
    if (now - lastRead >= 100) {
      lastRead = now;
      await bus.flush();
      streamSeq = (await stream.info()).lastSeq;
      const stored = Math.min(sent, streamSeq - seq0);
      // blocks are attributed in order: what the stream holds of ours is a prefix of what we sent
      if (stored > batches) {
        blocks += Math.round((pendingBlocks * (stored - batches)) / Math.max(1, sent - batches));
        pendingBlocks -= Math.round((pendingBlocks * (stored - batches)) / Math.max(1, sent - batches));
        batches = stored;
        lastSeq = streamSeq;
      }
    }
    if (sent - (streamSeq - seq0) <= WINDOW * 16) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function drained(): Promise<void> {
  if (a.acks) {
    while (inflight > 0) await new Promise((r) => setTimeout(r, 5));
    return;
  }
  // everything sent is stored, or the stream stopped growing for 3 s (then what is missing was not taken)
  let last = -1, since = performance.now();
  for (;;) {
    await bus.flush();
    streamSeq = (await stream.info()).lastSeq;
    if (streamSeq - seq0 >= sent) break;
    if (streamSeq !== last) {
      last = streamSeq;
      since = performance.now();
    } else if (performance.now() - since > 3000) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  lost = sent - (streamSeq - seq0);
  blocks += pendingBlocks;
  pendingBlocks = 0;
  batches = streamSeq - seq0;
  lastSeq = streamSeq;
}

let lastReport = 0;
/** a progress report at most every 500 ms, from inside the send loops (the interval timer starves while they run) */
const maybeReport = () => {
  const now = performance.now();
  if (now - lastReport >= 500) report();
};
const report = () => (lastReport = performance.now(), process.send?.({ ev: 'progress', phase, batches, blocks, lastSeq, failed, sent, lost, stored: Math.min(...stored), evicted: Math.min(...evicted) }));
const ticker = setInterval(report, 500);

/** the stored events for engine w's positions [from, to): one per document the range touches */
function storedEvents(w: number, from: number, to: number): KvEvent[] {
  const out: KvEvent[] = [];
  for (let p = from; p < to; ) {
    const end = Math.min(to, (Math.floor(p / DOC) + 1) * DOC);
    const hashes = hashesOf(w, range(p, end));
    out.push({ t: 'stored', parent: p % DOC === 0 ? null : hashesOf(w, [p - 1])[0]!, hashes });
    p = end;
  }
  return out;
}

async function register(): Promise<void> {
  const url = 'http://127.0.0.1:9/';
  for (let w = 0; w < W; w += 256) {
    await Promise.all(names.slice(w, w + 256).map((worker) =>
      kv.put(registryKey(worker), encode({ worker, model: FLEET_MODEL, role: 'both', url, engineUrl: url, blockSize: BLOCK_SIZE, capacityBlocks: B, loras: [], ts: Date.now() }))));
  }
}

async function fill(): Promise<void> {
  phase = 'fill';
  for (let w = 0; w < W; w++) {
    const p = send(w, [{ t: 'cleared' }], 0);
    if (p) await p;
  }
  for (let at = 0; at < B; at += FILL_BATCH) {
    for (let w = 0; w < W; w++) {
      const to = Math.min(B, at + FILL_BATCH);
      const p = send(w, storedEvents(w, at, to), to - at);
      stored[w] = to;
      if (p) await p;
      if ((w & 63) === 0) maybeReport();
    }
  }
  await drained();
}

async function churn(seconds: number, stepsPerS: number, k: number): Promise<void> {
  phase = 'churn';
  const t0 = performance.now();
  let steps = 0, w = 0;
  for (;;) {
    const elapsed = (performance.now() - t0) / 1000;
    if (elapsed >= seconds) break;
    const due = Math.floor(elapsed * stepsPerS);
    if (steps >= due) {
      await new Promise((r) => setTimeout(r, 2));
      continue;
    }
    // catch up to the schedule (bounded per turn so the timers and acks get the loop too)
    for (let n = 0; steps < due && n < 2000; n++, steps++) {
      const from = stored[w]!;
      const ev = range(evicted[w]!, evicted[w]! + k).map((e) => evictedPosition(e, DOC));
      const events = storedEvents(w, from, from + k);
      events.push({ t: 'removed', hashes: hashesOf(w, ev) });
      stored[w] = from + k;
      evicted[w] = evicted[w]! + k;
      const p = send(w, events, 2 * k);
      w = (w + 1) % W;
      if (p) await p;
      if ((w & 63) === 0) maybeReport();
    }
  }
  await drained();
}

process.on('message', (m: { cmd: string; seconds?: number; stepsPerS?: number; k?: number }) => {
  void (async () => {
    if (m.cmd === 'fill') {
      await fill();
      report();
      process.send?.({ ev: 'filled' });
    } else if (m.cmd === 'churn') {
      const t = performance.now();
      await churn(m.seconds!, m.stepsPerS!, m.k!);
      report();
      process.send?.({ ev: 'churned', secs: (performance.now() - t) / 1000 });
    } else if (m.cmd === 'exit') {
      clearInterval(ticker);
      await bus.close().catch(() => undefined);
      process.exit(0);
    }
  })().catch((err) => {
    process.stderr.write(`fleet publisher: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
});
process.on('disconnect', () => process.exit(0));

await register();
report();
process.send?.({ ev: 'ready' });
