/**
 * `kvgate start --disagg` as a user runs it, on a tiny workload: one colocated run and one disaggregated run per
 * fabric on the same two simulated GPUs; --json has rows `colocated` and `disaggregated` with the figures, every
 * disaggregated request's KV pulled over its fabric (and none colocated), no failed request; bad flags are one-line
 * KVG_BAD_FLAG errors. (Figures are not compared here: timing on a shared CI box is no assertion.)
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

function kvgate(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'warn' }, timeout: 240_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('start --disagg --json: colocated and disaggregated rows (per fabric), every split request transferred', async () => {
  const out = await kvgate(['start', '--disagg', '--requests', '6', '--prompt-tokens', '1200', '--output-tokens', '8', '--rate', '20', '--fabrics', 'rdma-400g,100', '--json']);
  const what = `stdout: ${out.stdout.slice(-2000)}\nstderr: ${out.stderr.slice(-3000)}`;
  assert.is(out.code, 0, what);
  const json = JSON.parse(out.stdout.trim().split('\n').at(-1)!) as { mode: string; workload: { engines: number; kvBytesPerToken: number }; rows: Array<Record<string, any>> };
  assert.is(json.mode, 'disagg');
  assert.is(json.workload.engines, 2);
  assert.is(json.workload.kvBytesPerToken, 147_456, 'qwen3-8b: 2 × 36 layers × 8 KV heads × 128 × 2 bytes');
  assert.equal(json.rows.map((r) => [r.row, r.fabric]), [['colocated', null], ['disaggregated', 'rdma-400g'], ['disaggregated', '100g']]);
  assert.equal(json.rows[0]!.engines, { both: 2, prefill: 0, decode: 0 });
  assert.equal(json.rows[1]!.engines, { both: 0, prefill: 1, decode: 1 });
  assert.is(json.rows[2]!.bandwidthGBps, 12.5);
  for (const r of json.rows) {
    assert.is(r.errors, 0, `${r.row} ${r.fabric}: ${what}`);
    assert.is(r.requests, 6);
    for (const k of ['ttftP50Ms', 'ttftP99Ms', 'itlP50Ms', 'itlP99Ms', 'outputTokensPerS', 'engineTtftMeanMs', 'engineItlMeanMs']) assert.ok(Number.isFinite(r[k]) && r[k] > 0, `${r.row} ${k} = ${r[k]}`);
    assert.ok(r.ttftP99Ms >= r.ttftP50Ms && r.itlP99Ms >= r.itlP50Ms);
  }
  assert.is(json.rows[0]!.transfers, 0);
  assert.is(json.rows[0]!.transferShare, 0);
  for (const r of json.rows.slice(1)) {
    assert.is(r.transfers, 6, `${r.fabric}: every prompt (1,200 tokens ≥ the 512 threshold) prefilled remotely`);
    assert.ok(r.transferShare > 0 && r.transferShare < 1, `${r.fabric} share ${r.transferShare}`);
    // the engines' TTFT holds the modelled pull: above it, whatever the host did
    assert.ok(r.engineTtftMeanMs > r.transferMeanMs, `${r.fabric}: engine TTFT ${r.engineTtftMeanMs} vs pull ${r.transferMeanMs}`);
  }
  // 1,200 tokens × 147,456 B = 177 MB: at 12.5 GB/s ≥ 14 ms a pull, at 50 GB/s ≥ 3.5 ms
  assert.ok(json.rows[2]!.transferMeanMs > json.rows[1]!.transferMeanMs, 'the slower fabric pulls slower');
  assert.match(out.stderr, /colocated/);
});

test('start --disagg: bad flags are one line, KVG_BAD_FLAG', async () => {
  for (const [args, re] of [
    [['--fabrics', 'carrier-pigeon'], /--fabrics: kv fabric must be rdma-400g, roce-200g, tcp-25g or a line rate/],
    [['--engines', '2', '--prefill-engines', '2'], /--prefill-engines 2 leaves no decode engine/],
    [['--prompt-tokens', '0'], /--prompt-tokens must be an integer ≥ 1/],
  ] as const) {
    const out = await kvgate(['start', '--disagg', ...args]);
    assert.is(out.code, 2, out.stderr);
    assert.match(out.stderr, re);
    assert.match(out.stderr, /\[KVG_BAD_FLAG\]/);
    assert.is(out.stderr.trim().split('\n').length, 1, out.stderr);
  }
});

test.run();
