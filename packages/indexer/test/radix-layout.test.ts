/**
 * PrefixIndex representation details that the contract suite reaches only by chance: parent hashes derived
 * from the previous record (and kept when that record is reused), the side table of other parents, bitsets
 * exactly while a prefix has ≥ 8 holders, slot tables of any size.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { NaiveIndex } from '../src/naive.js';
import { PrefixIndex } from '../src/radix.js';
import { rng } from './helpers.js';

function pairs(b: BigUint64Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < b.length; i += 2) out.push(`${b[i]}:${b[i + 1]}`);
  return out.sort();
}

const chain = (from: number, n: number) => Array.from({ length: n }, (_, i) => BigInt(from + i));

test('a parent derived from the record before survives that record being freed and reused', () => {
  const ix = new PrefixIndex(), ref = new NaiveIndex();
  for (const x of [ix, ref]) {
    x.store('a', null, chain(1, 10)); // records 0..9, parents from the record before
    x.remove('a', [5n]); // frees record 4 (its successor 6's parent is its key)
    x.store('b', null, [1000n, 1001n]); // reuses record 4 (free list), then a new one
    x.store('c', 999n, [2000n]); // parent elsewhere: the side table
  }
  for (const w of ['a', 'b', 'c']) assert.equal(pairs(ix.dumpWorker(w).blocks), pairs(ref.dumpWorker(w).blocks), w);
  assert.ok(pairs(ix.dumpWorker('a').blocks).includes('5:6'), 'block 6 keeps parent 5');
  // and after block 6 goes and its record is reused too, 7 still knows 6
  for (const x of [ix, ref]) {
    x.remove('a', [6n]);
    x.store('d', 7n, [3000n, 3001n, 3002n]);
  }
  for (const w of ['a', 'b', 'c', 'd']) assert.equal(pairs(ix.dumpWorker(w).blocks), pairs(ref.dumpWorker(w).blocks), w);
});

test('random churn with many reuses: dumps (parents) and answers equal the reference', () => {
  const r = rng(77);
  const ix = new PrefixIndex(), ref = new NaiveIndex();
  const chains = Array.from({ length: 40 }, (_, c) => chain(c * 100 + 1, 60));
  for (let step = 0; step < 3000; step++) {
    const w = `w${Math.floor(r() * 12)}`, c = chains[Math.floor(r() * chains.length)]!;
    const at = Math.floor(r() * c.length), n = 1 + Math.floor(r() * 20);
    if (r() < 0.6) {
      const hs = c.slice(at, at + n), p = at === 0 ? null : c[at - 1]!;
      ix.store(w, p, hs);
      ref.store(w, p, hs);
    } else {
      const hs = c.slice(at, at + n);
      ix.remove(w, hs);
      ref.remove(w, hs);
    }
  }
  assert.is(ix.entries, ref.entries);
  for (const w of ref.workers()) {
    assert.equal(pairs(ix.dumpWorker(w).blocks), pairs(ref.dumpWorker(w).blocks), `dump of ${w}`);
    assert.equal(ix.digest(w), ref.digest(w));
  }
  for (const c of chains) assert.equal(ix.match(c), ref.match(c));
});

test('a prefix crossing the popular threshold both ways keeps exact answers (bitset made and released)', () => {
  const ix = new PrefixIndex(), ref = new NaiveIndex();
  const c = chain(1, 5);
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 12; i++) for (const x of [ix, ref]) x.store(`w${i}`, null, c);
    assert.equal(ix.match(c), ref.match(c));
    for (let i = 0; i < 10; i++) for (const x of [ix, ref]) x.remove(`w${i}`, [c[2]!]);
    assert.equal(ix.match(c), ref.match(c));
    for (let i = 0; i < 12; i++) for (const x of [ix, ref]) x.store(`w${i}`, null, c, 'cpu');
    assert.equal(ix.matchTiers(c), ref.matchTiers(c));
    for (let i = 3; i < 12; i++) for (const x of [ix, ref]) x.clear(`w${i}`);
    assert.equal(ix.match(c), ref.match(c));
    assert.equal(ix.matchTiers(c), ref.matchTiers(c));
  }
});

test('slot tables of sizes that are not powers of two (reserve, 1.5× growth) find every key', () => {
  for (const reserve of [0, 1000, 12_345]) {
    const ix = new PrefixIndex(), ref = new NaiveIndex();
    ix.reserve(reserve);
    const chains = Array.from({ length: 300 }, (_, c) => chain(c * 1000 + 7, 50));
    chains.forEach((c, i) => {
      ix.store(`w${i % 5}`, null, c);
      ref.store(`w${i % 5}`, null, c);
    });
    for (let i = 0; i < chains.length; i += 2) {
      ix.remove(`w${i % 5}`, chains[i]!.slice(10, 30));
      ref.remove(`w${i % 5}`, chains[i]!.slice(10, 30));
    }
    for (const c of chains) assert.equal(ix.match(c), ref.match(c), `reserve ${reserve}`);
    assert.is(ix.stats().nodes, 300 * 50 - 150 * 20);
  }
});

test.run();
