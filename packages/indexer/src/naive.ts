/**
 * NaiveIndex: the reference model. Maps and Sets, obviously correct, slow and big.
 * It is the oracle of the property test and the baseline of bench/index.bench.ts. Not used in production.
 */
import type { Digest, IndexCore, IndexDump, WorkerDump } from './core.js';

export class NaiveIndex implements IndexCore {
  /** prefix → workers holding it */
  readonly #holders = new Map<bigint, Set<string>>();
  /** worker → its prefixes */
  readonly #byWorker = new Map<string, Set<bigint>>();
  readonly #parent = new Map<bigint, bigint>();
  #entries = 0;

  get entries(): number {
    return this.#entries;
  }

  #set(worker: string): Set<bigint> {
    let s = this.#byWorker.get(worker);
    if (!s) this.#byWorker.set(worker, (s = new Set()));
    return s;
  }

  store(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>): void {
    const mine = this.#set(worker);
    let p = parent ?? 0n;
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i]!;
      if (!this.#parent.has(h)) this.#parent.set(h, p);
      p = h;
      if (mine.has(h)) continue;
      mine.add(h);
      let hs = this.#holders.get(h);
      if (!hs) this.#holders.set(h, (hs = new Set()));
      hs.add(worker);
      this.#entries++;
    }
  }

  remove(worker: string, hashes: ArrayLike<bigint>): void {
    const mine = this.#byWorker.get(worker);
    if (!mine) return;
    for (let i = 0; i < hashes.length; i++) this.#removeOne(worker, mine, hashes[i]!);
  }

  #removeOne(worker: string, mine: Set<bigint>, h: bigint): void {
    if (!mine.delete(h)) return;
    const hs = this.#holders.get(h)!;
    hs.delete(worker);
    if (hs.size === 0) {
      this.#holders.delete(h);
      this.#parent.delete(h);
    }
    this.#entries--;
  }

  clear(worker: string): void {
    const mine = this.#byWorker.get(worker);
    if (!mine) return;
    for (const h of [...mine]) this.#removeOne(worker, mine, h);
  }

  dropWorker(worker: string): void {
    this.clear(worker);
    this.#byWorker.delete(worker);
  }

  match(hashes: ArrayLike<bigint>): Record<string, number> {
    const out: Record<string, number> = {};
    if (hashes.length === 0) return out;
    let alive = [...(this.#holders.get(hashes[0]!) ?? [])];
    for (const w of alive) out[w] = 1;
    for (let i = 1; i < hashes.length && alive.length > 0; i++) {
      const hs = this.#holders.get(hashes[i]!);
      if (!hs) break;
      alive = alive.filter((w) => hs.has(w));
      for (const w of alive) out[w] = i + 1;
    }
    return out;
  }

  workers(): string[] {
    return [...this.#byWorker.keys()];
  }

  digest(worker: string): Digest {
    const mine = this.#byWorker.get(worker);
    let xor = 0n;
    if (mine) for (const h of mine) xor ^= h;
    return { count: mine?.size ?? 0, xor };
  }

  dumpWorker(worker: string): WorkerDump {
    const mine = [...(this.#byWorker.get(worker) ?? [])];
    const blocks = new BigUint64Array(mine.length * 2);
    mine.forEach((h, i) => {
      blocks[2 * i] = this.#parent.get(h) ?? 0n;
      blocks[2 * i + 1] = h;
    });
    return { worker, blocks };
  }

  loadWorker(dump: WorkerDump): void {
    this.clear(dump.worker);
    this.#set(dump.worker);
    for (let i = 0; i + 1 < dump.blocks.length; i += 2) this.store(dump.worker, dump.blocks[i]!, [dump.blocks[i + 1]!]);
  }

  dump(): IndexDump {
    return { workers: this.workers().map((w) => this.dumpWorker(w)) };
  }

  load(dump: IndexDump): void {
    for (const w of this.workers()) this.dropWorker(w);
    for (const d of dump.workers) this.loadWorker(d);
  }
}
