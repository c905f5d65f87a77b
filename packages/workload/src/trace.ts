/**
 * Mooncake-format traces (one JSON object per line: `timestamp` ms, `input_length`, `output_length`, `hash_ids`
 * of 512-token blocks) and their deterministic mapping to token ids (DESIGN.md section 6): hash id h → 512 token
 * ids from a PRNG seeded by h (mulberry32, ids in [TOKEN_BASE, TOKEN_BASE + TOKEN_SPAN), ordinary Qwen3 vocabulary,
 * no special tokens); the prompt is the concatenation, the last block cut to fit `input_length`.
 */
import { readFileSync } from 'node:fs';
import { KvgateError } from '@kvgate/protocol';

export const TRACE_BLOCK = 512;
export const TOKEN_BASE = 1000;
export const TOKEN_SPAN = 140_000;

export interface TraceRecord {
  /** arrival, ms from the trace start */
  timestamp: number;
  inputLength: number;
  outputLength: number;
  hashIds: number[];
}

export function parseTrace(text: string, source = 'trace'): TraceRecord[] {
  const out: TraceRecord[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.length === 0) continue;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(line) as Record<string, unknown>;
    } catch (e) {
      throw new KvgateError('KVG_CONFIG', `${source}:${i + 1}: not JSON: ${(e as Error).message}`);
    }
    const ts = v.timestamp;
    const inLen = v.input_length;
    const outLen = v.output_length;
    const ids = v.hash_ids;
    const ok =
      typeof ts === 'number' && ts >= 0 &&
      Number.isInteger(inLen) && (inLen as number) > 0 &&
      Number.isInteger(outLen) && (outLen as number) >= 0 &&
      Array.isArray(ids) && ids.every((h) => Number.isInteger(h) && h >= 0) &&
      (ids as number[]).length === Math.ceil((inLen as number) / TRACE_BLOCK);
    if (!ok) throw new KvgateError('KVG_CONFIG', `${source}:${i + 1}: expected {timestamp, input_length, output_length, hash_ids} with ceil(input_length/512) hash ids`);
    out.push({ timestamp: ts as number, inputLength: inLen as number, outputLength: outLen as number, hashIds: ids as number[] });
  }
  out.sort((a, b) => a.timestamp - b.timestamp);
  return out;
}

export function readTrace(path: string): TraceRecord[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new KvgateError('KVG_CONFIG', `cannot read trace ${path}: ${(e as Error).message}`);
  }
  return parseTrace(text, path);
}

/** The 512 token ids of hash id `h` (mulberry32 seeded by h). */
export function blockTokens(h: number, out: number[] = [], at = 0, count = TRACE_BLOCK): number[] {
  let s = (h ^ 0x9e3779b9) >>> 0;
  for (let i = 0; i < count; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    t = (t ^ (t >>> 14)) >>> 0;
    out[at + i] = TOKEN_BASE + (t % TOKEN_SPAN);
  }
  return out;
}

/** The prompt token ids of one record. */
export function recordTokens(r: TraceRecord): number[] {
  const out = new Array<number>(r.inputLength);
  for (let i = 0; i < r.hashIds.length; i++) {
    const at = i * TRACE_BLOCK;
    blockTokens(r.hashIds[i]!, out, at, Math.min(TRACE_BLOCK, r.inputLength - at));
  }
  return out;
}
