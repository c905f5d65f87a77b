// Runs every *.test.ts (uvu suites) in its own Node process, two at a time, and prints one closing
// line `N passed, N failed`. Usage: node scripts/run-tests.mjs [substring filter...]
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const filters = process.argv.slice(2);
const jobs = Number(process.env.KVGATE_TEST_JOBS ?? 2);

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}
const files = [...walk(join(root, 'packages'), []), ...walk(join(root, 'test'), [])]
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();

let passed = 0, failed = 0, skipped = 0;
const failedFiles = [];

// A failing file's output is printed whole, except runs of the same log line (time and pid aside): those
// collapse to their first line and a count, so one chatty timer cannot bury the assertion that failed.
function collapse(text) {
  const out = [];
  let prev = null, repeats = 0;
  const flush = () => { if (repeats > 0) out.push(`[run-tests] … the line above ${repeats} more time(s)`); repeats = 0; };
  for (const line of text.split('\n')) {
    const key = line.replace(/"time":\d+/, '').replace(/"pid":\d+/, '');
    if (key === prev && line.trim() !== '') { repeats++; continue; }
    flush();
    out.push(line);
    prev = key;
  }
  flush();
  return out.join('\n');
}

function runOne(file) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    // own process group, so a timed-out file is killed with everything it started (nats-server, engines)
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: root, detached: true, env: { KVGATE_LOG_LEVEL: 'warn', ...process.env, FORCE_COLOR: '0' } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => { out += '\n[run-tests] timed out after 300 s\n'; try { process.kill(-child.pid, 'SIGKILL'); } catch { child.kill('SIGKILL'); } }, 300_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const total = Number(/Total:\s+(\d+)/.exec(out)?.[1] ?? 0);
      const ok = Number(/Passed:\s+(\d+)/.exec(out)?.[1] ?? 0);
      const sk = Number(/Skipped:\s+(\d+)/.exec(out)?.[1] ?? 0);
      let bad = total - ok - sk;
      if (code !== 0 && bad === 0) bad = 1; // crashed outside a test
      passed += ok; failed += bad; skipped += sk;
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      if (bad > 0) {
        failedFiles.push(file);
        console.log(`✗ ${file}  (${ok} passed, ${bad} failed, ${secs}s)\n${collapse(out).replace(/^/gm, '    ')}`);
      } else {
        console.log(`✓ ${file}  (${ok} passed${sk ? `, ${sk} skipped` : ''}, ${secs}s)`);
        if (process.env.KVGATE_TEST_VERBOSE) console.log(out.replace(/^/gm, '    '));
        for (const line of out.split('\n')) if (line.startsWith('#')) console.log('    ' + line);
      }
      resolve();
    });
  });
}

const queue = [...files];
await Promise.all(Array.from({ length: Math.max(1, jobs) }, async () => {
  while (queue.length) await runOne(queue.shift());
}));
if (failedFiles.length) console.log(`\nfailed files:\n  ${failedFiles.join('\n  ')}`);
console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 || files.length === 0 ? 1 : 0);
