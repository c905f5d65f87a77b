/**
 * A tiny WebAssembly module, assembled here byte by byte, that computes a whole chain of kvgate block
 * hashes (DESIGN.md section 2) in one call:
 *
 *   chain(parent: i64, tok: i32, n: i32, blockBytes: i32, out: i32, seed: i64) -> i64
 *     for i in 0..n:  p = xxh64(le64(p) ‖ tokens of block i, seed);  out[i] = p
 *
 * Why not xxhash-wasm's h64Raw once per block (what hashing.ts did first): the cost is per call — copy
 * the input into WASM memory, cross the JS↔WASM boundary, convert the i64 result into a BigInt — about
 * 200 ns × 512 blocks for an 8K-token prompt. Here the tokens are copied into linear memory once, the loop
 * runs inside WASM (~22 ns per 16-token block, close to XXH64's own serial latency on 72 bytes), and the
 * results land in memory as uint64, read as BigInt only if the caller wants BigInts.
 * Why not plain JS: XXH64 needs ~35 64-bit multiplies per block; with 32-bit limbs each is ~10 Math.imul
 * plus carries (an estimate, not built), and BigInt arithmetic allocates. WASM has native i64.mul/rotl.
 * The XXH64 round is emitted inline: calling it as a WASM function cost ~half the chain time in V8.
 *
 * The chain writes p_{i-1} into the 8 bytes just before block i's tokens, so the hashed input
 * `le64(p) ‖ tokens` is contiguous without any copy; those 8 bytes belonged to blocks already hashed
 * (or to the 8-byte gap reserved before the first block). The token area is clobbered: scratch only.
 *
 * `xxh64(ptr, len, seed)` is exported as well (general XXH64 over memory), for tests and the start-up
 * cross-check against xxhash-wasm.
 */

// XXH64 primes
const P1 = 11400714785074694791n;
const P2 = 14029467366897019727n;
const P3 = 1609587929392839161n;
const P4 = 9650029242287828579n;
const P5 = 2870177450012600261n;
const M64 = (1n << 64n) - 1n;

// ---- a minimal assembler ---------------------------------------------------------------------------
const I32 = 0x7f, I64 = 0x7e;
const op = {
  block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, br_if: 0x0d, call: 0x10,
  local_get: 0x20, local_set: 0x21, local_tee: 0x22,
  i64_load: 0x29, i64_load8_u: 0x31, i64_load32_u: 0x35, i64_store: 0x37,
  i32_const: 0x41, i64_const: 0x42,
  i32_ge_u: 0x4f, i32_gt_u: 0x4b, i32_le_u: 0x4d,
  i32_add: 0x6a, i32_sub: 0x6b, i32_shl: 0x74,
  i64_add: 0x7c, i64_sub: 0x7d, i64_mul: 0x7e, i64_xor: 0x85, i64_shr_u: 0x88, i64_rotl: 0x89,
  i64_extend_i32_u: 0xad,
} as const;
const VOID = 0x40;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}
function sleb(v: bigint): number[] {
  const out: number[] = [];
  for (;;) {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    if ((v === 0n && (b & 0x40) === 0) || (v === -1n && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}
/** i64.const of an unsigned 64-bit value (WASM constants are signed LEB128) */
const k64 = (v: bigint) => [op.i64_const, ...sleb(BigInt.asIntN(64, v & M64))];
const k32 = (v: number) => [op.i32_const, ...sleb(BigInt(v))];
const get = (i: number) => [op.local_get, ...uleb(i)];
const set = (i: number) => [op.local_set, ...uleb(i)];
const tee = (i: number) => [op.local_tee, ...uleb(i)];
const mem = (o: number, offset = 0) => [o, 0, ...uleb(offset)]; // align hint 0: always valid
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const name = (s: string) => vec([...s].map((c) => [c.charCodeAt(0)]));

const F_XXH64 = 0, F_CHAIN = 1;

// round(acc, lane) = rotl(acc + lane * P2, 31) * P1, emitted inline (stack: acc, lane → result):
// a WASM call per round cost ~40% of the chain's time in V8 (no cross-function inlining there).
const ROUND = [...k64(P2), op.i64_mul, op.i64_add, ...k64(31n), op.i64_rotl, ...k64(P1), op.i64_mul];

// xxh64(ptr: 0, len: 1, seed: 2) locals: end 3, limit 4, v1..v4 5..8, h 9
function xxh64Body(): number[] {
  const [PTR, LEN, SEED, END, LIMIT, V1, V2, V3, V4, H] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const lane = (v: number, off: number) => [...get(v), ...get(PTR), ...mem(op.i64_load, off), ...ROUND, ...set(v)];
  const merge = (v: number) => [...get(H), ...k64(0n), ...get(v), ...ROUND, op.i64_xor, ...k64(P1), op.i64_mul, ...k64(P4), op.i64_add, ...set(H)];
  const rot = (v: number, r: number) => [...get(v), ...k64(BigInt(r)), op.i64_rotl];
  const avalanche = (shift: number, prime: bigint | null) => [...get(H), ...get(H), ...k64(BigInt(shift)), op.i64_shr_u, op.i64_xor, ...(prime === null ? [] : [...k64(prime), op.i64_mul, ...set(H)])];
  return [
    ...vec([[2, I32], [5, I64]]), // locals: end, limit (i32); v1..v4, h (i64)
    ...get(PTR), ...get(LEN), op.i32_add, ...set(END),
    ...get(LEN), ...k32(32), op.i32_ge_u,
    op.if, VOID,
      ...get(SEED), ...k64(P1 + P2), op.i64_add, ...set(V1),
      ...get(SEED), ...k64(P2), op.i64_add, ...set(V2),
      ...get(SEED), ...set(V3),
      ...get(SEED), ...k64(P1), op.i64_sub, ...set(V4),
      ...get(END), ...k32(32), op.i32_sub, ...set(LIMIT),
      op.loop, VOID,
        ...lane(V1, 0), ...lane(V2, 8), ...lane(V3, 16), ...lane(V4, 24),
        ...get(PTR), ...k32(32), op.i32_add, ...tee(PTR), ...get(LIMIT), op.i32_le_u, op.br_if, 0,
      op.end,
      ...rot(V1, 1), ...rot(V2, 7), op.i64_add, ...rot(V3, 12), op.i64_add, ...rot(V4, 18), op.i64_add, ...set(H),
      ...merge(V1), ...merge(V2), ...merge(V3), ...merge(V4),
    op.else,
      ...get(SEED), ...k64(P5), op.i64_add, ...set(H),
    op.end,
    ...get(H), ...get(LEN), op.i64_extend_i32_u, op.i64_add, ...set(H),
    // 8-byte words
    op.block, VOID, op.loop, VOID,
      ...get(PTR), ...k32(8), op.i32_add, ...get(END), op.i32_gt_u, op.br_if, 1,
      ...get(H), ...k64(0n), ...get(PTR), ...mem(op.i64_load), ...ROUND, op.i64_xor, ...k64(27n), op.i64_rotl, ...k64(P1), op.i64_mul, ...k64(P4), op.i64_add, ...set(H),
      ...get(PTR), ...k32(8), op.i32_add, ...set(PTR),
      op.br, 0,
    op.end, op.end,
    // one 4-byte word
    ...get(PTR), ...k32(4), op.i32_add, ...get(END), op.i32_le_u,
    op.if, VOID,
      ...get(H), ...get(PTR), ...mem(op.i64_load32_u), ...k64(P1), op.i64_mul, op.i64_xor, ...k64(23n), op.i64_rotl, ...k64(P2), op.i64_mul, ...k64(P3), op.i64_add, ...set(H),
      ...get(PTR), ...k32(4), op.i32_add, ...set(PTR),
    op.end,
    // bytes
    op.block, VOID, op.loop, VOID,
      ...get(PTR), ...get(END), op.i32_ge_u, op.br_if, 1,
      ...get(H), ...get(PTR), ...mem(op.i64_load8_u), ...k64(P5), op.i64_mul, op.i64_xor, ...k64(11n), op.i64_rotl, ...k64(P1), op.i64_mul, ...set(H),
      ...get(PTR), ...k32(1), op.i32_add, ...set(PTR),
      op.br, 0,
    op.end, op.end,
    ...avalanche(33, P2), ...avalanche(29, P3), ...avalanche(32, null),
    op.end,
  ];
}

// chain(parent: 0, tok: 1, n: 2, blockBytes: 3, out: 4, seed: 5) locals: ptr 6, end 7
function chainBody(): number[] {
  const [P, TOK, N, BB, OUT, SEED, PTR, END] = [0, 1, 2, 3, 4, 5, 6, 7];
  return [
    ...vec([[2, I32]]),
    ...get(TOK), ...k32(8), op.i32_sub, ...set(PTR),
    ...get(OUT), ...get(N), ...k32(3), op.i32_shl, op.i32_add, ...set(END),
    op.block, VOID, op.loop, VOID,
      ...get(OUT), ...get(END), op.i32_ge_u, op.br_if, 1,
      ...get(PTR), ...get(P), ...mem(op.i64_store),
      ...get(PTR), ...get(BB), ...k32(8), op.i32_add, ...get(SEED), op.call, F_XXH64, ...set(P),
      ...get(OUT), ...get(P), ...mem(op.i64_store),
      ...get(OUT), ...k32(8), op.i32_add, ...set(OUT),
      ...get(PTR), ...get(BB), op.i32_add, ...set(PTR),
      op.br, 0,
    op.end, op.end,
    ...get(P),
    op.end,
  ];
}

function moduleBytes(): Uint8Array {
  const fn = (body: number[]) => [...uleb(body.length), ...body];
  const types = vec([
    [0x60, ...vec([[I32], [I32], [I64]]), ...vec([[I64]])], // xxh64
    [0x60, ...vec([[I64], [I32], [I32], [I32], [I32], [I64]]), ...vec([[I64]])], // chain
  ]);
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, types),
    ...section(3, vec([[0], [1]])),
    ...section(5, vec([[0x00, 1]])), // one memory, min 1 page, grown from JS
    ...section(7, vec([[...name('memory'), 0x02, 0], [...name('xxh64'), 0x00, F_XXH64], [...name('chain'), 0x00, F_CHAIN]])),
    ...section(10, vec([fn(xxh64Body()), fn(chainBody())])),
  ]);
}

/** The slice of the WebAssembly JS API used here (the project's TS libs carry no WebAssembly types). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  instantiate(bytes: Uint8Array): Promise<{ instance: { exports: unknown } }>;
}

export interface Xxh64Wasm {
  memory: WasmMemory;
  /** XXH64 of memory[ptr, ptr+len); the i64 result arrives signed: wrap with BigInt.asUintN(64, ·) */
  xxh64(ptr: number, len: number, seed: bigint): bigint;
  /** see the file comment; needs 8 writable bytes before `tok`; returns the last hash, signed (or `parent` if n = 0) */
  chain(parent: bigint, tok: number, n: number, blockBytes: number, out: number, seed: bigint): bigint;
}

export async function loadXxh64Wasm(): Promise<Xxh64Wasm> {
  const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
  const { instance } = await wasm.instantiate(moduleBytes());
  return instance.exports as Xxh64Wasm;
}
