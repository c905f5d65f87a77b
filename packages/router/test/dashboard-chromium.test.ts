/**
 * The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core with `executablePath`):
 * the page loads from the router with nothing else to fetch, opens its WebSocket, and renders live ticks — the
 * workers table lists the worker with its blocks indexed per tier (from the load report, as a shim sends it), routed requests show up in the decisions table, the update counter climbs. A
 * screenshot is written as a test artifact (`.tmp/artifacts/dashboard.png`, or $KVGATE_TEST_ARTIFACTS). A machine
 * without chromium skips the suite with a note (`apt-get install chromium`).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { chromium, type Browser } from 'playwright-core';
import { MemoryBus } from '@kvgate/protocol';
import { startRouter } from '../src/index.js';
import { publishLoad, register, registration, StubEngine, tokens } from './helpers.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const ARTIFACTS = process.env.KVGATE_TEST_ARTIFACTS ?? new URL('../../../.tmp/artifacts/', import.meta.url).pathname;

test('the dashboard in Chromium: loads offline, receives live ticks over ws, shows workers and decisions; screenshot', async () => {
  if (!CHROMIUM) {
    console.log('[dashboard-chromium] SKIP: no chromium binary (apt-get install chromium)');
    return;
  }
  const bus = new MemoryBus();
  const stub = await new StubEngine('w1').listen();
  await register(bus, registration('w1', stub.url));
  const router = await startRouter(bus, { port: 0, indexTimeoutMs: 20, registryTtlMs: 0 });
  let browser: Browser | undefined;
  // w1's load reports, as its shim would send them (every 200 ms: fresher than the view's 3 s staleness)
  const load = () => publishLoad(bus, { worker: 'w1', url: stub.url, waiting: 1, running: 2, kvUsage: 0.25, indexedBlocks: { gpu: 120, cpu: 40, disk: 0 } });
  load();
  const loads = setInterval(load, 200);
  try {
    await router.waitForWorkers(1);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
    const foreign: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(router.url) && !r.url().startsWith(router.url.replace('http', 'ws'))) foreign.push(r.url());
    });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${router.url}/dashboard`);
    // (page-side code as strings: this package compiles without the DOM library)
    await page.waitForFunction('Number(document.body.dataset.ticks ?? 0) >= 1', undefined, { timeout: 10_000 });
    for (let i = 0; i < 12; i++) {
      const res = await request(`${router.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stub-model', prompt: tokens(8, i * 100), max_tokens: 2, stream: i % 2 === 0 }) });
      await res.body.text();
    }
    await page.waitForFunction("document.querySelectorAll('#decisions tbody tr').length > 0", undefined, { timeout: 10_000 });
    const t0 = Number(await page.evaluate('document.body.dataset.ticks'));
    await page.waitForFunction(`Number(document.body.dataset.ticks) >= ${t0 + 3}`, undefined, { timeout: 10_000 });
    const workers = await page.evaluate("[...document.querySelectorAll('#workers tbody tr')].map((r) => r.firstElementChild.innerText)");
    assert.equal(workers, ['w1']);
    const header = (await page.evaluate("[...document.querySelectorAll('#workers thead th')].map((h) => h.innerText)")) as string[];
    const col = header.findIndex((h) => /blocks indexed/i.test(h));
    assert.ok(col > 0, `a blocks-indexed-per-tier column: ${JSON.stringify(header)}`);
    assert.ok(header.some((h) => /cache predicted \/ actual/i.test(h)), `a predicted / actual (gap cause) column: ${JSON.stringify(header)}`);
    assert.match(header[col]!, /GPU \/ CPU \/ disk/);
    assert.is(await page.evaluate(`document.querySelector('#workers tbody tr').children[${col}].innerText`), '120 / 40 / 0');
    assert.is(await page.evaluate("document.querySelector('#decisions tbody tr').children[2].innerText"), 'w1');
    assert.match(String(await page.evaluate("document.getElementById('status').innerText")), /^live · \d+ updates$/);
    assert.match(String(await page.evaluate("document.getElementById('hitText').innerText")), /no request with engine usage yet|since start/);
    assert.equal(errors, [], 'no script error');
    assert.equal(foreign, [], 'nothing fetched from elsewhere');
    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(existsSync(shot));
    console.log(`[dashboard-chromium] screenshot: ${shot}`);
  } finally {
    clearInterval(loads);
    await browser?.close();
    await router.close();
    await stub.close();
    await bus.close();
  }
});

test.run();
