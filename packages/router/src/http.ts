/**
 * The HTTP edge: body limits, JSON, request validation and OpenAI-shaped answers. Everything a client can get
 * wrong is caught here and becomes a KvgateError (→ 400/404/413/…); the routed path behind it trusts its input.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { errorBody, KvgateError } from '@kvgate/protocol';
import type { ChatMessage } from '@kvgate/protocol/tokenizer';

export type ApiKind = 'completion' | 'chat';

/** A validated OpenAI request; `raw` is forwarded upstream byte for byte. */
export interface ApiRequest {
  kind: ApiKind;
  model: string;
  stream: boolean;
  /** max_tokens / max_completion_tokens, or undefined */
  maxTokens: number | undefined;
  /** completions: the prompt text (first prompt of a batch) */
  prompt?: string;
  /** completions: the prompt as token ids (first prompt of a batch) */
  promptIds?: number[];
  /** chat */
  messages?: ChatMessage[];
  tools?: unknown[];
  templateKwargs?: Record<string, unknown>;
  /**
   * `cache_salt` (vLLM and SGLang, top level of both request kinds): the engine seeds the prompt's block hashes
   * with it, so the router hashes under the salted root too (DESIGN.md §2). Forwarded unchanged in `raw`.
   */
  cacheSalt?: string;
  raw: Buffer;
  body: Record<string, unknown>;
}

export { readBody, parseJsonObject } from '@kvgate/protocol';
import { parseJsonObject } from '@kvgate/protocol';

const bad = (msg: string, param?: string) => new KvgateError('KVG_BAD_REQUEST', msg, param !== undefined ? { param } : undefined);

/**
 * Sampling fields the engine reads as numbers (vLLM's ChatCompletionRequest / CompletionRequest: float or int,
 * optional): a value of another type is refused here with `param` naming the field, not after a routing decision
 * (and a prefix-cache slot) were spent on it. `true` = an integer.
 */
const NUMERIC_FIELDS: ReadonlyArray<readonly [string, boolean]> = [
  ['temperature', false],
  ['top_p', false],
  ['top_k', true],
  ['min_p', false],
  ['presence_penalty', false],
  ['frequency_penalty', false],
  ['repetition_penalty', false],
  ['seed', true],
  ['n', true],
];

function checkNumericFields(body: Record<string, unknown>): void {
  for (const [key, integer] of NUMERIC_FIELDS) {
    const v = body[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(`${key} must be a number`, key);
    if (integer && !Number.isInteger(v)) throw bad(`${key} must be an integer`, key);
  }
}

function isTokenIds(v: unknown): v is number[] {
  if (!Array.isArray(v) || v.length === 0) return false;
  // a plain loop: `.every` with a closure costs several times more on a 2k-token prompt (issue 14)
  for (let i = 0; i < v.length; i++) {
    const t: unknown = v[i];
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= 4294967296) return false;
  }
  return true;
}

/** max_tokens / max_completion_tokens: absent, null, or an integer ≥ 1 (vLLM's SamplingParams refuses 0 with this message). */
function optPositiveInt(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (!Number.isInteger(v)) throw bad(`${key} must be a positive integer`, key);
  if ((v as number) < 1) throw bad(`${key} must be at least 1, got ${v as number}`, key);
  return v as number;
}

/**
 * `cache_salt`: absent or null = unsalted; else a non-empty string (vLLM rejects an empty one, and an empty salt
 * would hash as unsalted here while the engine salts with it). Completions also take SGLang's batch form, one salt
 * per prompt: the router routes a batch by its first prompt, so it hashes with the first salt.
 */
function cacheSaltOf(body: Record<string, unknown>, kind: ApiKind): string | undefined {
  const v = body.cache_salt;
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string' && v.length > 0) return v;
  if (kind === 'completion' && Array.isArray(v) && v.length > 0 && v.every((s) => typeof s === 'string' && s.length > 0)) return v[0] as string;
  throw bad(kind === 'completion' ? 'cache_salt must be a non-empty string (or an array of them, one per prompt of a batch)' : 'cache_salt must be a non-empty string', 'cache_salt');
}

/** Validates a /v1/completions or /v1/chat/completions body (also /v1/route, which takes either). */
export function validateApiRequest(kind: ApiKind | 'either', raw: Buffer): ApiRequest {
  const body = parseJsonObject(raw);
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0) throw bad('model must be a non-empty string', 'model');
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw bad('stream must be a boolean', 'stream');
  checkNumericFields(body);
  const stream = body.stream === true;
  const maxTokens = optPositiveInt(body, 'max_completion_tokens') ?? optPositiveInt(body, 'max_tokens');
  const k: ApiKind = kind === 'either' ? (body.messages !== undefined ? 'chat' : 'completion') : kind;
  const out: ApiRequest = { kind: k, model, stream, maxTokens, raw, body };
  const salt = cacheSaltOf(body, k);
  if (salt !== undefined) out.cacheSalt = salt;
  if (k === 'completion') {
    let p = body.prompt;
    if (Array.isArray(p) && p.length > 0 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0]; // a batch: route by its first prompt
    if (typeof p === 'string') out.prompt = p;
    else if (isTokenIds(p)) out.promptIds = p;
    else if (kind === 'either' && Array.isArray(body.tokens) && isTokenIds(body.tokens)) out.promptIds = body.tokens;
    else throw bad('prompt must be a string, an array of token ids, or a batch of either', 'prompt');
  } else {
    const msgs = body.messages;
    if (!Array.isArray(msgs) || msgs.length === 0) throw bad('messages must be a non-empty array', 'messages');
    for (const [i, m] of msgs.entries()) {
      if (typeof m !== 'object' || m === null || typeof (m as { role?: unknown }).role !== 'string') throw bad(`messages[${i}] must be an object with a string role`, 'messages');
      const c = (m as { content?: unknown }).content;
      if (c !== undefined && c !== null && typeof c !== 'string' && !Array.isArray(c)) throw bad(`messages[${i}].content must be a string or an array of parts`, 'messages');
    }
    out.messages = msgs as ChatMessage[];
    if (Array.isArray(body.tools)) out.tools = body.tools;
    if (typeof body.chat_template_kwargs === 'object' && body.chat_template_kwargs !== null) out.templateKwargs = body.chat_template_kwargs as Record<string, unknown>;
  }
  return out;
}

export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** OpenAI-shaped error; never a stack. If headers already went out, the connection is cut instead. */
export function sendError(res: ServerResponse, err: unknown): void {
  const { status, body } = errorBody(err);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, status, body);
}
