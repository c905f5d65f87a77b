/**
 * Worker selection: builds scorer candidates from the worker view, the index's overlaps, predicted prefixes and
 * in-flight load, then applies the policy. Holds only the round-robin cursor; no I/O.
 *
 * Policies:
 *   kv            the documented score (scorer.ts): prefix overlap against load.
 *   least-loaded  the same score with every overlap taken as 0 (load only).
 *   round-robin   the next live worker in id order, ignoring load and cache.
 *   random        a uniformly random live worker.
 * Busy workers are excluded by every policy unless all are busy. Workers in `avoid` (passive health: suspect,
 * health.ts) are skipped while any other worker is left, by every policy.
 *
 * Overlap: a worker's GPU overlap is the larger of the index's and the router's own prediction (inflight.ts: the
 * prompts it just sent there, which the engine holds on GPU once prefilled). The index's lower tiers (CPU, disk)
 * extend that prefix; the scorer weighs them (scorer.ts).
 *
 * P/D: when the pool has prefill and decode workers, the prefill worker is picked by the policy (overlap matters
 * there) and so is the decode worker, by its own overlap and decode load. Then, per request, whether to split
 * (`PdPolicy`): no remote prefill (the decode worker prefills locally) when the part of the prompt the decode
 * worker lacks is shorter than `minPrefillTokens` (`short_prompt`), when the decode worker already holds at least
 * `decodeHoldRatio` of the prompt's blocks (`decode_holds_prefix`), or when every prefill worker is busy
 * (`prefill_saturated`) or none is left (`no_prefill_worker`: all reported down); else `split`. The reason is on the decision (`pd`).
 */
import type { TierOverlap, WorkerRegistration } from '@kvgate/protocol';
import type { Inflight } from './inflight.js';
import { pick, score, type Candidate, type ScoreWeights, type Scored } from './scorer.js';
import type { Pool, WorkerView } from './workers.js';

export const POLICIES = ['kv', 'round-robin', 'least-loaded', 'random'] as const;
export type Policy = (typeof POLICIES)[number];

export function isPolicy(s: string): s is Policy {
  return (POLICIES as readonly string[]).includes(s);
}

/** When to disaggregate a request (P/D pools only). */
export interface PdPolicy {
  /** no remote prefill when the decode worker's uncached prompt part is shorter (tokens; default 512) */
  minPrefillTokens: number;
  /** no remote prefill when the decode worker holds at least this share of the prompt's blocks (default 0.8) */
  decodeHoldRatio: number;
}

export const DEFAULT_PD_POLICY: PdPolicy = { minPrefillTokens: 512, decodeHoldRatio: 0.8 };

export const PD_REASONS = ['split', 'short_prompt', 'decode_holds_prefix', 'prefill_saturated', 'no_prefill_worker', 'same_worker'] as const;
export type PdReason = (typeof PD_REASONS)[number];

export interface SelectInput {
  pool: Pool;
  /** prefix hashes of the prompt's full blocks (may be empty: tokenization unavailable) */
  hashes: ArrayLike<bigint>;
  /** the index's answer, or null when it did not answer in time */
  indexOverlaps: Readonly<Record<string, number>> | null;
  /** the index's per-tier overlaps (cumulative gpu ≤ cpu ≤ disk); workers absent hold GPU blocks only */
  indexTiers?: Readonly<Record<string, TierOverlap>> | null;
  /** workers to skip (a retry after an upstream failure; engines reported down) */
  exclude?: ReadonlySet<string>;
  /** workers to pick only when no other is left (suspect after failures) */
  avoid?: ReadonlySet<string>;
  /** the prompt's length in tokens, when known (else promptBlocks × block size) */
  promptTokens?: number;
}

export interface Decision {
  /** where the request goes (the decode worker in P/D) */
  worker: WorkerRegistration;
  /** P/D: the prefill worker */
  prefill?: WorkerRegistration;
  /** the worker doing prefill (prefill in P/D, else `worker`) and its overlap */
  prefillWorker: WorkerRegistration;
  overlap: number;
  /** the prefill worker's tier-weighted cached blocks (scorer.ts `cached`; = overlap without lower tiers) */
  cached: number;
  promptBlocks: number;
  /** every candidate's score, for /v1/route and logs */
  scored: Scored[];
  /** P/D pools: split or not, and why; with the decode candidates' scores */
  pd?: { split: boolean; reason: PdReason; decodeScored: Scored[] };
}

/** `regs` without the excluded workers (a new array: callers may keep it) */
function kept(regs: readonly WorkerRegistration[], exclude: ReadonlySet<string> | undefined): WorkerRegistration[] {
  if (!exclude || exclude.size === 0) return regs.slice();
  const out: WorkerRegistration[] = [];
  for (const r of regs) if (!exclude.has(r.worker)) out.push(r);
  return out;
}

/** `regs` without the avoided workers, unless that leaves none */
function preferred(regs: WorkerRegistration[], avoid: ReadonlySet<string> | undefined): WorkerRegistration[] {
  if (!avoid || avoid.size === 0) return regs;
  const rest = regs.filter((r) => !avoid.has(r.worker));
  return rest.length > 0 ? rest : regs;
}

export class Selector {
  #rr = new Map<string, number>();
  #view: WorkerView;
  #inflight: Inflight;
  policy: Policy;
  weights: ScoreWeights;
  #random: () => number;
  pdPolicy: PdPolicy;

  constructor(view: WorkerView, inflight: Inflight, policy: Policy, weights: ScoreWeights, random: () => number = Math.random, pdPolicy: PdPolicy = DEFAULT_PD_POLICY) {
    this.pdPolicy = pdPolicy;
    this.#view = view;
    this.#inflight = inflight;
    this.policy = policy;
    this.weights = weights;
    this.#random = random;
  }

  /** undefined when the pool has no live worker left (after exclusions). */
  select(input: SelectInput): Decision | undefined {
    const { pool } = input;
    const { exclude, avoid } = input;
    const promptBlocks = input.hashes.length;
    const predicted = this.policy === 'kv' ? this.#inflight.predictedOverlaps(input.hashes) : new Map<string, number>();
    if (pool.prefill.length > 0 && pool.decode.length > 0) {
      const pre = preferred(kept([...pool.prefill, ...pool.both], exclude), avoid);
      const dec = preferred(kept([...pool.decode, ...pool.both], exclude), avoid);
      const p = this.#choose(pre, pool, promptBlocks, input.indexOverlaps, input.indexTiers ?? null, predicted, this.policy, `${pool.model}|${pool.lora}|p`);
      // the decode worker by its own overlap and decode load (the same score: its prefix saves a local prefill)
      const d = this.#choose(dec, pool, promptBlocks, input.indexOverlaps, input.indexTiers ?? null, predicted, this.policy, `${pool.model}|${pool.lora}|d`);
      if (!d) return undefined;
      // no prefill worker left (all down or excluded): the decode worker prefills locally
      const reason = p ? this.#pdReason(p, d, pool, promptBlocks, input.promptTokens) : 'no_prefill_worker';
      if (!p || reason !== 'split') {
        return { worker: d.reg, prefillWorker: d.reg, overlap: d.pick.overlap, cached: d.pick.cached, promptBlocks, scored: p?.scored ?? d.scored, pd: { split: false, reason, decodeScored: d.scored } };
      }
      return {
        worker: d.reg,
        prefill: p.reg,
        prefillWorker: p.reg,
        overlap: p.pick.overlap,
        cached: p.pick.cached,
        promptBlocks,
        scored: p.scored,
        pd: { split: true, reason, decodeScored: d.scored },
      };
    }
    const all = preferred(kept(pool.both.length > 0 ? pool.both : [...pool.prefill, ...pool.decode], exclude), avoid);
    const c = this.#choose(all, pool, promptBlocks, input.indexOverlaps, input.indexTiers ?? null, predicted, this.policy, `${pool.model}|${pool.lora}`);
    if (!c) return undefined;
    return { worker: c.reg, prefillWorker: c.reg, overlap: c.pick.overlap, cached: c.pick.cached, promptBlocks, scored: c.scored };
  }

  #pdReason(p: { reg: WorkerRegistration; pick: Scored; scored: Scored[] }, d: { reg: WorkerRegistration; pick: Scored }, pool: Pool, promptBlocks: number, promptTokens: number | undefined): PdReason {
    if (p.reg.worker === d.reg.worker) return 'same_worker';
    const B = pool.blockSize || 16;
    const tokens = promptTokens ?? promptBlocks * B;
    if (tokens - d.pick.cached * B < this.pdPolicy.minPrefillTokens) return 'short_prompt';
    if (promptBlocks > 0 && d.pick.overlap / promptBlocks >= this.pdPolicy.decodeHoldRatio) return 'decode_holds_prefix';
    if (p.scored.every((s) => s.busy)) return 'prefill_saturated';
    return 'split';
  }

  #choose(
    regs: WorkerRegistration[],
    pool: Pool,
    promptBlocks: number,
    index: Readonly<Record<string, number>> | null,
    tiers: Readonly<Record<string, TierOverlap>> | null,
    predicted: Map<string, number>,
    policy: Policy,
    rrKey: string,
  ): { reg: WorkerRegistration; pick: Scored; scored: Scored[] } | undefined {
    if (regs.length === 0) return undefined;
    const useOverlap = policy === 'kv';
    const candidates: Candidate[] = regs.map((r) => {
      const load = this.#view.lastLoad(r.worker);
      const inflight = this.#inflight.total(r.worker);
      const overlap = useOverlap ? Math.max(index?.[r.worker] ?? 0, tiers?.[r.worker]?.gpu ?? 0, predicted.get(r.worker) ?? 0) : 0;
      const t = useOverlap ? tiers?.[r.worker] : undefined;
      return {
        worker: r.worker,
        overlap,
        ...(t ? { cpuOverlap: t.cpu, diskOverlap: t.disk } : {}),
        inflightPrefillTokens: inflight.prefillTokens,
        inflightDecodeBlocks: inflight.decodeBlocks,
        waiting: load?.waiting ?? 0,
        running: load?.running ?? 0,
        kvUsage: load?.kvUsage ?? 0,
        capacityBlocks: load?.capacityBlocks ?? r.capacityBlocks,
      };
    });
    const scored = score({ promptBlocks, blockSize: pool.blockSize, candidates }, this.weights);
    let chosen: Scored | undefined;
    if (policy === 'kv' || policy === 'least-loaded') chosen = pick(scored, this.weights, this.#random);
    else {
      const free = scored.filter((s) => !s.busy);
      const from = free.length > 0 ? free : scored;
      if (policy === 'random') chosen = from[Math.floor(this.#random() * from.length)] ?? from[0];
      else {
        const i = this.#rr.get(rrKey) ?? 0;
        this.#rr.set(rrKey, i + 1);
        chosen = from[i % from.length];
      }
    }
    if (!chosen) return undefined;
    const reg = regs.find((r) => r.worker === chosen.worker)!;
    return { reg, pick: chosen, scored };
  }
}
