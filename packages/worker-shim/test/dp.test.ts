/**
 * Data-parallel engine servers end to end, on both buses (MemoryBus, and NatsBus with a real nats-server): a
 * fake vLLM server with two engine cores, each publishing today's vLLM bytes (hand-written msgpack, see
 * dp-engine.ts) on its own ZMQ socket (port + rank, replay port + rank), one real shim with
 * `dataParallelSize: 2`, and the real indexer.
 *
 * - Each rank is its own worker `<id>-dp<r>`: the indexer's overlap for every prompt equals what that rank
 *   holds (the two ranks hold the same engine hashes for a shared prompt and evict differently), nothing is
 *   indexed under `<id>`, and no worker is cleared beyond the shim's start-up clear.
 * - A batch whose `data_parallel_rank` is not its socket's rank (map and array encodings) is counted
 *   (`kvgate_shim_dp_rank_mismatches_total`) and not applied — had it reached the relay, its sequence (another
 *   engine's numbering) would have read as a restart and cleared the worker.
 * - Registrations carry `dpRank`; load reports are each rank's own with vLLM's `engine="<r>"` series, an even
 *   split of the server's totals without them.
 * - `kvEventsBind`: the shim binds port + r and the engine ranks connect (vLLM's connect mode).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connectNats, decodeLoad, decodeRegistration, initHashing, MemoryBus, prefixHashes, subjects, type Bus, type LoadReport } from '@kvgate/protocol';
import { startIndexer, type RunningIndexer } from '@kvgate/indexer';
import { startShim, registryKey, type ShimHandle, type ShimOptions } from '../src/index.js';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { BusView, waitFor } from './fake-engine.js';
import { DpEngine, portPair, vllmArrayBatch, vllmBatch, type DpEv } from './dp-engine.js';

await initHashing();
const MODEL = 'qwen3-8b';
const B = 4;
const S = subjects('default');
const toks = (n: number, base: number) => Array.from({ length: n }, (_, i) => base + i);
/** a 32-byte engine hash (vLLM's default sha256 block hashes are bytes) */
const digest = (i: number) => Uint8Array.from({ length: 32 }, (_, k) => (i * 31 + k * 7) & 0xff);
/** a uint64 engine hash (≥ 2^63, as older vLLM's builtin hash often is) */
const u64 = (i: number) => 0x9000_0000_0000_0000n + BigInt(i) * 0x1_0001n;
const stored = (hashes: (bigint | Uint8Array)[], parent: bigint | Uint8Array | null, tokens: number[]): DpEv => ({ type: 'stored', hashes, parent, tokens, blockSize: B });
const removed = (hashes: (bigint | Uint8Array)[]): DpEv => ({ type: 'removed', hashes });

async function counter(shim: ShimHandle, rank: number, name: string): Promise<number> {
  const text = await shim.ranks[rank]!.metrics.registry.getSingleMetricAsString(`kvgate_shim_${name}`);
  return text.split('\n').filter((l) => l && !l.startsWith('#')).reduce((a, l) => a + Number(l.trim().split(/\s+/).pop()), 0);
}

/** what each rank holds, as the test put it there: worker → prefix hashes */
class Holdings {
  readonly #by = new Map<string, Set<bigint>>();
  add(worker: string, hashes: bigint[]): void {
    const s = this.#by.get(worker) ?? new Set<bigint>();
    for (const h of hashes) s.add(h);
    this.#by.set(worker, s);
  }
  remove(worker: string, hashes: bigint[]): void {
    for (const h of hashes) this.#by.get(worker)?.delete(h);
  }
  /** the overlap an exact index reports for `prompt`: per worker, the held prefix length (0s left out) */
  overlaps(prompt: bigint[]): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [w, s] of this.#by) {
      let n = 0;
      while (n < prompt.length && s.has(prompt[n]!)) n++;
      if (n > 0) out[w] = n;
    }
    return out;
  }
}

function busSuite(kind: 'memory' | 'nats') {
  const t = suite(`shim data parallel, ${kind} bus`);
  let nats: NatsServerHandle | undefined;
  let n = 0;
  t.before(async () => {
    if (kind === 'nats') nats = await startNatsServer();
  });
  t.after(async () => {
    await nats?.stop();
  });

  interface Rig {
    shim: ShimHandle;
    idx: RunningIndexer;
    engine: DpEngine;
    shimBus: Bus;
    worker: string;
    ranks: string[];
    views: BusView[];
    bare: BusView;
    close(): Promise<void>;
  }

  async function rig(shimOpts: Partial<ShimOptions> = {}, metricsText?: string, bind = false): Promise<Rig> {
    const shimBus: Bus = kind === 'memory' ? new MemoryBus() : await connectNats(nats!.url);
    const idxBus: Bus = kind === 'memory' ? shimBus : await connectNats(nats!.url);
    const worker = `dp-${kind}-${++n}`;
    const ranks = [`${worker}-dp0`, `${worker}-dp1`];
    const views = ranks.map((w) => new BusView(shimBus, S.events(w)));
    const bare = new BusView(shimBus, S.events(worker));
    const idx = await startIndexer(idxBus, { gossipIntervalMs: 60_000 });
    const engine = new DpEngine(2, metricsText);
    let shim: ShimHandle | undefined;
    try {
      await idx.whenReady();
      const common = { worker, model: MODEL, blockSize: B, port: -1, scrapeIntervalMs: 50, loadIntervalMs: 100, replayProbeMs: 600_000, dataParallelSize: 2, ...shimOpts } as const;
      if (bind) {
        // the shim binds rank 0's port and rank 1's (port + 1); the engine's ranks connect to them
        // (a ZMQ connect made before the bind is retried until the peer is there)
        const p = await portPair();
        await engine.start({ connectTo: `tcp://127.0.0.1:${p}` });
        shim = await startShim(shimBus, { ...common, engineUrl: engine.url, kvEventsBind: `tcp://127.0.0.1:${p}`, kvReplay: engine.kvReplay });
      } else {
        await engine.start();
        shim = await startShim(shimBus, { ...common, engineUrl: engine.url, kvEvents: engine.kvEvents, kvReplay: engine.kvReplay });
      }
      for (const r of engine.ranks) await r.subscribed();
      // the start-up replay probe of each rank runs shortly after its SUB connects: wait for it, so that every
      // later replay would be a gap's
      for (const r of [0, 1]) await waitFor(async () => (await counter(shim!, r, 'replay_probes_total')) >= 1, `rank ${r}'s start-up replay probe`);
    } catch (e) {
      await shim?.stop().catch(() => undefined);
      await idx.close();
      await engine.close();
      throw e;
    }
    const s = shim;
    return {
      shim: s,
      idx,
      engine,
      shimBus,
      worker,
      ranks,
      views,
      bare,
      async close() {
        await s.stop();
        for (const v of [...views, bare]) v.close();
        await idx.close();
        await engine.close();
        await shimBus.close();
        if (idxBus !== shimBus) await idxBus.close();
      },
    };
  }

  /** each rank's last batch (`last[r]`, prefix hashes) is on the bus, and the indexer applied all they published */
  async function caughtUp(r: Rig, last: bigint[][]): Promise<void> {
    await waitFor(() => r.views.every((v, i) => v.has(last[i]!)), "each rank's last batch relayed");
    await r.shim.idle();
    await waitFor(async () => {
      const d = await r.idx.indexer.digests();
      return r.shim.ranks.every((x) => d[x.worker]?.seq === x.eventSeq);
    }, 'indexer caught up with both ranks');
  }

  t('each rank is its own worker: overlaps equal each rank\'s holdings, other ranks\' batches are counted and dropped, never cleared', async () => {
    const r = await rig();
    try {
      const [w0, w1] = r.ranks as [string, string];
      const base = n * 100_000;
      const A = toks(4 * B, base + 1000);
      const Bp = toks(2 * B, base + 2000);
      const C = toks(3 * B, base + 3000);
      const D = toks(2 * B, base + 4000);
      const E = toks(2 * B, base + 5000);
      const [pA, pB, pC, pD, pE] = [A, Bp, C, D, E].map((x) => prefixHashes(MODEL, '', B, x));
      const hold = new Holdings();
      const [e0, e1] = r.engine.ranks as [(typeof r.engine.ranks)[0], (typeof r.engine.ranks)[0]];

      // both ranks cache the shared prompt A under the same engine hashes (same tokens, same algorithm)
      const hA = [0, 1, 2, 3].map(digest);
      await e0.send(vllmBatch(0, [stored(hA, null, A), stored([u64(10), u64(11)], null, Bp)]));
      hold.add(w0, [...pA!, ...pB!]);
      await e1.send(vllmBatch(1, [stored(hA, null, A), stored([u64(20)], null, C.slice(0, B))]));
      await e1.send(vllmBatch(1, [stored([u64(21), u64(22)], u64(20), C.slice(B))]));
      hold.add(w1, [...pA!, ...pC!]);
      // rank 0 evicts A's last two blocks, rank 1 C's last: the shared engine hashes stay rank 1's
      await e0.send(vllmBatch(0, [removed([hA[2]!, hA[3]!])]));
      hold.remove(w0, [pA![2]!, pA![3]!]);
      await e1.send(vllmBatch(1, [removed([u64(22)])]));
      hold.remove(w1, [pC![2]!]);

      // batches naming another rank: on rank 1's socket one from rank 0's numbering (seq 0, below rank 1's
      // next: a restart, had the relay seen it) that stores D and evicts A's first block; on rank 0's socket an
      // older-encoding (array) one claiming rank 1 that stores E and evicts B's first block
      await e1.sendForeign(0n, vllmBatch(0, [stored([u64(40), u64(41)], null, D), removed([hA[0]!])]));
      await e0.sendForeign(7n, vllmArrayBatch(1, [stored([u64(50), u64(51)], null, E), removed([u64(10)])]));
      // a batch of each rank's own after them: once applied, the foreign ones were seen (one socket keeps order)
      const F = toks(B, base + 6000);
      await e0.send(vllmBatch(0, [stored([u64(60)], null, F)]));
      hold.add(w0, prefixHashes(MODEL, '', B, F));
      await e1.send(vllmArrayBatch(1, [stored([u64(61)], null, F)]));
      const pF = prefixHashes(MODEL, '', B, F);
      hold.add(w1, pF);
      await caughtUp(r, [pF, pF]);

      for (const [name, p] of [['A', pA], ['B', pB], ['C', pC], ['D', pD], ['E', pE], ['F', pF]] as const) {
        const got = (await r.idx.client.match(MODEL, null, p!)).overlaps;
        const want = hold.overlaps(p!);
        assert.equal(Object.fromEntries(Object.entries(got).filter(([, v]) => (v as number) > 0)), want, `prompt ${name}: index ${JSON.stringify(got)} vs engine ${JSON.stringify(want)}`);
      }
      // spelled out once: what the model above says
      assert.equal(hold.overlaps(pA!), { [w0]: 2, [w1]: 4 });
      assert.equal(hold.overlaps(pD!), {});

      const digests = await r.idx.indexer.digests();
      assert.not.ok(r.worker in digests, 'nothing indexed under the bare worker id');
      assert.is(r.bare.batches.length, 0, 'nothing published under the bare worker id');
      for (const [i, v] of r.views.entries()) {
        assert.is(v.cleared, 1, `rank ${i}: only the start-up clear`);
        assert.is(v.seqErrors, 0, `rank ${i}: gap-free kvgate sequence`);
        assert.is(await counter(r.shim, i, 'dp_rank_mismatches_total'), 1, `rank ${i}: the foreign batch counted`);
        assert.is(await counter(r.shim, i, 'gaps_total'), 0, `rank ${i}: no gap`);
        assert.is(await counter(r.shim, i, 'engine_restarts_total'), 0, `rank ${i}: no restart`);
        assert.is(await counter(r.shim, i, 'malformed_frames_total'), 0);
        assert.equal(r.engine.ranks[i]!.replayRequests, [0n], `rank ${i}: its own replay socket, asked once (the start-up probe)`);
      }

      // registrations: one per rank, with dpRank; none under the bare id
      const kv = await r.shimBus.kv(S.workersBucket, { ttlMs: 3000 });
      for (const [i, w] of r.ranks.entries()) {
        const reg = decodeRegistration((await kv.get(registryKey(w)))!);
        assert.is(reg.worker, w);
        assert.is(reg.dpRank, i);
        assert.is(reg.blockSize, B);
        assert.is(reg.model, MODEL);
      }
      assert.is(await kv.get(registryKey(r.worker)), null);
    } finally {
      await r.close();
    }
  });

  t('per-rank load: vLLM engine="<r>" series give each rank its own; without them the totals split evenly', async () => {
    const labelled = `# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="${MODEL}"} 3.0
vllm:num_requests_running{engine="1",model_name="${MODEL}"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="${MODEL}"} 5.0
vllm:num_requests_waiting{engine="1",model_name="${MODEL}"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="${MODEL}"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="${MODEL}"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="${B}",cache_dtype="auto",enable_prefix_caching="True",engine="0",model_name="${MODEL}",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="${B}",cache_dtype="auto",enable_prefix_caching="True",engine="1",model_name="${MODEL}",num_gpu_blocks="800"} 1.0
`;
    const r = await rig({}, labelled);
    const last = new Map<string, LoadReport>();
    const subs = r.ranks.map((w) => r.shimBus.subscribe(S.load(w), { callback: (m) => last.set(w, decodeLoad(m.data)) }));
    const shape = (w: string) => {
      const l = last.get(w);
      return l && { waiting: l.waiting, running: l.running, kvUsage: l.kvUsage, capacityBlocks: l.capacityBlocks };
    };
    try {
      const [w0, w1] = r.ranks as [string, string];
      const want0 = { waiting: 5, running: 3, kvUsage: 0.5, capacityBlocks: 1000 };
      const want1 = { waiting: 0, running: 1, kvUsage: 0.25, capacityBlocks: 800 };
      await waitFor(() => JSON.stringify(shape(w0)) === JSON.stringify(want0) && JSON.stringify(shape(w1)) === JSON.stringify(want1), 'each rank reports its own engine series');
      assert.equal(r.shim.ranks.map((x) => x.load.split ?? false), [false, false]);
      assert.equal(await Promise.all([0, 1].map((i) => counter(r.shim, i, 'load_even_split'))), [0, 0]);
      const kv = await r.shimBus.kv(S.workersBucket, { ttlMs: 3000 });
      await waitFor(async () => decodeRegistration((await kv.get(registryKey(w1)))!).capacityBlocks === 800, 'rank 1 registered with its own capacity');
      assert.is(decodeRegistration((await kv.get(registryKey(w0)))!).capacityBlocks, 1000);

      // an engine (or version) without per-rank series: the server's totals, split over the 2 ranks
      r.engine.metricsText = `vllm:num_requests_running{model_name="${MODEL}"} 4.0
vllm:num_requests_waiting{model_name="${MODEL}"} 6.0
vllm:kv_cache_usage_perc{model_name="${MODEL}"} 0.4
vllm:cache_config_info{block_size="${B}",model_name="${MODEL}",num_gpu_blocks="2000"} 1.0
`;
      const even = { waiting: 3, running: 2, kvUsage: 0.4, capacityBlocks: 1000 };
      await waitFor(() => JSON.stringify(shape(w0)) === JSON.stringify(even) && JSON.stringify(shape(w1)) === JSON.stringify(even), 'each rank reports an even share');
      assert.equal(r.shim.ranks.map((x) => x.load.split), [true, true]);
      assert.equal(await Promise.all([0, 1].map((i) => counter(r.shim, i, 'load_even_split'))), [1, 1]);
      await waitFor(async () => decodeRegistration((await kv.get(registryKey(w1)))!).capacityBlocks === 1000, 'rank 1 re-registered with its share of the capacity');
    } finally {
      for (const s of subs) s.unsubscribe();
      await r.close();
    }
  });

  t('bind mode: the shim binds port + rank, the engine ranks connect; each rank still its own worker', async () => {
    const r = await rig({}, undefined, true);
    try {
      const [w0, w1] = r.ranks as [string, string];
      const base = n * 100_000;
      const X = toks(3 * B, base + 1000);
      const Y = toks(2 * B, base + 2000);
      const [pX, pY] = [X, Y].map((x) => prefixHashes(MODEL, '', B, x));
      const [e0, e1] = r.engine.ranks as [(typeof r.engine.ranks)[0], (typeof r.engine.ranks)[0]];
      await e0.send(vllmBatch(0, [stored([u64(1), u64(2), u64(3)], null, X)]));
      await e1.send(vllmBatch(1, [stored([u64(1), u64(2)], null, X.slice(0, 2 * B)), stored([u64(7), u64(8)], null, Y)]));
      await caughtUp(r, [pX!, pY!]);
      assert.equal((await r.idx.client.match(MODEL, null, pX!)).overlaps, { [w0]: 3, [w1]: 2 });
      assert.equal((await r.idx.client.match(MODEL, null, pY!)).overlaps, { [w1]: 2 });
      for (const [i, v] of r.views.entries()) {
        assert.is(v.cleared, 1, `rank ${i}: only the start-up clear`);
        assert.is(await counter(r.shim, i, 'gaps_total'), 0);
      }
    } finally {
      await r.close();
    }
  });

  return t;
}

busSuite('memory').run();
busSuite('nats').run();
