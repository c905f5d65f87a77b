/** Simulated engines in worker threads (see engine-thread.ts): the same handle fields as startSimEngine's. */
import { Worker } from 'node:worker_threads';
import type { RequestTimingSink, SimEngineOptions } from '@kvgate/sim-engine';

export interface ThreadEngine {
  url: string;
  port: number;
  model: string;
  engineId: string;
  role: 'both' | 'prefill' | 'decode';
  blockSize: number;
  numBlocks: number;
  kvEventsEndpoint: string | null;
  replayEndpoint: string | null;
  /** resolves once every modelled latency the thread holds has reached `onRequestDone` */
  flushTimings(): Promise<void>;
  close(): Promise<void>;
}

/** `onRequestDone`: the engine's modelled latencies per finished request that carried an x-request-id */
export function startEngineThread(opts: SimEngineOptions, onRequestDone?: RequestTimingSink): Promise<ThreadEngine> {
  const { onRequestDone: _fn, ...options } = opts;
  const w = new Worker(new URL('./engine-thread-boot.mjs', import.meta.url), { workerData: { options, timings: onRequestDone !== undefined }, env: process.env });
  const flushed: (() => void)[] = [];
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.once('message', (m: { ok: boolean; info?: Omit<ThreadEngine, 'close' | 'flushTimings'>; error?: string }) => {
      if (!m.ok) {
        reject(new Error(`engine thread: ${m.error}`));
        return;
      }
      w.on('message', (msg: unknown) => {
        if (msg === 'flushed') flushed.shift()?.();
        else if (onRequestDone && typeof msg === 'object' && msg !== null && 'timings' in msg) {
          for (const [id, ttft, e2e, gaps] of (msg as { timings: [string, number, number, number[]][] }).timings) onRequestDone(id, ttft, e2e, gaps);
        }
      });
      let closing: Promise<void> | undefined;
      resolve({
        ...m.info!,
        flushTimings: () =>
          new Promise<void>((done) => {
            flushed.push(done);
            w.postMessage('flush');
          }),
        close: () =>
          (closing ??= new Promise<void>((done) => {
            w.once('exit', () => done());
            w.postMessage('close');
            // a thread that does not end promptly is terminated
            setTimeout(() => void w.terminate(), 5000).unref();
          })),
      });
    });
  });
}
