/**
 * NaiveIndex: the reference model. Maps and Sets, obviously correct, slow and big.
 * It is the oracle of the property test and the baseline of bench/index.bench.ts. Not used in production.
 */
import type { Tier, TierOverlap } from '@kvgate/protocol';
import { TIER_CPU, TIER_DISK, TIER_GPU, tierBit, tierPartBig, type Digest, type IndexCore, type IndexDump, type WorkerDump } from './core.js';

export class NaiveIndex implements IndexCore {
  /** prefix → worker → tier mask */
  readonly #holders = new Map<bigint, Map<string, number>>();
  /** worker → its prefixes → tier mask */
  readonly #byWorker = new Map<string, Map<bigint, number>>();
  readonly #parent = new Map<bigint, bigint>();
  #entries = 0;

  get entries(): number {
    return this.#entries;
  }

  #set(worker: string): Map<bigint, number> {
    let s = this.#byWorker.get(worker);
    if (!s) this.#byWorker.set(worker, (s = new Map()));
    return s;
  }

  store(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>, tier?: Tier): void {
    this.#storeMask(worker, parent, hashes, tierBit(tier));
  }

  #storeMask(worker: string, parent: bigint | null, hashes: ArrayLike<bigint>, bits: number): void {
    const mine = this.#set(worker);
    let p = parent ?? 0n;
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i]!;
      if (!this.#parent.has(h)) this.#parent.set(h, p);
      p = h;
      const m = mine.get(h) ?? 0;
      if (m === 0) this.#entries++;
      mine.set(h, m | bits);
      let hs = this.#holders.get(h);
      if (!hs) this.#holders.set(h, (hs = new Map()));
      hs.set(worker, m | bits);
    }
  }

  remove(worker: string, hashes: ArrayLike<bigint>, tier?: Tier): void {
    const mine = this.#byWorker.get(worker);
    if (!mine) return;
    const bit = tierBit(tier);
    for (let i = 0; i < hashes.length; i++) this.#removeBits(worker, mine, hashes[i]!, bit);
  }

  #removeBits(worker: string, mine: Map<bigint, number>, h: bigint, bits: number): void {
    const m = mine.get(h);
    if (m === undefined || (m & bits) === 0) return;
    const hs = this.#holders.get(h)!;
    const left = m & ~bits;
    if (left !== 0) {
      mine.set(h, left);
      hs.set(worker, left);
      return;
    }
    mine.delete(h);
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
    for (const h of [...mine.keys()]) this.#removeBits(worker, mine, h, 7);
  }

  dropWorker(worker: string): void {
    this.clear(worker);
    this.#byWorker.delete(worker);
  }

  match(hashes: ArrayLike<bigint>): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [w, t] of Object.entries(this.#tiers(hashes))) if (t.gpu > 0) out[w] = t.gpu;
    return out;
  }

  matchTiers(hashes: ArrayLike<bigint>): Record<string, TierOverlap> {
    const out: Record<string, TierOverlap> = {};
    for (const [w, t] of Object.entries(this.#tiers(hashes))) if (t.disk > t.gpu) out[w] = t;
    return out;
  }

  /** the definition, worker by worker: every worker holding the first block on some tier */
  #tiers(hashes: ArrayLike<bigint>): Record<string, TierOverlap> {
    const out: Record<string, TierOverlap> = {};
    if (hashes.length === 0) return out;
    for (const w of this.#holders.get(hashes[0]!)?.keys() ?? []) {
      const mine = this.#byWorker.get(w)!;
      const at = (i: number) => (i < hashes.length ? mine.get(hashes[i]!) ?? 0 : 0);
      let gpu = 0;
      while (at(gpu) & TIER_GPU) gpu++;
      let cpu = gpu;
      while (at(cpu) & TIER_CPU) cpu++;
      let disk = gpu;
      while (at(disk) & (TIER_CPU | TIER_DISK)) disk++;
      out[w] = { gpu, cpu, disk };
    }
    return out;
  }

  workers(): string[] {
    return [...this.#byWorker.keys()];
  }

  digest(worker: string): Digest {
    const mine = this.#byWorker.get(worker);
    let xor = 0n;
    if (mine) for (const [h, m] of mine) xor ^= tierPartBig(h, m);
    return { count: mine?.size ?? 0, xor };
  }

  dumpWorker(worker: string): WorkerDump {
    const mine = [...(this.#byWorker.get(worker) ?? [])];
    const blocks = new BigUint64Array(mine.length * 2);
    const tiers = new Uint8Array(mine.length);
    let tiered = false;
    mine.forEach(([h, m], i) => {
      blocks[2 * i] = this.#parent.get(h) ?? 0n;
      blocks[2 * i + 1] = h;
      tiers[i] = m;
      if (m !== TIER_GPU) tiered = true;
    });
    return tiered ? { worker, blocks, tiers } : { worker, blocks };
  }

  loadWorker(dump: WorkerDump): void {
    const t = dump.tiers;
    if (t) {
      if (t.length * 2 !== dump.blocks.length) throw new RangeError(`dump of ${dump.worker}: ${t.length} tier masks for ${dump.blocks.length / 2} blocks`);
      for (let i = 0; i < t.length; i++) if (t[i]! === 0 || t[i]! > 7) throw new RangeError(`dump of ${dump.worker}: tier mask ${t[i]} of block ${i} is not in 1..7`);
    }
    this.clear(dump.worker);
    this.#set(dump.worker);
    for (let i = 0; i + 1 < dump.blocks.length; i += 2) {
      this.#storeMask(dump.worker, dump.blocks[i]!, [dump.blocks[i + 1]!], t ? t[i >>> 1]! : TIER_GPU);
    }
  }

  dump(): IndexDump {
    return { workers: this.workers().map((w) => this.dumpWorker(w)) };
  }

  load(dump: IndexDump): void {
    for (const w of this.workers()) this.dropWorker(w);
    for (const d of dump.workers) this.loadWorker(d);
  }
}
