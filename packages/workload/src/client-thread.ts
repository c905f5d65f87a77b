/**
 * The load client in a worker thread: builds the plan from its spec, replays it against the routers, posts
 * {progress: n} now and then and {results, wallMs} at the end. Keeps request building and SSE parsing off the
 * main thread, where the routers, shims and indexer run.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { LoadClient } from './client.js';
import { buildPlan, runPlan, type PlanSpec } from './plan.js';

const { spec, urls, apiKey } = workerData as { spec: PlanSpec; urls: string[]; apiKey?: string };
const port = parentPort!;
const plan = buildPlan(spec);
const client = new LoadClient(urls, undefined, apiKey);
let last = 0;
const { results, wallMs } = await runPlan(plan, client, (done) => {
  const now = Date.now();
  if (now - last >= 200) {
    last = now;
    port.postMessage({ progress: done });
  }
}, spec.requestIdPrefix);
await client.close();
port.postMessage({ results, wallMs });
port.close();
