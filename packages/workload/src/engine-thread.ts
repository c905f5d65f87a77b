/**
 * One simulated engine in a worker thread (`kvgate start` runs each engine off the main thread, so the routers,
 * shims and indexer keep the main event loop). Protocol: workerData = SimEngineOptions; the thread posts
 * {ok: true, info} once listening (or {ok: false, error}); a 'close' message closes the engine and ends the thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { startSimEngine, type SimEngineOptions } from '@kvgate/sim-engine';

const port = parentPort!;
try {
  const e = await startSimEngine(workerData as SimEngineOptions);
  port.postMessage({
    ok: true,
    info: { url: e.url, port: e.port, model: e.model, engineId: e.engineId, role: e.role, blockSize: e.blockSize, numBlocks: e.numBlocks, kvEventsEndpoint: e.kvEventsEndpoint, replayEndpoint: e.replayEndpoint },
  });
  port.on('message', (m) => {
    if (m === 'close') {
      void e.close().then(() => {
        port.postMessage('closed');
        port.close();
      });
    }
  });
} catch (err) {
  port.postMessage({ ok: false, error: (err as Error).message });
  port.close();
}
