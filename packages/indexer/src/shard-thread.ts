/**
 * Entry of one index shard running in a worker thread: a ShardState driven by ShardRequest messages.
 * Spawned by ThreadShard (shards.ts) with `execArgv: ['--import', 'tsx']` so TypeScript loads here too.
 * Protocol: {id?, req} in; {id, ok, value} | {id, ok: false, error} out (no reply when id is absent).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ShardState, type ShardOptions, type ShardRequest } from './shard-state.js';

const state = new ShardState(workerData as ShardOptions);
const port = parentPort!;
port.on('message', (m: { id?: number; req: ShardRequest }) => {
  try {
    const value = state.handle(m.req);
    if (m.id !== undefined) port.postMessage({ id: m.id, ok: true, value });
  } catch (err) {
    if (m.id !== undefined) port.postMessage({ id: m.id, ok: false, error: (err as Error).message });
  }
});
