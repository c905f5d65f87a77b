/**
 * The router's view of the workers: registrations (from the `…workers` KV bucket watch) and their latest load
 * reports (from `…load.*`). No I/O: the cluster view (cluster-view.ts) feeds it from the bus.
 *
 * A worker is live while its registration exists (the bucket's TTL expires dead shims: that is the liveness
 * signal). A load report older than `staleMs` is ignored (the worker counts as unloaded but for in-flight
 * accounting): a shim slow to report must not take a healthy worker out of rotation.
 * A request's `model` names a pool: either a base model (every worker registered with it), or a LoRA adapter
 * (every worker listing it in `loras`; prompts then hash under the base model with that adapter name).
 */
import type { LoadReport, WorkerRegistration } from '@kvgate/protocol';

export interface Pool {
  /** base model the pool's engines serve (hash root) */
  model: string;
  /** LoRA adapter name, or null */
  lora: string | null;
  /** KV block size of the pool (the first live worker's; a pool mixes no block sizes in practice) */
  blockSize: number;
  /** live workers serving both phases */
  both: WorkerRegistration[];
  /** live prefill-only workers (P/D) */
  prefill: WorkerRegistration[];
  /** live decode-only workers (P/D) */
  decode: WorkerRegistration[];
}

interface LoadSeen {
  report: LoadReport;
  at: number;
}

export class WorkerView {
  #regs = new Map<string, WorkerRegistration>();
  /** every model / adapter name ever registered → its base model (a pool whose workers all left is empty, not unknown) */
  #known = new Map<string, { model: string; lora: string | null }>();
  #loads = new Map<string, LoadSeen>();
  #staleMs: number;
  #now: () => number;

  constructor(opts: { staleMs?: number; now?: () => number } = {}) {
    this.#staleMs = opts.staleMs ?? 3000;
    this.#now = opts.now ?? Date.now;
  }

  upsert(reg: WorkerRegistration): void {
    this.#regs.set(reg.worker, reg);
    this.#known.set(reg.model, { model: reg.model, lora: null });
    for (const l of reg.loras) if (!this.#known.has(l)) this.#known.set(l, { model: reg.model, lora: l });
  }

  /** The registration was deleted or expired. */
  remove(worker: string): void {
    this.#regs.delete(worker);
    this.#loads.delete(worker);
  }

  load(report: LoadReport): void {
    this.#loads.set(report.worker, { report, at: this.#now() });
  }

  /** The worker's last load report, unless older than staleMs. */
  lastLoad(worker: string): LoadReport | undefined {
    const l = this.#loads.get(worker);
    return l && this.#now() - l.at <= this.#staleMs ? l.report : undefined;
  }

  registration(worker: string): WorkerRegistration | undefined {
    return this.#regs.get(worker);
  }

  isLive(worker: string): boolean {
    return this.#regs.has(worker);
  }

  /** Every registered worker (live or not). */
  all(): WorkerRegistration[] {
    return [...this.#regs.values()];
  }

  /** Ids a client may send as `model`: base models and LoRA adapters of live workers. */
  /** Served models and adapters; `maxModelLen`: the smallest a live worker of the base model registered (null: none did). */
  models(): { id: string; root: string; lora: string | null; maxModelLen: number | null }[] {
    const out = new Map<string, { id: string; root: string; lora: string | null; maxModelLen: number | null }>();
    const len = new Map<string, number>();
    for (const r of this.#regs.values()) {
      if (!this.isLive(r.worker)) continue;
      if (r.maxModelLen !== undefined) len.set(r.model, Math.min(len.get(r.model) ?? Infinity, r.maxModelLen));
      if (!out.has(r.model)) out.set(r.model, { id: r.model, root: r.model, lora: null, maxModelLen: null });
      for (const l of r.loras) if (!out.has(l)) out.set(l, { id: l, root: r.model, lora: l, maxModelLen: null });
    }
    for (const m of out.values()) m.maxModelLen = len.get(m.root) ?? null;
    return [...out.values()];
  }

  /** Has `model` (or an adapter of that name) ever been registered? */
  knows(model: string): boolean {
    return this.#known.has(model);
  }

  /** Are there any workers at all? */
  get empty(): boolean {
    return this.#regs.size === 0;
  }

  /**
   * The live pool serving `model` (base model or LoRA adapter name); empty when every worker that served it left;
   * undefined when nothing ever served it.
   */
  pool(model: string, lora?: string | null): Pool | undefined {
    let base: string | undefined;
    let adapter: string | null = lora ?? null;
    for (const r of this.#regs.values()) {
      if (r.model === model) {
        base = model;
        break;
      }
    }
    if (base === undefined) {
      for (const r of this.#regs.values()) {
        if (r.loras.includes(model)) {
          base = r.model;
          adapter = model;
          break;
        }
      }
    }
    if (base === undefined) {
      const k = this.#known.get(model);
      if (!k) return undefined;
      base = k.model;
      adapter = k.lora;
    }
    const pool: Pool = { model: base, lora: adapter, blockSize: 0, both: [], prefill: [], decode: [] };
    for (const r of this.#regs.values()) {
      if (r.model !== base || !this.isLive(r.worker)) continue;
      if (adapter && !r.loras.includes(adapter)) continue;
      pool[r.role].push(r);
      if (pool.blockSize === 0) pool.blockSize = r.blockSize;
    }
    pool.both.sort(byWorkerId);
    pool.prefill.sort(byWorkerId);
    pool.decode.sort(byWorkerId);
    return pool;
  }
}

/** module level, not per call: a named closure is made (and, under tsx, named) every time its scope runs */
function byWorkerId(a: WorkerRegistration, b: WorkerRegistration): number {
  return a.worker < b.worker ? -1 : a.worker > b.worker ? 1 : 0;
}
