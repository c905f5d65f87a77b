/** The relay actor without sockets: frames in, EventBatches out, replay injected. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeEngineBatch, initHashing, prefixHashes, type EventBatch, type ReplayMessage } from '@kvgate/protocol';
import { EventRelay } from '../src/relay.js';
import { createMetrics } from '../src/metrics.js';
import { LoraNames } from '../src/lora.js';
import { seqFrame, vllmArrayBatch, type Ev } from './fake-engine.js';

await initHashing();
const M = 'm';
const B = 2;

function rig(held: Map<bigint, Uint8Array> | null, maxMapEntries = 1000) {
  const out: EventBatch[] = [];
  const asked: bigint[] = [];
  const relay = new EventRelay({
    worker: 'w',
    model: M,
    metrics: createMetrics('w'),
    loras: new LoraNames(),
    maxMapEntries,
    maxMailbox: 1000,
    publish: (b) => out.push(b),
    replay: async (from) => {
      asked.push(from);
      if (!held) return null;
      return [...held].filter(([s]) => s >= from).map(([seq, p]): ReplayMessage => ({ end: false, seq, batch: decodeEngineBatch(p) }));
    },
    refreshLoras: async () => undefined,
  });
  const frame = (seq: number, evs: Ev[]) => [Buffer.alloc(0), seqFrame(seq), Buffer.from(vllmArrayBatch(evs))];
  return { relay, out, asked, frame };
}
const st = (h: bigint, parent: bigint | null, tokens: number[]): Ev => ({ type: 'stored', hashes: [h], parent, tokens, blockSize: B });

test('a probe applies held batches; their live copies are skipped as duplicates, not taken for a restart', async () => {
  const held = new Map<bigint, Uint8Array>([[0n, vllmArrayBatch([st(1n, null, [1, 2])])], [1n, vllmArrayBatch([st(2n, 1n, [3, 4])])]]);
  const { relay, out, frame } = rig(held);
  relay.engineConnected();
  relay.post(frame(0, [st(1n, null, [1, 2])]));
  relay.post(frame(1, [st(2n, 1n, [3, 4])]));
  relay.post(frame(2, [st(3n, 2n, [5, 6])]));
  await relay.idle();
  const want = prefixHashes(M, '', B, [1, 2, 3, 4, 5, 6]);
  assert.equal(out.flatMap((b) => b.events), want.map((h, i) => ({ t: 'stored', parent: i === 0 ? null : want[i - 1], hashes: [h] })));
  assert.equal(out.map((b) => b.seq), [0, 1, 2]);
});

test('no replay socket: a gap clears the worker; unknown parents after it are dropped', async () => {
  const { relay, out, frame } = rig(null);
  relay.post(frame(0, [st(1n, null, [1, 2])]));
  relay.post(frame(2, [st(3n, 2n, [5, 6]), st(4n, null, [7, 8])]));
  await relay.idle();
  assert.equal(out.map((b) => b.events.map((e) => e.t)), [['stored'], ['cleared'], ['stored']]);
  assert.equal(out[2]!.events[0], { t: 'stored', parent: null, hashes: prefixHashes(M, '', B, [7, 8]) });
});

test('the map cap publishes the evicted prefix as removed', async () => {
  const { relay, out, frame } = rig(null, 2);
  relay.post(frame(0, [{ type: 'stored', hashes: [1n, 2n, 3n], parent: null, tokens: [1, 2, 3, 4, 5, 6], blockSize: B }]));
  await relay.idle();
  const want = prefixHashes(M, '', B, [1, 2, 3, 4, 5, 6]);
  assert.equal(out[0]!.events, [{ t: 'stored', parent: null, hashes: want }, { t: 'removed', hashes: [want[0]] }]);
  assert.is(relay.mapSize, 2);
});

test('disconnect clears; the next engine counts from 0 again', async () => {
  const { relay, out, frame } = rig(null);
  relay.post(frame(0, [st(1n, null, [1, 2])]));
  relay.post(frame(1, [st(2n, 1n, [3, 4])]));
  relay.engineDisconnected();
  relay.post(frame(0, [st(9n, null, [9, 9])]));
  await relay.idle();
  assert.equal(out.map((b) => b.events[0]!.t), ['stored', 'stored', 'cleared', 'stored']);
  assert.is(relay.engineNext, 1n);
});

test.run();
