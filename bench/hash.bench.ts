import { HASH_SEED, initHashing, prefixHashes, prefixHashesU64, rootHash } from '@kvgate/protocol';
import type { BenchContext } from './figure.js';

/**
 * hash.prompt8k: kvgate prefix hashes of an 8K-token prompt (B=16, 512 blocks); baseline: one xxh64 over the same bytes.
 * hash.prompt8k.u64: the same as a BigUint64Array (no BigInt per hash); baseline: hash.prompt8k in this run.
 * hash.prompt8k.perBlockCall: the pre-WASM-chain way (xxhash-wasm h64Raw once per block); baseline: hash.prompt8k.
 */
export default async function (ctx: BenchContext): Promise<void> {
  await initHashing();
  const { default: xxhash } = await import('xxhash-wasm');
  const { h64Raw } = await xxhash();
  const tokens = Array.from({ length: 8192 }, (_, i) => (i * 2654435761) >>> 0);
  const bytes = new Uint8Array(new Uint32Array(tokens).buffer);
  const iters = ctx.quick ? 500 : 5000;
  const time = (fn: () => void) => {
    for (let i = 0; i < 200; i++) fn();
    const samples: number[] = [];
    for (let r = 0; r < 5; r++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < iters; i++) fn();
      samples.push(Number(process.hrtime.bigint() - t0) / 1e3 / iters);
    }
    return samples.sort((a, b) => a - b)[2]!;
  };
  // the per-block scheme hashing.ts used before the chain moved into WASM, kept here as a yardstick
  const scratch = new ArrayBuffer(8 + 4 * 16);
  const parentSlot = new BigUint64Array(scratch, 0, 1);
  const slots = new Uint32Array(scratch, 8);
  const block = new Uint8Array(scratch);
  const perBlockCall = () => {
    let p = rootHash('qwen3-8b', '', 16);
    const out = new Array<bigint>(512);
    for (let i = 0; i < 512; i++) {
      parentSlot[0] = p;
      for (let j = 0; j < 16; j++) slots[j] = tokens[i * 16 + j]!;
      out[i] = p = h64Raw(block, HASH_SEED);
    }
    return out;
  };
  if (perBlockCall().at(-1) !== prefixHashes('qwen3-8b', '', 16, tokens).at(-1)) throw new Error('hash bench: yardstick disagrees with prefixHashes');

  const ours = time(() => prefixHashes('qwen3-8b', '', 16, tokens));
  const base = time(() => h64Raw(bytes, 0n));
  ctx.report({ bench: 'hash.prompt8k', value: ours, unit: 'µs', baseline: base, note: '512 chained block hashes vs one xxh64 over the same 32 KiB (median of 5)' });
  const u64 = time(() => prefixHashesU64('qwen3-8b', '', 16, tokens));
  ctx.report({ bench: 'hash.prompt8k.u64', value: u64, unit: 'µs', baseline: ours, note: 'prefixHashesU64 (BigUint64Array, no BigInt per hash) vs prefixHashes' });
  const old = time(perBlockCall);
  ctx.report({ bench: 'hash.prompt8k.perBlockCall', value: old, unit: 'µs', baseline: ours, note: 'old scheme: xxhash-wasm h64Raw once per block, vs prefixHashes (WASM chain)' });
}
