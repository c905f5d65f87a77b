/**
 * index.*: the prefix index (packages/indexer) against the naive Map/Set reference, same workload, same run.
 *
 * Workload (seeded): 256 workers, 16 system prompts of 64 blocks, 2,560 documents of 512 blocks (system prompt +
 * 448 own blocks). Each document is cached on 1–3 workers, each holding a random leading part (64–512 blocks):
 * ≈ 1.2 M (block, worker) entries. It arrives as msgpack EventBatches of 16-block `stored` events (the shim's wire
 * format), which is what index.ingest times (decode + apply). Match prompts are 512 blocks: 70 % a cached
 * document, 20 % a system prompt with a new tail, 10 % nothing cached.
 *
 * index.shard.byWorker: the sharding choice. Two shards in one thread, split by worker (each walks its own
 * workers, answers merge) against the baseline split by prefix hash (a walk must ask the owning shard for every
 * block's holders and intersect centrally) — both without any messaging cost, so the gap is structural.
 * index.match.threads: the same match through 2 worker-thread shards (postMessage round trip included).
 *
 * index.*.tiered: the same workload on engines with a CPU offload tier (vLLM's OffloadingConnector): every
 * (document, worker) placement is also stored on CPU, over a longer leading part than the GPU holds (the GPU
 * part plus 0–all of the rest), as `stored` events with `tier: 'cpu'`. A block on both tiers is one entry with
 * a two-tier mask; match answers GPU depths plus the cumulative cpu/disk reach (the tiered walk). Baselines:
 * the GPU-only figures of the same run.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { encode, decodeEventBatch, mulberry32 } from '@kvgate/protocol';
import { ShardState } from '@kvgate/indexer/shard-state';
import { NaiveIndex } from '@kvgate/indexer/naive';
import { PrefixIndex } from '@kvgate/indexer/radix';
import { ShardSet, shardOf } from '@kvgate/indexer/shards';
import { decodeBatchFast } from '@kvgate/indexer/wire';
import { percentile, type BenchContext } from './figure.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;


function randomChain(r: () => number, n: number): BigUint64Array {
  const out = new BigUint64Array(n);
  const v = new Uint32Array(out.buffer);
  for (let i = 0; i < v.length; i++) v[i] = (r() * 2 ** 32) >>> 0;
  return out;
}

function memory(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

export default async function (ctx: BenchContext): Promise<void> {
  const r = mulberry32(42);
  const WORKERS = 256, SYS = 16, SYS_LEN = 64, LEN = 512;
  const DOCS = ctx.quick ? 400 : 2560;
  const systems = Array.from({ length: SYS }, () => randomChain(r, SYS_LEN));
  const docs: BigUint64Array[] = [];
  for (let d = 0; d < DOCS; d++) {
    const c = new BigUint64Array(LEN);
    c.set(systems[d % SYS]!, 0);
    c.set(randomChain(r, LEN - SYS_LEN), SYS_LEN);
    docs.push(c);
  }
  // who caches what, as wire batches
  const seqs = new Array<number>(WORKERS).fill(0);
  const batches: Uint8Array[] = [];
  let blockEvents = 0;
  /** Σ blocks the workers' engines were given: the KV capacity they register (a full cache at steady state) */
  let capacity = 0;
  /** (document, worker, blocks held on GPU): the tiered variant below adds each worker's CPU tier to these */
  const placements: [d: number, w: number, held: number][] = [];
  for (let d = 0; d < DOCS; d++) {
    const replicas = 1 + Math.floor(r() * 3);
    for (let k = 0; k < replicas; k++) {
      const w = Math.floor(r() * WORKERS);
      const held = 64 + Math.floor(r() * (LEN - 64 + 1));
      capacity += held;
      placements.push([d, w, held]);
      for (let at = 0; at < held; at += 16) {
        const hashes = Array.from(docs[d]!.subarray(at, Math.min(held, at + 16)));
        blockEvents += hashes.length;
        batches.push(encode({ worker: `worker-${w}`, seq: ++seqs[w]!, ts: 0, events: [{ t: 'stored', parent: at === 0 ? null : docs[d]![at - 1]!, hashes }] }));
      }
    }
  }
  ctx.progress(`${batches.length} batches, ${blockEvents} block events`);

  // ---- ingest + memory: ours -------------------------------------------------------------------
  /** CPU seconds of this thread's process since `c0` (a co-tenant steals wall time, not CPU time) */
  const cpuSince = (c0: NodeJS.CpuUsage) => {
    const c = process.cpuUsage(c0);
    return (c.user + c.system) / 1e6;
  };
  /**
   * One timed build (decode + apply of every batch). `sized`: the index was sized from the capacity the workers
   * registered, as the indexer does on registration (ShardSet.reserve); otherwise it starts empty and its hash
   * table doubles (rehashes) as it fills.
   */
  const build = (sized: boolean) => {
    const s = new ShardState();
    if (sized) s.reserve(capacity);
    const t = process.hrtime.bigint(), c = process.cpuUsage();
    for (const b of batches) s.ingest(b);
    return { s, secs: Number(process.hrtime.bigint() - t) / 1e9, cpu: cpuSince(c) };
  };
  const before = memory();
  const first = build(true);
  const shard = first.s, st = shard.stats();
  const oursBytes = (memory() - before) / st.entries;
  // throw-away builds, alternating sized / unsized: best of each (this machine is shared; the minimum is the
  // least disturbed run)
  let oursSecs = first.secs, oursCpu = first.cpu, coldSecs = Infinity;
  for (let k = 0; k < (ctx.quick ? 2 : 4); k++) {
    const a = build(true);
    oursSecs = Math.min(oursSecs, a.secs);
    oursCpu = Math.min(oursCpu, a.cpu);
    coldSecs = Math.min(coldSecs, build(false).secs);
  }
  ctx.progress(`ours: ${st.entries} entries, ${st.nodes} prefixes, ${(oursSecs * 1000).toFixed(0)} ms`);

  // ---- ingest + memory: naive (reference decoder + Map/Set index) ------------------------------
  const before2 = memory();
  const naiveRef: { current: NaiveIndex | null } = { current: new NaiveIndex() };
  const naive = naiveRef.current!;
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  for (const bytes of batches) {
    const b = decodeEventBatch(bytes);
    for (const ev of b.events) if (ev.t === 'stored') naive.store(b.worker, ev.parent, ev.hashes);
  }
  const naiveSecs = Number(process.hrtime.bigint() - t0) / 1e9;
  const naiveCpu = cpuSince(c0);
  const naiveBytes = (memory() - before2) / naive.entries;
  if (naive.entries !== st.entries) throw new Error(`bench workload mismatch: ${naive.entries} vs ${st.entries}`);

  ctx.report({ bench: 'index.ingest', value: blockEvents / oursSecs, unit: 'blocks/s', baseline: blockEvents / naiveSecs, note: `decode + apply, 16-block stored events, ${st.entries} entries, index sized from the registered capacity (${capacity} blocks), best of ${ctx.quick ? 3 : 5} builds (wall clock); baseline msgpackr + Map/Set` });
  ctx.report({ bench: 'index.ingest.unsized', value: blockEvents / coldSecs, unit: 'blocks/s', baseline: blockEvents / naiveSecs, note: `the same from an index that was not sized: its hash table doubles and rehashes while it fills (a cluster's first minutes); best of ${ctx.quick ? 2 : 4}` });
  ctx.report({ bench: 'index.ingest.cpu', value: blockEvents / oursCpu, unit: 'blocks/s', baseline: blockEvents / naiveCpu, note: 'the same, per CPU second of the process (less sensitive to other load on the machine; includes GC threads)' });
  ctx.report({ bench: 'index.bytesPerEntry', value: oursBytes, unit: 'B', baseline: naiveBytes, note: `heap+arrayBuffers delta / (block, worker) entries; ${st.nodes} prefixes, ${(st.entries / st.nodes).toFixed(2)} workers per prefix` });

  // ---- match ------------------------------------------------------------------------------------
  const queries: BigUint64Array[] = [];
  for (let q = 0; q < (ctx.quick ? 1000 : 5000); q++) {
    const x = r();
    if (x < 0.7) queries.push(docs[Math.floor(r() * DOCS)]!);
    else if (x < 0.9) {
      const c = randomChain(r, LEN);
      c.set(systems[Math.floor(r() * SYS)]!, 0);
      queries.push(c);
    } else queries.push(randomChain(r, LEN));
  }
  /** per-query latencies (µs) of the round, out of three, with the lowest p50 (shared machine: least disturbed) */
  const time = (fn: (q: BigUint64Array) => unknown, qs: BigUint64Array[]) => {
    for (let i = 0; i < Math.min(500, qs.length); i++) fn(qs[i]!);
    let best: number[] = [];
    for (let round = 0; round < 3; round++) {
      const xs: number[] = [];
      for (const q of qs) {
        const s = process.hrtime.bigint();
        fn(q);
        xs.push(Number(process.hrtime.bigint() - s) / 1e3);
      }
      if (best.length === 0 || percentile(xs, 50) < percentile(best, 50)) best = xs;
    }
    return best;
  };
  const lookups0 = shard.stats().matchLookups;
  for (const q of queries) shard.match(q);
  const lookups = (shard.stats().matchLookups - lookups0) / queries.length;
  const ours = time((q) => shard.match(q), queries);
  const naiveQs = queries.slice(0, ctx.quick ? 300 : 1000).map((q) => Array.from(q));
  const base = time((q) => naive.match(q as unknown as bigint[]), naiveQs as unknown as BigUint64Array[]);
  // the naive walk (and this index before the run scan) does one hash lookup per prefix it walks
  let walked = 0;
  for (const q of queries) {
    const ds = Object.values(naive.match(q as unknown as bigint[]));
    const deepest = ds.length ? Math.max(...ds) : 0;
    walked += Math.min(q.length, deepest + 1);
  }
  naiveRef.current = null;
  let hitBlocks = 0;
  for (const q of queries.slice(0, 200)) {
    const [, ds] = shard.match(q);
    hitBlocks += ds.length ? Math.max(...ds) : 0;
  }
  const note = `512-block prompts, ${st.entries} entries, ${WORKERS} workers, mean best overlap ${(hitBlocks / 200).toFixed(0)} blocks; best of 3 rounds`;
  ctx.report({ bench: 'index.match.p50', value: percentile(ours, 50), unit: 'µs', baseline: percentile(base, 50), note });
  ctx.report({ bench: 'index.match.p99', value: percentile(ours, 99), unit: 'µs', baseline: percentile(base, 99), note });
  ctx.report({ bench: 'index.match.lookups', value: lookups, unit: 'lookups', baseline: walked / queries.length, note: 'mean hash-table lookups per match (CPU-independent); baseline: one per prefix walked (naive index)' });

  // ---- sharding: by worker vs by prefix (two shards, one thread, no messaging) ----------------------
  const byWorker = [new PrefixIndex(), new PrefixIndex()];
  const byPrefix = [new PrefixIndex(), new PrefixIndex()];
  for (const bytes of batches) {
    const b = decodeBatchFast(bytes);
    const pairs = b.hashes(0), pLo = b.parentLo[0]!, pHi = b.parentHi[0]!;
    const wx = byWorker[shardOf(b.worker, 2)]!;
    wx.storePairs(wx.ordinal(b.worker), pLo, pHi, pairs, 0, pairs.length >>> 1);
    for (let i = 0; i < pairs.length; i += 2) {
      const px = byPrefix[pairs[i]! & 1]!;
      px.storePairs(px.ordinal(b.worker), i ? pairs[i - 2]! : pLo, i ? pairs[i - 1]! : pHi, pairs, i >>> 1, 1);
    }
  }
  const matchByWorker = (q: BigUint64Array) => {
    const pairs = new Uint32Array(q.buffer, q.byteOffset, q.length * 2);
    const out: Record<string, number> = {};
    for (const ix of byWorker) {
      const k = ix.matchPairs(pairs, q.length);
      for (let i = 0; i < k; i++) out[ix.resultWorker(i)] = ix.resultDepth(i);
    }
    return out;
  };
  const matchByPrefix = (q: BigUint64Array) => {
    const pairs = new Uint32Array(q.buffer, q.byteOffset, q.length * 2);
    const out: Record<string, number> = {};
    let alive: Set<string> | null = null;
    for (let i = 0; i < q.length; i++) {
      const ix = byPrefix[pairs[2 * i]! & 1]!;
      const k = ix.matchPairs(pairs.subarray(2 * i, 2 * i + 2), 1);
      const here = new Set<string>();
      for (let j = 0; j < k; j++) here.add(ix.resultWorker(j));
      const next: Set<string> = alive === null ? here : new Set([...alive].filter((w) => here.has(w)));
      if (next.size === 0) break;
      for (const w of next) out[w] = i + 1;
      alive = next;
    }
    return out;
  };
  const shardQs = queries.slice(0, ctx.quick ? 300 : 1500);
  for (const q of shardQs.slice(0, 50)) {
    const x = JSON.stringify(matchByWorker(q)), y = JSON.stringify(matchByPrefix(q));
    if (JSON.stringify(Object.entries(JSON.parse(x)).sort()) !== JSON.stringify(Object.entries(JSON.parse(y)).sort())) throw new Error('shard variants disagree');
  }
  const sw = time(matchByWorker, shardQs), sp = time(matchByPrefix, shardQs);
  ctx.report({ bench: 'index.shard.byWorker.p50', value: percentile(sw, 50), unit: 'µs', baseline: percentile(sp, 50), note: '2 shards in one thread; baseline: 2 shards split by prefix hash (walk crosses shards per block)' });
  byWorker.length = 0;
  byPrefix.length = 0;

  // ---- the same match through worker-thread shards ----------------------------------------------------
  const threads = ShardSet.create(2);
  try {
    for (const bytes of batches) threads.ingest(decodeBatchFast(bytes).worker, bytes);
    await threads.stats(); // barrier: every ingest before it has been applied
    const tq = queries.slice(0, ctx.quick ? 200 : 1000);
    for (const q of tq.slice(0, 100)) await threads.match(q);
    const xs: number[] = [];
    for (const q of tq) {
      const s0 = process.hrtime.bigint();
      await threads.match(q);
      xs.push(Number(process.hrtime.bigint() - s0) / 1e3);
    }
    ctx.report({ bench: 'index.match.threads.p50', value: percentile(xs, 50), unit: 'µs', baseline: percentile(ours, 50), note: '2 worker-thread shards (postMessage round trip, fan-out + merge); baseline: one inline shard' });
  } finally {
    await threads.close();
  }

  // ---- tiers: the same workload with a CPU offload tier ---------------------------------------------
  const r2 = mulberry32(43);
  const tseqs = new Array<number>(WORKERS).fill(0);
  const tBatches: Uint8Array[] = [];
  let tEvents = 0;
  const push = (w: number, d: number, from: number, to: number, tier?: 'cpu') => {
    for (let at = from; at < to; at += 16) {
      const hashes = Array.from(docs[d]!.subarray(at, Math.min(to, at + 16)));
      tEvents += hashes.length;
      tBatches.push(encode({ worker: `worker-${w}`, seq: ++tseqs[w]!, ts: 0, events: [{ t: 'stored', parent: at === 0 ? null : docs[d]![at - 1]!, hashes, ...(tier ? { tier } : {}) }] }));
    }
  };
  for (const [d, w, held] of placements) {
    push(w, d, 0, held);
    push(w, d, 0, held + Math.floor(r2() * (LEN - held + 1)), 'cpu');
  }
  const tBuild = () => {
    const s = new ShardState();
    s.reserve(capacity * 2);
    const t = process.hrtime.bigint();
    for (const b of tBatches) s.ingest(b);
    return { s, secs: Number(process.hrtime.bigint() - t) / 1e9 };
  };
  const tBefore = memory();
  const tFirst = tBuild();
  const tShard = tFirst.s, tst = tShard.stats();
  const tBytes = (memory() - tBefore) / tst.entries;
  let tSecs = tFirst.secs;
  for (let k = 0; k < (ctx.quick ? 1 : 3); k++) tSecs = Math.min(tSecs, tBuild().secs);
  ctx.progress(`tiered: ${tst.entries} entries, ${tEvents} block events, ${(tSecs * 1000).toFixed(0)} ms`);
  // the GPU answer must not change when CPU copies are added
  let cpuReach = 0;
  for (const q of queries.slice(0, 200)) {
    const [ws, ds] = shard.match(q), [tws, tds, tiered] = tShard.match(q);
    const gpu = new Map(ws.map((w, i) => [w, ds[i]!])), tgpu = new Map(tws.map((w, i) => [w, tds[i]!]));
    for (const [w, n] of gpu) if (tgpu.get(w) !== n) throw new Error(`tiered bench: GPU depth of ${w} ${tgpu.get(w)} ≠ ${n}`);
    cpuReach += tiered ? Math.max(0, ...tiered.map((t) => t.tiers.cpu)) : 0;
  }
  const tMatch = time((q) => tShard.match(q), queries);
  const tNote = `GPU + CPU tier, ${tst.entries} entries (${tEvents} block events), mean deepest CPU reach ${(cpuReach / 200).toFixed(0)} blocks; baseline: GPU only, same queries`;
  ctx.report({ bench: 'index.ingest.tiered', value: tEvents / tSecs, unit: 'blocks/s', baseline: blockEvents / oursSecs, note: `decode + apply of GPU and CPU-tier stored events, best of ${ctx.quick ? 2 : 4}; baseline: index.ingest (GPU only)` });
  ctx.report({ bench: 'index.bytesPerEntry.tiered', value: tBytes, unit: 'B', baseline: oursBytes, note: `${tst.nodes} prefixes; baseline: index.bytesPerEntry (GPU only)` });
  ctx.report({ bench: 'index.match.tiered.p50', value: percentile(tMatch, 50), unit: 'µs', baseline: percentile(ours, 50), note: tNote });
  ctx.report({ bench: 'index.match.tiered.p99', value: percentile(tMatch, 99), unit: 'µs', baseline: percentile(ours, 99), note: tNote });
}
