/**
 * One simulated engine in a worker thread (`kvgate start` runs each engine off the main thread, so the routers,
 * shims and indexer keep the main event loop). Protocol: workerData = { options: SimEngineOptions, timings }; the
 * thread posts {ok: true, info} once listening (or {ok: false, error}); a 'close' message closes the engine and
 * ends the thread. With `timings`, finished requests' modelled latencies (onRequestDone) are posted in batches as
 * {timings: [[requestId, ttftMs, e2eMs, gapsMs], …]} every 100 ms; a 'flush' message posts what is pending, then 'flushed'.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { startSimEngine, type SimEngineOptions } from '@kvgate/sim-engine';

const port = parentPort!;
const { options, timings } = workerData as { options: SimEngineOptions; timings: boolean };
let pending: [string, number, number, number[]][] = [];
const flush = () => {
  if (pending.length) port.postMessage({ timings: pending });
  pending = [];
};
try {
  const e = await startSimEngine(timings ? { ...options, onRequestDone: (id, ttft, e2e, gaps) => void pending.push([id, ttft, e2e, gaps]) } : options);
  const tick = timings ? setInterval(flush, 100) : undefined;
  tick?.unref();
  port.postMessage({
    ok: true,
    info: { url: e.url, port: e.port, model: e.model, engineId: e.engineId, role: e.role, blockSize: e.blockSize, numBlocks: e.numBlocks, kvEventsEndpoint: e.kvEventsEndpoint, replayEndpoint: e.replayEndpoint },
  });
  port.on('message', (m) => {
    if (m === 'flush') {
      flush();
      port.postMessage('flushed');
    } else if (m === 'close') {
      clearInterval(tick);
      void e.close().then(() => {
        flush();
        port.postMessage('closed');
        port.close();
      });
    }
  });
} catch (err) {
  port.postMessage({ ok: false, error: (err as Error).message });
  port.close();
}
