/**
 * The shim's HTTP front (edge): fronts the engine for P/D and exposes health and metrics.
 *   POST /v1/completions, /v1/chat/completions — proxied to the engine, bodies and SSE streamed through.
 *        With `x-prefiller-host-port` on a decode (or both) shim: remote prefill first (pd.ts), then the
 *        request goes to the engine carrying the returned transfer descriptor. The header is honoured only when it
 *        names a live prefill worker of the registry (prefill-targets.ts), else 403 KVG_BAD_PREFILL_TARGET and
 *        nothing is sent anywhere; the descriptor the prefill returns is passed on only when its
 *        `remote_host`/`remote_port` belong to that worker (else the engine prefills locally), and a
 *        `kv_transfer_params` already in the request body only when its peer (if any) is a live prefill worker
 *        (else 403). What the prefill endpoint answers on failure is logged, never shown to the client.
 *        The prefill leg carries the request id (`x-request-id`, made here when the caller gave none, and the
 *        same on the decode leg: older vLLM pairs the two by it), the trace context and the engine key. When it
 *        fails (the prefill worker died, timed out after `prefillTimeoutMs`, answered an error or no valid
 *        descriptor) or its descriptor has expired (`remote_blocks_expiry_time` past), the request goes to the
 *        own engine without a descriptor: a local prefill, still served, counted in
 *        `kvgate_shim_pd_local_prefills_total{reason}` and answered with `x-kvgate-prefill: local`. A remote prefill's
 *        answer carries the prefill engine's usage in `x-kvgate-prefill-cached-tokens` / `-prompt-tokens` (pd.ts).
 *   GET /healthz (503, OpenAI-shaped, while the engine fails its health probe), GET /metrics.
 * close(drainMs) stops accepting, lets proxied requests finish that long, then cuts them cleanly (http-drain.ts:
 * an SSE stream ends with an error event and `data: [DONE]`).
 * One front serves every data-parallel rank of its engine server: the router's `x-data-parallel-rank` (vLLM's
 * per-request rank hint, read by vllm/entrypoints/openai/engine/serving.py `_get_data_parallel_rank`) is passed
 * through to the engine, and `x-kvgate-worker` names that rank's worker.
 * Errors answer OpenAI-shaped JSON (errorBody), never a stack.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { request, type Dispatcher } from 'undici';
import {
  errorBody,
  extractTraceContext,
  HttpDrain,
  SseCutter,
  SSE_HEADERS,
  isEventStream,
  injectTraceHeaders,
  KvgateError,
  logger,
  type ClusterVerifier,
  SpanStatusCode,
  tracer,
  type Span,
  type WorkerRole,
  type WorkerRegistration,
  applyHttpLimits,
  httpServerOptions,
  resolveHttpLimits,
  type HttpLimits,
} from '@kvgate/protocol';
import type { ShimMetrics } from './metrics.js';
import { describeDescriptor, descriptorExpired, PREFILL_CACHED_HEADER, PREFILL_PROMPT_HEADER, PREFILLER_HEADER, prefillerBaseUrl, prefillRequest, prefillUsage, validateDescriptor, type PrefillUsage } from './pd.js';
import { descriptorPeer, type PrefillTargets } from './prefill-targets.js';

const log = logger('shim.http');

export interface HttpFrontDeps {
  worker: string;
  /** with data parallelism: the worker id of a rank this shim serves (undefined for other ranks) */
  rankWorker?: (rank: number) => string | undefined;
  role: WorkerRole;
  engineUrl: string;
  maxBodyBytes: number;
  metrics: ShimMetrics;
  /** body of GET /metrics when it is more than `metrics.registry` (several ranks' registries) */
  metricsText?: () => Promise<string>;
  /** body of GET /healthz */
  health(): Record<string, unknown>;
  /** why GET /healthz answers 503 instead (the engine is down), or undefined */
  unhealthy?(): KvgateError | undefined;
  /** undici dispatcher for upstream calls (default: the global one) */
  dispatcher?: Dispatcher;
  /** the engine answered a proxied request 200 (for the worker it was for) */
  onServed?(worker: string): void;
  /** with a cluster secret: every P/D/proxy call must carry a valid router signature (cluster-auth.ts), else 401 */
  clusterAuth?: ClusterVerifier;
  /** the registry's live prefill workers; absent: every prefill target and transfer peer is refused */
  prefillTargets?: Pick<PrefillTargets, 'lookup' | 'all' | 'isLoaded' | 'loaded'>;
  /** the prefill engines' NIXL side-channel base port (vLLM `VLLM_NIXL_SIDE_CHANNEL_PORT`, default 5600) */
  nixlSideChannelPort?: number;
  /** the engines' API key (vLLM --api-key): the prefill leg carries it; absent = the caller's Authorization */
  engineApiKey?: string;
  /** P/D: the prefill leg's header and body timeout, ms (default 60,000); past it the decode worker prefills locally */
  prefillTimeoutMs?: number;
  /** timeouts and connection cap of the front (protocol http-limits.ts; resolved again, so already resolved is fine) */
  httpLimits?: HttpLimits;
}

const ROUTES = new Set(['/v1/completions', '/v1/chat/completions', '/tokenize', '/detokenize']);
const DP_RANK_HEADER = 'x-data-parallel-rank';
const FORWARD_REQ = ['content-type', 'authorization', 'accept', 'x-request-id', DP_RANK_HEADER];
const DROP_RES = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'content-encoding', 'date', 'server']);
/** long generations: no overall deadline, but the engine must start answering in time */
const UPSTREAM_TIMEOUTS = { headersTimeout: 300_000, bodyTimeout: 300_000 };
/** a P/D request arriving before the registry was read waits this long for it at most */
const REGISTRY_LOAD_WAIT_MS = 2_000;

function sendError(res: ServerResponse, err: unknown): void {
  const { status, body } = errorBody(err);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) throw new KvgateError('KVG_BODY_TOO_LARGE', `request body over ${max} bytes`);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > max) throw new KvgateError('KVG_BODY_TOO_LARGE', `request body over ${max} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

export class HttpFront {
  readonly #d: HttpFrontDeps;
  readonly #server: Server;
  readonly #drain: HttpDrain;

  constructor(deps: HttpFrontDeps) {
    this.#d = deps;
    const limits = resolveHttpLimits(deps.httpLimits);
    this.#server = createServer(httpServerOptions(limits), (req, res) => void this.#handle(req, res));
    applyHttpLimits(this.#server, limits, 'shim');
    this.#drain = new HttpDrain(this.#server, 'shim');
  }

  listen(port: number, host: string): Promise<string> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => {
        this.#server.off('error', reject);
        const a = this.#server.address();
        const p = typeof a === 'object' && a ? a.port : port;
        resolve(`http://${host.includes(':') ? `[${host}]` : host}:${p}`);
      });
    });
  }

  /** stop accepting; in-flight requests get `drainMs` to finish, then are cut (default 0: at once) */
  async close(drainMs = 0): Promise<void> {
    await this.#drain.close(this.#server, drainMs);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    try {
      if (req.method === 'GET' && path === '/healthz') {
        const down = this.#d.unhealthy?.();
        if (down) return sendError(res, down);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(this.#d.health()));
        return;
      }
      if (req.method === 'GET' && path === '/metrics') {
        const text = this.#d.metricsText ? await this.#d.metricsText() : await this.#d.metrics.registry.metrics();
        res.writeHead(200, { 'content-type': this.#d.metrics.registry.contentType });
        res.end(text);
        return;
      }
      if (ROUTES.has(path)) {
        if (req.method !== 'POST') throw new KvgateError('KVG_BAD_REQUEST', `${path} takes POST`);
        await this.#proxy(req, res, path);
        return;
      }
      throw new KvgateError('KVG_NOT_FOUND', `no route ${req.method} ${path}`);
    } catch (e) {
      // a client gone mid-request (or cut by the body timeout) is no failure of ours
      if (!(e instanceof KvgateError) && !req.destroyed) log.error({ err: e, path }, 'request failed');
      sendError(res, e);
    }
  }

  async #proxy(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const d = this.#d;
    const span = tracer().startSpan('shim.proxy', { attributes: { 'kvgate.worker': d.worker, 'http.route': path } }, extractTraceContext(req.headers));
    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    let status = 0;
    try {
      let body = await readBody(req, d.maxBodyBytes);
      if (d.clusterAuth) {
        const v = d.clusterAuth.verify(req.method ?? 'POST', req.url ?? path, body, req.headers);
        if (!v.ok) throw new KvgateError('KVG_UNAUTHORIZED', `cluster signature refused: ${v.reason}`);
      }
      const prefiller = req.headers[PREFILLER_HEADER];
      if (typeof prefiller === 'string' && prefiller !== '' && d.role !== 'prefill') {
        const json = parseJsonObject(body);
        const base = prefillerBaseUrl(prefiller);
        let workers = d.prefillTargets?.lookup(prefiller) ?? [];
        if (workers.length === 0 && d.prefillTargets && !d.prefillTargets.isLoaded) {
          // just started: the registry is still being read
          await d.prefillTargets.loaded(REGISTRY_LOAD_WAIT_MS);
          workers = d.prefillTargets.lookup(prefiller);
        }
        if (workers.length === 0) {
          d.metrics.pdPrefills.inc({ result: 'refused_target' });
          log.warn({ worker: d.worker, target: prefiller }, 'prefill target refused: not a live prefill worker of the registry (nothing sent)');
          throw new KvgateError('KVG_BAD_PREFILL_TARGET', `${PREFILLER_HEADER} ${JSON.stringify(prefiller)} names no registered, live prefill worker`);
        }
        const rid = req.headers['x-request-id'];
        const requestId = typeof rid === 'string' && rid !== '' ? rid : randomUUID();
        req.headers['x-request-id'] = requestId; // the decode leg carries the same id (FORWARD_REQ)
        let desc: Record<string, unknown> | undefined;
        let legUsage: PrefillUsage | null = null;
        try {
          const authorization = d.engineApiKey ? `Bearer ${d.engineApiKey}` : req.headers.authorization;
          ({ desc, usage: legUsage } = await this.#prefill(base, path, json, span, abort.signal, authorization, workers, requestId));
        } catch (e) {
          if (abort.signal.aborted) throw e; // the client left: nothing to serve
          // the prefill worker failed (died, timed out, broke the protocol): the decode worker prefills itself
          const reason = isTimeout((e as Error).cause) ? 'timeout' : 'error';
          d.metrics.pdLocalPrefills.inc({ reason });
          log.warn({ worker: d.worker, prefill: base, requestId, reason, err: (e as Error).message }, 'remote prefill failed; prefilling locally');
          desc = undefined;
        }
        if (desc && descriptorExpired(desc, Date.now())) {
          d.metrics.pdLocalPrefills.inc({ reason: 'expired' });
          log.warn({ worker: d.worker, prefill: base, requestId, descriptor: describeDescriptor(desc) }, 'transfer descriptor expired before the decode; prefilling locally');
          desc = undefined;
        }
        const { kv_transfer_params: _client, ...rest } = json;
        // a refused descriptor is never handed to the engine (it would connect there): it prefills locally
        body = Buffer.from(JSON.stringify(desc ? { ...rest, kv_transfer_params: desc } : rest));
        res.setHeader('x-kvgate-prefill', desc ? prefiller : 'local');
        // the prefill engine's own prefix-cache hit, for the router's predicted-vs-actual accounting (the decode
        // engine's usage counts the transferred KV as cached too: vLLM's cached = local hit + external transfer)
        if (desc && legUsage?.cachedTokens != null) {
          res.setHeader(PREFILL_CACHED_HEADER, String(legUsage.cachedTokens));
          if (legUsage.promptTokens != null) res.setHeader(PREFILL_PROMPT_HEADER, String(legUsage.promptTokens));
        }
      } else if (d.role !== 'prefill') {
        this.#checkClientDescriptor(body);
      }
      const headers: Record<string, string> = {};
      for (const h of FORWARD_REQ) {
        const v = req.headers[h];
        if (typeof v === 'string') headers[h] = v;
      }
      headers['content-type'] ??= 'application/json';
      injectTraceHeaders(headers, span);
      let up: Dispatcher.ResponseData;
      try {
        up = await request(`${d.engineUrl}${path}`, { method: 'POST', headers, body, signal: abort.signal, dispatcher: d.dispatcher, ...UPSTREAM_TIMEOUTS });
      } catch (e) {
        throw new KvgateError('KVG_UPSTREAM', `engine unreachable: ${(e as Error).message}`, { cause: e });
      }
      status = up.statusCode;
      if (status === 200) d.onServed?.(this.#workerOf(req));
      const out: Record<string, string | string[]> = { 'x-kvgate-worker': this.#workerOf(req) };
      for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && !DROP_RES.has(k)) out[k] = v;
      // a proxy in front (nginx buffers by default) passes each event as it comes
      if (isEventStream(up.headers['content-type'])) Object.assign(out, SSE_HEADERS);
      res.writeHead(up.statusCode, out);
      res.flushHeaders();
      await this.#relay(up, res, abort);
      span.setAttribute('http.status_code', status);
    } catch (e) {
      status = e instanceof KvgateError ? e.httpStatus : 500;
      span.recordException(e as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
      throw e;
    } finally {
      d.metrics.proxied.inc({ route: path, status: String(status) });
      span.end();
    }
  }

  /** the engine's body to the client, chunk by chunk; a shutdown cuts it at an SSE event boundary */
  async #relay(up: Dispatcher.ResponseData, res: ServerResponse, abort: AbortController): Promise<void> {
    const cutter = new SseCutter(res, () => abort.abort());
    this.#drain.onCut(res, (err) => cutter.cut(err));
    try {
      for await (const chunk of up.body as AsyncIterable<Buffer>) {
        if (cutter.done) break;
        if (!res.write(chunk)) await new Promise<void>((r) => { res.once('drain', r); res.once('close', r); });
        cutter.wrote(chunk);
        if (res.destroyed) break;
      }
      if (!cutter.done && !res.destroyed) res.end();
    } catch (e) {
      if (abort.signal.aborted || cutter.done) return;
      // the engine's stream broke mid-way: an SSE client gets the error event, not a bare reset
      cutter.cut(new KvgateError('KVG_UPSTREAM', `engine stream broke: ${(e as Error).message}`, { cause: e }));
    }
  }

  /**
   * A request arriving with its own `kv_transfer_params` (a gateway that pairs P/D itself, through a router with
   * `trustClientPd`): a peer it names (`remote_host`/`remote_port`) must be a live prefill worker, else 403.
   */
  #checkClientDescriptor(body: Buffer): void {
    if (!body.includes('kv_transfer_params')) return;
    let v: unknown;
    try {
      v = JSON.parse(body.toString('utf8'));
    } catch {
      return; // the engine answers a body that is not JSON
    }
    const p = (v as { kv_transfer_params?: unknown } | null)?.kv_transfer_params;
    if (typeof p !== 'object' || p === null) return;
    const { remote_host, remote_port } = p as { remote_host?: unknown; remote_port?: unknown };
    if ((remote_host === undefined || remote_host === null) && (remote_port === undefined || remote_port === null)) return;
    if (descriptorPeer(p as Record<string, unknown>, this.#d.prefillTargets?.all() ?? [], this.#d.nixlSideChannelPort)) return;
    this.#d.metrics.pdPrefills.inc({ result: 'refused_descriptor' });
    log.warn({ worker: this.#d.worker, host: String(remote_host), port: String(remote_port) }, 'request kv_transfer_params refused: its peer is not a live prefill worker (nothing sent)');
    throw new KvgateError('KVG_BAD_PREFILL_TARGET', 'kv_transfer_params names a transfer peer that is no registered, live prefill worker');
  }

  /** the worker a request is for: its rank's worker when it names a rank this shim serves */
  #workerOf(req: IncomingMessage): string {
    const h = req.headers[DP_RANK_HEADER];
    if (this.#d.rankWorker && typeof h === 'string' && /^\d+$/.test(h)) return this.#d.rankWorker(Number(h)) ?? this.#d.worker;
    return this.#d.worker;
  }

  /**
   * `authorization`: the router's engine key, passed on to the prefill engine as to the own engine. Returns the
   * descriptor (undefined when its peer is not one of `workers`, the prefill worker named: then the request is
   * prefilled locally) and the leg's usage (prompt and cached tokens, null where the engine reported none).
   */
  async #prefill(base: string, path: string, json: Record<string, unknown>, parent: Span, signal: AbortSignal, authorization: string | undefined, workers: WorkerRegistration[], requestId: string): Promise<{ desc: Record<string, unknown> | undefined; usage: PrefillUsage | null }> {
    const d = this.#d;
    const span = tracer().startSpan('shim.prefill', { attributes: { 'kvgate.prefill.target': base, 'kvgate.request_id': requestId } }, extractTraceContext(injectTraceHeaders({}, parent)));
    const timeoutMs = d.prefillTimeoutMs ?? 60_000;
    try {
      const headers = injectTraceHeaders({ 'content-type': 'application/json', 'x-request-id': requestId, ...(authorization ? { authorization } : {}) }, span);
      let res: Dispatcher.ResponseData;
      let text: string;
      try {
        res = await request(`${base}${path}`, {
          method: 'POST',
          headers,
          body: JSON.stringify(prefillRequest(json, path.endsWith('/chat/completions'))),
          signal,
          dispatcher: d.dispatcher,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs,
        });
        text = await res.body.text();
      } catch (e) {
        throw new KvgateError('KVG_UPSTREAM', `prefill endpoint ${base} ${isTimeout(e) ? 'timed out' : 'unreachable'}: ${(e as Error).message}`, { cause: e });
      }
      if (res.statusCode !== 200) {
        // the body is logged, never reflected: whatever answered is not the client's to read
        log.warn({ worker: d.worker, prefill: base, status: res.statusCode, body: text.slice(0, 200) }, 'prefill endpoint failed');
        throw new KvgateError('KVG_UPSTREAM', `prefill endpoint ${base} answered ${res.statusCode}`);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new KvgateError('KVG_UPSTREAM', `prefill endpoint ${base} answered non-JSON`);
      }
      let desc;
      try {
        desc = validateDescriptor((parsed as { kv_transfer_params?: unknown } | null)?.kv_transfer_params);
      } catch (e) {
        // the prefill side broke the protocol: a gateway error for our client, not its bad request
        throw new KvgateError('KVG_UPSTREAM', (e as Error).message, { cause: e });
      }
      if (!descriptorPeer(desc, workers, d.nixlSideChannelPort)) {
        d.metrics.pdPrefills.inc({ result: 'foreign_descriptor' });
        d.metrics.pdLocalPrefills.inc({ reason: 'foreign_descriptor' });
        log.warn({ worker: d.worker, prefill: base, descriptor: describeDescriptor(desc) }, 'transfer descriptor refused: its remote_host/remote_port are not the prefill worker; prefilling locally');
        return { desc: undefined, usage: null };
      }
      log.info({ worker: d.worker, prefill: base, descriptor: describeDescriptor(desc) }, 'remote prefill done');
      d.metrics.pdPrefills.inc({ result: 'ok' });
      return { desc, usage: prefillUsage(parsed) };
    } catch (e) {
      d.metrics.pdPrefills.inc({ result: 'error' });
      span.recordException(e as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
      throw e;
    } finally {
      span.end();
    }
  }
}

/** undici's header or body timeout */
function isTimeout(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT';
}

function parseJsonObject(body: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    throw new KvgateError('KVG_BAD_JSON', 'request body is not valid JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new KvgateError('KVG_BAD_JSON', 'request body must be a JSON object');
  return v as Record<string, unknown>;
}
