/**
 * Index snapshots on disk: `<dir>/<indexer>.snap`, written atomically (temp file + rename).
 * Format: msgpack {v: 1, indexer, streamSeq, ts, workers: [{worker, seq, blocks: bin (LE u64 [parent, hash] pairs),
 * tiers?: bin (one tier mask byte per pair: 1 gpu, 2 cpu, 4 disk)}]}. `tiers` is absent for a GPU-only worker, so
 * files written before tiers load unchanged (every block on GPU).
 * `streamSeq` is the last stream message applied before the cut: a loader replays from streamSeq + 1.
 * Several replicas may share one directory (a shared volume); a starting replica loads the newest file of any
 * replica (highest streamSeq), so a fresh replica starts from a peer's snapshot.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode, encode, DecodeError } from '@kvgate/protocol';
import type { WorkerState } from './shard-state.js';

export interface Snapshot {
  indexer: string;
  streamSeq: number;
  ts: number;
  workers: WorkerState[];
}

export function encodeSnapshot(s: Snapshot): Uint8Array {
  return encode({
    v: 1,
    indexer: s.indexer,
    streamSeq: s.streamSeq,
    ts: s.ts,
    workers: s.workers.map((w) => ({
      worker: w.worker,
      seq: w.seq,
      blocks: new Uint8Array(w.blocks.buffer, w.blocks.byteOffset, w.blocks.byteLength),
      ...(w.tiers ? { tiers: w.tiers } : {}),
    })),
  });
}

export function decodeSnapshot(bytes: Uint8Array): Snapshot {
  const v = decode(bytes) as Record<string, unknown>;
  if (!v || typeof v !== 'object' || v.v !== 1 || !Array.isArray(v.workers)) throw new DecodeError('not a kvgate index snapshot (v1)');
  return {
    indexer: String(v.indexer),
    streamSeq: Number(v.streamSeq),
    ts: Number(v.ts),
    workers: v.workers.map((w: Record<string, unknown>) => {
      const b = w.blocks as Uint8Array;
      if (!(b instanceof Uint8Array) || b.byteLength % 16 !== 0) throw new DecodeError('snapshot blocks must be 16-byte pairs');
      // copy: the decoded bin may be unaligned inside the file buffer
      const blocks = new BigUint64Array(new Uint8Array(b).buffer);
      const st: WorkerState = { worker: String(w.worker), seq: Number(w.seq), blocks };
      if (w.tiers != null) {
        const t = w.tiers;
        if (!(t instanceof Uint8Array) || t.length * 16 !== b.byteLength) throw new DecodeError('snapshot tiers must be one byte per block');
        for (let i = 0; i < t.length; i++) if (t[i]! < 1 || t[i]! > 7) throw new DecodeError(`snapshot tiers[${i}] must be a tier mask in 1..7`);
        st.tiers = new Uint8Array(t);
      }
      return st;
    }),
  };
}

export function writeSnapshot(dir: string, s: Snapshot): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${s.indexer}.snap`);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, encodeSnapshot(s));
  renameSync(tmp, file);
  return file;
}

/** newest readable snapshot in dir (highest streamSeq), or null */
export function readNewestSnapshot(dir: string): Snapshot | null {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.snap'));
  } catch {
    return null;
  }
  let best: Snapshot | null = null;
  for (const n of names) {
    try {
      const s = decodeSnapshot(readFileSync(join(dir, n)));
      if (!best || s.streamSeq > best.streamSeq) best = s;
    } catch {
      /* a torn or foreign file: skip it */
    }
  }
  return best;
}
