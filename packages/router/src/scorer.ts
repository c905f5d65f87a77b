/**
 * The routing score (pure: data in, data out). Lower is better.
 *
 *   cost(w) = uncachedWeight · (promptBlocks − overlap(w))
 *           + prefillWeight  · inflightPrefillTokens(w) / B
 *           + decodeWeight   · activeBlocks(w)
 *           + queueWeight    · waiting(w)
 *
 * - `promptBlocks − overlap(w)`: full blocks w must still prefill for this request (its cache holds `overlap(w)`).
 *   With uncachedWeight = prefillWeight the score is greedy time-to-first-token (queue ahead + own prefill); a
 *   larger uncachedWeight values the cache more: computing a prefix again elsewhere also costs later hits.
 * - `inflightPrefillTokens(w)`: prefill tokens already sent to w by every router replica and not yet answered
 *   (the prefill queue in front of this request).
 * - `activeBlocks(w)`: KV blocks held by w's running sequences (router in-flight accounting, or the engine's own
 *   kvUsage · capacity when that is larger: the engine sees traffic other routers did not report).
 * - `waiting(w)`: the engine's queue depth from its last load report.
 *
 * Workers over a busy threshold (kvUsage ≥ busyKvUsage or waiting ≥ busyWaiting) are excluded unless every worker
 * is busy. Ties (within 1e-9) go to the least loaded worker, then to a random one. With temperature > 0 the pick
 * is sampled from softmax(−cost / (temperature · max cost)) instead of taking the minimum.
 */

export interface ScoreWeights {
  /** weight of this prompt's uncached blocks on the worker; default 4 */
  uncachedWeight: number;
  /** weight of prefill blocks already queued on the worker (in flight from every router); default 1 */
  prefillWeight: number;
  /** weight of active decode blocks; default 0.1 (a running sequence slows each step a little, a prefill blocks it) */
  decodeWeight: number;
  /** weight of one waiting request, in blocks; default 4 */
  queueWeight: number;
  /** exclude workers whose KV usage is at or above this fraction; default 0.98 */
  busyKvUsage: number;
  /** exclude workers with this many requests waiting or more; default 64 */
  busyWaiting: number;
  /** 0 = always the minimum cost; > 0 samples softmax(−cost / (temperature · max cost)); default 0 */
  temperature: number;
}

export const DEFAULT_WEIGHTS: ScoreWeights = {
  uncachedWeight: 4,
  prefillWeight: 1,
  decodeWeight: 0.1,
  queueWeight: 4,
  busyKvUsage: 0.98,
  busyWaiting: 64,
  temperature: 0,
};

/** Everything the scorer knows about one live worker for one request. */
export interface Candidate {
  worker: string;
  /** blocks of this prompt already cached on the worker (index or predicted) */
  overlap: number;
  /** prefill tokens in flight to the worker, all routers */
  inflightPrefillTokens: number;
  /** decode blocks in flight to the worker, all routers */
  inflightDecodeBlocks: number;
  /** engine queue depth (last load report; 0 if none yet) */
  waiting: number;
  /** engine running requests (last load report) */
  running: number;
  /** engine KV usage fraction 0..1 (last load report) */
  kvUsage: number;
  /** engine KV capacity in blocks */
  capacityBlocks: number;
}

export interface Scored {
  worker: string;
  overlap: number;
  cost: number;
  /** prefill blocks this request adds on the worker */
  newPrefillBlocks: number;
  /** load figure used for tie-breaking: queued prefill blocks + active blocks */
  load: number;
  busy: boolean;
}

export interface ScoreInput {
  promptBlocks: number;
  blockSize: number;
  candidates: readonly Candidate[];
}

export function activeBlocks(c: Candidate): number {
  return Math.max(c.inflightDecodeBlocks, c.kvUsage * c.capacityBlocks);
}

export function isBusy(c: Candidate, w: ScoreWeights): boolean {
  return c.kvUsage >= w.busyKvUsage || c.waiting >= w.busyWaiting;
}

/** Costs of every candidate, in input order. */
export function score(input: ScoreInput, w: ScoreWeights = DEFAULT_WEIGHTS): Scored[] {
  const B = input.blockSize > 0 ? input.blockSize : 1;
  return input.candidates.map((c) => {
    const overlap = Math.min(c.overlap, input.promptBlocks);
    const newPrefillBlocks = input.promptBlocks - overlap;
    const queuedPrefill = c.inflightPrefillTokens / B;
    const active = activeBlocks(c);
    const cost = w.uncachedWeight * newPrefillBlocks + w.prefillWeight * queuedPrefill + w.decodeWeight * active + w.queueWeight * c.waiting;
    return { worker: c.worker, overlap, cost, newPrefillBlocks, load: queuedPrefill + active + c.waiting, busy: isBusy(c, w) };
  });
}

const EPS = 1e-9;

/**
 * The pick among scored candidates (see the module comment). `random` returns [0, 1); injected for tests.
 * Returns undefined only when `scored` is empty.
 */
export function pick(scored: readonly Scored[], w: ScoreWeights = DEFAULT_WEIGHTS, random: () => number = Math.random): Scored | undefined {
  if (scored.length === 0) return undefined;
  const free = scored.filter((s) => !s.busy);
  const pool = free.length > 0 ? free : scored;
  if (w.temperature > 0 && pool.length > 1) return sample(pool, w.temperature, random);
  let best: Scored[] = [];
  let bestCost = Infinity;
  for (const s of pool) {
    if (s.cost < bestCost - EPS) {
      bestCost = s.cost;
      best = [s];
    } else if (Math.abs(s.cost - bestCost) <= EPS) best.push(s);
  }
  if (best.length === 1) return best[0];
  let minLoad = Infinity;
  for (const s of best) minLoad = Math.min(minLoad, s.load);
  const least = best.filter((s) => s.load <= minLoad + EPS);
  return least[Math.floor(random() * least.length)] ?? least[0];
}

function sample(pool: readonly Scored[], temperature: number, random: () => number): Scored {
  let max = 0;
  let min = Infinity;
  for (const s of pool) {
    max = Math.max(max, s.cost);
    min = Math.min(min, s.cost);
  }
  const scale = temperature * (max > 0 ? max : 1);
  const weights = pool.map((s) => Math.exp(-(s.cost - min) / scale));
  const total = weights.reduce((a, b) => a + b, 0);
  let r = random() * total;
  for (let i = 0; i < pool.length; i++) {
    r -= weights[i]!;
    if (r < 0) return pool[i]!;
  }
  return pool[pool.length - 1]!;
}
