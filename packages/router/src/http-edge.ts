/**
 * The HTTP edge: the OpenAI-compatible server in front of the routing core. It owns the listener and what is
 * HTTP about a request — API keys and rate limits (api-keys.ts, rate-limit.ts), reading and validating the body
 * (http.ts), the upstream call and the relay (proxy.ts), trace spans, the engine-usage tap (diag.ts) and the
 * drain on close (http-drain.ts). Routing itself is the core's (routing-core.ts); what the cluster looks like, the
 * cluster view's (cluster-view.ts).
 *
 * Request path (POST /v1/completions, /v1/chat/completions), top to bottom in this file:
 *   handle: admit (API key, request bucket) → read + validate → strip client P/D fields
 *   proxy:  core.route → priority and flow control on a saturated pool (admission.ts, the gateway edge's too:
 *           sheddable → 429, queued → routed again, past the deadline → 503; Retry-After + x-kvgate-shed)
 *           → prompt-token bucket → core.commit → upstream (headers, signature) → relay chunk by chunk;
 *           a connect failure or a 5xx before the first byte marks the worker suspect and goes to
 *           core.reroute without the workers tried, until one answers or none is left.
 * POST /v1/route answers the decision without proxying (routeOnly).
 * vLLM's side doors: GET /v1/models/{id} (from the registry), GET /health (200 empty while an engine is live),
 * POST /tokenize and /detokenize (to an engine of the model's pool: toEngine).
 * Every error the router makes itself carries x-request-id (the client's, or the one made for the request).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { applyHttpLimits, errorBody, extractTraceContext, HttpDrain, httpServerOptions, injectTraceHeaders, KvgateError, resolveHttpLimits, signRequest, SpanStatusCode, tracer, type HttpLimits, type Logger, type Span } from '@kvgate/protocol';
import type { Agent } from 'undici';
import { SHED_HEADER, type Admission, type Admitted } from './admission.js';
import type { ApiKeys } from './api-keys.js';
import type { ClusterView } from './cluster-view.js';
import { RouterDiag, UsageTap, type SentRequest } from './diag.js';
import type { FailureReason } from './health.js';
import { parseJsonObject, readBody, sendError, sendJson, validateApiRequest, type ApiRequest } from './http.js';
import type { RouterMetrics } from './metrics.js';
import { openUpstream, relay, UpstreamAbort, UpstreamError, type RelayHooks } from './proxy.js';
import { CacheAccounting, isBatchPrompt, predictionFor, type Prediction } from './cache-accounting.js';
import { clientWantsUsage, UsageStrip, withUsageRaw } from './usage-strip.js';
import { RequestTimer } from './latency.js';
import { Dashboard, DASHBOARD_PATH, dashboardPage } from './dashboard.js';
import type { RateLimiter } from './rate-limit.js';
import type { Route, RoutingCore } from './routing-core.js';

export interface HttpEdgeOptions {
  id: string;
  core: RoutingCore;
  cluster: ClusterView;
  /** priority and flow control of a saturated pool (shared with the gateway edge) */
  admission: Admission;
  metrics: RouterMetrics;
  diag: RouterDiag;
  log: Logger;
  /** the upstream keep-alive agent (proxy.ts createAgent) */
  agent: Agent;
  /** request body limit, bytes */
  bodyLimit: number;
  apiKeys: ApiKeys;
  /** /healthz, /readyz and /metrics need a key too */
  authHealth: boolean;
  limiter: RateLimiter;
  /** `Authorization` value sent upstream, or undefined */
  engineAuth: string | undefined;
  forwardClientAuth: boolean;
  trustClientPd: boolean;
  clusterSecret: string | undefined;
  /** header/body timeouts, keep-alive (65 s by default here) and connection cap (protocol http-limits.ts) */
  httpLimits?: HttpLimits;
  /** serve /v1/completions and /v1/chat/completions (default true; `kvgate epp`: false, the gateway proxies) */
  openaiApi?: boolean;
}

export interface EdgeStats {
  requests: number;
  retries: number;
}

interface ParsedUrl {
  origin: string;
  basePath: string;
  host: string;
}

export class HttpEdge {
  readonly server: Server;
  /** SIGTERM: stop accepting, let responses finish, cut the rest cleanly */
  readonly drain: HttpDrain;
  /** predicted vs actual cached tokens of the requests proxied (cache-accounting.ts) */
  readonly cache: CacheAccounting;
  /** GET /dashboard and its feed (dashboard.ts) */
  readonly dashboard: Dashboard;
  readonly #o: HttpEdgeOptions;
  readonly #core: RoutingCore;
  readonly #cluster: ClusterView;
  readonly #metrics: RouterMetrics;
  readonly #log: Logger;
  readonly #stats: EdgeStats = { requests: 0, retries: 0 };
  readonly #openPerWorker = new Map<string, number>();
  /** parsed worker URLs (a handful of distinct ones; parsing each request's costs a few µs and garbage) */
  readonly #urls = new Map<string, ParsedUrl>();
  /** round robin over a pool's engines for /tokenize and /detokenize */
  #engineTurn = 0;

  constructor(o: HttpEdgeOptions) {
    this.#o = o;
    this.#core = o.core;
    this.#cluster = o.cluster;
    this.#metrics = o.metrics;
    this.#log = o.log;
    this.cache = new CacheAccounting(o.metrics);
    this.dashboard = new Dashboard({ router: o.id, cluster: o.cluster, cache: this.cache, allow: (req) => this.#dashboardAllowed(req), indexFallbacks: () => this.#core.stats().indexFallbacks });
    const limits = resolveHttpLimits(o.httpLimits, { keepAliveTimeoutMs: 65_000 });
    this.server = createServer(httpServerOptions(limits, { noDelay: true }), (inReq, res) => {
      arrivedAt.set(res, performance.now());
      const path = (inReq.url ?? '/').split('?')[0]!;
      this.#stats.requests++;
      res.on('finish', () => this.#metrics.requests.inc({ endpoint: endpointLabel(path), status: String(res.statusCode) }));
      this.#handle(path, inReq, res).catch((e) => {
        if (!(e instanceof KvgateError)) this.#log.error({ err: (e as Error).stack }, 'request failed');
        // the router's own errors carry the request's id too (the one sent upstream, the client's, or a new one)
        if (!res.headersSent && !res.hasHeader('x-request-id')) res.setHeader('x-request-id', requestIdOf(inReq));
        if (e instanceof RateLimited && !res.headersSent) res.setHeader('retry-after', String(e.retryAfterS));
        if (e instanceof Shed && !res.headersSent) {
          res.setHeader('retry-after', String(e.retryAfterS));
          res.setHeader(SHED_HEADER, e.shed);
        }
        sendError(res, e);
      });
    });
    this.server.on('upgrade', (req, socket, head) => {
      if (!this.dashboard.upgrade(req, socket, head)) socket.destroy();
    });
    applyHttpLimits(this.server, limits, 'router');
    // a request cut by the shutdown before its answer started: the 503 carries its id, as every router error does
    this.drain = new HttpDrain(this.server, 'router', (res) => ({ 'x-request-id': requestIdOf(res.req) }));
  }

  stats(): EdgeStats {
    return { ...this.#stats };
  }

  listen(port: number, host: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
  }

  /** Stop accepting; in-flight responses get `drainMs` to finish, then are cut cleanly. */
  async close(drainMs: number): Promise<void> {
    await this.dashboard.close();
    await this.drain.close(this.server, drainMs);
  }

  async #handle(path: string, inReq: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = inReq.method ?? 'GET';
    const guarded = path.startsWith('/v1/') || path === '/tokenize' || path === '/detokenize' || (this.#o.authHealth && (path === '/healthz' || path === '/health' || path === '/readyz' || path === '/metrics'));
    const client = guarded ? this.#admit(path, inReq, res) : '';
    if (client === undefined) return;
    if (method === 'GET') {
      if (path === '/healthz') return sendJson(res, 200, { status: 'ok', router: this.#o.id });
      if (path === '/readyz') return this.#readyz(res);
      if (path === DASHBOARD_PATH) {
        if (!this.#dashboardAllowed(inReq)) throw new KvgateError('KVG_UNAUTHORIZED', 'the dashboard needs an API key: open /dashboard?key=<key> (or send Authorization: Bearer <key>)');
        const page = dashboardPage(this.#o.id);
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(page), 'cache-control': 'no-cache' });
        res.end(page);
        return;
      }
      if (path === '/metrics') {
        const text = await this.#metrics.registry.metrics();
        res.writeHead(200, { 'content-type': this.#metrics.registry.contentType });
        res.end(text);
        return;
      }
      if (path === '/v1/models') return sendJson(res, 200, { object: 'list', data: this.#modelCards() });
      if (path.startsWith('/v1/models/')) return this.#modelCard(path, res);
      if (path === '/health') return this.#health(res);
    }
    if (method === 'POST' && (path === '/tokenize' || path === '/detokenize')) return this.#toEngine(path, inReq, res);
    if (method === 'POST' && (path === '/v1/completions' || path === '/v1/chat/completions' || path === '/v1/route')) {
      const raw = await readBody(inReq, this.#o.bodyLimit);
      const kind = path === '/v1/completions' ? 'completion' : path === '/v1/chat/completions' ? 'chat' : 'either';
      const req = validateApiRequest(kind, raw);
      if (!this.#o.trustClientPd && req.body.kv_transfer_params !== undefined) {
        // a client must not choose where KV blocks come from (or go): only the router's own P/D pairing sets this
        delete req.body.kv_transfer_params;
        req.raw = Buffer.from(JSON.stringify(req.body));
      }
      if (path === '/v1/route') return this.#routeOnly(req, res);
      if (this.#o.openaiApi === false) throw new KvgateError('KVG_NOT_FOUND', `this is an endpoint picker: send ${path} through the gateway (only /v1/route is answered here)`);
      const span = tracer().startSpan('kvgate.route', { attributes: { 'kvgate.model': req.model, 'kvgate.router': this.#o.id } }, extractTraceContext(inReq.headers));
      try {
        await this.#proxy(req, path, inReq, res, span, client);
      } catch (e) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
        span.end();
        throw e;
      }
      return;
    }
    throw new KvgateError('KVG_NOT_FOUND', `no route for ${method} ${path}`);
  }

  /**
   * The API key check (before the body is read) and the request bucket: the key's label names the caller, or its
   * address when the router has no keys. undefined = already answered 401.
   */
  #admit(path: string, inReq: IncomingMessage, res: ServerResponse): string | undefined {
    const { apiKeys, limiter } = this.#o;
    let client: string;
    if (apiKeys.size > 0) {
      const label = apiKeys.check(inReq.headers.authorization);
      if (label === undefined) {
        const { status, body } = errorBody(new KvgateError('KVG_UNAUTHORIZED', 'Invalid or missing API key: send Authorization: Bearer <key>'));
        sendJson(res, status, body, { 'www-authenticate': 'Bearer', 'x-request-id': requestIdOf(inReq) });
        return undefined;
      }
      client = label;
    } else client = `addr:${inReq.socket.remoteAddress ?? '?'}`;
    if (limiter.enabled && path.startsWith('/v1/')) {
      const wait = limiter.request(client);
      if (wait > 0) throw this.#rateLimited(client, wait, 'requests per second');
    }
    return client;
  }

  async #proxy(req: ApiRequest, path: string, inReq: IncomingMessage, res: ServerResponse, span: Span, client: string): Promise<void> {
    const o = this.#o;
    const core = this.#core;
    const t0 = performance.now();
    let routed = await core.route(req);
    // every candidate busy: shed (sheddable), or wait in the pool's queue and route again
    const admitted = await o.admission.admit(req, routed, undefined, (n) => headerValue(inReq, n), 'http');
    if (admitted.kind === 'refused') throw new Shed(admitted);
    if (admitted.waitedMs > 0 && res.destroyed) return; // the client left while it waited
    routed = admitted.route;
    // the prompt-token bucket: charged once the prompt's tokens are known (a raw-size estimate without them)
    if (o.limiter.enabled) {
      const wait = o.limiter.tokens(client, routed.tokens?.length ?? Math.ceil(req.raw.length / 4));
      if (wait > 0) throw this.#rateLimited(client, wait, 'prompt tokens per second');
    }
    const requestId = requestIdOf(inReq);
    const abort = new UpstreamAbort();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    // a stream's cached tokens come in the engine's final usage chunk: asked for here, kept from a client that
    // did not ask for it (usage-strip.ts)
    const stripUsage = req.stream && !clientWantsUsage(req.body);
    const upBody = stripUsage ? withUsageRaw(req.raw, req.body) : req.raw;
    /** workers this request already failed on (never tried twice) */
    const tried = new Set<string>();
    for (let attempt = 0; ; attempt++) {
      const { decision } = routed;
      const tickets = core.commit(routed, req, requestId);
      this.dashboard.decision(routed, requestId);
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      const tp = inReq.headers.traceparent;
      if (typeof tp === 'string') headers.traceparent = tp;
      this.#upstreamAuth(inReq, headers);
      headers['x-request-id'] = requestId;
      // a data-parallel rank of one engine server: vLLM's API server reads this hint (X-data-parallel-rank)
      if (decision.worker.dpRank !== undefined) headers['x-data-parallel-rank'] = String(decision.worker.dpRank);
      if (decision.prefill) headers['x-prefiller-host-port'] = this.#parsedUrl(decision.prefill.engineUrl).host;
      else if (o.trustClientPd && typeof inReq.headers['x-prefiller-host-port'] === 'string') headers['x-prefiller-host-port'] = inReq.headers['x-prefiller-host-port'];
      injectTraceHeaders(headers, span);
      const extra: Record<string, string> = { 'x-kvgate-worker': decision.worker.worker, 'x-request-id': requestId };
      if (decision.prefill) extra['x-kvgate-prefill'] = decision.prefill.worker;
      span.setAttribute('kvgate.worker', decision.worker.worker);
      span.setAttribute('kvgate.overlap_blocks', decision.overlap);
      // P/D: split or not, and why (the choice /v1/route and the decision record show)
      if (decision.pd) span.setAttributes({ 'kvgate.pd.split': decision.pd.split, 'kvgate.pd.reason': decision.pd.reason });
      if (decision.prefill) span.setAttribute('kvgate.prefill.worker', decision.prefill.worker);
      if (attempt === 0) this.#metrics.routeSeconds.observe((performance.now() - t0) / 1000);
      const u = this.#parsedUrl(decision.worker.url);
      const worker = decision.worker.worker;
      if (o.clusterSecret) Object.assign(headers, signRequest(o.clusterSecret, 'POST', u.basePath + path, upBody));
      this.#setOpen(worker, 1);
      this.#cluster.health.sent(worker);
      let up;
      try {
        up = await openUpstream(o.agent, u.origin, u.basePath + path, upBody, headers, abort);
      } catch (e) {
        core.finish(tickets);
        this.#setOpen(worker, -1);
        if (abort.aborted) {
          this.#cluster.health.abandoned(worker);
          span.end();
          return;
        }
        if (e instanceof UpstreamError && e.beforeFirstByte) {
          const reason: FailureReason = e.status !== undefined ? 'status' : 'connect';
          this.#cluster.upstreamFailed(worker, reason, e);
          tried.add(worker);
          if (decision.prefill) tried.add(decision.prefill.worker);
          try {
            routed = core.reroute(routed, tried);
          } catch (again) {
            // no other worker to try: the upstream failure is the better answer
            if (again instanceof KvgateError && again.code === 'KVG_NO_WORKER') throw e;
            throw again;
          }
          this.#stats.retries++;
          this.#metrics.retries.inc({ reason });
          this.#log.warn({ worker, next: routed.decision.worker.worker, reason, err: e.message }, 'upstream failed before the first byte; retrying on another worker');
          continue;
        }
        throw e;
      }
      this.#cluster.upstreamAnswered(worker);
      // the engine's usage, read off the chunks as they pass: misconfiguration signals (diag.ts)
      const tap = up.statusCode === 200 ? new UsageTap(req.stream) : undefined;
      const sent = routed;
      const timer = up.statusCode === 200 ? new RequestTimer(this.#metrics, worker, routed.model, arrivedAt.get(res) ?? t0, req.stream, this.dashboard.active ? (s) => this.dashboard.ttft(s) : undefined) : undefined;
      // the hooks as methods, not arrow properties: a named closure per request costs a defineProperty under
      // tsx's keepNames (issue 14)
      const edge = this;
      const hooks: RelayHooks = {
        onFirstByte(): void {
          core.firstByte(tickets);
        },
        onDone(ok: boolean): void {
          core.finish(tickets);
          o.admission.poke();
          edge.#setOpen(worker, -1);
          timer?.done(ok);
          if (!ok) abort.abort();
          else if (tap) {
            const usage = tap.usage();
            o.diag.observe(worker, sentRequest(sent, req), usage);
            edge.cache.record(prediction(sent, req, up.headers), usage);
          }
          span.end();
        },
      };
      if (tap) {
        hooks.onChunk = function (c: Buffer): void {
          tap.push(c);
          timer!.chunk(c);
        };
      }
      if (stripUsage && up.statusCode === 200) hooks.filter = new UsageStrip();
      this.drain.onCut(res, relay(up, res, extra, hooks));
      return;
    }
  }

  /** POST /v1/route: the decision and what it was made from, without proxying (nothing is credited or recorded). */
  async #routeOnly(req: ApiRequest, res: ServerResponse): Promise<void> {
    const r = await this.#core.route(req);
    const { decision } = r;
    const { workers, inflight } = this.#cluster;
    const selector = this.#core.selector;
    const load = (w: string) => {
      const l = workers.lastLoad(w);
      const f = inflight.total(w);
      return { waiting: l?.waiting ?? 0, running: l?.running ?? 0, kvUsage: l?.kvUsage ?? 0, inflightPrefillTokens: f.prefillTokens, inflightDecodeBlocks: f.decodeBlocks };
    };
    sendJson(res, 200, {
      worker: decision.worker.worker,
      url: decision.worker.url,
      ...(decision.prefill ? { prefill: decision.prefill.worker, prefillHostPort: this.#parsedUrl(decision.prefill.engineUrl).host } : {}),
      model: r.pool.model,
      lora: r.pool.lora,
      blockSize: r.pool.blockSize,
      promptTokens: r.tokens?.length ?? null,
      promptBlocks: decision.promptBlocks,
      overlap: decision.overlap,
      cached: decision.cached,
      // P/D pools: split (remote prefill) or not, and why (select.ts PdPolicy)
      ...(decision.pd ? { pd: { split: decision.pd.split, reason: decision.pd.reason } } : {}),
      ...(r.salted ? { salted: true } : {}),
      indexAnswered: r.indexAnswered,
      policy: selector.policy,
      tierWeights: selector.weights.tierWeights,
      // per worker, the cumulative per-tier overlap the score used (gpu ≤ cpu ≤ disk; gpu only: all three equal)
      tiers: Object.fromEntries(decision.scored.map((s) => [s.worker, s.tiers])),
      candidates: decision.scored.map((s) => ({
        worker: s.worker,
        overlap: s.overlap,
        indexOverlap: r.overlaps?.[s.worker] ?? 0,
        tiers: s.tiers,
        ...(r.tiers?.[s.worker] ? { indexTiers: r.tiers[s.worker] } : {}),
        cached: s.cached,
        score: s.cost,
        busy: s.busy,
        load: load(s.worker),
      })),
    });
  }

  /** the dashboard follows /metrics: open, unless the router has API keys and `authHealth` (then `?key=` or Authorization) */
  #dashboardAllowed(req: IncomingMessage): boolean {
    const { apiKeys, authHealth } = this.#o;
    if (!authHealth || apiKeys.size === 0) return true;
    if (apiKeys.check(req.headers.authorization) !== undefined) return true;
    const q = (req.url ?? '').split('?')[1];
    const key = q ? new URLSearchParams(q).get('key') : null;
    return key !== null && apiKeys.check(`Bearer ${key}`) !== undefined;
  }

  #readyz(res: ServerResponse): void {
    const c = this.#cluster;
    const live = c.liveCount();
    const ready = c.registryLoaded && live > 0;
    // a stale view stays ready: it is still used while the engines answer (the detail says so)
    sendJson(res, ready ? 200 : 503, {
      ready,
      liveWorkers: live,
      registryLoaded: c.registryLoaded,
      busUp: c.hold.busUp(),
      busSilentMs: c.hold.silentMs(),
      viewStale: c.hold.stale(),
      heldWorkers: c.hold.held(),
      suspectWorkers: c.health.suspects(),
      unhealthyWorkers: c.health.unhealthy(),
    });
  }

  /** GET /v1/models entries: vLLM's ModelCard fields, `max_model_len` from the workers' registrations (null: unknown) */
  #modelCards(): Record<string, unknown>[] {
    return this.#cluster.workers.models().map((m) => ({ id: m.id, object: 'model', created: 0, owned_by: 'kvgate', root: m.root, parent: m.lora ? m.root : null, max_model_len: m.maxModelLen, permission: [] }));
  }

  /**
   * GET /v1/models/{id} (the OpenAI SDK's models.retrieve): the same card as in /v1/models, from the registry —
   * vLLM itself serves only the list, so there is no engine answer to pass on. An id with a slash (`org/name`)
   * may come as is or %2F-encoded.
   */
  #modelCard(path: string, res: ServerResponse): void {
    let id: string;
    try {
      id = decodeURIComponent(path.slice('/v1/models/'.length));
    } catch {
      throw new KvgateError('KVG_BAD_REQUEST', 'the model id in the path is not valid percent-encoding', { param: 'model' });
    }
    const card = this.#modelCards().find((c) => c.id === id);
    if (!card) throw new KvgateError('KVG_UNKNOWN_MODEL', `The model \`${id}\` does not exist.`, { param: 'model' });
    sendJson(res, 200, card);
  }

  /** GET /health, vLLM's name: 200 with an empty body while some engine is live and not flagged unhealthy, else 503 (as vLLM when its engine is dead). */
  #health(res: ServerResponse): void {
    const c = this.#cluster;
    const up = c.workers.all().some((r) => c.workers.isLive(r.worker) && !c.health.isUnhealthy(r.worker));
    res.writeHead(up ? 200 : 503, { 'content-length': 0 });
    res.end();
  }

  /**
   * POST /tokenize, /detokenize (vLLM's, not under /v1): sent as they are to one engine of the model's pool (the
   * body's `model`, or the only model served when it names none), round robin, and its answer passed back.
   */
  async #toEngine(path: string, inReq: IncomingMessage, res: ServerResponse): Promise<void> {
    const o = this.#o;
    const raw = await readBody(inReq, o.bodyLimit);
    const body = parseJsonObject(raw);
    let model = body.model;
    if (model === undefined || model === null) {
      const served = new Set(this.#cluster.workers.models().map((m) => m.root));
      if (served.size !== 1) throw new KvgateError('KVG_BAD_REQUEST', served.size === 0 ? 'no model is served' : `model is required: this router serves ${[...served].join(', ')}`, { param: 'model' });
      model = [...served][0]!;
    }
    if (typeof model !== 'string' || model === '') throw new KvgateError('KVG_BAD_REQUEST', 'model must be a non-empty string', { param: 'model' });
    const pool = this.#cluster.workers.pool(model);
    if (!pool) throw new KvgateError('KVG_UNKNOWN_MODEL', `The model \`${model}\` does not exist.`, { param: 'model' });
    const h = this.#cluster.health;
    const all = [...pool.both, ...pool.decode, ...pool.prefill];
    const ok = all.filter((r) => !h.isUnhealthy(r.worker) && !h.isSuspect(r.worker));
    const candidates = ok.length > 0 ? ok : all;
    if (candidates.length === 0) throw new KvgateError('KVG_NO_WORKER', `no live worker serves ${model}`);
    const w = candidates[this.#engineTurn++ % candidates.length]!;
    const u = this.#parsedUrl(w.url);
    const requestId = requestIdOf(inReq);
    const headers: Record<string, string> = { 'content-type': 'application/json', 'x-request-id': requestId };
    this.#upstreamAuth(inReq, headers);
    if (o.clusterSecret) Object.assign(headers, signRequest(o.clusterSecret, 'POST', u.basePath + path, raw));
    let up;
    try {
      up = await o.agent.request({ origin: u.origin, path: u.basePath + path, method: 'POST', headers, body: raw, headersTimeout: 30_000, bodyTimeout: 30_000 });
    } catch (e) {
      throw new KvgateError('KVG_UPSTREAM', `${w.worker} did not answer ${path}: ${(e as Error).message}`, { cause: e });
    }
    const answer = Buffer.from(await up.body.arrayBuffer());
    const ct = up.headers['content-type'];
    res.writeHead(up.statusCode, { 'content-type': typeof ct === 'string' ? ct : 'application/json', 'content-length': answer.length, 'x-kvgate-worker': w.worker, 'x-request-id': requestId });
    res.end(answer);
  }

  /** the client's credentials stay here: upstream gets the engine's own key (unless told to forward the client's) */
  #upstreamAuth(inReq: IncomingMessage, headers: Record<string, string>): void {
    const auth = this.#o.forwardClientAuth ? inReq.headers.authorization : undefined;
    if (typeof auth === 'string') headers.authorization = auth;
    else if (this.#o.engineAuth) headers.authorization = this.#o.engineAuth;
  }

  #rateLimited(client: string, waitS: number, what: string): RateLimited {
    this.#log.debug({ client, retryAfterS: waitS }, `rate limited: ${what}`);
    return new RateLimited(`rate limit reached (${what}); retry after ${waitS} s`, waitS);
  }

  #parsedUrl(url: string): ParsedUrl {
    let p = this.#urls.get(url);
    if (!p) {
      const u = new URL(url);
      p = { origin: u.origin, basePath: u.pathname.replace(/\/$/, ''), host: u.host };
      if (this.#urls.size >= 1024) this.#urls.clear();
      this.#urls.set(url, p);
    }
    return p;
  }

  #setOpen(worker: string, d: number): void {
    const n = (this.#openPerWorker.get(worker) ?? 0) + d;
    if (n <= 0) this.#openPerWorker.delete(worker);
    else this.#openPerWorker.set(worker, n);
    this.#metrics.inflight.set({ worker }, Math.max(0, n));
  }
}

/** 429 KVG_RATE_LIMITED; the HTTP edge adds `Retry-After: retryAfterS` */
class RateLimited extends KvgateError {
  readonly retryAfterS: number;
  constructor(message: string, retryAfterS: number) {
    super('KVG_RATE_LIMITED', message);
    this.retryAfterS = retryAfterS;
  }
}

/** A request refused at a saturated pool (admission.ts): 429 KVG_OVERLOADED or 503 KVG_QUEUE_TIMEOUT, with Retry-After and x-kvgate-shed */
class Shed extends KvgateError {
  readonly retryAfterS: number;
  readonly shed: string;
  constructor(r: Extract<Admitted, { kind: 'refused' }>) {
    super(r.code, r.message);
    this.retryAfterS = r.retryAfterS;
    this.shed = r.shed;
  }
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** What diag.ts compares the engine's usage with: the router's token count and, single-worker only, the index's overlap. */
function sentRequest(r: Route, req: ApiRequest): SentRequest {
  const p = req.body.prompt;
  const worker = r.decision.worker.worker;
  return {
    routerTokens: r.tokens?.length ?? null,
    overlapBlocks: r.indexAnswered && !r.decision.prefill ? (r.overlaps?.[worker] ?? 0) : null,
    blockSize: r.pool.blockSize,
    batch: Array.isArray(p) && p.length > 1 && (typeof p[0] === 'string' || Array.isArray(p[0])),
  };
}

/** when each request arrived (latency.ts: request in) */
const arrivedAt = new WeakMap<ServerResponse, number>();
/** the ids made here for requests that came without one (the same id upstream and on the router's own error) */
const madeIds = new WeakMap<IncomingMessage, string>();

/** The request's id: the client's x-request-id (1–200 chars), else one made once per request. */
function requestIdOf(inReq: IncomingMessage): string {
  const rid = inReq.headers['x-request-id'];
  if (typeof rid === 'string' && rid.length > 0 && rid.length <= 200) return rid;
  let id = madeIds.get(inReq);
  if (id === undefined) madeIds.set(inReq, (id = randomUUID()));
  return id;
}

/** What the decision predicted cached for the request (cache-accounting.ts; a P/D split: by the upstream's headers). */
function prediction(r: Route, req: ApiRequest, upHeaders: Record<string, string | string[] | undefined>): Prediction {
  return predictionFor(r, isBatchPrompt(req.body.prompt), (n) => {
    const v = upHeaders[n];
    return typeof v === 'string' ? v : undefined;
  });
}

function endpointLabel(path: string): string {
  switch (path) {
    case '/v1/completions':
    case '/v1/chat/completions':
    case '/v1/route':
    case '/v1/models':
    case '/tokenize':
    case '/detokenize':
    case '/health':
    case '/healthz':
    case '/readyz':
    case '/metrics':
      return path;
    default:
      return 'other';
  }
}
