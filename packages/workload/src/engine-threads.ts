/** Simulated engines in worker threads (see engine-thread.ts): the same handle fields as startSimEngine's. */
import { Worker } from 'node:worker_threads';
import type { SimEngineOptions } from '@kvgate/sim-engine';

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
  close(): Promise<void>;
}

export function startEngineThread(opts: SimEngineOptions): Promise<ThreadEngine> {
  const w = new Worker(new URL('./engine-thread-boot.mjs', import.meta.url), { workerData: opts, env: process.env });
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.once('message', (m: { ok: boolean; info?: Omit<ThreadEngine, 'close'>; error?: string }) => {
      if (!m.ok) {
        reject(new Error(`engine thread: ${m.error}`));
        return;
      }
      let closing: Promise<void> | undefined;
      resolve({
        ...m.info!,
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
