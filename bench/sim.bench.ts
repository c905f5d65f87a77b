import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { startSimEngine } from '@kvgate/sim-engine';
import type { BenchContext } from './figure.js';

/**
 * sim.rps: completions/s one simulated engine serves when simulated time is ~free (--speedup 1e6), i.e. the
 * simulator's own overhead (HTTP, validation, block hashing, scheduling, KV events, JSON). Baseline: a bare
 * node:http server answering the same request with a canned completion, driven by the same client.
 * Request: 256-token prompt (token ids, 192 shared + 64 unique tokens), max_tokens 16, 64 in flight.
 */
export default async function (ctx: BenchContext): Promise<void> {
  const total = ctx.quick ? 1500 : 8000;
  const concurrency = 64;
  const shared = Array.from({ length: 192 }, (_, i) => 1000 + ((i * 7919) % 50000));
  const body = (i: number) => JSON.stringify({ model: 'qwen3-8b', prompt: [...shared, ...Array.from({ length: 64 }, (_, j) => 1000 + ((i * 64 + j) * 104729) % 90000)], max_tokens: 16 });

  async function drive(url: string): Promise<number> {
    const pool = new Pool(url, { connections: concurrency, pipelining: 1 });
    let next = 0;
    const one = async () => {
      while (next < total) {
        const i = next++;
        const r = await pool.request({ path: '/v1/completions', method: 'POST', headers: { 'content-type': 'application/json' }, body: body(i) });
        const text = await r.body.text();
        if (r.statusCode !== 200) throw new Error(`status ${r.statusCode}: ${text}`);
      }
    };
    // warm-up
    const saved = total;
    next = total - Math.min(200, total);
    await Promise.all(Array.from({ length: concurrency }, one));
    next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, one));
    const secs = (performance.now() - t0) / 1000;
    await pool.close();
    return saved / secs;
  }

  const canned = JSON.stringify({
    id: 'cmpl-0', object: 'text_completion', created: 0, model: 'qwen3-8b',
    choices: [{ index: 0, text: ' the of and to in is was for on that with as by at from his', logprobs: null, finish_reason: 'length', stop_reason: null, prompt_logprobs: null }],
    usage: { prompt_tokens: 256, total_tokens: 272, completion_tokens: 16, prompt_tokens_details: { cached_tokens: 192 } },
  });
  const bare = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      JSON.parse(Buffer.concat(parts).toString('utf8'));
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(canned) });
      res.end(canned);
    });
  });
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
  ctx.progress('baseline: bare node:http');
  const base = await drive(`http://127.0.0.1:${(bare.address() as AddressInfo).port}`);
  bare.closeAllConnections();
  await new Promise<void>((r) => bare.close(() => r()));

  const engine = await startSimEngine({ speedup: 1e6, numBlocks: 16384, kvReplayEndpoint: null });
  ctx.progress('simulated engine');
  const sim = await drive(engine.url);
  await engine.close();
  ctx.report({
    bench: 'sim.rps',
    value: Math.round(sim),
    unit: 'req/s',
    baseline: Math.round(base),
    note: `${total} completions (256-token prompt, 16 output tokens, ${concurrency} in flight), speedup 1e6; baseline: bare node:http canned answer`,
  });
}
