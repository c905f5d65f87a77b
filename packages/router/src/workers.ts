/**
 * The router's view of the workers: registrations (from the `…workers` KV bucket watch) and their latest load
 * reports (from `…load.*`). No I/O: the bus edge (router.ts) feeds it.
 *
 * A worker is live while its registration exists (the bucket's TTL expires dead shims) and its last load report,
 * if it ever sent one, is younger than `staleMs`.
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
  #loads = new Map<string, LoadSeen>();
  #staleMs: number;
  #now: () => number;

  constructor(opts: { staleMs?: number; now?: () => number } = {}) {
    this.#staleMs = opts.staleMs ?? 3000;
    this.#now = opts.now ?? Date.now;
  }

  upsert(reg: WorkerRegistration): void {
    this.#regs.set(reg.worker, reg);
  }

  /** The registration was deleted or expired. */
  remove(worker: string): void {
    this.#regs.delete(worker);
    this.#loads.delete(worker);
  }

  load(report: LoadReport): void {
    this.#loads.set(report.worker, { report, at: this.#now() });
  }

  lastLoad(worker: string): LoadReport | undefined {
    return this.#loads.get(worker)?.report;
  }

  registration(worker: string): WorkerRegistration | undefined {
    return this.#regs.get(worker);
  }

  isLive(worker: string): boolean {
    if (!this.#regs.has(worker)) return false;
    const l = this.#loads.get(worker);
    return !l || this.#now() - l.at <= this.#staleMs;
  }

  /** Every registered worker (live or not). */
  all(): WorkerRegistration[] {
    return [...this.#regs.values()];
  }

  /** Ids a client may send as `model`: base models and LoRA adapters of live workers. */
  models(): { id: string; root: string; lora: string | null }[] {
    const out = new Map<string, { id: string; root: string; lora: string | null }>();
    for (const r of this.#regs.values()) {
      if (!this.isLive(r.worker)) continue;
      if (!out.has(r.model)) out.set(r.model, { id: r.model, root: r.model, lora: null });
      for (const l of r.loras) if (!out.has(l)) out.set(l, { id: l, root: r.model, lora: l });
    }
    return [...out.values()];
  }

  /** Is `model` known at all (registered, even if no worker is live now)? */
  knows(model: string): boolean {
    for (const r of this.#regs.values()) if (r.model === model || r.loras.includes(model)) return true;
    return false;
  }

  /** The live pool serving `model` (base model or LoRA adapter name), or undefined if no worker is registered for it. */
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
    if (base === undefined) return undefined;
    const pool: Pool = { model: base, lora: adapter, blockSize: 0, both: [], prefill: [], decode: [] };
    for (const r of this.#regs.values()) {
      if (r.model !== base || !this.isLive(r.worker)) continue;
      if (adapter && !r.loras.includes(adapter)) continue;
      pool[r.role].push(r);
      if (pool.blockSize === 0) pool.blockSize = r.blockSize;
    }
    const byId = (a: WorkerRegistration, b: WorkerRegistration) => (a.worker < b.worker ? -1 : a.worker > b.worker ? 1 : 0);
    pool.both.sort(byId);
    pool.prefill.sort(byId);
    pool.decode.sort(byId);
    return pool;
  }
}
