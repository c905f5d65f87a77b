/**
 * `kvgate replay whatif --report out.html` (issue 17): run through the CLI on a small trace, the report is one
 * self-contained file (no http(s) URL anywhere, so no src/href to fetch), holds one plot group of three SVG plots per
 * policy, and its table carries the very cells the command printed. Then real headless Chromium (Debian's
 * `chromium`, driven by playwright-core with `executablePath`, as the dashboard test) opens it from file://, nothing
 * else is requested, every plot has a nonzero size and drawn lines, and a screenshot is written as a test artifact
 * (`.tmp/artifacts/whatif-report.png`, or $KVGATE_TEST_ARTIFACTS). Without chromium that part skips with a note.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium, type Browser } from 'playwright-core';
import { sharedPrefixTrace } from '../../../test/harness/traces.js';

const run = promisify(execFile);
const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const ARTIFACTS = process.env.KVGATE_TEST_ARTIFACTS ?? new URL('../../../.tmp/artifacts/', import.meta.url).pathname;
const POLICIES = ['kv', 'least-loaded', 'round-robin'];

const dir = mkdtempSync(join(tmpdir(), 'kvg-report-'));
const out = join(dir, 'out.html');
let stdout = '';
let html = '';

test.before(async () => {
  // 7 conversations of 6 turns over a shared 4-block prefix (as test/replay.test.ts): kv hits, round-robin misses
  const trace = join(dir, 'trace.jsonl');
  writeFileSync(trace, sharedPrefixTrace());
  ({ stdout } = await run(process.execPath, [BIN, 'replay', 'whatif', '--trace', trace, '--policy', POLICIES.join(','), '--engines', '4', '--num-blocks', '1024', '--engine-block-size', '16', '--report', out], { encoding: 'utf8' }));
  html = readFileSync(out, 'utf8');
});

test('the report is self-contained: no http(s) URL, no src/href to anywhere', () => {
  assert.not.match(html, /https?:\/\//i);
  assert.not.match(html, /\s(src|href)\s*=/i);
  assert.not.match(html, /<script/i, 'plots drawn server side: no script at all');
});

test('one plot group per policy, each with hit rate, TTFT CDF and per-engine load', () => {
  const groups = [...html.matchAll(/<section class="policy" data-policy="([^"]+)">([\s\S]*?)<\/section>/g)];
  assert.equal(groups.map((g) => g[1]), POLICIES);
  for (const g of groups) {
    const kinds = [...g[2]!.matchAll(/<svg class="plot" data-kind="([^"]+)"/g)].map((m) => m[1]);
    assert.equal(kinds, ['hit-rate', 'ttft-cdf', 'engine-load'], `${g[1]}'s plots`);
    // the load plot draws one line per engine
    const load = g[2]!.slice(g[2]!.indexOf('data-kind="engine-load"'));
    assert.is([...load.matchAll(/<path /g)].length, 4, `${g[1]}: a load line per engine`);
  }
});

test("the report's table holds the figures whatif printed", () => {
  const printed = stdout.split('\n');
  const header = printed.findIndex((l) => l.startsWith('policy '));
  assert.ok(header >= 0, stdout);
  for (const policy of POLICIES) {
    const line = printed.slice(header + 1).find((l) => l.startsWith(policy + ' '));
    assert.ok(line, `${policy} printed`);
    const cells = line!.trim().split(/\s+/);
    assert.is(cells.length, 8);
    const row = html.match(new RegExp(`<tr data-policy="${policy}">(.*?)</tr>`))?.[1];
    assert.ok(row, `${policy} row in the report`);
    assert.equal([...row!.matchAll(/<td[^>]*>([^<]*)<\/td>/g)].map((m) => m[1]), cells);
  }
  assert.match(html, /bounds: infinite-cache hit rate \d+\.\d%, pooled hit rate \d+\.\d%/);
  assert.ok(html.includes(stdout.split('\n').find((l) => l.startsWith('bounds:'))!), 'the same bounds line');
});

test('the report in Chromium: nothing fetched, every plot drawn with a nonzero size; screenshot', async () => {
  if (!CHROMIUM) {
    console.log('[whatif-report] SKIP chromium part: no chromium binary (apt-get install chromium)');
    return;
  }
  let browser: Browser | undefined;
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    const page = await browser.newPage({ viewport: { width: 1150, height: 800 } });
    const url = `file://${out}`;
    const foreign: string[] = [];
    page.on('request', (r) => {
      if (r.url() !== url) foreign.push(r.url());
    });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(url);
    // (page-side code as strings: this package compiles without the DOM library)
    const plots = (await page.evaluate(
      "[...document.querySelectorAll('section.policy svg.plot')].map((s) => { const b = s.getBoundingClientRect(); const p = [...s.querySelectorAll('path')].map((x) => x.getBBox()); return { w: b.width, h: b.height, paths: p.length, drawn: p.filter((r) => r.width > 0 || r.height > 0).length }; })",
    )) as Array<{ w: number; h: number; paths: number; drawn: number }>;
    assert.is(plots.length, POLICIES.length * 3);
    for (const p of plots) {
      assert.ok(p.w > 0 && p.h > 0, `plot size ${p.w}×${p.h}`);
      assert.ok(p.paths > 0 && p.drawn === p.paths, `lines drawn: ${p.drawn}/${p.paths}`);
    }
    assert.equal(await page.evaluate("[...document.querySelectorAll('#summary tbody tr')].map((r) => r.dataset.policy)"), POLICIES);
    assert.equal(errors, [], 'no page error');
    assert.equal(foreign, [], 'nothing fetched from elsewhere');
    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, 'whatif-report.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(existsSync(shot));
    console.log(`[whatif-report] screenshot: ${shot}`);
  } finally {
    await browser?.close();
  }
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
