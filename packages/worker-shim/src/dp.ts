/**
 * Data-parallel ranks (pure): one engine server, `--data-parallel-size N`, runs N schedulers with N KV caches,
 * and each rank publishes its own KV event stream.
 *
 *   offsetEndpoint('tcp://*:5557', 2)  → 'tcp://*:5559'      (what each engine rank binds or connects)
 *   rankWorkerId('pod-a', 1)           → 'pod-a-dp1'          (the worker kvgate publishes for rank 1)
 *   peekDpRank(payload)                → 1 | undefined        (the rank an EventBatch says it is from)
 *
 * Upstream facts (vLLM vllm/distributed/kv_events.py `ZmqEventPublisher.offset_endpoint_port`; SGLang
 * python/sglang/srt/disaggregation/kv_events.py, the same helper per attention-DP rank): rank 0 keeps the
 * endpoint; for rank r > 0 an `inproc` endpoint gets `_dp<r>` appended, a `tcp` endpoint's port (after the last
 * colon) grows by r, anything else is an error. The replay endpoint is offset the same way. Each batch carries
 * the rank: vLLM `data_parallel_rank` (a map key in newer versions, the third array element in older ones),
 * SGLang `attn_dp_rank` (third element of its array batch).
 */
import { KvgateError } from '@kvgate/protocol';

export function offsetEndpoint(endpoint: string, rank: number): string {
  if (rank === 0) return endpoint;
  if (endpoint.includes('inproc')) return `${endpoint}_dp${rank}`;
  if (endpoint.includes('tcp')) {
    const i = endpoint.lastIndexOf(':');
    const port = Number(endpoint.slice(i + 1));
    if (i < 0 || !/^\d+$/.test(endpoint.slice(i + 1)) || port + rank > 65535) {
      throw new KvgateError('KVG_CONFIG', `cannot offset ${endpoint} by data-parallel rank ${rank}: it needs a port, and port + rank must be ≤ 65535`);
    }
    return `${endpoint.slice(0, i)}:${port + rank}`;
  }
  throw new KvgateError('KVG_CONFIG', `cannot offset ${endpoint} by data-parallel rank ${rank}: engines offset only tcp:// ports and inproc:// names`);
}

export function rankWorkerId(worker: string, rank: number): string {
  return `${worker}-dp${rank}`;
}

// ---- peekDpRank: read the batch's rank without decoding its events -----------------------------------------
// A msgpack value is skipped by counting how many values are still owed: containers add their children.
// Every value takes at least one byte, so owing more values than bytes left means the input is short:
// the walk is linear in the payload and allocates nothing.

const RANK_KEYS = [Buffer.from('data_parallel_rank'), Buffer.from('attn_dp_rank')];

class Cursor {
  pos = 0;
  constructor(readonly b: Uint8Array) {}
  u(n: number): number {
    const { b, pos } = this;
    if (pos + n > b.length) throw SHORT;
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + b[pos + i]!;
    this.pos += n;
    return v;
  }
}
const SHORT = new Error('short');

/** Skips `count` values; throws SHORT on truncated or invalid input. */
function skip(c: Cursor, count: number): void {
  let owed = count;
  while (owed > 0) {
    if (owed > c.b.length - c.pos) throw SHORT;
    owed--;
    const t = c.u(1);
    let bytes = 0;
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) continue;
    else if (t <= 0x8f) owed += 2 * (t & 0x0f);
    else if (t <= 0x9f) owed += t & 0x0f;
    else if (t <= 0xbf) bytes = t & 0x1f;
    else if (t === 0xc4 || t === 0xd9) bytes = c.u(1);
    else if (t === 0xc5 || t === 0xda) bytes = c.u(2);
    else if (t === 0xc6 || t === 0xdb) bytes = c.u(4);
    else if (t === 0xc7) bytes = c.u(1) + 1;
    else if (t === 0xc8) bytes = c.u(2) + 1;
    else if (t === 0xc9) bytes = c.u(4) + 1;
    else if (t === 0xca) bytes = 4;
    else if (t === 0xcb) bytes = 8;
    else if (t >= 0xcc && t <= 0xcf) bytes = 1 << (t - 0xcc);
    else if (t >= 0xd0 && t <= 0xd3) bytes = 1 << (t - 0xd0);
    else if (t >= 0xd4 && t <= 0xd8) bytes = 1 + (1 << (t - 0xd4));
    else if (t === 0xdc) owed += c.u(2);
    else if (t === 0xdd) owed += c.u(4);
    else if (t === 0xde) owed += 2 * c.u(2);
    else if (t === 0xdf) owed += 2 * c.u(4);
    else throw SHORT; // 0xc1: never used
    if (c.pos + bytes > c.b.length) throw SHORT;
    c.pos += bytes;
  }
}

/** A non-negative integer, nil (undefined), or anything else (throws). */
function readRank(c: Cursor): number | undefined {
  const t = c.u(1);
  if (t <= 0x7f) return t;
  if (t === 0xc0) return undefined;
  if (t >= 0xcc && t <= 0xcf) return c.u(1 << (t - 0xcc));
  if (t >= 0xd0 && t <= 0xd3) {
    const n = 1 << (t - 0xd0);
    const v = c.u(n);
    if (v >= 2 ** (8 * n - 1)) throw SHORT; // negative
    return v;
  }
  throw SHORT;
}

function containerLength(c: Cursor, fix: number, l16: number, l32: number): number | undefined {
  const t = c.b[c.pos];
  if (t === undefined) return undefined;
  if ((t & 0xf0) === fix) {
    c.pos++;
    return t & 0x0f;
  }
  if (t === l16) return c.pos++, c.u(2);
  if (t === l32) return c.pos++, c.u(4);
  return undefined;
}

function strEquals(c: Cursor, key: Buffer): boolean | undefined {
  const t = c.b[c.pos];
  if (t === undefined) throw SHORT;
  let len: number;
  if (t >= 0xa0 && t <= 0xbf) {
    c.pos++;
    len = t & 0x1f;
  } else if (t === 0xd9) {
    c.pos++;
    len = c.u(1);
  } else return undefined; // not a short string: the caller skips it
  if (c.pos + len > c.b.length) throw SHORT;
  const eq = len === key.length && key.every((x, i) => c.b[c.pos + i] === x);
  c.pos += len;
  return eq;
}

/**
 * The data-parallel rank an engine EventBatch payload names (`[ts, events, rank?, …]` or
 * `{ts, events, data_parallel_rank?, …}`), or undefined when it names none or cannot be read (the relay's
 * decoder then judges the payload as usual).
 */
export function peekDpRank(payload: Uint8Array): number | undefined {
  const c = new Cursor(payload);
  try {
    const head = payload[0];
    if (head === undefined) return undefined;
    if ((head & 0xf0) === 0x90 || head === 0xdc || head === 0xdd) {
      const n = containerLength(c, 0x90, 0xdc, 0xdd)!;
      if (n < 3) return undefined;
      skip(c, 2);
      return readRank(c);
    }
    if ((head & 0xf0) === 0x80 || head === 0xde || head === 0xdf) {
      const n = containerLength(c, 0x80, 0xde, 0xdf)!;
      let found: (number | undefined)[] = [undefined, undefined];
      for (let i = 0; i < n; i++) {
        const start = c.pos;
        let hit = -1;
        for (let k = 0; k < RANK_KEYS.length && hit < 0; k++) {
          c.pos = start;
          const eq = strEquals(c, RANK_KEYS[k]!);
          if (eq === undefined) break;
          if (eq) hit = k;
        }
        if (hit < 0) {
          c.pos = start;
          skip(c, 2);
          continue;
        }
        const v = readRank(c);
        found = hit === 0 ? [v, found[1]] : [found[0], v];
      }
      // the decoder's precedence: data_parallel_rank, then attn_dp_rank
      return found[0] ?? found[1];
    }
    return undefined;
  } catch {
    return undefined;
  }
}
