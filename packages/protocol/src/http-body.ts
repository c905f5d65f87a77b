/**
 * Request bodies at kvgate's HTTP edges (router, shim, indexer, sim engine): read with a size limit (413 without
 * buffering the excess) and parse as a JSON object (400), as KvgateErrors the edges map to OpenAI-shaped errors.
 */
import type { IncomingMessage } from 'node:http';
import { KvgateError } from './errors.js';

/** Reads the whole body, refusing more than `limit` bytes (KVG_BODY_TOO_LARGE) without buffering the excess. */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new KvgateError('KVG_BODY_TOO_LARGE', `request body of ${declared} bytes exceeds the limit of ${limit} bytes`));
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > limit) {
        done = true;
        reject(new KvgateError('KVG_BODY_TOO_LARGE', `request body exceeds the limit of ${limit} bytes`));
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (!done) {
        done = true;
        resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
      }
    });
    req.on('error', (e) => {
      if (!done) {
        done = true;
        reject(new KvgateError('KVG_BAD_REQUEST', `request body: ${e.message}`, { cause: e }));
      }
    });
  });
}

/** Parses a body that must be one JSON object: KVG_BAD_JSON if it is not JSON, KVG_BAD_REQUEST if it is JSON but not an object. */
export function parseJsonObject(raw: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw new KvgateError('KVG_BAD_JSON', `request body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new KvgateError('KVG_BAD_REQUEST', 'request body must be a JSON object');
  return v as Record<string, unknown>;
}
