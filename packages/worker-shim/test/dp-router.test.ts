/**
 * The rank hint end to end, on both buses: a real router in front of a real DP shim (two engine cores of one
 * fake vLLM server, see dp-engine.ts) and a real non-DP shim, with the real indexer in between. The router
 * picks the rank that holds the prompt and sends vLLM's `X-data-parallel-rank: <r>` (read by vLLM's
 * `OpenAIServing._get_data_parallel_rank` in vllm/entrypoints/openai, which pins the request to that engine
 * core); the DP shim's front passes it through to the engine; a request for the non-DP worker carries none.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { request } from 'undici';
import { connectNats, initHashing, MemoryBus, prefixHashes, type Bus } from '@kvgate/protocol';
import { startIndexer } from '@kvgate/indexer';
import { startRouter } from '@kvgate/router';
import { startShim, type ShimHandle } from '../src/index.js';
import { startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';
import { waitFor } from './fake-engine.js';
import { DpEngine, vllmBatch, type DpEv } from './dp-engine.js';

await initHashing();
const MODEL = 'qwen3-8b';
const B = 4;
const toks = (n: number, base: number) => Array.from({ length: n }, (_, i) => base + i);
const stored = (hashes: bigint[], tokens: number[]): DpEv => ({ type: 'stored', hashes, parent: null, tokens, blockSize: B });

async function probed(shim: ShimHandle): Promise<void> {
  for (const r of shim.ranks) {
    await waitFor(async () => {
      const text = await r.metrics.registry.getSingleMetricAsString('kvgate_shim_replay_probes_total');
      return text.split('\n').some((l) => l && !l.startsWith('#') && Number(l.trim().split(/\s+/).pop()) >= 1);
    }, `${r.worker}'s start-up replay probe`);
  }
}

function busSuite(kind: 'memory' | 'nats') {
  const t = suite(`router → DP shim rank hint, ${kind} bus`);
  let nats: NatsServerHandle | undefined;
  t.before(async () => {
    if (kind === 'nats') nats = await startNatsServer();
  });
  t.after(async () => {
    await nats?.stop();
  });

  t('the router sends X-data-parallel-rank for a DP rank\'s worker, and none for a non-DP worker', async () => {
    const bus: Bus = kind === 'memory' ? new MemoryBus() : await connectNats(nats!.url);
    const dpEngine = await new DpEngine(2).start();
    const plainEngine = await new DpEngine(1).start();
    const idx = await startIndexer(bus, { gossipIntervalMs: 60_000 });
    const common = { model: MODEL, blockSize: B, port: 0, scrapeIntervalMs: 50, replayProbeMs: 600_000 } as const;
    const shims: ShimHandle[] = [];
    let router: Awaited<ReturnType<typeof startRouter>> | undefined;
    try {
      await idx.whenReady();
      const dp = await startShim(bus, { ...common, worker: `hint-${kind}`, engineUrl: dpEngine.url, kvEvents: dpEngine.kvEvents, kvReplay: dpEngine.kvReplay, dataParallelSize: 2 });
      shims.push(dp);
      const plain = await startShim(bus, { ...common, worker: `plain-${kind}`, engineUrl: plainEngine.url, kvEvents: plainEngine.kvEvents, kvReplay: plainEngine.kvReplay });
      shims.push(plain);
      for (const e of [dpEngine, plainEngine]) for (const r of e.ranks) await r.subscribed();
      await probed(dp);
      await probed(plain);
      // a generous index budget: this test is about the rank hint, not the budget (a loaded CI box misses 5 ms)
      router = await startRouter(bus, { port: 0, id: `r-${kind}`, indexTimeoutMs: 2000 });
      await router.waitForWorkers(3);

      // rank 0 holds P0, rank 1 holds P1, the non-DP engine P2 (it numbers its batches rank 0, as vLLM does)
      const P = [0, 1, 2].map((i) => toks(4 * B, 10_000 * (i + 1)));
      const [h0, h1, h2] = P.map((p) => prefixHashes(MODEL, '', B, p));
      await dpEngine.ranks[0]!.send(vllmBatch(0, [stored([1n, 2n, 3n, 4n], P[0]!)]));
      await dpEngine.ranks[1]!.send(vllmBatch(1, [stored([1n, 2n, 3n, 4n], P[1]!)]));
      await plainEngine.ranks[0]!.send(vllmBatch(0, [stored([1n, 2n, 3n, 4n], P[2]!)]));
      const want = [`hint-${kind}-dp0`, `hint-${kind}-dp1`, `plain-${kind}`];
      await waitFor(async () => {
        const m = await Promise.all([h0, h1, h2].map((h) => idx.client.match(MODEL, null, h!)));
        return m.every((x, i) => x.overlaps[want[i]!] === 4);
      }, 'each prompt indexed under its worker');

      const send = async (prompt: number[]) => {
        const res = await request(`${router!.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt, max_tokens: 1 }) });
        const text = await res.body.text();
        assert.is(res.statusCode, 200, text);
        return String(res.headers['x-kvgate-worker']);
      };
      assert.is(await send(P[0]!), want[0]);
      assert.is(await send(P[1]!), want[1]);
      assert.is(await send(P[2]!), want[2]);
      assert.equal(dpEngine.seen.map((s) => s.headers['x-data-parallel-rank']), ['0', '1'], 'the DP server was told which engine core holds each prompt');
      assert.is(plainEngine.seen.length, 1);
      assert.is(plainEngine.seen[0]!.headers['x-data-parallel-rank'], undefined, 'no rank hint for a non-DP worker');
      assert.equal(JSON.parse(dpEngine.seen[1]!.body).prompt, P[1], 'the body reaches the engine unchanged');
    } finally {
      await router?.close();
      for (const s of shims) await s.stop();
      await idx.close();
      await dpEngine.close();
      await plainEngine.close();
      await bus.close();
    }
  });

  return t;
}

busSuite('memory').run();
busSuite('nats').run();
