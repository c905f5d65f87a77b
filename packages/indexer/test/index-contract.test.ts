/**
 * One contract suite for every index implementation: fixed cases, then random event sequences checked
 * against NaiveIndex (the reference model), then dump → load → equality.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { IndexCore } from '../src/core.js';
import { NaiveIndex } from '../src/naive.js';
import { PrefixIndex } from '../src/radix.js';
import { rng, universe } from './helpers.js';

const VARIANTS: Record<string, () => IndexCore> = {
  naive: () => new NaiveIndex(),
  radix: () => new PrefixIndex(),
};

function sameAnswers(a: IndexCore, b: IndexCore, u: bigint[][], r: () => number, what: string): void {
  for (const chain of u) {
    const cut = Math.max(1, Math.floor(r() * chain.length) + 1);
    assert.equal(a.match(chain.slice(0, cut)), b.match(chain.slice(0, cut)), `${what}: match`);
    assert.equal(a.matchTiers(chain.slice(0, cut)), b.matchTiers(chain.slice(0, cut)), `${what}: matchTiers`);
  }
  assert.is(a.entries, b.entries, `${what}: entries`);
  assert.equal(a.workers().sort(), b.workers().sort(), `${what}: workers`);
  for (const w of b.workers()) assert.equal(a.digest(w), b.digest(w), `${what}: digest ${w}`);
}

for (const [name, make] of Object.entries(VARIANTS)) {
  test(`${name}: match counts consecutive leading blocks per worker`, () => {
    const ix = make();
    ix.store('a', null, [1n, 2n, 3n, 4n]);
    ix.store('b', null, [1n, 2n]);
    ix.store('c', 2n, [3n]); // c holds 3 but not 1, 2
    assert.equal(ix.match([1n, 2n, 3n, 4n, 5n]), { a: 4, b: 2 });
    assert.equal(ix.match([9n, 1n]), {}, 'early exit at a block nobody holds');
    assert.equal(ix.match([]), {});
    assert.is(ix.entries, 7);
  });

  test(`${name}: remove of an inner prefix hides its descendants until stored again`, () => {
    const ix = make();
    ix.store('a', null, [1n, 2n, 3n]);
    ix.remove('a', [2n]);
    assert.equal(ix.match([1n, 2n, 3n]), { a: 1 });
    assert.is(ix.digest('a').count, 2);
    ix.store('a', 1n, [2n]);
    assert.equal(ix.match([1n, 2n, 3n]), { a: 3 });
    ix.remove('a', [7n, 2n, 2n]); // unknown and repeated hashes are ignored
    assert.is(ix.entries, 2);
  });

  test(`${name}: clear and dropWorker`, () => {
    const ix = make();
    ix.store('a', null, [1n, 2n]);
    ix.store('b', null, [1n, 2n, 3n]);
    ix.clear('a');
    assert.equal(ix.match([1n, 2n, 3n]), { b: 3 });
    assert.ok(ix.workers().includes('a'), 'a cleared worker stays known');
    assert.equal(ix.digest('a'), { count: 0, xor: 0n });
    ix.dropWorker('b');
    assert.equal(ix.workers(), ['a']);
    assert.is(ix.entries, 0);
    assert.equal(ix.match([1n]), {});
  });

  test(`${name}: a prefix held by many workers (popular) stays exact under re-store and remove`, () => {
    const ix = make();
    for (let i = 0; i < 100; i++) ix.store(`w${i}`, null, [1n, 2n, 3n]);
    for (let i = 0; i < 100; i++) ix.store(`w${i}`, null, [1n, 2n]); // duplicates
    ix.remove('w5', [2n]);
    ix.remove('w70', [3n]);
    const want: Record<string, number> = {};
    for (let i = 0; i < 100; i++) want[`w${i}`] = i === 5 ? 1 : i === 70 ? 2 : 3;
    assert.equal(ix.match([1n, 2n, 3n]), want);
    assert.is(ix.entries, 298);
    ix.store('w5', 1n, [2n]);
    assert.is(ix.match([1n, 2n, 3n]).w5, 3);
  });

  test(`${name}: tens of thousands of blocks (record pages, slot-table growth) agree with the reference`, () => {
    const r = rng(99);
    const ix = make();
    const ref = new NaiveIndex();
    const u = universe(r, 200, 200); // 40,000 prefixes
    for (let c = 0; c < u.length; c++) {
      ix.store(`w${c % 7}`, null, u[c]!);
      ref.store(`w${c % 7}`, null, u[c]!);
    }
    for (let c = 0; c < u.length; c += 3) {
      const hs = u[c]!.filter((_, i) => i % 2 === 1);
      ix.remove(`w${c % 7}`, hs);
      ref.remove(`w${c % 7}`, hs);
    }
    ix.clear('w3');
    ref.clear('w3');
    sameAnswers(ix, ref, u, r, 'large');
  });

  test(`${name}: digest is count and xor of the worker's hashes`, () => {
    const ix = make();
    const big = 0xfedcba9876543210n;
    ix.store('a', null, [big, 5n, 5n]);
    assert.equal(ix.digest('a'), { count: 2, xor: big ^ 5n });
  });

  test(`${name}: tiers: gpu prefix, then the CPU run, then the CPU-or-disk run (vLLM's load order)`, () => {
    const ix = make();
    const c = [1n, 2n, 3n, 4n, 5n, 6n];
    ix.store('a', null, c.slice(0, 2)); // gpu 1, 2
    ix.store('a', 2n, c.slice(2, 4), 'cpu'); // cpu 3, 4
    ix.store('a', 4n, c.slice(4, 5), 'disk'); // disk 5
    ix.store('b', null, c.slice(0, 3), 'cpu'); // no GPU prefix at all
    ix.store('c', null, c.slice(0, 3)); // gpu only
    ix.store('d', null, c.slice(0, 1));
    ix.store('d', 1n, c.slice(1, 2), 'disk');
    ix.store('d', 2n, c.slice(2, 3), 'cpu'); // disk run goes on through CPU; the CPU run ended at the disk block
    assert.equal(ix.match(c), { a: 2, c: 3, d: 1 });
    assert.equal(ix.matchTiers(c), { a: { gpu: 2, cpu: 4, disk: 5 }, b: { gpu: 0, cpu: 3, disk: 3 }, d: { gpu: 1, cpu: 1, disk: 3 } });
    assert.is(ix.entries, 5 + 3 + 3 + 3);
    // a block on GPU and CPU: removing the GPU copy keeps the CPU one (and the entry)
    ix.store('c', null, c.slice(0, 3), 'cpu');
    ix.remove('c', [2n]);
    assert.equal(ix.match(c).c, 1);
    assert.equal(ix.matchTiers(c).c, { gpu: 1, cpu: 3, disk: 3 });
    assert.is(ix.entries, 14);
    ix.remove('c', [2n], 'cpu');
    assert.is(ix.entries, 13, 'no tier left: the entry is gone');
    assert.equal(ix.matchTiers(c).c, undefined);
    ix.clear('a');
    assert.equal(ix.matchTiers(c).a, undefined);
    assert.is(ix.entries, 8);
  });

  test(`${name}: digests tell tiers apart; GPU-only digests are unchanged by tiers`, () => {
    const x = make(), y = make();
    x.store('a', null, [1n, 2n]);
    y.store('a', null, [1n, 2n]);
    assert.equal(x.digest('a'), { count: 2, xor: 1n ^ 2n });
    y.store('a', null, [2n], 'cpu');
    assert.is(y.digest('a').count, 2);
    assert.not.equal(x.digest('a').xor, y.digest('a').xor, 'gpu+cpu differs from gpu');
    y.remove('a', [2n], 'cpu');
    assert.equal(x.digest('a'), y.digest('a'));
    x.store('a', null, [3n], 'cpu');
    y.store('a', null, [3n], 'disk');
    assert.not.equal(x.digest('a').xor, y.digest('a').xor, 'cpu differs from disk');
  });

  test(`${name}: dumps carry tier masks (absent = GPU only) and bad masks are refused`, () => {
    const ix = make();
    ix.store('g', null, [1n, 2n]);
    ix.store('t', null, [1n, 2n], 'cpu');
    assert.is(ix.dumpWorker('g').tiers, undefined);
    assert.equal([...ix.dumpWorker('t').tiers!], [2, 2]);
    const copy = make();
    copy.load(ix.dump());
    assert.equal(copy.matchTiers([1n, 2n]), { t: { gpu: 0, cpu: 2, disk: 2 } });
    assert.throws(() => copy.loadWorker({ worker: 't', blocks: new BigUint64Array([0n, 1n]), tiers: new Uint8Array([8]) }), /tier mask/);
    assert.throws(() => copy.loadWorker({ worker: 't', blocks: new BigUint64Array([0n, 1n]), tiers: new Uint8Array([1, 1]) }), /tier masks/);
    assert.equal(copy.matchTiers([1n, 2n]), { t: { gpu: 0, cpu: 2, disk: 2 } }, 'a refused load changes nothing');
  });

  test(`${name}: random tiered event sequences agree with the reference model (incl. dump → load)`, () => {
    const TIERS = [undefined, 'gpu', 'cpu', 'disk'] as const;
    for (let seed = 1; seed <= 30; seed++) {
      const r = rng(1000 + seed);
      const u = universe(r, 6, 20);
      const ix = make();
      const ref = new NaiveIndex();
      const workers = Array.from({ length: seed % 3 === 0 ? 40 : 5 }, (_, i) => `w${i}`);
      for (let step = 0; step < 400; step++) {
        const w = workers[Math.floor(r() * workers.length)]!;
        const chain = u[Math.floor(r() * u.length)]!;
        const tier = TIERS[Math.floor(r() * TIERS.length)];
        const x = r();
        if (x < 0.6) {
          const from = r() < 0.6 ? 0 : Math.floor(r() * chain.length);
          const to = Math.min(chain.length, from + 1 + Math.floor(r() * 10));
          const parent = from === 0 ? null : chain[from - 1]!;
          ix.store(w, parent, chain.slice(from, to), tier);
          ref.store(w, parent, chain.slice(from, to), tier);
        } else if (x < 0.9) {
          const hs = Array.from({ length: 1 + Math.floor(r() * 6) }, () => chain[Math.floor(r() * chain.length)]!);
          ix.remove(w, hs, tier);
          ref.remove(w, hs, tier);
        } else if (x < 0.97) {
          ix.clear(w);
          ref.clear(w);
        } else {
          ix.dropWorker(w);
          ref.dropWorker(w);
        }
        if (step % 10 === 0) sameAnswers(ix, ref, u, r, `tiered seed ${seed} step ${step}`);
      }
      sameAnswers(ix, ref, u, r, `tiered seed ${seed} end`);
      const copy = make();
      copy.load(ix.dump());
      sameAnswers(copy, ref, u, r, `tiered seed ${seed} after dump → load`);
      const other = seed % 2 ? new NaiveIndex() : new PrefixIndex();
      other.load(ix.dump());
      sameAnswers(other, ref, u, r, `tiered seed ${seed} after dump → load into the other implementation`);
    }
  });

  test(`${name}: random event sequences agree with the reference model`, () => {
    for (let seed = 1; seed <= 30; seed++) {
      const r = rng(seed);
      const u = universe(r, 8, 24);
      const ix = make();
      const ref = new NaiveIndex();
      // every third seed uses 70 workers: popular prefixes (holder bitsets) and ordinal growth past 64
      const workers = Array.from({ length: seed % 3 === 0 ? 70 : 6 }, (_, i) => `w${i}`);
      for (let step = 0; step < (seed % 3 === 0 ? 600 : 300); step++) {
        const w = workers[Math.floor(r() * workers.length)]!;
        const chain = u[Math.floor(r() * u.length)]!;
        const x = r();
        if (x < 0.55) {
          const from = r() < 0.7 ? 0 : Math.floor(r() * chain.length);
          const to = Math.min(chain.length, from + 1 + Math.floor(r() * 10));
          const parent = from === 0 ? null : chain[from - 1]!;
          const hs = chain.slice(from, to);
          ix.store(w, parent, hs);
          ref.store(w, parent, hs);
        } else if (x < 0.85) {
          const hs = Array.from({ length: 1 + Math.floor(r() * 6) }, () => chain[Math.floor(r() * chain.length)]!);
          ix.remove(w, hs);
          ref.remove(w, hs);
        } else if (x < 0.95) {
          ix.clear(w);
          ref.clear(w);
        } else {
          ix.dropWorker(w);
          ref.dropWorker(w);
        }
        if (step % 10 === 0) sameAnswers(ix, ref, u, r, `seed ${seed} step ${step}`);
      }
      sameAnswers(ix, ref, u, r, `seed ${seed} end`);
      const copy = make();
      copy.load(ix.dump());
      sameAnswers(copy, ref, u, r, `seed ${seed} after dump → load`);
      for (const w of ref.workers()) {
        const a = copy.dumpWorker(w).blocks, b = ref.dumpWorker(w).blocks;
        assert.equal(pairsSet(a), pairsSet(b), `seed ${seed}: dump of ${w} (parent, hash) pairs`);
      }
    }
  });
}

function pairsSet(b: BigUint64Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < b.length; i += 2) out.push(`${b[i]}:${b[i + 1]}`);
  return out.sort();
}

test('radix: long chains stored in pieces, out of order, freed and reused, across record pages agree with the reference', () => {
  // the match scan follows runs of consecutive records and child hints; the table keeps 7-bit tags.
  // Pieces stored in random order, removes that free records, and re-stores that reuse them (so runs and
  // hints point at stale or foreign records) must never change an answer. Bounded and unbounded (the
  // bounded index stamps records on match).
  for (const maxEntries of [0, 30_000]) {
    const r = rng(123 + maxEntries);
    const u = universe(r, 24, 1000); // 24,000 prefixes: two record pages
    const ix = new PrefixIndex({ maxEntries });
    const ref = new NaiveIndex();
    const workers = ['a', 'b', 'c', 'd', 'e'];
    for (let step = 0; step < 400; step++) {
      const w = workers[Math.floor(r() * workers.length)]!;
      const chain = u[Math.floor(r() * u.length)]!;
      const x = r();
      if (x < 0.6) {
        const from = r() < 0.5 ? 0 : Math.floor(r() * chain.length);
        const to = Math.min(chain.length, from + 1 + Math.floor(r() * 400));
        // in pieces of up to 16, the pieces in random order
        const pieces: number[] = [];
        for (let at = from; at < to; at += 16) pieces.push(at);
        pieces.sort(() => r() - 0.5);
        for (const at of pieces) {
          const hs = chain.slice(at, Math.min(to, at + 16));
          ix.store(w, at === 0 ? null : chain[at - 1]!, hs);
          ref.store(w, at === 0 ? null : chain[at - 1]!, hs);
        }
      } else if (x < 0.85) {
        const at = Math.floor(r() * chain.length);
        const hs = chain.slice(at, at + 1 + Math.floor(r() * 50));
        ix.remove(w, hs);
        ref.remove(w, hs);
      } else {
        ix.clear(w);
        ref.clear(w);
      }
      if (maxEntries > 0) {
        // eviction is not in the reference model: compare against what the index still holds
        if (step % 50 === 0) assert.ok(ix.entries <= maxEntries);
        continue;
      }
      if (step % 40 === 0) sameAnswers(ix, ref, u, r, `long chains step ${step}`);
    }
    if (maxEntries === 0) sameAnswers(ix, ref, u, r, 'long chains end');
    else {
      // every answer is consistent with the dump: load it into a reference and compare
      const copy = new NaiveIndex();
      copy.load(ix.dump());
      sameAnswers(ix, copy, u, r, 'bounded vs its own dump');
    }
  }
});

test('radix: memory bound evicts whole prefixes and counts them', () => {
  const ix = new PrefixIndex({ maxEntries: 100 });
  for (let c = 0; c < 50; c++) {
    const chain = Array.from({ length: 10 }, (_, i) => BigInt(c * 1000 + i + 1));
    ix.store(`w${c % 4}`, null, chain);
  }
  const s = ix.stats();
  assert.ok(s.entries <= 100, `entries ${s.entries} ≤ 100`);
  assert.is(s.evictedEntries, 500 - s.entries);
  // digests stay consistent with what is left
  let total = 0;
  for (const w of ix.workers()) total += ix.digest(w).count;
  assert.is(total, s.entries);
});

test('radix: recently matched prefixes survive eviction longer than cold ones', () => {
  const ix = new PrefixIndex({ maxEntries: 200 });
  const hot = Array.from({ length: 20 }, (_, i) => BigInt(i + 1));
  ix.store('a', null, hot);
  for (let c = 1; c <= 40; c++) {
    ix.match(hot);
    ix.store('b', null, Array.from({ length: 10 }, (_, i) => BigInt(c * 1000 + i)));
  }
  assert.equal(ix.match(hot), { a: 20 });
  assert.ok(ix.stats().evictedNodes > 0);
});

test.run();
