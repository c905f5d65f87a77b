/**
 * The engine's HTTP edge, in vLLM's shapes: OpenAI completions / chat completions (JSON or SSE), /v1/models,
 * /tokenize, /detokenize, /metrics, /health, /reset_prefix_cache, and the internal P/D pull endpoint.
 * Input is validated here; anything wrong answers an OpenAI-shaped error (errorBody) and never reaches the core.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { KvgateError, errorBody, logger, type Tokenizer, type ChatMessage, tracer, startChildSpan, extractTraceContext, SpanStatusCode, type Span, readBody, parseJsonObject } from '@kvgate/protocol';
import type { EngineCore } from './engine.js';
import type { EngineMetrics } from './metrics.js';
import type { TokenOutput } from './scheduler.js';
import { bytesPerBlock, linkTransfer, type ModelShape, type TransferModel } from './timing.js';
import { PULL_PATH, parseDescriptor, pullBlocks, type PullRequest, type PullReply, type TransferDescriptor } from './pd.js';

export type EngineRole = 'prefill' | 'decode' | 'both';

export interface HttpContext {
  model: string;
  engineId: string;
  role: EngineRole;
  tokenizer: Tokenizer;
  core: EngineCore;
  metrics: EngineMetrics;
  maxModelLen: number;
  defaultMaxTokens: number;
  maxBodyBytes: number;
  blockSize: number;
  shape: ModelShape;
  transfer: TransferModel;
  /** the decode engine's KV link: busy until this simulated ms (pulls queue on it) */
  link: { freeAtMs: number };
  /** vLLM --api-key: every /v1 route needs `Authorization: Bearer <key>` (401 otherwise); other routes stay open */
  apiKey?: string;
  /** wall-clock ms a prefill's held blocks live (its descriptor's remote_blocks_expiry_time is now + this) */
  holdRealMs?: number;
  /** a failed KV pull: fail the request (vLLM's default) or prefill locally */
  kvLoadFailurePolicy?: 'fail' | 'recompute';
  /** host and port written into transfer descriptors */
  advertise: () => { host: string; port: number };
  /** text of one generated token */
  tokenText: (id: number) => string;
}

const log = logger('sim-engine.http');

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
/** a 400; `param` names the request field at fault, as vLLM's VLLMValidationError(parameter=…) does */
function badReq(message: string, param?: string): KvgateError {
  return new KvgateError('KVG_BAD_REQUEST', message, param !== undefined ? { param } : undefined);
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendError(res: ServerResponse, err: unknown): void {
  if (!(err instanceof KvgateError)) log.error({ err: (err as Error)?.message }, 'unexpected error');
  // vLLM's shape and type names (create_error_response); kvgate's code rides along under kvg_code
  const { status, body } = errorBody(err, { vllmTypes: true });
  if (res.headersSent) {
    // mid-stream: vLLM sends the error as one more SSE event
    if (!res.writableEnded) res.end(`data: ${JSON.stringify(body)}\n\ndata: [DONE]\n\n`);
    return;
  }
  sendJson(res, status, body);
}

async function readJson(req: IncomingMessage, limit: number): Promise<Json> {
  return parseJsonObject(await readBody(req, limit)) as Json;
}

// ---- request parsing ----------------------------------------------------------------------------------------

interface GenRequest {
  kind: 'completion' | 'chat';
  promptTokens: number[];
  maxTokens: number;
  stream: boolean;
  includeUsage: boolean;
  continuousUsage: boolean;
  kvParams: Json | null;
}

function optInt(body: Json, key: string, min: number): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw badReq(`${key} must be an integer ≥ ${min}`, key);
  return v;
}

function checkModel(ctx: HttpContext, body: Json): void {
  const m = body.model;
  if (m === undefined || m === null) return;
  if (typeof m !== 'string') throw badReq('model must be a string', 'model');
  // vLLM's _check_model: 404 NotFoundError, param "model"
  if (m !== ctx.model) throw new KvgateError('KVG_UNKNOWN_MODEL', `The model \`${m}\` does not exist.`, { param: 'model' });
}

function tokenIds(ctx: HttpContext, v: unknown[], what: string): number[] {
  const limit = ctx.tokenizer.vocabSize;
  for (const x of v) {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0) throw badReq(`${what} must hold non-negative integer token ids`);
    if (x >= limit) throw badReq(`Token id ${x} is out of vocabulary`);
  }
  return v as number[];
}

/**
 * Tokenizing is synchronous (~5 µs/token); a text far beyond the context window would stall the engine for
 * seconds before failing the length check. No vocabulary token is near 32 characters on average, so refuse
 * such text up front.
 */
function encodeBounded(ctx: HttpContext, text: string, addSpecialTokens: boolean): number[] {
  if (text.length > ctx.maxModelLen * 32) {
    throw badReq(`This model's maximum context length is ${ctx.maxModelLen} tokens; the prompt text (${text.length} characters) is far longer.`);
  }
  return ctx.tokenizer.encode(text, { addSpecialTokens });
}

function completionPrompt(ctx: HttpContext, p: unknown): number[] {
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0];
  if (typeof p === 'string') return encodeBounded(ctx, p, true);
  if (Array.isArray(p)) {
    if (p.length > 0 && (typeof p[0] === 'string' || Array.isArray(p[0]))) throw badReq('batched prompts are not supported by the simulated engine; send one prompt per request');
    return tokenIds(ctx, p, 'prompt');
  }
  throw badReq('prompt must be a string or an array of token ids');
}

function chatMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw badReq('messages must be a non-empty array');
  for (const [i, m] of v.entries()) {
    if (!isObj(m) || typeof m.role !== 'string') throw badReq(`messages[${i}] must be an object with a string role`);
    const c = m.content;
    if (!(c === undefined || c === null || typeof c === 'string' || (Array.isArray(c) && c.every((p) => isObj(p) && typeof p.type === 'string')))) {
      throw badReq(`messages[${i}].content must be a string or an array of content parts`);
    }
  }
  return v as ChatMessage[];
}

function renderChat(ctx: HttpContext, body: Json): number[] {
  const messages = chatMessages(body.messages);
  const kwargs = body.chat_template_kwargs;
  if (kwargs !== undefined && kwargs !== null && !isObj(kwargs)) throw badReq('chat_template_kwargs must be an object');
  const tools = body.tools;
  if (tools !== undefined && tools !== null && !Array.isArray(tools)) throw badReq('tools must be an array');
  const addGen = body.add_generation_prompt;
  const text = ctx.tokenizer.applyChatTemplate(messages, {
    addGenerationPrompt: addGen === undefined ? true : addGen === true,
    ...(Array.isArray(tools) ? { tools } : {}),
    ...(isObj(kwargs) ? { kwargs } : {}),
  });
  return encodeBounded(ctx, text, body.add_special_tokens === true);
}

function parseGen(ctx: HttpContext, kind: 'completion' | 'chat', body: Json): GenRequest {
  checkModel(ctx, body);
  if (kind === 'completion' && body.prompt === undefined) throw badReq('prompt is required');
  if (kind === 'chat' && body.messages === undefined) throw badReq('messages is required');
  const n = optInt(body, 'n', 1);
  if (n !== undefined && n !== 1) throw badReq('n > 1 is not supported by the simulated engine');
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw badReq('stream must be a boolean');
  const so = body.stream_options;
  if (so !== undefined && so !== null && !isObj(so)) throw badReq('stream_options must be an object');
  const kv = body.kv_transfer_params;
  if (kv !== undefined && kv !== null && !isObj(kv)) throw badReq('kv_transfer_params must be an object');
  const maxTokens = (kind === 'chat' ? optInt(body, 'max_completion_tokens', 1) : undefined) ?? optInt(body, 'max_tokens', 1) ?? ctx.defaultMaxTokens;
  const promptTokens = kind === 'completion' ? completionPrompt(ctx, body.prompt) : renderChat(ctx, body);
  if (promptTokens.length === 0) throw badReq('prompt must not be empty');
  if (promptTokens.length + maxTokens > ctx.maxModelLen) {
    throw badReq(
      `This model's maximum context length is ${ctx.maxModelLen} tokens. However, you requested ${promptTokens.length + maxTokens} tokens ` +
        `(${promptTokens.length} in the ${kind === 'chat' ? 'messages' : 'prompt'}, ${maxTokens} in the completion). Please reduce the length of the ${kind === 'chat' ? 'messages' : 'prompt'} or completion.`,
      'max_tokens', // vLLM's _validate_input names max_tokens for this
    );
  }
  return {
    kind,
    promptTokens,
    maxTokens,
    stream: body.stream === true,
    includeUsage: isObj(so) && so.include_usage === true,
    continuousUsage: isObj(so) && so.continuous_usage_stats === true,
    kvParams: isObj(kv) ? kv : null,
  };
}

// ---- generation -------------------------------------------------------------------------------------------

function usage(out: TokenOutput, completionTokens: number) {
  return {
    prompt_tokens: out.promptTokens,
    total_tokens: out.promptTokens + completionTokens,
    completion_tokens: completionTokens,
    prompt_tokens_details: { cached_tokens: out.cachedTokens },
  };
}

let counter = 0;

async function generate(ctx: HttpContext, g: GenRequest, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const wantsDecodeElsewhere = g.kvParams?.do_remote_decode === true;
  const hasDescriptor = g.kvParams?.do_remote_prefill === true;
  if (wantsDecodeElsewhere && ctx.role === 'decode') throw badReq('this engine has role decode; it does not serve do_remote_decode (prefill) requests');
  if (hasDescriptor && ctx.role === 'prefill') throw badReq('this engine has role prefill; it does not accept transfer descriptors (do_remote_prefill)');

  // the engine's span, parented by the caller's traceparent (router → shim → engine in one trace)
  const span = tracer().startSpan(
    'engine.generate',
    {
      attributes: {
        'kvgate.engine': ctx.engineId,
        'kvgate.engine.role': ctx.role,
        'gen_ai.request.model': ctx.model,
        'gen_ai.usage.input_tokens': g.promptTokens.length,
        ...(typeof req.headers['x-request-id'] === 'string' ? { 'kvgate.request_id': req.headers['x-request-id'] } : {}),
        ...(wantsDecodeElsewhere ? { 'kvgate.pd': 'prefill' } : hasDescriptor ? { 'kvgate.pd': 'decode' } : {}),
      },
    },
    extractTraceContext(req.headers),
  );
  try {
    await generateTraced(ctx, g, req, res, span);
  } catch (e) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
    throw e;
  } finally {
    span.end();
  }
}

async function generateTraced(ctx: HttpContext, g: GenRequest, req: IncomingMessage, res: ServerResponse, span: Span): Promise<void> {
  const wantsDecodeElsewhere = g.kvParams?.do_remote_decode === true;
  const hasDescriptor = g.kvParams?.do_remote_prefill === true;
  const header = req.headers['x-request-id'];
  const base = typeof header === 'string' && header !== '' ? header : randomUUID().replace(/-/g, '');
  const id = `${g.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${base}`;
  // the scheduler's id must be unique even when clients reuse x-request-id
  const coreId = `${ctx.engineId}-${++counter}`;
  const created = Math.floor(Date.now() / 1000);
  const object = g.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';

  let closed = false;
  let finished = false;
  res.on('close', () => {
    closed = true;
    if (!finished) ctx.core.abort(coreId);
  });

  let remoteKv = false;
  if (hasDescriptor) {
    const d = parseDescriptor(g.kvParams!);
    // the pull, as its own span of the request's trace (route → prefill → transfer → decode)
    const xfer = startChildSpan('engine.kv_transfer', span, { 'kvgate.engine': ctx.engineId, 'kvgate.transfer.from': d.remote_engine_id, 'kvgate.transfer.blocks': d.remote_block_ids.length });
    try {
      const t = await fetchRemoteBlocks(ctx, d, g.promptTokens);
      xfer.setAttributes({ 'kvgate.transfer.bytes': t.bytes, 'kvgate.transfer.modelled_ms': t.ms });
      remoteKv = true;
    } catch (e) {
      ctx.metrics.kvTransferFailed();
      xfer.recordException(e as Error);
      xfer.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
      if (ctx.kvLoadFailurePolicy !== 'recompute') throw e;
      // vLLM kv_load_failure_policy=recompute: the blocks are computed here instead
      log.warn({ engine: ctx.engineId, from: d.remote_engine_id, err: (e as Error).message }, 'KV pull failed; recomputing the prompt locally');
    } finally {
      xfer.end();
    }
    if (closed) return;
  }
  // the scheduler's part: prefill (or, after a transfer, the last prompt token) and the decode steps
  const phase = startChildSpan(remoteKv ? 'engine.decode' : wantsDecodeElsewhere ? 'engine.prefill' : 'engine.schedule', span, { 'kvgate.engine': ctx.engineId });
  let phaseOpen = true;
  const endPhase = () => {
    if (phaseOpen) phase.end();
    phaseOpen = false;
  };
  res.once('close', endPhase);

  const texts: string[] = [];
  let descriptor: TransferDescriptor | null = null;
  const chunk = (choices: unknown[], extra: Json = {}) => ({ id, object, created, model: ctx.model, choices, ...extra });
  const write = (v: unknown) => {
    if (!closed) res.write(`data: ${JSON.stringify(v)}\n\n`);
  };

  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  res.once('close', () => resolve());
  {
    const sink = (out: TokenOutput) => {
      if (out.index === 0) span.setAttribute('kvgate.cached_tokens', out.cachedTokens);
      const text = ctx.tokenText(out.token);
      texts.push(text);
      if (out.finishReason && wantsDecodeElsewhere) descriptor = makeDescriptor(ctx, coreId);
      if (g.stream) {
        if (out.index === 0 && g.kind === 'chat') write(chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
        const choice =
          g.kind === 'chat'
            ? { index: 0, delta: { content: text }, logprobs: null, finish_reason: out.finishReason, ...(out.finishReason ? { stop_reason: null } : {}) }
            : { index: 0, text, logprobs: null, finish_reason: out.finishReason, stop_reason: null };
        const extra: Json = {};
        if (g.continuousUsage && g.includeUsage) extra.usage = usage(out, out.index + 1);
        if (out.finishReason && descriptor) extra.kv_transfer_params = descriptor;
        write(chunk([choice], extra));
        if (out.finishReason) {
          if (g.includeUsage) write(chunk([], { usage: usage(out, out.index + 1) }));
          if (!closed) res.end('data: [DONE]\n\n');
        }
      } else if (out.finishReason) {
        const u = usage(out, out.index + 1);
        const text = texts.join('');
        const body =
          g.kind === 'chat'
            ? {
                id, object: 'chat.completion', created, model: ctx.model,
                choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null, annotations: null, audio: null, function_call: null, tool_calls: [], reasoning_content: null }, logprobs: null, finish_reason: out.finishReason, stop_reason: null }],
                service_tier: null, system_fingerprint: null, usage: u, prompt_logprobs: null, kv_transfer_params: descriptor,
              }
            : {
                id, object: 'text_completion', created, model: ctx.model,
                choices: [{ index: 0, text, logprobs: null, finish_reason: out.finishReason, stop_reason: null, prompt_logprobs: null }],
                service_tier: null, system_fingerprint: null, usage: u, kv_transfer_params: descriptor,
              };
        if (!closed) sendJson(res, 200, body);
      }
      if (out.finishReason) {
        finished = true;
        phase.setAttribute('kvgate.completion_tokens', out.index + 1);
        endPhase();
        resolve();
      }
    };
    try {
      ctx.core.submit({ id: coreId, promptTokens: g.promptTokens, maxTokens: g.maxTokens, remoteKv, holdOnFinish: wantsDecodeElsewhere }, sink, typeof header === 'string' && header !== '' ? header : undefined);
    } catch (e) {
      finished = true;
      throw e instanceof RangeError ? badReq(e.message) : e;
    }
  }
  // tokens arrive from later steps (never synchronously), so the SSE head always goes first
  if (g.stream) res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
  await done;
}

function makeDescriptor(ctx: HttpContext, coreId: string): TransferDescriptor | null {
  const held = ctx.core.held(coreId);
  if (!held) return null;
  const { host, port } = ctx.advertise();
  return {
    do_remote_prefill: true,
    do_remote_decode: false,
    remote_engine_id: ctx.engineId,
    remote_block_ids: held.blockIds.slice(),
    remote_host: host,
    remote_port: port,
    tp_size: 1,
    remote_request_id: coreId,
    remote_num_tokens: held.promptTokens.length,
    ...(ctx.holdRealMs !== undefined ? { remote_blocks_expiry_time: (Date.now() + ctx.holdRealMs) / 1000 } : {}),
  };
}

/**
 * Decode side: pull the prefill engine's blocks (one real HTTP call) and wait the modelled transfer time of the
 * blocks this engine lacks: latency + bytes / bandwidth on this engine's link, after the pulls already queued on it.
 */
async function fetchRemoteBlocks(ctx: HttpContext, d: TransferDescriptor, prompt: number[]): Promise<{ bytes: number; ms: number }> {
  const reply = await pullBlocks(d, ctx.engineId);
  if (reply.block_size !== ctx.blockSize) throw new KvgateError('KVG_BAD_DESCRIPTOR', `KV transfer failed: block size ${reply.block_size} of ${d.remote_engine_id} differs from this engine's ${ctx.blockSize}`);
  const p = reply.prompt_token_ids;
  if (p.length !== prompt.length || p.some((t, i) => t !== prompt[i])) {
    throw new KvgateError('KVG_BAD_DESCRIPTOR', 'KV transfer failed: the descriptor belongs to a different prompt');
  }
  const local = ctx.core.scheduler.cachedPrefixBlocks(prompt);
  const missing = Math.max(0, reply.block_ids.length - local);
  const bytes = missing * bytesPerBlock(ctx.shape, ctx.blockSize);
  const t = linkTransfer(ctx.transfer, bytes, ctx.core.now(), ctx.link.freeAtMs);
  ctx.link.freeAtMs = t.freeAtMs;
  await ctx.core.sleep(t.ms);
  ctx.metrics.kvTransfer(t.ms, bytes);
  return { bytes, ms: t.ms };
}

function servePull(ctx: HttpContext, body: Json, res: ServerResponse): void {
  const r = body as Partial<PullRequest>;
  if (typeof r.remote_request_id !== 'string' || !Array.isArray(r.remote_block_ids)) throw badReq('remote_request_id and remote_block_ids are required');
  const held = ctx.core.held(r.remote_request_id);
  if (!held) throw new KvgateError('KVG_NOT_FOUND', `unknown or expired transfer ${r.remote_request_id} on engine ${ctx.engineId}`);
  const ids = held.blockIds;
  if (ids.length !== r.remote_block_ids.length || ids.some((b, i) => b !== r.remote_block_ids![i])) {
    throw new KvgateError('KVG_BAD_DESCRIPTOR', `remote_block_ids do not match transfer ${r.remote_request_id}`);
  }
  const reply: PullReply = { engine_id: ctx.engineId, block_size: ctx.blockSize, block_ids: ids.slice(), prompt_token_ids: [...held.promptTokens] };
  ctx.core.releaseHeld(r.remote_request_id);
  log.debug({ transfer: r.remote_request_id, to: r.engine_id, blocks: ids.length }, 'blocks pulled');
  sendJson(res, 200, reply);
}

// ---- tokenize ---------------------------------------------------------------------------------------------

function tokenize(ctx: HttpContext, body: Json): Json {
  checkModel(ctx, body);
  let tokens: number[];
  if (body.messages !== undefined) {
    tokens = renderChat(ctx, body);
  } else if (typeof body.prompt === 'string') {
    tokens = encodeBounded(ctx, body.prompt, body.add_special_tokens !== false);
  } else throw badReq('prompt (string) or messages is required');
  return { count: tokens.length, max_model_len: ctx.maxModelLen, tokens, token_strs: body.return_token_strs === true ? ctx.tokenizer.tokenStrings(tokens) : null };
}

function detokenize(ctx: HttpContext, body: Json): Json {
  checkModel(ctx, body);
  if (!Array.isArray(body.tokens)) throw badReq('tokens must be an array of token ids');
  return { prompt: ctx.tokenizer.decode(tokenIds(ctx, body.tokens, 'tokens')) };
}

// ---- routing ----------------------------------------------------------------------------------------------

export function createHttpHandler(ctx: HttpContext): (req: IncomingMessage, res: ServerResponse) => void {
  const started = Math.floor(Date.now() / 1000);
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0]!;
    const method = req.method ?? 'GET';
    // vLLM's --api-key guards the OpenAI routes (/v1/...) only; health, metrics and the rest stay open
    if (ctx.apiKey !== undefined && path.startsWith('/v1') && req.headers.authorization !== `Bearer ${ctx.apiKey}`) {
      req.resume();
      return sendJson(res, 401, { error: 'Unauthorized' });
    }
    const post = async () => {
      if (method !== 'POST') throw new KvgateError('KVG_NOT_FOUND', `${method} ${path} is not supported; use POST`);
      return readJson(req, ctx.maxBodyBytes);
    };
    switch (path) {
      case '/v1/completions':
        return generate(ctx, parseGen(ctx, 'completion', await post()), req, res);
      case '/v1/chat/completions':
        return generate(ctx, parseGen(ctx, 'chat', await post()), req, res);
      case '/tokenize':
        return sendJson(res, 200, tokenize(ctx, await post()));
      case '/detokenize':
        return sendJson(res, 200, detokenize(ctx, await post()));
      case PULL_PATH:
        return servePull(ctx, await post(), res);
      case '/health':
      case '/ping':
        res.writeHead(200, { 'content-length': 0 });
        return void res.end();
      case '/version':
        return sendJson(res, 200, { version: '0.0.0-kvgate-sim' });
      case '/v1/models':
        return sendJson(res, 200, {
          object: 'list',
          data: [{ id: ctx.model, object: 'model', created: started, owned_by: 'vllm', root: ctx.model, parent: null, max_model_len: ctx.maxModelLen, permission: [] }],
        });
      case '/metrics': {
        const text = await ctx.metrics.text();
        res.writeHead(200, { 'content-type': ctx.metrics.contentType });
        return void res.end(text);
      }
      case '/reset_prefix_cache': {
        if (method !== 'POST') throw new KvgateError('KVG_NOT_FOUND', 'use POST /reset_prefix_cache');
        req.resume();
        if (!ctx.core.resetPrefixCache()) throw new KvgateError('KVG_OVERLOADED', 'cannot reset the prefix cache while requests hold blocks');
        res.writeHead(200, { 'content-length': 0 });
        return void res.end();
      }
      case '/sim/stats':
        return sendJson(res, 200, { engine_id: ctx.engineId, role: ctx.role, ...ctx.core.stats() });
      default:
        throw new KvgateError('KVG_NOT_FOUND', `no route for ${method} ${path}`);
    }
  };
  return (req, res) => {
    route(req, res).catch((e: unknown) => {
      if (e instanceof KvgateError && e.code === 'KVG_BODY_TOO_LARGE') res.setHeader('connection', 'close');
      sendError(res, e);
    });
  };
}
