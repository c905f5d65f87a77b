/**
 * The endpoint picker's decision: a request (its headers, its buffered body, the proxy's subset hint) → the ordered
 * endpoints to try, or a local reply. Routing is the core's (routing-core.ts: the same selection, in-flight credit
 * and decision record as the HTTP edge); this file only maps workers to endpoints and back, applies the subset
 * hint, and puts priority and flow control (admission.ts, shared with the HTTP edge) in front of a saturated pool.
 *
 *   endpoints   a worker's endpoint is its registered engine address, `host:port` (what an InferencePool's
 *               `podIP:targetPort` is); first the core's choice, then the other candidates by score, busy ones left
 *               out (the proxy walks the list on retry)
 *   subset      workers whose endpoint is outside the hint are excluded; nothing left → 503
 *   saturated   every candidate busy: a sheddable request (priority < 0) → 429 at once; others wait for room in
 *               the pool's queue, past the deadline → 503, queue full → 429
 */
import { randomUUID } from 'node:crypto';
import { KvgateError, type WorkerRegistration } from '@kvgate/protocol';
import { validateApiRequest, type ApiRequest } from '../http.js';
import { isBatchPrompt } from '../cache-accounting.js';
import type { Route, RouteRequest, RoutingCore } from '../routing-core.js';
import type { Ticket } from '../inflight.js';
import type { Pool, WorkerView } from '../workers.js';
import type { Admission, ShedReason } from '../admission.js';

export { OBJECTIVE_HEADERS, FAIRNESS_HEADERS } from '../admission.js';

export interface PickInput {
  /** lower-cased request headers */
  header(name: string): string | undefined;
  /** the whole request body (empty when there was none) */
  body: Buffer;
  /** the proxy's candidate endpoints, or undefined (the whole pool) */
  subset: string[] | undefined;
}

export type PickResult =
  | {
      kind: 'picked';
      endpoints: string[];
      route: Route;
      tickets: Ticket[];
      requestId: string;
      priority: number;
      scores: Record<string, number>;
      /** the request asked for a stream; its prompt is a batch (cache accounting reads the answer by these) */
      stream: boolean;
      batch: boolean;
    }
  | { kind: 'refused'; status: number; reason: string; message: string; retryAfterS?: number; shed?: ShedReason; param?: string };

export interface PickerOptions {
  core: RoutingCore;
  workers: WorkerView;
  /** priority, shedding and the queue of a saturated pool (shared with the HTTP edge) */
  admission: Admission;
  /** the model when a request has no body (or none naming one); default: none (400) */
  defaultModel?: string;
  /** endpoints in the answer, the first choice included (a proxy that reads one address, e.g. Envoy's ORIGINAL_DST cluster: 1); default 0 = all eligible */
  maxEndpoints?: number;
}

/** `http://10.0.0.7:8000/…` → `10.0.0.7:8000` (the scheme's port when none is given) */
export function endpointOf(engineUrl: string): string {
  const u = new URL(engineUrl);
  const port = u.port || (u.protocol === 'https:' ? '443' : '80');
  return `${u.hostname}:${port}`;
}

function poolWorkers(pool: Pool): WorkerRegistration[] {
  return pool.both.length > 0 ? pool.both : [...pool.prefill, ...pool.decode];
}

export class Picker {
  readonly #o: PickerOptions;

  constructor(o: PickerOptions) {
    this.#o = o;
  }

  async pick(input: PickInput): Promise<PickResult> {
    let req: RouteRequest;
    try {
      req = this.#request(input.body);
    } catch (e) {
      return refused(e);
    }
    let route: Route;
    let priority: number;
    try {
      const exclude = this.#subsetExclusion(req.model, input.subset);
      const a = await this.#o.admission.admit(req, await this.#o.core.route(req, exclude), exclude, (n) => input.header(n), 'epp');
      if (a.kind === 'refused') return { kind: 'refused', status: a.status, reason: a.code, message: a.message, retryAfterS: a.retryAfterS, shed: a.shed };
      route = a.route;
      priority = a.priority;
    } catch (e) {
      return refused(e);
    }
    const requestId = input.header('x-request-id') || randomUUID();
    const tickets = this.#o.core.commit(route, req, requestId);
    const { endpoints, scores } = this.#ordered(route);
    const api = req as Partial<ApiRequest>;
    return { kind: 'picked', endpoints, route, tickets, requestId, priority, scores, stream: api.stream === true, batch: isBatchPrompt(api.body?.prompt) };
  }

  /** The worker serving `endpoint` in the route's pool, or undefined. */
  workerAt(route: Route, endpoint: string): string | undefined {
    for (const r of poolWorkers(route.pool)) if (endpointOf(r.engineUrl) === endpoint) return r.worker;
    return undefined;
  }

  #request(body: Buffer): RouteRequest {
    if (body.length > 0) return validateApiRequest('either', body);
    if (!this.#o.defaultModel) throw new KvgateError('KVG_BAD_REQUEST', 'the request has no body naming a model and the picker has no --pool');
    return { kind: 'completion', model: this.#o.defaultModel, maxTokens: undefined, raw: body };
  }

  #subsetExclusion(model: string, subset: string[] | undefined): Set<string> | undefined {
    if (subset === undefined) return undefined;
    const pool = this.#o.workers.pool(model);
    const allowed = new Set(subset);
    const out = new Set<string>();
    for (const r of pool ? poolWorkers(pool) : []) if (!allowed.has(endpointOf(r.engineUrl))) out.add(r.worker);
    if (pool && out.size === poolWorkers(pool).length) throw new KvgateError('KVG_NO_WORKER', `no worker of \`${model}\` is in the gateway's endpoint subset (${subset.join(',') || 'empty'})`);
    return out;
  }

  #ordered(route: Route): { endpoints: string[]; scores: Record<string, number> } {
    const byWorker = new Map(poolWorkers(route.pool).map((r) => [r.worker, r] as const));
    const first = route.decision.worker;
    const endpoints = [endpointOf(first.engineUrl)];
    const scores: Record<string, number> = {};
    const rest = route.decision.scored.filter((s) => s.worker !== first.worker && !s.busy).sort((a, b) => a.cost - b.cost);
    for (const s of route.decision.scored) {
      const r = byWorker.get(s.worker);
      if (r) scores[endpointOf(r.engineUrl)] = s.cost;
    }
    for (const s of rest) {
      const r = byWorker.get(s.worker);
      if (r) endpoints.push(endpointOf(r.engineUrl));
    }
    const max = this.#o.maxEndpoints ?? 0;
    return { endpoints: max > 0 ? endpoints.slice(0, max) : endpoints, scores };
  }
}

function refused(e: unknown): PickResult {
  if (e instanceof KvgateError) return { kind: 'refused', status: e.httpStatus, reason: e.code, message: e.message, ...(e.param !== undefined ? { param: e.param } : {}) };
  return { kind: 'refused', status: 500, reason: 'KVG_INTERNAL', message: 'internal error' };
}
