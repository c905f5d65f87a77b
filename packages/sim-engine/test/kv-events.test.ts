/**
 * KV events over real ZMQ sockets, decoded by an independent subscriber (@msgpack/msgpack, not kvgate's decoder):
 * framing, parents, eviction, reset, both encodings, both hash formats, and the replay socket.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as zmq from 'zeromq';
import { startSimEngine, type SimEngineHandle } from '@kvgate/sim-engine';
import { EventCollector, decodeBatch, post, tokens, sleep, type DecodedBatch } from './helpers.js';

const B = 16;
const key = (h: unknown) => (h instanceof Uint8Array ? Buffer.from(h).toString('hex') : String(h));

/** Checks the whole stream: seq from 0 without gaps, stored parents live, removed hashes known. Returns live set. */
function checkStream(batches: DecodedBatch[]): Set<string> {
  batches.forEach((b, i) => assert.is(b.seq, BigInt(i), 'seq counts from 0 without gaps'));
  const live = new Set<string>();
  for (const e of batches.flatMap((b) => b.events)) {
    if (e.type === 'BlockStored') {
      if (e.parent_block_hash !== null) assert.ok(live.has(key(e.parent_block_hash)), 'stored block’s parent is a cached block');
      assert.is(e.block_size, B);
      assert.is(e.token_ids.length, e.block_hashes.length * B);
      assert.is(e.lora_id, null);
      assert.is(e.medium, 'GPU');
      for (const h of e.block_hashes) live.add(key(h));
    } else if (e.type === 'BlockRemoved') {
      for (const h of e.block_hashes) assert.ok(live.delete(key(h)), 'removed block was stored');
    } else if (e.type === 'AllBlocksCleared') live.clear();
  }
  return live;
}

test('array encoding: BlockStored chains with correct parents; eviction under pressure emits BlockRemoved', async () => {
  // 48 blocks = 768 tokens of KV: three 300-token prompts cannot all stay cached
  const e = await startSimEngine({ speedup: 50, numBlocks: 48, maxModelLen: 768, kvReplayEndpoint: null, kvEventsTopic: 'kv@sim@qwen3-8b' });
  const sub = await EventCollector.connect(e.kvEventsEndpoint!);
  try {
    const a = tokens(300, 1), b = tokens(300, 2), c = tokens(300, 3);
    let r = await post(e.url + '/v1/completions', { prompt: a, max_tokens: 1 });
    assert.is(r.status, 200);
    await sub.waitFor(() => sub.events().some((x) => x.type === 'BlockStored'), 'first BlockStored');
    const first = sub.events().find((x) => x.type === 'BlockStored');
    assert.is(first.parent_block_hash, null, 'first block of a prompt has no parent');
    assert.is(first.block_hashes.length, Math.floor(300 / B));
    assert.equal(first.token_ids, a.slice(0, first.block_hashes.length * B), 'token ids are the prompt’s');
    for (const h of first.block_hashes) assert.ok(typeof h === 'bigint', 'uint64 hashes decode as BigInt');
    assert.ok(first.block_hashes.some((h: bigint) => h > 0xffffffffn));
    assert.is(sub.raw[0]!.topic.toString(), 'kv@sim@qwen3-8b');
    assert.is(sub.raw[0]!.seq.length, 8);
    assert.is(sub.batches[0]!.dpRank, 0);
    assert.type(sub.batches[0]!.ts, 'number');

    // a prompt sharing a's first 160 tokens stores only the new blocks, chained to a's 10th block
    const a2 = [...a.slice(0, 160), ...tokens(100, 9)];
    await post(e.url + '/v1/completions', { prompt: a2, max_tokens: 1 });
    await sub.waitFor(() => sub.events().filter((x) => x.type === 'BlockStored').length >= 2, 'second BlockStored');
    const second = sub.events().filter((x) => x.type === 'BlockStored')[1];
    assert.is(second.parent_block_hash, first.block_hashes[9], 'parent is the last shared block');
    assert.equal(second.token_ids, a2.slice(160, 160 + second.block_hashes.length * B));

    r = await post(e.url + '/v1/completions', { prompt: b, max_tokens: 1 });
    assert.is(r.status, 200);
    r = await post(e.url + '/v1/completions', { prompt: c, max_tokens: 1 });
    assert.is(r.status, 200);
    await sub.waitFor(() => sub.events().some((x) => x.type === 'BlockRemoved'), 'BlockRemoved under pressure');
    const removed = sub.events().filter((x) => x.type === 'BlockRemoved').flatMap((x) => x.block_hashes.map(key));
    const ofA = new Set(first.block_hashes.map(key));
    assert.ok(removed.some((h: string) => ofA.has(h)), 'the oldest prompt’s blocks were evicted');
    await sleep(50);
    const live = checkStream(sub.batches);
    assert.ok(live.size <= 48);
  } finally {
    await sub.close();
    await e.close();
  }
});

test('map encoding with 32-byte hashes; reset_prefix_cache emits AllBlocksCleared', async () => {
  const e = await startSimEngine({ speedup: 50, numBlocks: 256, kvEventsEncoding: 'map', blockHashFormat: 'bytes', kvReplayEndpoint: null });
  const sub = await EventCollector.connect(e.kvEventsEndpoint!);
  try {
    await post(e.url + '/v1/completions', { prompt: tokens(64, 5), max_tokens: 1 });
    await sub.waitFor(() => sub.batches.length >= 1, 'a batch');
    const raw = (await import('@msgpack/msgpack')).decode(sub.raw[0]!.payload, { useBigInt64: true }) as any;
    assert.ok(!Array.isArray(raw), 'map batch');
    assert.equal(Object.keys(raw).sort(), ['data_parallel_rank', 'events', 'ts']);
    const ev = raw.events[0];
    assert.is(ev.type, 'BlockStored');
    assert.is(ev.block_hashes.length, 4, '64 prompt tokens, all computed by the prefill: 4 full blocks');
    for (const h of ev.block_hashes) {
      assert.instance(h, Uint8Array);
      assert.is(h.length, 32);
    }
    const r = await fetch(e.url + '/reset_prefix_cache', { method: 'POST' });
    assert.is(r.status, 200);
    await sub.waitFor(() => sub.events().some((x) => x.type === 'AllBlocksCleared'), 'AllBlocksCleared');
    assert.equal(sub.events().at(-1), { type: 'AllBlocksCleared' });
    assert.is(e.stats().cachedBlocks, 0);
    // the same prompt is stored again after the reset (nothing is cached any more)
    const again = await post(e.url + '/v1/completions', { prompt: tokens(64, 5), max_tokens: 1 });
    assert.is(again.json.usage.prompt_tokens_details.cached_tokens, 0);
  } finally {
    await sub.close();
    await e.close();
  }
});

test('replay socket returns missed batches from a given sequence, then the end marker', async () => {
  const e = await startSimEngine({ speedup: 50, numBlocks: 512, replayBufferSteps: 10_000 });
  const dealer = new zmq.Dealer({ linger: 0, receiveTimeout: 5000 });
  try {
    // events published while nobody listens
    for (let i = 0; i < 4; i++) await post(e.url + '/v1/completions', { prompt: tokens(40, 20 + i), max_tokens: 1 });
    await sleep(50);
    dealer.connect(e.replayEndpoint!);
    const replay = async (from: number) => {
      const seq = Buffer.alloc(8);
      seq.writeBigUInt64BE(BigInt(from));
      await dealer.send([Buffer.alloc(0), seq]); // what a REQ socket puts on the wire
      const got: DecodedBatch[] = [];
      for (;;) {
        const [delim, s, payload] = (await dealer.receive()) as [Buffer, Buffer, Buffer];
        assert.is(delim.length, 0, 'empty delimiter frame');
        if (s.equals(Buffer.from('ffffffffffffffff', 'hex'))) {
          assert.is(payload.length, 0);
          return got;
        }
        got.push(decodeBatch(s.readBigUInt64BE(0), payload));
      }
    };
    const all = await replay(0);
    assert.ok(all.length >= 4, `at least one batch per request, got ${all.length}`);
    checkStream(all);
    const stored = all.flatMap((b) => b.events).filter((x) => x.type === 'BlockStored');
    assert.is(stored.length, 4);
    const tail = await replay(2);
    assert.equal(tail.map((b) => b.seq), all.slice(2).map((b) => b.seq));
    const none = await replay(all.length + 100);
    assert.is(none.length, 0);
  } finally {
    dealer.close();
    await e.close();
  }
});

test('many engines coexist in one process with distinct ports and hash seeds', async () => {
  const engines = await Promise.all([0, 1, 2].map(() => startSimEngine({ speedup: 50, numBlocks: 128, kvReplayEndpoint: null })));
  const subs = await Promise.all(engines.map((x) => EventCollector.connect(x.kvEventsEndpoint!)));
  try {
    assert.is(new Set(engines.map((x) => x.url)).size, 3);
    assert.is(new Set(engines.map((x) => x.kvEventsEndpoint)).size, 3);
    const prompt = tokens(48, 42);
    await Promise.all(engines.map((x) => post(x.url + '/v1/completions', { prompt, max_tokens: 1 })));
    await Promise.all(subs.map((s) => s.waitFor(() => s.events().length > 0, 'events')));
    const firstHash = subs.map((s) => key(s.events()[0].block_hashes[0]));
    assert.is(new Set(firstHash).size, 3, 'same prefix, different engine hashes (per-engine seed, as vLLM)');
    for (const s of subs) assert.equal(s.events()[0].token_ids, prompt);
  } finally {
    await Promise.all(subs.map((s) => s.close()));
    await Promise.all(engines.map((x) => x.close()));
  }
});

test.run();
