/**
 * Priority and flow control, the same in both edges (the HTTP edge and the gateway picker): a request whose route
 * finds every candidate over its busy thresholds is admitted here, or refused.
 *
 *   priority   the request's objective name (header `x-llm-d-inference-objective`, or GIE's older
 *              `x-gateway-inference-objective`) mapped by `objectives` (InferenceObjective semantics: an integer,
 *              unset or unknown = 0, negative = sheddable)
 *   sheddable  priority < 0 on a saturated pool: refused at once, 429 KVG_OVERLOADED (shed reason `sheddable`)
 *   queue      otherwise the request waits in the pool's bounded per-priority queue (flow-control.ts: highest
 *              priority first, the fairness ids `x-llm-d-inference-fairness-id` taking turns inside a priority);
 *              the band full → 429 KVG_OVERLOADED (`queue-full`), the deadline passed → 503 KVG_QUEUE_TIMEOUT
 *              (`queue-timeout`); the router closing → 503 KVG_SHUTTING_DOWN (`shutting-down`); admitted → routed
 *              again (the load has moved while it waited)
 *
 * Every refusal carries `Retry-After` (seconds) and the shed reason (`x-kvgate-shed`). One Admission per router:
 * both edges share its queue (a saturated pool is saturated for both) and its metrics —
 * `kvgate_router_queue_depth{priority}`, `kvgate_router_queue_wait_seconds{priority}`,
 * `kvgate_router_shed_total{edge,priority,reason}`.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { FlowGate, type FlowOptions, type FlowQueue } from './flow-control.js';
import type { Route, RouteRequest, RoutingCore } from './routing-core.js';
import type { ScoreWeights } from './scorer.js';
import type { Pool, WorkerView } from './workers.js';
import type { WorkerRegistration } from '@kvgate/protocol';

/** objective headers, the current llm-d name first (GIE's older spelling accepted) */
export const OBJECTIVE_HEADERS = ['x-llm-d-inference-objective', 'x-gateway-inference-objective'] as const;
export const FAIRNESS_HEADERS = ['x-llm-d-inference-fairness-id', 'x-gateway-inference-fairness-id'] as const;
/** the shed reason of a refusal, on both edges' answers */
export const SHED_HEADER = 'x-kvgate-shed';

export type ShedReason = 'sheddable' | 'queue-full' | 'queue-timeout' | 'shutting-down';
export type Edge = 'http' | 'epp';

export interface AdmissionOptions {
  /** objective name → priority (InferenceObjective: unset 0, negative = sheddable); unknown names → 0 */
  objectives?: Record<string, number>;
  /** queue bounds and deadline (flow-control.ts): default 1024 per priority and pool, 30 s */
  flow?: FlowOptions;
  /** Retry-After of a refusal, seconds; default 1 */
  retryAfterS?: number;
}

export interface AdmissionDeps {
  core: RoutingCore;
  workers: WorkerView;
  weights: ScoreWeights;
  registry: Registry;
}

export type Admitted =
  | { kind: 'admitted'; route: Route; priority: number; waitedMs: number }
  | { kind: 'refused'; status: 429 | 503; code: 'KVG_OVERLOADED' | 'KVG_QUEUE_TIMEOUT' | 'KVG_SHUTTING_DOWN'; shed: ShedReason; priority: number; message: string; retryAfterS: number };

function poolWorkers(pool: Pool): WorkerRegistration[] {
  return pool.both.length > 0 ? pool.both : [...pool.prefill, ...pool.decode];
}

function allBusy(route: Route): boolean {
  const s = route.decision.scored;
  return s.length > 0 && s.every((x) => x.busy);
}

export class Admission {
  readonly gate: FlowGate;
  readonly #d: AdmissionDeps;
  readonly #objectives: ReadonlyMap<string, number>;
  readonly #retryAfterS: number;
  readonly #depth: Gauge<'priority'>;
  readonly #wait: Histogram<'priority'>;
  readonly #shed: Counter<'edge' | 'priority' | 'reason'>;

  constructor(o: AdmissionOptions, d: AdmissionDeps) {
    this.#d = d;
    this.#objectives = new Map(Object.entries(o.objectives ?? {}));
    this.#retryAfterS = o.retryAfterS ?? 1;
    const registers = [d.registry];
    this.#depth = new Gauge({ name: 'kvgate_router_queue_depth', help: 'requests waiting for a saturated pool, by priority (both edges)', labelNames: ['priority'], registers });
    this.#wait = new Histogram({ name: 'kvgate_router_queue_wait_seconds', help: 'time a request waited for a saturated pool, by priority', labelNames: ['priority'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers });
    this.#shed = new Counter({ name: 'kvgate_router_shed_total', help: 'requests refused at a saturated pool: 429 sheddable / queue-full, 503 queue-timeout', labelNames: ['edge', 'priority', 'reason'], registers });
    this.gate = new FlowGate(o.flow ?? {}, (pool) => this.hasRoom(pool), (_pool, q) => this.#depths(q));
  }

  /** The request's priority from its objective header (`header` reads a lower-cased name). */
  priorityOf(header: (name: string) => string | undefined): number {
    for (const h of OBJECTIVE_HEADERS) {
      const name = header(h);
      if (name !== undefined && name !== '') return this.#objectives.get(name) ?? 0;
    }
    return 0;
  }

  /** Is any worker of the pool below its busy thresholds (by its last load report)? */
  hasRoom(model: string): boolean {
    const pool = this.#d.workers.pool(model);
    if (!pool) return true;
    const w = this.#d.weights;
    for (const r of poolWorkers(pool)) {
      const l = this.#d.workers.lastLoad(r.worker);
      if (!l || (l.kvUsage < w.busyKvUsage && l.waiting < w.busyWaiting)) return true;
    }
    return false;
  }

  /**
   * `route` (the core's answer for `req`) admitted as it is when some candidate has room; otherwise shed, or
   * queued and routed again once admitted (with the same exclusions).
   */
  async admit(req: RouteRequest, route: Route, exclude: ReadonlySet<string> | undefined, header: (name: string) => string | undefined, edge: Edge): Promise<Admitted> {
    const priority = this.priorityOf(header);
    if (!allBusy(route)) return { kind: 'admitted', route, priority, waitedMs: 0 };
    const model = req.model;
    if (priority < 0) return this.#refuse(edge, priority, 'sheddable', `every worker of \`${model}\` is saturated and the request is sheddable (priority ${priority})`);
    let tenant = 'default';
    for (const h of FAIRNESS_HEADERS) {
      const v = header(h);
      if (v) {
        tenant = v;
        break;
      }
    }
    const { outcome, waitedMs } = await this.gate.wait(model, priority, tenant);
    this.#wait.observe({ priority: String(priority) }, waitedMs / 1000);
    if (outcome === 'full') return this.#refuse(edge, priority, 'queue-full', `every worker of \`${model}\` is saturated and the queue of priority ${priority} is full`);
    if (outcome === 'closed') return this.#refuse(edge, priority, 'shutting-down', `the router is shutting down; the request waited for a saturated pool (\`${model}\`)`);
    if (outcome === 'expired') return this.#refuse(edge, priority, 'queue-timeout', `every worker of \`${model}\` stayed saturated past the queue deadline (${Math.round(waitedMs)} ms)`);
    // admitted: the load has moved since; route again (the next waiter goes once this route is made)
    try {
      return { kind: 'admitted', route: await this.#d.core.route(req, exclude), priority, waitedMs };
    } finally {
      this.gate.picked(model);
    }
  }

  /** A request ended (its load left): release what fits now rather than at the next tick. */
  poke(): void {
    this.gate.poke();
  }

  close(): void {
    this.gate.close();
  }

  #refuse(edge: Edge, priority: number, shed: ShedReason, message: string): Admitted {
    this.#shed.inc({ edge, priority: String(priority), reason: shed });
    const code = shed === 'queue-timeout' ? 'KVG_QUEUE_TIMEOUT' : shed === 'shutting-down' ? 'KVG_SHUTTING_DOWN' : 'KVG_OVERLOADED';
    return { kind: 'refused', status: code === 'KVG_OVERLOADED' ? 429 : 503, code, shed, priority, message, retryAfterS: this.#retryAfterS };
  }

  #depths(q: FlowQueue): void {
    for (const [p, n] of q.depths()) this.#depth.set({ priority: String(p) }, n);
  }
}
