/**
 * P/D disaggregation, vLLM NixlConnector style. The descriptor exchange is real; the byte movement is modelled.
 *
 * Prefill side: a request with kv_transfer_params {do_remote_decode: true} runs its prefill, keeps its blocks,
 * and answers with the transfer descriptor in its own kv_transfer_params.
 * Decode side: a request carrying that descriptor makes one real HTTP call to the prefill engine's internal
 * pull endpoint (which checks the descriptor, hands over the prompt and releases the blocks), waits
 * latency + bytes / bandwidth of simulated time for the blocks it lacks, then decodes without a local prefill.
 */
import { request } from 'undici';
import { KvgateError } from '@kvgate/protocol';

export const PULL_PATH = '/internal/kv/pull';

/** What a prefill response carries and a decode request sends back (vLLM NixlConnector field names). */
export interface TransferDescriptor {
  do_remote_prefill: true;
  do_remote_decode: false;
  remote_engine_id: string;
  remote_block_ids: number[];
  remote_host: string;
  remote_port: number;
  tp_size: number;
  remote_request_id: string;
  /** newer vLLM: the prompt tokens the blocks hold, and when (unix seconds) the prefill side frees them */
  remote_num_tokens?: number;
  remote_blocks_expiry_time?: number;
}

export interface PullRequest {
  remote_request_id: string;
  remote_block_ids: number[];
  /** the decode engine asking (for logs) */
  engine_id: string;
}

export interface PullReply {
  engine_id: string;
  block_size: number;
  block_ids: number[];
  prompt_token_ids: number[];
}

function bad(message: string): KvgateError {
  return new KvgateError('KVG_BAD_DESCRIPTOR', message);
}

/** Validates a decode request's kv_transfer_params; throws KVG_BAD_DESCRIPTOR naming the faulty field. */
export function parseDescriptor(v: Record<string, unknown>): TransferDescriptor {
  const str = (k: string): string => {
    const x = v[k];
    if (typeof x !== 'string' || x === '') throw bad(`kv_transfer_params.${k} must be a non-empty string`);
    return x;
  };
  const ids = v.remote_block_ids;
  if (!Array.isArray(ids) || ids.length === 0 || !ids.every((x) => Number.isInteger(x) && x >= 0)) throw bad('kv_transfer_params.remote_block_ids must be a non-empty array of block ids');
  const port = v.remote_port;
  if (!Number.isInteger(port) || (port as number) <= 0 || (port as number) > 65535) throw bad('kv_transfer_params.remote_port must be a TCP port');
  const tp = v.tp_size ?? 1;
  if (!Number.isInteger(tp) || (tp as number) < 1) throw bad('kv_transfer_params.tp_size must be a positive integer');
  return {
    do_remote_prefill: true,
    do_remote_decode: false,
    remote_engine_id: str('remote_engine_id'),
    remote_block_ids: ids as number[],
    remote_host: str('remote_host'),
    remote_port: port as number,
    tp_size: tp as number,
    remote_request_id: str('remote_request_id'),
  };
}

/** The one real network call of a transfer: asks the prefill engine for the blocks named by `d`. */
export async function pullBlocks(d: TransferDescriptor, engineId: string, timeoutMs = 10_000): Promise<PullReply> {
  const host = d.remote_host.includes(':') && !d.remote_host.startsWith('[') ? `[${d.remote_host}]` : d.remote_host;
  const body: PullRequest = { remote_request_id: d.remote_request_id, remote_block_ids: d.remote_block_ids, engine_id: engineId };
  let res;
  try {
    res = await request(`http://${host}:${d.remote_port}${PULL_PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
  } catch (e) {
    throw new KvgateError('KVG_UPSTREAM', `KV transfer failed: prefill engine ${d.remote_engine_id} at ${d.remote_host}:${d.remote_port} unreachable (${(e as Error).message})`, { cause: e });
  }
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new KvgateError('KVG_UPSTREAM', `KV transfer failed: prefill engine answered ${res.statusCode} with a non-JSON body`);
  }
  if (res.statusCode !== 200) {
    const msg = (json as { error?: { message?: string } })?.error?.message ?? `status ${res.statusCode}`;
    throw bad(`KV transfer failed: ${msg}`);
  }
  const r = json as PullReply;
  if (!Array.isArray(r.prompt_token_ids) || !Array.isArray(r.block_ids) || !Number.isInteger(r.block_size)) throw new KvgateError('KVG_UPSTREAM', 'KV transfer failed: malformed pull reply');
  return r;
}
