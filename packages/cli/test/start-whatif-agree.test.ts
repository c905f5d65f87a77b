/**
 * `kvgate start` (wall clock: engine threads, shims, indexer, routers, HTTP) and `kvgate replay whatif` (the same
 * scheduler on a virtual clock) on one small trace, policy and profile: the same derived capacity, hit rates within
 * 10 % of each other and TTFT p50 within 25 % (issue 14). The trace is built here: 4 shared 3,072-token prefixes,
 * each request one of them plus 1,000–1,500 tokens of its own, 10 requests/s for 10 s. Both replay it at 2× its pace in
 * modelled time (--compress 2); start's engines run at half the modelled speed (--speedup 0.5: wall ms = 2 ×
 * modelled ms, so the fixed HTTP/router costs weigh half as much against the engine time being compared), and it
 * reports modelled ms, as whatif does. Few enough prefixes that even round-robin's median request hits (TTFT is bimodal, hit or miss:
 * a p50 that sat on the boundary would swing either way). One router replica in both (whatif --routers 1): whatif
 * models replicas as start runs them (requests alternate, each replica keeps its own round-robin cursor), and the
 * second test holds that two replicas' round-robin pairs consecutive requests on one engine in whatif as in start.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { whatif } from '../src/replay/whatif.js';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

function smallTrace(): string {
  let s = 7;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const lines: string[] = [];
  let unique = 1000;
  for (let i = 0; i < 100; i++) {
    const p = Math.floor(rnd() * 4);
    const hashIds = [...Array.from({ length: 6 }, (_, j) => p * 6 + j), unique++, unique++, unique++];
    const inputLength = 8 * 512 + 1 + Math.floor(rnd() * 511);
    lines.push(JSON.stringify({ timestamp: i * 100, input_length: inputLength, output_length: 8 + Math.floor(rnd() * 24), hash_ids: hashIds }));
  }
  return lines.join('\n') + '\n';
}

interface Row { policy: string; hitRate: number; ttftP50Ms: number; errors?: number }

test('start and whatif agree on one trace, policy and profile', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvg-agree-'));
  const trace = join(dir, 'small.jsonl');
  writeFileSync(trace, smallTrace());
  try {
    const policies = ['kv', 'round-robin'];
    const args = ['start', '--trace', trace, '--policy', policies.join(','), '--engines', '4', '--routers', '1', '--compress', '2', '--speedup', '0.5', '--warmup', '20', '--json'];
    const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [BIN, ...args], { timeout: 120_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: unknown }).code as number) ?? -1 : 0, stdout, stderr });
      });
    });
    const what = `stdout: ${out.stdout.slice(-2000)}\nstderr: ${out.stderr.slice(-3000)}`;
    assert.is(out.code, 0, what);
    const started = JSON.parse(out.stdout.trim().split('\n').filter((l) => l.startsWith('{"infinite')).at(-1)!) as { policies: Row[]; capacity: { line: string; numBlocks: number; blockSize: number } };
    const virtual = await whatif({ trace, policies, engines: 4, routers: 1, json: true, compress: 2 });

    // the same engines: qwen3-8b on one H100 at 0.9, printed the same way
    assert.is(started.capacity.line, virtual.capacity.line);
    assert.is(virtual.capacity.numBlocks, 3147); // 3147 × 128 = 402,816 tokens
    assert.match(out.stderr, `engines: ${virtual.capacity.line}`);

    for (const p of policies) {
      // start reports its engines' modelled ms (wall ms × speedup), as whatif does
      const s = started.policies.find((r) => r.policy === p)!;
      const v = virtual.policies.find((r) => r.policy === p)!;
      const detail = `${p}: start hit ${(s.hitRate * 100).toFixed(1)}% TTFT p50 ${s.ttftP50Ms.toFixed(1)} ms; whatif hit ${(v.hitRate * 100).toFixed(1)}% TTFT p50 ${v.ttftP50Ms.toFixed(1)} ms`;
      console.log(detail);
      assert.is(s.errors, 0, what);
      assert.ok(Math.abs(s.hitRate - v.hitRate) <= 0.1 * Math.max(s.hitRate, v.hitRate), `hit rates differ by more than 10%: ${detail}`);
      assert.ok(Math.abs(s.ttftP50Ms - v.ttftP50Ms) <= 0.25 * Math.max(s.ttftP50Ms, v.ttftP50Ms), `TTFT p50 differs by more than 25%: ${detail}`);
    }
    // the trace is built so that routing matters: kv above round-robin in both
    const hit = (rs: Row[], p: string) => rs.find((r) => r.policy === p)!.hitRate;
    assert.ok(hit(started.policies, 'kv') > hit(started.policies, 'round-robin'));
    assert.ok(hit(virtual.policies, 'kv') > hit(virtual.policies, 'round-robin'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('whatif models router replicas as start runs them: requests alternate, each replica has its own round-robin cursor', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvg-replicas-'));
  const trace = join(dir, 'pairs.jsonl');
  // 4 requests at 0 and 4 a minute later, none sharing a block, 4 engines. One replica: r0…r3 → e0…e3, no engine
  // gets two at once. Two replicas (A: r0, r2, …; B: r1, r3, …), each cycling e0, e1, …: r0 and r1 both go to e0,
  // r2 and r3 to e1, so the second of each pair waits for the first one's prefill.
  writeFileSync(trace, Array.from({ length: 8 }, (_, i) => JSON.stringify({ timestamp: i < 4 ? 0 : 60_000, input_length: 8192, output_length: 4, hash_ids: Array.from({ length: 16 }, (_, j) => i * 16 + j) })).join('\n') + '\n');
  try {
    const one = await whatif({ trace, policies: ['round-robin'], engines: 4, routers: 1, json: true });
    const two = await whatif({ trace, policies: ['round-robin'], engines: 4, json: true });
    assert.is(two.routers, 2); // the default, as kvgate start --routers
    const [p1, p2] = [one.policies[0]!, two.policies[0]!];
    assert.equal(p1.perEngine, [2, 2, 2, 2]);
    assert.equal(p2.perEngine, [2, 2, 2, 2]);
    assert.ok(p2.ttftP99Ms > 1.5 * p1.ttftP99Ms, `two replicas queue the second request of a pair: TTFT p99 ${p2.ttftP99Ms} ms vs ${p1.ttftP99Ms} ms with one`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
