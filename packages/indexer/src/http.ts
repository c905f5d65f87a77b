/**
 * The indexer's HTTP edge (node:http): validate here, then call the actor.
 *   GET  /healthz          200 {ok: true, indexer, shard} (shard: "i/N" of `--shard i/N`, null unsharded)
 *   GET  /readyz           200 once the event stream is caught up, else 503
 *   GET  /metrics          Prometheus text (prom-client, this instance's registry)
 *   GET  /debug/workers    {indexer, shard, streamSeq, lag, workers: {<worker>: {blocks, seq, lastStreamSeq, lastEventAgeMs, registered, model}}}
 *   POST /debug/match      {model, lora?, tokens?: number[], hashes?: string[], blockSize?} → {overlaps, blockSize}
 * Errors are OpenAI-shaped JSON ({error: {message, type, param, code: <status>, kvg_code}}), never a stack trace.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { applyHttpLimits, errorBody, hexToHash, httpServerOptions, KvgateError, logger, prefixHashes, readBody, parseJsonObject, resolveHttpLimits, type HttpLimits } from '@kvgate/protocol';
import type { Indexer } from './actor.js';

const MAX_BODY = 8 * 1024 * 1024;
const log = logger('indexer.http');

function send(res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  return parseJsonObject(await readBody(req, MAX_BODY));
}

function bad(message: string): never {
  throw new KvgateError('KVG_BAD_REQUEST', message);
}

/** validate a /debug/match body and turn it into prefix hashes */
export function parseMatchBody(body: unknown, indexer: Pick<Indexer, 'blockSizeOf'>): { hashes: bigint[]; blockSize: number | null; model: string; lora: string | null } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) bad('body must be a JSON object');
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '') bad('`model` must be a non-empty string');
  const model = b.model;
  if (b.lora !== undefined && b.lora !== null && typeof b.lora !== 'string') bad('`lora` must be a string');
  const lora = typeof b.lora === 'string' && b.lora !== '' ? b.lora : null;
  if (b.blockSize !== undefined && (!Number.isInteger(b.blockSize) || (b.blockSize as number) <= 0)) bad('`blockSize` must be a positive integer');
  let blockSize = (b.blockSize as number | undefined) ?? indexer.blockSizeOf(model);
  if (b.hashes !== undefined && b.tokens !== undefined) bad('give `tokens` or `hashes`, not both');
  if (Array.isArray(b.hashes)) {
    const hashes = b.hashes.map((h, i) => {
      if (typeof h !== 'string') bad(`hashes[${i}] must be a 16-hex-digit string`);
      try {
        return hexToHash(h);
      } catch {
        bad(`hashes[${i}] must be a 16-hex-digit string`);
      }
    });
    return { hashes, blockSize, model, lora };
  }
  if (Array.isArray(b.tokens)) {
    const tokens = b.tokens as unknown[];
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || (t as number) < 0 || (t as number) > 0xffffffff) bad(`tokens[${i}] must be an unsigned 32-bit integer`);
    });
    if (blockSize === null) throw new KvgateError('KVG_UNKNOWN_MODEL', `model ${JSON.stringify(model)} has no registered worker: pass \`blockSize\``);
    blockSize = blockSize as number;
    return { hashes: prefixHashes(model, lora, blockSize, tokens as number[]), blockSize, model, lora };
  }
  bad('give `tokens` (number[]) or `hashes` (16-hex strings)');
}

/** `limits`: header/body timeouts, keep-alive and connection cap (protocol http-limits.ts) */
export function createIndexerHttp(indexer: Indexer, limits: HttpLimits = {}): Server {
  const l = resolveHttpLimits(limits);
  const server = createServer(httpServerOptions(l), (req, res) => {
    void handle(indexer, req, res).catch((err) => {
      if (!(err instanceof KvgateError)) log.error({ err }, 'request failed');
      const { status, body } = errorBody(err);
      if (!res.headersSent) send(res, status, body);
      else res.destroy();
    });
  });
  applyHttpLimits(server, l, 'indexer');
  return server;
}

async function handle(indexer: Indexer, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const method = req.method ?? 'GET';
  const shard = indexer.shard ? `${indexer.shard.index}/${indexer.shard.of}` : null;
  if (path === '/healthz' && method === 'GET') return send(res, 200, { ok: true, indexer: indexer.id, shard });
  if (path === '/readyz' && method === 'GET') {
    if (indexer.ready) return send(res, 200, { ready: true, streamSeq: indexer.streamSeq });
    const { status, body } = errorBody(new KvgateError('KVG_NOT_READY', 'catching up with the event stream'));
    return send(res, status, body);
  }
  if (path === '/metrics' && method === 'GET') return send(res, 200, await indexer.metrics.metrics(), indexer.metrics.contentType);
  if (path === '/debug/workers' && method === 'GET') {
    return send(res, 200, { indexer: indexer.id, shard, streamSeq: indexer.streamSeq, lag: await indexer.lag(), ready: indexer.ready, workers: await indexer.workers() });
  }
  if (path === '/debug/match') {
    if (method !== 'POST') throw new KvgateError('KVG_BAD_REQUEST', 'use POST /debug/match');
    const { hashes, blockSize, model, lora } = parseMatchBody(await readJson(req), indexer);
    const reply = await indexer.match(model, lora, hashes);
    return send(res, 200, { overlaps: reply.overlaps, ...(reply.tiers ? { tiers: reply.tiers } : {}), blockSize, indexerSeq: reply.indexerSeq });
  }
  throw new KvgateError('KVG_NOT_FOUND', `no route ${method} ${path}`);
}
