/**
 * The routing core: one request in, one decision out, with no HTTP and no bus in it. Every edge (the HTTP server,
 * http-edge.ts; a gateway endpoint picker later) calls the same three steps:
 *
 *   route(req)            pool by model → token ids → prefix hashes (under the request's `cache_salt` when it has
 *                         one) → index match with per-tier overlaps (budget: the IndexQuery's; silence = load
 *                         only) → select (select.ts, passive health applied)
 *   commit(route, req, id) credit in-flight load and the predicted prefix (inflight.ts) → decision record (off the
 *                         request path: the DecisionSink builds and sends it later, `decisionRecord`)
 *   reroute(route, tried) the same prompt, hashes and index answer, without the workers already tried (a retry
 *                         after an upstream failure before the first byte)
 *
 * Its inputs are ports: the cluster's state (cluster-view.ts feeds it from the bus; tests build one by hand), a
 * tokenizer (tokenize.ts), an index query (index-query.ts) and a decision sink (decision-log.ts).
 */
import { KvgateError, packHashes, prefixHashesU64, type MatchReply, type RouteDecisionWire, type TierOverlap } from '@kvgate/protocol';
import type { ChatMessage } from '@kvgate/protocol/tokenizer';
import type { WorkerHealth } from './health.js';
import type { Inflight, Ticket } from './inflight.js';
import type { RouterMetrics } from './metrics.js';
import { DEFAULT_PD_POLICY, Selector, type Decision, type PdPolicy, type Policy } from './select.js';
import type { ScoreWeights } from './scorer.js';
import type { ChatTokenizeInput } from './tokenize.js';
import type { Pool, WorkerView } from './workers.js';

/** What the core needs of a request (an HTTP ApiRequest is one; so will a picker's be). */
export interface RouteRequest {
  kind: 'completion' | 'chat';
  /** the model or LoRA adapter the request names */
  model: string;
  /** max_tokens, or undefined (then `defaultMaxTokens`) */
  maxTokens: number | undefined;
  prompt?: string;
  promptIds?: number[];
  messages?: ChatMessage[];
  tools?: unknown[];
  templateKwargs?: Record<string, unknown>;
  cacheSalt?: string;
  /** the request body: only its length is read (a prompt-token estimate when no token ids can be had) */
  raw: { readonly length: number };
}

/** A routing decision and what it was made from. */
export interface Route {
  /** the model (or adapter) name the request gave */
  model: string;
  decision: Decision;
  pool: Pool;
  hashes: BigUint64Array;
  tokens: number[] | null;
  indexAnswered: boolean;
  overlaps: Record<string, number> | null;
  /** the index's per-tier overlaps, when its reply carried them */
  tiers: Record<string, TierOverlap> | null;
  salted: boolean;
}

/** The cluster as the core reads it (ClusterView in the router; hand-built in tests). */
export interface ClusterState {
  readonly workers: WorkerView;
  readonly inflight: Inflight;
  readonly health: WorkerHealth;
}

/** Prompt → token ids; null when none can be had (then: route by load). */
export interface TokenizerPort {
  prompt(text: string, model: string, engineUrl?: string): Promise<number[] | null>;
  chat(input: ChatTokenizeInput, model: string, engineUrl?: string): Promise<number[] | null>;
}

/** The index's overlaps for a prompt's hashes, or null when it did not answer within its budget. */
export type IndexQuery = (model: string, lora: string | null, hashes: BigUint64Array) => Promise<MatchReply | null>;

/** A decision waiting to be recorded: everything is fixed at decision time but the record's building. */
export interface PendingDecision {
  route: Route;
  requestId: string;
  ts: number;
}

export interface DecisionSink {
  add(p: PendingDecision): void;
}

export interface RoutingCoreOptions {
  /** this router's id (on decision records) */
  id: string;
  cluster: ClusterState;
  tokenizer: TokenizerPort;
  index: IndexQuery;
  policy: Policy;
  weights: ScoreWeights;
  /** where decision records go; absent = not recorded */
  decisions?: DecisionSink;
  metrics: RouterMetrics;
  /** decode tokens assumed when a request gives no max_tokens; default 256 */
  defaultMaxTokens?: number;
  /** P/D pools: when a request is split (select.ts PdPolicy; defaults DEFAULT_PD_POLICY, minPrefillTokens 512) */
  pd?: Partial<PdPolicy>;
  /** random source for tie-breaks and sampling; default Math.random */
  random?: () => number;
  /** clock of the decision records; default Date.now */
  now?: () => number;
}

export interface CoreStats {
  indexFallbacks: number;
  noWorker: number;
  /** decisions that went to a worker reported down because every other one was too (#select) */
  lastResort: number;
}

const NO_HASHES = new BigUint64Array(0);

export class RoutingCore {
  readonly id: string;
  readonly selector: Selector;
  readonly #cluster: ClusterState;
  readonly #tokenizer: TokenizerPort;
  readonly #index: IndexQuery;
  readonly #sink: DecisionSink | undefined;
  readonly #metrics: RouterMetrics;
  readonly #defaultMaxTokens: number;
  readonly #now: () => number;
  readonly #stats: CoreStats = { indexFallbacks: 0, noWorker: 0, lastResort: 0 };
  // label children resolved once (prom-client hashes the label set on every labelled inc)
  readonly #decisionsPd;
  readonly #decisionsSingle;

  constructor(o: RoutingCoreOptions) {
    this.id = o.id;
    this.#cluster = o.cluster;
    this.#tokenizer = o.tokenizer;
    this.#index = o.index;
    this.#sink = o.decisions;
    this.#metrics = o.metrics;
    this.#defaultMaxTokens = o.defaultMaxTokens ?? 256;
    this.#now = o.now ?? Date.now;
    this.selector = new Selector(o.cluster.workers, o.cluster.inflight, o.policy, o.weights, o.random ?? Math.random, { ...DEFAULT_PD_POLICY, ...o.pd });
    this.#decisionsPd = o.metrics.decisions.labels({ policy: o.policy, mode: 'pd' });
    this.#decisionsSingle = o.metrics.decisions.labels({ policy: o.policy, mode: 'single' });
  }

  get policy(): Policy {
    return this.selector.policy;
  }

  stats(): CoreStats {
    return { ...this.#stats };
  }

  /**
   * Pool → tokens → hashes → index → select. Throws KVG_UNKNOWN_MODEL or KVG_NO_WORKER. `exclude`: workers not to
   * pick (a gateway's subset hint leaves out every worker outside it).
   */
  async route(req: RouteRequest, exclude?: ReadonlySet<string>): Promise<Route> {
    const pool = this.#poolFor(req.model);
    const tokens = await this.#tokensOf(req, pool);
    // as a BigUint64Array: no BigInt per block, and it packs for the index query by swapping bytes. A salted
    // request's chain starts at the salted root, as the engine's does: its blocks match only the same salt.
    const hashes = tokens && pool.blockSize > 0 ? prefixHashesU64(pool.model, pool.lora, pool.blockSize, tokens, undefined, req.cacheSalt) : NO_HASHES;
    let reply: MatchReply | null = null;
    if (this.selector.policy === 'kv' && hashes.length > 0) reply = await this.#match(pool, hashes);
    const route: Omit<Route, 'decision'> = { model: req.model, pool, hashes, tokens, indexAnswered: reply !== null, overlaps: reply?.overlaps ?? null, tiers: reply?.tiers ?? null, salted: req.cacheSalt !== undefined };
    return { ...route, decision: this.#select(route, exclude) };
  }

  /** The same prompt, hashes and index answer as `prior`, picked again without the workers in `tried`. */
  reroute(prior: Route, tried: ReadonlySet<string>): Route {
    return { ...prior, decision: this.#select(prior, tried) };
  }

  /**
   * The decision taken: its in-flight load and predicted prefix credited (tickets, finished by the edge through
   * `firstByte` and `finish`) and the decision recorded.
   */
  commit(r: Route, req: RouteRequest, requestId: string): Ticket[] {
    const { decision, pool } = r;
    const inflight = this.#cluster.inflight;
    const B = pool.blockSize || 16;
    const promptTokens = r.tokens?.length ?? Math.ceil(req.raw.length / 4);
    // blocks on a lower tier still cost their reload: credited at their tier weight, as the scorer counts them
    const prefillTokens = Math.max(0, Math.round(promptTokens - decision.cached * B));
    const decodeBlocks = Math.ceil((promptTokens + (req.maxTokens ?? this.#defaultMaxTokens)) / B);
    if (this.selector.policy === 'kv' && r.hashes.length > 0) inflight.predict(decision.prefillWorker.worker, r.hashes);
    (decision.prefill ? this.#decisionsPd : this.#decisionsSingle).inc();
    if (decision.pd) this.#metrics.pdDecisions.inc({ decision: decision.pd.split ? 'split' : 'local', reason: decision.pd.reason });
    if (decision.promptBlocks > 0) this.#metrics.overlapRatio.observe(decision.overlap / decision.promptBlocks);
    const tickets = decision.prefill
      ? [inflight.start(decision.prefill.worker, prefillTokens, 0), inflight.start(decision.worker.worker, 0, decodeBlocks)]
      : [inflight.start(decision.worker.worker, prefillTokens, decodeBlocks)];
    this.#sink?.add({ route: r, requestId, ts: this.#now() });
    return tickets;
  }

  /**
   * The request went to `worker` instead of the one its tickets credit (a gateway tried its fallbacks): the same
   * load, moved. Tickets already on `worker` are kept.
   */
  move(tickets: readonly Ticket[], worker: string): Ticket[] {
    const inflight = this.#cluster.inflight;
    return tickets.map((t) => {
      if (t.worker === worker || !t.open) return t;
      const prefillOpen = t.prefillOpen;
      inflight.finish(t);
      const moved = inflight.start(worker, t.prefillTokens, t.decodeBlocks);
      if (!prefillOpen) inflight.prefillDone(moved);
      return moved;
    });
  }

  /** The first upstream byte: the prefill is done. */
  firstByte(tickets: readonly Ticket[]): void {
    for (const t of tickets) this.#cluster.inflight.prefillDone(t);
  }

  /** The request ended (done, failed or abandoned): its load leaves the ledger. */
  finish(tickets: readonly Ticket[]): void {
    for (const t of tickets) this.#cluster.inflight.finish(t);
  }

  #poolFor(model: string): Pool {
    const view = this.#cluster.workers;
    const pool = view.pool(model);
    if (!pool && view.empty) throw this.#noWorker('no live worker is registered');
    if (!pool) throw new KvgateError('KVG_UNKNOWN_MODEL', `The model \`${model}\` does not exist (served: ${view.models().map((m) => m.id).join(', ') || 'none'})`, { param: 'model' });
    if (pool.both.length + pool.prefill.length + pool.decode.length === 0) throw this.#noWorker(`no live worker serves model \`${model}\``);
    return pool;
  }

  async #tokensOf(req: RouteRequest, pool: Pool): Promise<number[] | null> {
    if (req.promptIds) return req.promptIds;
    const any = pool.both[0] ?? pool.prefill[0] ?? pool.decode[0];
    const engineUrl = any?.engineUrl;
    let ids: number[] | null = null;
    if (req.kind === 'chat') {
      ids = await this.#tokenizer.chat({ messages: req.messages!, ...(req.tools ? { tools: req.tools } : {}), ...(req.templateKwargs ? { kwargs: req.templateKwargs } : {}) }, pool.model, engineUrl);
    } else if (req.prompt !== undefined) ids = await this.#tokenizer.prompt(req.prompt, pool.model, engineUrl);
    if (!ids) this.#metrics.tokenizeFailures.inc();
    return ids;
  }

  async #match(pool: Pool, hashes: BigUint64Array): Promise<MatchReply | null> {
    let reply: MatchReply | null;
    const t0 = performance.now();
    try {
      reply = await this.#index(pool.model, pool.lora, hashes);
    } catch {
      reply = null;
    }
    this.#metrics.indexQuerySeconds.observe({ model: pool.model }, (performance.now() - t0) / 1000);
    if (reply === null) {
      this.#stats.indexFallbacks++;
      this.#metrics.indexFallbacks.inc();
    }
    return reply;
  }

  #select(r: Omit<Route, 'decision'>, tried: ReadonlySet<string> | undefined): Decision {
    const input = { pool: r.pool, hashes: r.hashes, indexOverlaps: r.overlaps, indexTiers: r.tiers, ...(r.tokens ? { promptTokens: r.tokens.length } : {}) };
    const filter = this.#healthFilter(r.pool, tried);
    let decision = this.selector.select({ ...input, ...filter });
    // every worker left is reported down (the filter excluded more than the tried ones): a report can be wrong (a
    // shim that cannot reach its engine while the router can, a probe that timed out on a loaded host), so try
    // them by the usual score rather than answer 503 — a failed attempt is retried or answered as the upstream error
    if (!decision && filter.exclude && filter.exclude.size > (tried?.size ?? 0)) {
      decision = this.selector.select({ ...input, ...(tried ? { exclude: tried } : {}) });
      if (decision) this.#stats.lastResort++;
    }
    if (!decision) throw this.#noWorker(`no live worker left for model \`${r.model}\`${this.#cluster.health.quiet ? '' : ' (engines reported down are not picked)'}`);
    return decision;
  }

  /**
   * Passive health for one pick: engines reported down are excluded (with the workers already tried), suspect ones
   * avoided while others are left. Nothing is built while every worker is healthy (the common case).
   */
  #healthFilter(pool: Pool, tried: ReadonlySet<string> | undefined): { exclude?: ReadonlySet<string>; avoid?: ReadonlySet<string> } {
    const health = this.#cluster.health;
    if (health.quiet) return tried ? { exclude: tried } : {};
    const exclude = new Set(tried);
    const avoid = new Set<string>();
    for (const list of [pool.both, pool.prefill, pool.decode]) {
      for (const r of list) {
        if (health.isUnhealthy(r.worker)) exclude.add(r.worker);
        else if (!health.usable(r.worker)) avoid.add(r.worker);
      }
    }
    return { exclude, avoid };
  }

  #noWorker(message: string): KvgateError {
    this.#stats.noWorker++;
    this.#metrics.noWorker.inc();
    return new KvgateError('KVG_NO_WORKER', message);
  }
}

/** What this router saw and chose, as recorded on `…decisions.<router>` (`kvgate replay inspect --request`). */
export function decisionRecord(router: string, policy: Policy, { route: r, requestId, ts }: PendingDecision): RouteDecisionWire {
  const { decision } = r;
  const overlaps: Record<string, number> = {};
  const scores: Record<string, number> = {};
  let tiers: Record<string, TierOverlap> | undefined;
  for (const sc of decision.scored) {
    overlaps[sc.worker] = sc.overlap;
    scores[sc.worker] = sc.cost;
    // only workers reaching past their GPU prefix: a GPU-only record stays the size it was
    if (sc.tiers.disk > sc.tiers.gpu) (tiers ??= {})[sc.worker] = { ...sc.tiers };
  }
  return {
    router,
    requestId,
    model: r.model,
    lora: r.pool.lora || null,
    promptTokens: r.tokens?.length ?? 0,
    hashes: packHashes(r.hashes),
    overlaps,
    ...(tiers ? { tiers } : {}),
    ...(r.salted ? { salted: true } : {}),
    scores,
    chosen: decision.prefillWorker.worker,
    ...(decision.prefill ? { prefill: decision.prefill.worker } : {}),
    ...(decision.pd ? { pd: decision.pd.reason } : {}),
    policy,
    ...(policy === 'kv' && !r.indexAnswered ? { degraded: true } : {}),
    ts,
  };
}
