/**
 * Misconfiguration signals (issue 11, "loud, never silent"): what shims and routers observe about each worker,
 * the pure judges that turn those observations into findings, the `…diag.shim.<worker>` / `…diag.router.<router>`
 * payload that carries them to `kvgate doctor`, and the per-worker verdict doctor prints. No I/O here.
 *
 * The four conditions, each decided by one function below:
 *   events-stale               the worker served requests for `staleEventsMs` without one KV event published
 *                              (routers then see no cache on it and route it by load alone);
 *   block-size-mismatch        block size in its engine's events ≠ the block size it is registered with;
 *   prompt-token-mismatch      the router's prompt token count ≠ the engine's `usage.prompt_tokens`;
 *   cache-prediction-mismatch  the index's predicted cached tokens ≫ the engine's reported `cached_tokens`.
 */
import { DecodeError } from './errors.js';
import { decode, encode } from './schemas.js';

export type DiagCode = 'events-stale' | 'block-size-mismatch' | 'prompt-token-mismatch' | 'cache-prediction-mismatch';
export const DIAG_CODES: readonly DiagCode[] = ['events-stale', 'block-size-mismatch', 'prompt-token-mismatch', 'cache-prediction-mismatch'];

/** One problem with one worker: what is wrong (`message`) and what to check (`check`). */
export interface Finding {
  code: DiagCode;
  message: string;
  check: string;
}

/** What a shim knows about one worker it publishes (times in ms since the epoch). */
export interface ShimFacts {
  /** when the shim started relaying this worker */
  startedAt: number;
  /** last batch with a stored/removed event published for it; null = none yet */
  lastEventAt: number | null;
  /** first time the engine was seen serving (running + waiting > 0, or a proxied request) since the last event; null = idle since */
  servingSince: number | null;
  /** block size the engine's (GPU, full-token) events carry; null = no such event yet */
  eventBlockSize: number | null;
  /** block size the shim registers the worker with */
  registeredBlockSize: number;
  /** the stale threshold the shim judges with */
  staleEventsMs: number;
}

/** What a router saw of one worker over its last requests (a window, see `RouterWindow`). */
export interface RouterFacts {
  /** requests whose router token count and engine `usage.prompt_tokens` were both known */
  promptCompared: number;
  /** of those, how many differed */
  promptMismatched: number;
  /** the last differing pair (router count, engine count); 0, 0 when none */
  lastRouterTokens: number;
  lastEngineTokens: number;
  /** requests with a predicted overlap (> 0) and a reported `cached_tokens` */
  cacheSamples: number;
  /** Σ predicted cached tokens and Σ reported cached tokens over those */
  predictedTokens: number;
  cachedTokens: number;
  /** block size the prediction used */
  blockSize: number;
}

/** Thresholds (defaults in DIAG_DEFAULTS). */
export interface DiagThresholds {
  /** events-stale: serving this long without one event; default 60000 ms */
  staleEventsMs: number;
  /** prompt-token-mismatch: at least this share of compared requests differ (and one); default 0.1 */
  promptMismatchShare: number;
  /** cache-prediction-mismatch: samples needed before judging; default 5 */
  minCacheSamples: number;
  /** cache-prediction-mismatch: Σpredicted ≥ ratio · Σcached + one block; default 2 */
  cacheRatio: number;
  /** requests a router remembers per worker; default 64 */
  window: number;
}
export const DIAG_DEFAULTS: DiagThresholds = { staleEventsMs: 60_000, promptMismatchShare: 0.1, minCacheSamples: 5, cacheRatio: 2, window: 64 };

const s1 = (ms: number) => (ms / 1000).toFixed(ms < 10_000 ? 1 : 0);

// ---- the judges: one per condition ------------------------------------------------------------------------

export function judgeEventsStale(f: Pick<ShimFacts, 'servingSince' | 'lastEventAt' | 'staleEventsMs'>, now: number): Finding | null {
  if (f.servingSince === null || now - f.servingSince < f.staleEventsMs) return null;
  const since = f.lastEventAt === null ? 'has published no KV event since the shim started' : `has published no KV event for ${s1(now - f.lastEventAt)} s`;
  return {
    code: 'events-stale',
    message: `served requests for ${s1(now - f.servingSince)} s but ${since}: routers see no cache on it and route it by load alone`,
    check:
      "the engine publishes KV events (vLLM --kv-events-config '{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:5557\"}', SGLang --kv-events-config) with prefix caching on; the shim's --kv-events is that endpoint (rank r: port + r); kvgate_shim_engine_batches_total and kvgate_shim_skipped_events_total on the shim",
  };
}

export function judgeBlockSize(eventBlockSize: number | null, registeredBlockSize: number): Finding | null {
  if (eventBlockSize === null || eventBlockSize === registeredBlockSize) return null;
  return {
    code: 'block-size-mismatch',
    message: `its KV events carry block size ${eventBlockSize} but it is registered with block size ${registeredBlockSize}: routers hash prompts in ${registeredBlockSize}-token blocks, so no prefix matches what it holds`,
    check: "the engine's --block-size against its events and vllm:cache_config_info block_size (hybrid and Mamba models may use another attention block size); the shim's --block-size",
  };
}

export function judgePromptTokens(f: Pick<RouterFacts, 'promptCompared' | 'promptMismatched' | 'lastRouterTokens' | 'lastEngineTokens'>, t: Pick<DiagThresholds, 'promptMismatchShare'> = DIAG_DEFAULTS): Finding | null {
  if (f.promptMismatched === 0 || f.promptMismatched < f.promptCompared * t.promptMismatchShare) return null;
  return {
    code: 'prompt-token-mismatch',
    message: `the router counted ${f.lastRouterTokens} prompt tokens where the engine's usage.prompt_tokens said ${f.lastEngineTokens} (${f.promptMismatched} of the last ${f.promptCompared} requests differ): the router's tokenizer or chat template is not the engine's, so its prefix hashes are not the engine's`,
    check: "kvgate router --tokenizer must be the served model's tokenizer.json with its chat template (or leave it unset to tokenize through the engine's /tokenize); the engine's --chat-template and --tokenizer",
  };
}

export function judgeCachePrediction(f: Pick<RouterFacts, 'cacheSamples' | 'predictedTokens' | 'cachedTokens' | 'blockSize'>, t: Pick<DiagThresholds, 'minCacheSamples' | 'cacheRatio'> = DIAG_DEFAULTS): Finding | null {
  if (f.cacheSamples < t.minCacheSamples) return null;
  if (f.predictedTokens < t.cacheRatio * f.cachedTokens + Math.max(1, f.blockSize)) return null;
  return {
    code: 'cache-prediction-mismatch',
    message: `the index predicted ${f.predictedTokens} cached prompt tokens over its last ${f.cacheSamples} requests with a predicted hit, the engine reported ${f.cachedTokens} (usage.prompt_tokens_details.cached_tokens): the index claims blocks the engine does not reuse`,
    check:
      "the shim's --kv-events endpoint belongs to this engine; --model and --lora-map match the engine; cache_salt; the engine's prefix caching is on and its --prefix-caching-hash-algo / PYTHONHASHSEED did not change behind a running shim",
  };
}

export function judgeShim(f: ShimFacts, now: number): Finding[] {
  return [judgeEventsStale(f, now), judgeBlockSize(f.eventBlockSize, f.registeredBlockSize)].filter((x): x is Finding => x !== null);
}

export function judgeRouter(f: RouterFacts, t: DiagThresholds = DIAG_DEFAULTS): Finding[] {
  return [judgePromptTokens(f, t), judgeCachePrediction(f, t)].filter((x): x is Finding => x !== null);
}

// ---- the router's per-worker window -------------------------------------------------------------------------

/** One proxied request as the router saw it and the engine answered it (null: not known). */
export interface UsageSample {
  routerTokens: number | null;
  engineTokens: number | null;
  /** predicted cached tokens (index overlap × block size, capped at the engine's longest possible hit) */
  predictedTokens: number | null;
  cachedTokens: number | null;
  blockSize: number;
}

/** The last `size` samples of one worker, summed into RouterFacts. A ring: O(1) per request. */
export class RouterWindow {
  readonly #ring: UsageSample[] = [];
  readonly #size: number;
  #next = 0;

  constructor(size = DIAG_DEFAULTS.window) {
    this.#size = size;
  }

  get length(): number {
    return this.#ring.length;
  }

  add(s: UsageSample): void {
    if (this.#ring.length < this.#size) this.#ring.push(s);
    else this.#ring[this.#next] = s;
    this.#next = (this.#next + 1) % this.#size;
  }

  facts(): RouterFacts {
    const f: RouterFacts = { promptCompared: 0, promptMismatched: 0, lastRouterTokens: 0, lastEngineTokens: 0, cacheSamples: 0, predictedTokens: 0, cachedTokens: 0, blockSize: 0 };
    // oldest → newest, so `last…` is the newest mismatch
    for (let i = 0; i < this.#ring.length; i++) {
      const s = this.#ring[(this.#next - this.#ring.length + i + this.#size) % this.#size]!;
      if (s.routerTokens !== null && s.engineTokens !== null) {
        f.promptCompared++;
        if (s.routerTokens !== s.engineTokens) {
          f.promptMismatched++;
          f.lastRouterTokens = s.routerTokens;
          f.lastEngineTokens = s.engineTokens;
        }
      }
      if (s.predictedTokens !== null && s.predictedTokens > 0 && s.cachedTokens !== null) {
        f.cacheSamples++;
        f.predictedTokens += s.predictedTokens;
        f.cachedTokens += s.cachedTokens;
        f.blockSize = s.blockSize;
      }
    }
    return f;
  }
}

/**
 * Predicted cached tokens of one request: the index's GPU overlap in tokens, capped at the longest hit an engine
 * can report (vLLM always computes the prompt's last token, so a prompt of exactly k blocks hits at most k − 1).
 */
export function predictedCachedTokens(overlapBlocks: number, blockSize: number, promptTokens: number): number {
  if (blockSize <= 0 || promptTokens <= 0) return 0;
  return Math.min(overlapBlocks, Math.floor((promptTokens - 1) / blockSize)) * blockSize;
}

// ---- log rate gate ------------------------------------------------------------------------------------------

/** `pass(key)` is true at most once per `everyMs` per key (warnings once per worker per condition per minute). */
export class RateGate {
  readonly #last = new Map<string, number>();
  readonly #everyMs: number;
  constructor(everyMs = 60_000) {
    this.#everyMs = everyMs;
  }
  pass(key: string, now = Date.now()): boolean {
    const t = this.#last.get(key);
    if (t !== undefined && now - t < this.#everyMs) return false;
    this.#last.set(key, now);
    return true;
  }
}

// ---- wire: `…diag.shim.<worker>` and `…diag.router.<router>` ----------------------------------------------

export interface DiagWorker {
  worker: string;
  /** problems found by the publisher (empty: none) */
  findings: Finding[];
  /** a shim's facts (source 'shim') */
  shim?: ShimFacts;
  /** a router's facts (source 'router') */
  router?: RouterFacts;
}

/** Published every few seconds, and at once when `…diag.ask` arrives. */
export interface DiagReport {
  source: 'shim' | 'router';
  /** the shim's worker id (the stem of its DP ranks) or the router's id */
  id: string;
  ts: number;
  workers: DiagWorker[];
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}
function need(cond: boolean, what: string): asserts cond {
  if (!cond) throw new DecodeError(`diag report: ${what}`);
}
function num(v: unknown, what: string): number {
  if (typeof v === 'bigint') v = Number(v);
  need(typeof v === 'number' && Number.isFinite(v), `${what} must be a number`);
  return v;
}
function numOrNull(v: unknown, what: string): number | null {
  return v == null ? null : num(v, what);
}
function str(v: unknown, what: string): string {
  need(typeof v === 'string', `${what} must be a string`);
  return v;
}

function finding(v: unknown): Finding {
  need(isObj(v), 'finding must be a map');
  const code = str(v.code, 'finding.code');
  need((DIAG_CODES as readonly string[]).includes(code), `unknown finding code ${JSON.stringify(code)}`);
  return { code: code as DiagCode, message: str(v.message, 'finding.message'), check: str(v.check, 'finding.check') };
}

function shimFacts(v: unknown): ShimFacts {
  need(isObj(v), 'shim facts must be a map');
  return {
    startedAt: num(v.startedAt, 'shim.startedAt'),
    lastEventAt: numOrNull(v.lastEventAt, 'shim.lastEventAt'),
    servingSince: numOrNull(v.servingSince, 'shim.servingSince'),
    eventBlockSize: numOrNull(v.eventBlockSize, 'shim.eventBlockSize'),
    registeredBlockSize: num(v.registeredBlockSize, 'shim.registeredBlockSize'),
    staleEventsMs: num(v.staleEventsMs, 'shim.staleEventsMs'),
  };
}

const ROUTER_FIELDS = ['promptCompared', 'promptMismatched', 'lastRouterTokens', 'lastEngineTokens', 'cacheSamples', 'predictedTokens', 'cachedTokens', 'blockSize'] as const;
function routerFacts(v: unknown): RouterFacts {
  need(isObj(v), 'router facts must be a map');
  const out = {} as RouterFacts;
  for (const k of ROUTER_FIELDS) out[k] = num(v[k], `router.${k}`);
  return out;
}

export function encodeDiag(r: DiagReport): Uint8Array {
  return encode(r);
}

export function decodeDiag(bytes: Uint8Array): DiagReport {
  const v = decode(bytes);
  need(isObj(v), 'must be a map');
  need(v.source === 'shim' || v.source === 'router', `source must be shim or router, got ${JSON.stringify(v.source)}`);
  need(Array.isArray(v.workers), 'workers must be an array');
  return {
    source: v.source,
    id: str(v.id, 'id'),
    ts: num(v.ts, 'ts'),
    workers: v.workers.map((w): DiagWorker => {
      need(isObj(w), 'worker entry must be a map');
      need(Array.isArray(w.findings), 'findings must be an array');
      return {
        worker: str(w.worker, 'worker'),
        findings: w.findings.map(finding),
        ...(w.shim != null ? { shim: shimFacts(w.shim) } : {}),
        ...(w.router != null ? { router: routerFacts(w.router) } : {}),
      };
    }),
  };
}

// ---- doctor's verdict: registrations + reports → one line per worker ---------------------------------------

/** One registered worker as doctor sees it. */
export interface WorkerVerdict {
  worker: string;
  ok: boolean;
  /** problems, each once (a router finding names the routers that reported it) */
  problems: (Finding & { from: string[] })[];
  /** no shim reported on this worker (its shim checks could not run) */
  noShim: boolean;
  shim?: ShimFacts;
  /** the routers' facts summed */
  router?: RouterFacts & { routers: number };
}

/**
 * Combines the registry (worker → registered block size) with the diag reports heard: a shim's own findings,
 * doctor's cross-check of the events' block size against the registration in the bucket (the one routers use),
 * and every router's findings. A registered worker no shim reports on is not ok (nothing could be checked).
 */
export function verdicts(registered: ReadonlyMap<string, { blockSize: number }>, reports: readonly DiagReport[]): WorkerVerdict[] {
  const out: WorkerVerdict[] = [];
  for (const [worker, reg] of [...registered].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const v: WorkerVerdict = { worker, ok: true, problems: [], noShim: true };
    const add = (f: Finding, from: string) => {
      const have = v.problems.find((p) => p.code === f.code);
      if (have) {
        if (!have.from.includes(from)) have.from.push(from);
      } else v.problems.push({ ...f, from: [from] });
    };
    for (const r of reports) {
      for (const w of r.workers) {
        if (w.worker !== worker) continue;
        if (r.source === 'shim') {
          v.noShim = false;
          if (w.shim) v.shim = w.shim;
        } else if (w.router) {
          const acc = (v.router ??= { promptCompared: 0, promptMismatched: 0, lastRouterTokens: 0, lastEngineTokens: 0, cacheSamples: 0, predictedTokens: 0, cachedTokens: 0, blockSize: 0, routers: 0 });
          acc.routers++;
          for (const k of ROUTER_FIELDS) if (!k.startsWith('last') && k !== 'blockSize') acc[k] += w.router[k];
          if (w.router.promptMismatched > 0) {
            acc.lastRouterTokens = w.router.lastRouterTokens;
            acc.lastEngineTokens = w.router.lastEngineTokens;
          }
          if (w.router.blockSize > 0) acc.blockSize = w.router.blockSize;
        }
        for (const f of w.findings) add(f, `${r.source} ${r.id}`);
      }
    }
    const bs = judgeBlockSize(v.shim?.eventBlockSize ?? null, reg.blockSize);
    if (bs) add(bs, 'registry');
    v.problems.sort((a, b) => DIAG_CODES.indexOf(a.code) - DIAG_CODES.indexOf(b.code));
    v.ok = v.problems.length === 0 && !v.noShim;
    out.push(v);
  }
  return out;
}
