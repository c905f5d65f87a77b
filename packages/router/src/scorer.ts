/**
 * The routing score (pure: data in, data out). Lower is better.
 *
 *   cost(w) = uncachedWeight · (promptBlocks − cached(w))
 *           + prefillWeight  · inflightPrefillTokens(w) / B
 *           + decodeWeight   · activeBlocks(w)
 *           + queueWeight    · waiting(w)
 *
 * - `promptBlocks − cached(w)`: full blocks w must still prefill for this request. `cached(w)` weighs the prompt's
 *   prefix by the tier that holds it (the index's cumulative per-tier overlaps gpu ≤ cpu ≤ disk):
 *       cached(w) = gpu·tierWeights.gpu + (cpu − gpu)·tierWeights.cpu + (disk − cpu)·tierWeights.disk
 *   A block in host memory or on disk saves most of its prefill but not all (the engine copies it back over PCIe or
 *   reads it from storage first), so it counts as a fraction of a GPU block. A worker without lower tiers has
 *   gpu = cpu = disk, and cached(w) = gpu (with the default GPU weight 1): the GPU-only score is unchanged.
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
import { KvgateError } from '@kvgate/protocol';

/** Worth of one cached block on each tier, as a fraction of a block that need not be prefilled (each in [0, 1]). */
export interface TierWeights {
  /** a block in GPU memory: used in place; default 1 */
  gpu: number;
  /** a block in host memory (vLLM's offloading connector, SGLang's HiCache host tier): copied back over PCIe; default 0.8 */
  cpu: number;
  /** a block on local or remote storage: read back first, far slower than PCIe; default 0.25 */
  disk: number;
}

export const DEFAULT_TIER_WEIGHTS: Readonly<TierWeights> = Object.freeze({ gpu: 1, cpu: 0.8, disk: 0.25 });

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
  /**
   * what a block cached on each tier is worth (see the module comment); default DEFAULT_TIER_WEIGHTS
   * (gpu 1, cpu 0.8, disk 0.25). Flag `--tier-weights gpu=1,cpu=0.8,disk=0.25`, env KVGATE_TIER_WEIGHTS.
   */
  tierWeights: TierWeights;
}

export const DEFAULT_WEIGHTS: ScoreWeights = {
  uncachedWeight: 4,
  prefillWeight: 1,
  decodeWeight: 0.1,
  queueWeight: 4,
  busyKvUsage: 0.98,
  busyWaiting: 64,
  temperature: 0,
  tierWeights: DEFAULT_TIER_WEIGHTS,
};

/** ScoreWeights as callers give them: any subset, tier weights too. */
export type WeightOptions = Partial<Omit<ScoreWeights, 'tierWeights'>> & { tierWeights?: Partial<TierWeights> };

const TIER_NAMES = ['gpu', 'cpu', 'disk'] as const;

/** Defaults filled in and tier weights checked. Throws KVG_CONFIG on a tier weight outside [0, 1]. */
export function resolveWeights(o: WeightOptions = {}): ScoreWeights {
  const tierWeights: TierWeights = { ...DEFAULT_TIER_WEIGHTS, ...(o.tierWeights ?? {}) };
  for (const t of TIER_NAMES) {
    const v = tierWeights[t];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1) throw new KvgateError('KVG_CONFIG', `tier weight ${t} must be a number in [0, 1], got ${JSON.stringify(v)}`);
  }
  return { ...DEFAULT_WEIGHTS, ...o, tierWeights };
}

/**
 * `gpu=1,cpu=0.8,disk=0.25` (any subset; the rest keep their defaults) → tier weights. Throws KVG_CONFIG with a
 * message naming the bad part: unknown tier, repeated tier, not a number, outside [0, 1].
 */
export function parseTierWeights(spec: string): TierWeights {
  const out: Partial<TierWeights> = {};
  const parts = spec.split(',').map((p) => p.trim()).filter((p) => p.length > 0);
  if (parts.length === 0) throw new KvgateError('KVG_CONFIG', `tier weights: expected e.g. gpu=1,cpu=0.8,disk=0.25, got ${JSON.stringify(spec)}`);
  for (const part of parts) {
    const eq = part.indexOf('=');
    const name = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase();
    const raw = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (!(TIER_NAMES as readonly string[]).includes(name)) throw new KvgateError('KVG_CONFIG', `tier weights: unknown tier ${JSON.stringify(name)} in ${JSON.stringify(spec)} (tiers: gpu, cpu, disk)`);
    const t = name as keyof TierWeights;
    if (out[t] !== undefined) throw new KvgateError('KVG_CONFIG', `tier weights: ${t} given twice in ${JSON.stringify(spec)}`);
    const v = raw === '' ? NaN : Number(raw);
    if (!Number.isFinite(v) || v < 0 || v > 1) throw new KvgateError('KVG_CONFIG', `tier weights: ${t} must be a number in [0, 1], got ${JSON.stringify(raw)}`);
    out[t] = v;
  }
  return { ...DEFAULT_TIER_WEIGHTS, ...out };
}

/** Everything the scorer knows about one live worker for one request. */
export interface Candidate {
  worker: string;
  /** blocks of this prompt already cached on the worker's GPU (index or predicted) */
  overlap: number;
  /** the prefix reachable through GPU then CPU (cumulative, ≥ overlap); absent = overlap */
  cpuOverlap?: number;
  /** the prefix reachable through GPU, CPU or disk (cumulative, ≥ cpuOverlap); absent = cpuOverlap */
  diskOverlap?: number;
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

/** Cumulative per-tier overlap (the index's `TierOverlap`): gpu ≤ cpu ≤ disk. */
export interface TierBlocks {
  gpu: number;
  cpu: number;
  disk: number;
}

export interface Scored {
  worker: string;
  /** GPU overlap, capped at the prompt */
  overlap: number;
  /** per-tier cumulative overlap, capped at the prompt and made monotone */
  tiers: TierBlocks;
  /** tier-weighted cached blocks (cached(w) in the module comment); = overlap when the worker has no lower tiers */
  cached: number;
  cost: number;
  /** prefill blocks this request adds on the worker (promptBlocks − cached; fractional with lower tiers) */
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

/** The candidate's tiers, capped at the prompt and monotone (a lower tier's prefix includes the GPU one). */
export function tierBlocks(c: Candidate, promptBlocks: number): TierBlocks {
  const gpu = Math.min(c.overlap, promptBlocks);
  const cpu = Math.min(Math.max(c.cpuOverlap ?? gpu, gpu), promptBlocks);
  const disk = Math.min(Math.max(c.diskOverlap ?? cpu, cpu), promptBlocks);
  return { gpu, cpu, disk };
}

/** cached(w) of the module comment. */
export function cachedBlocks(t: TierBlocks, tw: TierWeights): number {
  return t.gpu * tw.gpu + (t.cpu - t.gpu) * tw.cpu + (t.disk - t.cpu) * tw.disk;
}

/** Costs of every candidate, in input order. */
export function score(input: ScoreInput, w: ScoreWeights = DEFAULT_WEIGHTS): Scored[] {
  const B = input.blockSize > 0 ? input.blockSize : 1;
  const tw = w.tierWeights ?? DEFAULT_TIER_WEIGHTS;
  return input.candidates.map((c) => {
    const tiers = tierBlocks(c, input.promptBlocks);
    const cached = cachedBlocks(tiers, tw);
    const newPrefillBlocks = input.promptBlocks - cached;
    const queuedPrefill = c.inflightPrefillTokens / B;
    const active = activeBlocks(c);
    const cost = w.uncachedWeight * newPrefillBlocks + w.prefillWeight * queuedPrefill + w.decodeWeight * active + w.queueWeight * c.waiting;
    return { worker: c.worker, overlap: tiers.gpu, tiers, cached, cost, newPrefillBlocks, load: queuedPrefill + active + c.waiting, busy: isBusy(c, w) };
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
