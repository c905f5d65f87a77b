/**
 * startIndexer(bus, options): one indexer replica in this process — the actor plus, when `port` is given,
 * its HTTP edge. `kvgate indexer` and `kvgate start` both call this.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { initHashing, type Bus, type HttpLimits } from '@kvgate/protocol';
import { Indexer, type IndexClient, type IndexerOptions } from './actor.js';
import { createIndexerHttp } from './http.js';

export interface StartIndexerOptions extends IndexerOptions {
  /** HTTP port; absent = no HTTP server, 0 = any free port. Default absent. */
  port?: number;
  /** HTTP bind address. Default '127.0.0.1'. */
  host?: string;
  /** header/body timeouts, keep-alive and connection cap of the HTTP server (protocol http-limits.ts) */
  httpLimits?: HttpLimits;
}

export interface RunningIndexer {
  readonly indexer: Indexer;
  /** in-process match API */
  readonly client: IndexClient;
  /** bound HTTP port, or null */
  readonly port: number | null;
  /** resolves once the event stream is caught up (ready) */
  whenReady(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startIndexer(bus: Bus, options: StartIndexerOptions = {}): Promise<RunningIndexer> {
  await initHashing();
  const indexer = await Indexer.start(bus, options);
  let server: Server | null = null;
  let port: number | null = null;
  if (options.port !== undefined) {
    server = createIndexerHttp(indexer, options.httpLimits);
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(options.port, options.host ?? '127.0.0.1', () => resolve());
    }).catch(async (e) => {
      await indexer.close();
      throw e;
    });
    port = (server.address() as AddressInfo).port;
  }
  return {
    indexer,
    client: indexer.client(),
    port,
    async whenReady(timeoutMs = 30_000) {
      const t0 = Date.now();
      while (!indexer.ready) {
        if (Date.now() - t0 > timeoutMs) throw new Error(`indexer ${indexer.id} not ready after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async close() {
      if (server) {
        server.closeAllConnections();
        await new Promise<void>((r) => server!.close(() => r()));
      }
      await indexer.close();
    },
  };
}
