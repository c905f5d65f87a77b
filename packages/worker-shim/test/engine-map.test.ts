import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { initHashing, prefixHashes } from '@kvgate/protocol';
import { EngineMap } from '../src/engine-map.js';

await initHashing();

const MODEL = 'm';
const toks = (n: number, base = 1) => Array.from({ length: n }, (_, i) => base + i);

test('a chain stored in two events maps to the prefix hashes of the whole prompt', () => {
  const map = new EngineMap({ model: MODEL });
  const tokens = toks(4 * 4);
  const want = prefixHashes(MODEL, '', 4, tokens);
  const a = map.stored({ blockHashes: [11n, 12n], parent: null, tokenIds: tokens.slice(0, 8), blockSize: 4, lora: null });
  assert.equal(a, { kind: 'stored', parent: null, hashes: want.slice(0, 2) });
  const b = map.stored({ blockHashes: ['ab01', 'ab02'], parent: 12n, tokenIds: tokens.slice(8), blockSize: 4, lora: null });
  assert.equal(b, { kind: 'stored', parent: want[1], hashes: want.slice(2) });
  assert.is(map.size, 4);
});

test('lora name changes the root', () => {
  const map = new EngineMap({ model: MODEL });
  const tokens = toks(4);
  const r = map.stored({ blockHashes: [1n], parent: null, tokenIds: tokens, blockSize: 4, lora: 'sql' });
  assert.equal(r, { kind: 'stored', parent: null, hashes: prefixHashes(MODEL, 'sql', 4, tokens) });
  assert.not.equal(prefixHashes(MODEL, 'sql', 4, tokens), prefixHashes(MODEL, '', 4, tokens));
});

test('unknown parent is refused, never attached to the root', () => {
  const map = new EngineMap({ model: MODEL });
  const r = map.stored({ blockHashes: [2n], parent: 999n, tokenIds: toks(4), blockSize: 4, lora: null });
  assert.equal(r, { kind: 'unknown-parent' });
  assert.is(map.size, 0);
});

test('token count that does not match the blocks is malformed', () => {
  const map = new EngineMap({ model: MODEL });
  assert.is(map.stored({ blockHashes: [1n, 2n], parent: null, tokenIds: toks(7), blockSize: 4, lora: null }).kind, 'malformed');
});

test('removed names the prefixes it knew and forgets them', () => {
  const map = new EngineMap({ model: MODEL });
  const tokens = toks(8);
  const want = prefixHashes(MODEL, '', 4, tokens);
  map.stored({ blockHashes: [1n, 2n], parent: null, tokenIds: tokens, blockSize: 4, lora: null });
  const r = map.removed([2n, 77n]);
  assert.equal(r, { hashes: [want[1]], unknown: 1 });
  assert.is(map.size, 1);
  assert.equal(map.stored({ blockHashes: [3n], parent: 2n, tokenIds: toks(4), blockSize: 4, lora: null }), { kind: 'unknown-parent' });
});

test('the LRU cap evicts the least recently used and hands the evicted prefixes back', () => {
  const map = new EngineMap({ model: MODEL, maxEntries: 3 });
  const tokens = toks(16);
  const want = prefixHashes(MODEL, '', 4, tokens);
  map.stored({ blockHashes: [1n, 2n, 3n], parent: null, tokenIds: tokens.slice(0, 12), blockSize: 4, lora: null });
  assert.is(map.evictions, 0);
  const r = map.stored({ blockHashes: [4n], parent: 3n, tokenIds: tokens.slice(12), blockSize: 4, lora: null });
  assert.equal(r, { kind: 'stored', parent: want[2], hashes: [want[3]] });
  assert.is(map.size, 3);
  assert.is(map.evictions, 1);
  assert.equal(map.takeEvicted(), { gpu: [want[0]], cpu: [], disk: [] });
  assert.equal(map.takeEvicted(), { gpu: [], cpu: [], disk: [] });
  assert.equal(map.removed([1n]).unknown, 1);
});

test('clear forgets everything without counting evictions', () => {
  const map = new EngineMap({ model: MODEL, maxEntries: 10 });
  map.stored({ blockHashes: [1n, 2n], parent: null, tokenIds: toks(8), blockSize: 4, lora: null });
  map.clear();
  assert.is(map.size, 0);
  assert.is(map.evictions, 0);
  assert.equal(map.takeEvicted(), { gpu: [], cpu: [], disk: [] });
});

test('tierCounts follows every change (stores, offloads, removals, clears, cap evictions): equal to a recount of the block set', () => {
  const map = new EngineMap({ model: MODEL, maxEntries: 40 });
  let s = 11;
  const rnd = (n: number) => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % n);
  const known: bigint[] = [];
  let next = 1n;
  const recount = () => {
    const set = map.blockSet();
    const n = (t: 'gpu' | 'cpu' | 'disk') => set[t].reduce((a, c) => a + c.hashes.length, 0);
    return { gpu: n('gpu'), cpu: n('cpu'), disk: n('disk') };
  };
  const tiers = ['gpu', 'cpu', 'disk'] as const;
  let nonGpu = 0;
  for (let i = 0; i < 3000; i++) {
    const op = rnd(100);
    const pick = () => known[rnd(Math.max(1, known.length))] ?? 0n;
    if (op < 35 || known.length === 0) {
      const len = 1 + rnd(4);
      const hashes = Array.from({ length: len }, () => next++);
      const parent = known.length && rnd(2) ? pick() : null;
      const r = map.stored({ blockHashes: hashes, parent, tokenIds: toks(len * 4, rnd(50)), blockSize: 4, lora: null });
      if (r.kind === 'stored') known.push(...hashes);
    } else if (op < 50) {
      // re-store a known hash (on GPU: possibly new content; lower tier: a copy)
      map.stored({ blockHashes: [pick()], parent: null, tokenIds: toks(4, rnd(3)), blockSize: 4, lora: null, tier: tiers[rnd(3)]! });
    } else if (op < 70) {
      map.addTier([pick()], tiers[1 + rnd(2)]!, 1 + rnd(3));
    } else if (op < 95) map.removed([pick(), pick()], tiers[rnd(3)]!);
    else if (op < 99) map.clearTier(tiers[rnd(3)]!);
    else map.clear();
    const c = map.tierCounts();
    assert.equal(c, recount(), `after op ${i} (${op})`);
    nonGpu = Math.max(nonGpu, c.cpu + c.disk);
  }
  assert.ok(map.evictions > 0, 'the cap bit');
  assert.ok(nonGpu > 0, 'lower tiers were exercised');
});

test.run();
