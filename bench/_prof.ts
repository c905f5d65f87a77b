import { encode, mulberry32 } from '@kvgate/protocol';
import { ShardState } from '@kvgate/indexer/shard-state';
import { decodeBatchInto, DecodedBatch } from '@kvgate/indexer/wire';
const dv = new DecodedBatch();
function randomChain(r: () => number, n: number): BigUint64Array {
  const out = new BigUint64Array(n); const v = new Uint32Array(out.buffer);
  for (let i = 0; i < v.length; i++) v[i] = (r() * 2 ** 32) >>> 0; return out;
}
const r = mulberry32(42);
const WORKERS = 256, SYS = 16, SYS_LEN = 64, LEN = 512, DOCS = 2560;
const systems = Array.from({ length: SYS }, () => randomChain(r, SYS_LEN));
const docs: BigUint64Array[] = [];
for (let d = 0; d < DOCS; d++) { const c = new BigUint64Array(LEN); c.set(systems[d % SYS]!, 0); c.set(randomChain(r, LEN - SYS_LEN), SYS_LEN); docs.push(c); }
const seqs = new Array<number>(WORKERS).fill(0);
const batches: Uint8Array[] = []; let blockEvents = 0;
for (let d = 0; d < DOCS; d++) { const replicas = 1 + Math.floor(r() * 3);
  for (let k = 0; k < replicas; k++) { const w = Math.floor(r() * WORKERS); const held = 64 + Math.floor(r() * (LEN - 64 + 1));
    for (let at = 0; at < held; at += 16) { const hashes = Array.from(docs[d]!.subarray(at, Math.min(held, at + 16))); blockEvents += hashes.length;
      batches.push(encode({ worker: `worker-${w}`, seq: ++seqs[w]!, ts: 0, events: [{ t: 'stored', parent: at === 0 ? null : docs[d]![at - 1]!, hashes }] })); } } }
const modes = (process.argv[2] ?? 'full').split(',');
const REPS = Number(process.argv[3] ?? 10);
const res = new Map<string, number[]>(modes.map((m) => [m, []]));
for (let rep = 0; rep < REPS; rep++) for (const mode of modes) {
  const t0 = process.hrtime.bigint();
  if (mode === 'decode') { let x = 0; for (const b of batches) { decodeBatchInto(b, dv); x += dv.count; } }
  else { const s = new ShardState(); if (mode === 'reserved') s.reserve(1484201); for (const b of batches) s.ingest(b); }
  res.get(mode)!.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
for (const [mode, xs] of res) { xs.sort((a, b) => a - b); console.log(mode.padEnd(10), 'min', xs[0]!.toFixed(0), 'ms', (blockEvents / xs[0]! / 1e3).toFixed(2), 'M/s; q1', xs[xs.length >> 2]!.toFixed(0), 'median', xs[xs.length >> 1]!.toFixed(0)); }
