/**
 * Prefill/decode disaggregation, the decode side's pure parts (DESIGN.md section 3):
 *   - the prefill target from `x-prefiller-host-port: host:port` (Gateway API inference extension convention);
 *   - the prefill request: the client's request with `kv_transfer_params {do_remote_decode: true}`,
 *     `max_tokens: 1`, `stream: false`, without `stream_options`, `min_tokens` and `min_completion_tokens` (an
 *     engine may refuse a minimum over the maximum of 1; vLLM's disagg proxy examples drop them the same way);
 *   - the transfer descriptor: the prefill response's `kv_transfer_params` (vLLM NixlConnector), checked
 *     for shape and otherwise passed on untouched (opaque), newer fields included (`remote_request_id`,
 *     `remote_num_tokens`, `remote_blocks_expiry_time`, `tp_size`/`pp_size`/`dcp_size`, `remote_block_ids` as one
 *     id list per KV-cache group);
 *   - expiry: a descriptor whose `remote_blocks_expiry_time` (unix seconds) has passed names blocks the prefill
 *     engine has freed: the decode worker prefills locally instead;
 *   - the decode request: the client's request carrying that descriptor;
 *   - the prefill leg's usage (its engine's prefix-cache hit), handed to the router in response headers
 *     (`x-kvgate-prefill-cached-tokens`, `x-kvgate-prefill-prompt-tokens`) for its predicted-vs-actual accounting.
 */
import { KvgateError } from '@kvgate/protocol';

export const PREFILLER_HEADER = 'x-prefiller-host-port';
/** the prefill leg's usage.prompt_tokens_details.cached_tokens and usage.prompt_tokens, on the decode answer */
export const PREFILL_CACHED_HEADER = 'x-kvgate-prefill-cached-tokens';
export const PREFILL_PROMPT_HEADER = 'x-kvgate-prefill-prompt-tokens';

export interface PrefillUsage {
  promptTokens: number | null;
  cachedTokens: number | null;
}

/** the prefill response's usage (OpenAI shape; vLLM reports cached_tokens with --enable-prompt-tokens-details) */
export function prefillUsage(body: unknown): PrefillUsage | null {
  const u = (body as { usage?: unknown } | null)?.usage;
  if (typeof u !== 'object' || u === null) return null;
  const count = (v: unknown) => (Number.isSafeInteger(v) && (v as number) >= 0 ? (v as number) : null);
  const details = (u as { prompt_tokens_details?: unknown }).prompt_tokens_details;
  return {
    promptTokens: count((u as { prompt_tokens?: unknown }).prompt_tokens),
    cachedTokens: typeof details === 'object' && details !== null ? count((details as { cached_tokens?: unknown }).cached_tokens) : null,
  };
}

/** `host:port` or `[v6]:port` → the base URL of the prefill endpoint. Throws KVG_BAD_REQUEST otherwise. */
export function prefillerBaseUrl(header: string): string {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(header.trim());
  const port = m ? Number(m[3]) : 0;
  if (!m || port < 1 || port > 65535) throw new KvgateError('KVG_BAD_REQUEST', `${PREFILLER_HEADER} must be host:port, got ${JSON.stringify(header)}`);
  return m[1] !== undefined ? `http://[${m[1]}]:${port}` : `http://${m[2]}:${port}`;
}

export function prefillRequest(body: Record<string, unknown>, chat: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {
    ...body,
    kv_transfer_params: {
      do_remote_decode: true,
      do_remote_prefill: false,
      remote_engine_id: null,
      remote_block_ids: null,
      remote_host: null,
      remote_port: null,
    },
    stream: false,
    max_tokens: 1,
  };
  delete out.stream_options;
  delete out.min_tokens;
  delete out.min_completion_tokens;
  if (chat && 'max_completion_tokens' in out) out.max_completion_tokens = 1;
  return out;
}

export type TransferDescriptor = Record<string, unknown>;

function isIntArray(v: unknown): boolean {
  return Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && (x as number) >= 0);
}

/**
 * Checks the descriptor's shape: `do_remote_prefill: true`, `remote_engine_id` (string),
 * `remote_block_ids` (ints, or one int list per KV-cache group), `remote_host` (string),
 * `remote_port` (1..65535), `tp_size` (int, optional). Other fields pass through. Throws KVG_BAD_DESCRIPTOR.
 */
export function validateDescriptor(v: unknown): TransferDescriptor {
  const bad = (why: string) => new KvgateError('KVG_BAD_DESCRIPTOR', `prefill returned an invalid kv_transfer_params: ${why}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(v == null ? 'missing' : 'not an object');
  const d = v as Record<string, unknown>;
  if (d.do_remote_prefill !== true) throw bad('do_remote_prefill is not true');
  if (typeof d.remote_engine_id !== 'string' || d.remote_engine_id === '') throw bad('remote_engine_id is not a string');
  const ids = d.remote_block_ids;
  if (!(isIntArray(ids) || (Array.isArray(ids) && ids.every(isIntArray)))) throw bad('remote_block_ids is not a list of block ids');
  if (typeof d.remote_host !== 'string' || d.remote_host === '') throw bad('remote_host is not a string');
  if (!Number.isInteger(d.remote_port) || (d.remote_port as number) < 1 || (d.remote_port as number) > 65535) throw bad('remote_port is not a port');
  for (const k of ['tp_size', 'pp_size', 'dcp_size'] as const) {
    if (d[k] !== undefined && d[k] !== null && !(Number.isInteger(d[k]) && (d[k] as number) > 0)) throw bad(`${k} is not a positive integer`);
  }
  if (d.remote_request_id !== undefined && d.remote_request_id !== null && (typeof d.remote_request_id !== 'string' || d.remote_request_id === '')) throw bad('remote_request_id is not a string');
  if (d.remote_num_tokens !== undefined && d.remote_num_tokens !== null && !(Number.isSafeInteger(d.remote_num_tokens) && (d.remote_num_tokens as number) >= 0)) throw bad('remote_num_tokens is not a token count');
  const exp = d.remote_blocks_expiry_time;
  if (exp !== undefined && exp !== null && !(typeof exp === 'number' && Number.isFinite(exp) && exp > 0)) throw bad('remote_blocks_expiry_time is not a time');
  return d;
}

/** true when the descriptor's `remote_blocks_expiry_time` (unix seconds) is at or before `nowMs` */
export function descriptorExpired(d: TransferDescriptor, nowMs: number): boolean {
  const exp = d.remote_blocks_expiry_time;
  return typeof exp === 'number' && exp * 1000 <= nowMs;
}

/** a short, log-safe summary of a descriptor */
export function describeDescriptor(d: TransferDescriptor): Record<string, unknown> {
  const ids = d.remote_block_ids as unknown[];
  return {
    engine: d.remote_engine_id,
    host: d.remote_host,
    port: d.remote_port,
    blocks: Array.isArray(ids) ? (ids.length > 0 && Array.isArray(ids[0]) ? (ids as unknown[][]).reduce((n, g) => n + g.length, 0) : ids.length) : 0,
    tp: d.tp_size,
    requestId: d.remote_request_id,
    ...(d.remote_num_tokens !== undefined ? { tokens: d.remote_num_tokens } : {}),
    ...(d.remote_blocks_expiry_time !== undefined ? { expires: d.remote_blocks_expiry_time } : {}),
  };
}
