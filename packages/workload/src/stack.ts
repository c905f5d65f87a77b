/**
 * A whole kvgate deployment in one process, for `kvgate start`, end-to-end tests and benchmarks: K simulated
 * engines, one shim each, an indexer and R router replicas, all on one bus (MemoryBus, or NATS when given).
 */
import { randomBytes } from 'node:crypto';
import { type Bus } from '@kvgate/protocol';
import { createBus, type NatsBusOptions } from '@kvgate/protocol/bus/index';
import type { Tokenizer } from '@kvgate/protocol/tokenizer';
import { startIndexer, type RunningIndexer } from '@kvgate/indexer';
import { startSimEngine, type EngineRole, type RequestTimingSink, type SimEngineHandle, type SimEngineOptions } from '@kvgate/sim-engine';
import { startShim, type ShimHandle, type ShimOptions } from '@kvgate/worker-shim';
import { startRouter, type RouterHandle, type RouterOptions } from '@kvgate/router';
import { startEngineThread, type ThreadEngine } from './engine-threads.js';

export interface StackOptions {
  /** simulated engines (default 4) */
  engines?: number;
  /** router replicas (default 2) */
  routers?: number;
  /** served model (default qwen3-8b) */
  model?: string;
  /** NATS URL; absent = MemoryBus */
  nats?: string;
  /** NATS credentials and TLS for the stack's one connection (user/pass, token, nkey, .creds, tls); default none */
  natsAuth?: Pick<NatsBusOptions, 'user' | 'pass' | 'token' | 'nkeySeedFile' | 'credsFile' | 'tls'>;
  /** API keys every router requires (`Authorization: Bearer …`); default none (open) */
  apiKeys?: readonly string[];
  /** subject namespace (default: a fresh random one on NATS, 'default' in memory) */
  namespace?: string;
  /** options for every engine (blockSize, numBlocks, speedup, …) */
  engine?: SimEngineOptions;
  /** options for every router (policy, weights, …) */
  router?: RouterOptions;
  tokenizer?: Tokenizer;
  /** bind an HTTP port for the first router (default 0 = any) */
  routerPort?: number;
  /** ask the index over the bus even in memory (default false: direct call to the in-process indexer) */
  indexOverBus?: boolean;
  /** run each engine in its own worker thread (default false: on the main thread) */
  engineThreads?: boolean;
  /** cluster secret: every shim front checks router signatures, every router signs (default none) */
  clusterSecret?: string;
  /** give every shim an HTTP front and route through it (default: only P/D roles; `both` goes to the engine) */
  shimFronts?: boolean;
  /**
   * P/D: engine i's role (prefill / decode / both); its length is the engine count when `engines` is absent.
   * Default: every engine `engine.role` (both).
   */
  roles?: readonly EngineRole[];
  /** options for engine i on top of `engine` (e.g. another KV fabric for one engine) */
  perEngine?: (i: number) => Partial<SimEngineOptions>;
  /**
   * an API key on every engine (vLLM --api-key): the engines refuse /v1 calls without it, the shims send it on their
   * own calls and on the P/D prefill leg, the routers on every proxied request (RouterOptions.engineApiKey)
   */
  engineApiKey?: string;
  /** extra options for every shim (e.g. prefillTimeoutMs, engineProbeMs) */
  shim?: Partial<Pick<ShimOptions, 'prefillTimeoutMs' | 'engineProbeMs' | 'loadIntervalMs' | 'scrapeIntervalMs'>>;
  /** every engine's modelled latencies per finished request that carried an x-request-id (SimEngineOptions.onRequestDone) */
  onRequestDone?: RequestTimingSink;
}

type EngineHandle = Pick<SimEngineHandle, 'url' | 'role' | 'blockSize' | 'numBlocks' | 'kvEventsEndpoint' | 'replayEndpoint' | 'close'> | ThreadEngine;

export interface Stack {
  bus: Bus;
  namespace: string;
  engines: EngineHandle[];
  shims: ShimHandle[];
  indexer: RunningIndexer;
  routers: RouterHandle[];
  /**
   * Empties every engine's prefix cache (vLLM's POST /reset_prefix_cache; the engines must be idle) and waits until
   * the index holds no block: the next run starts cold without restarting the engines.
   */
  resetCaches(timeoutMs?: number): Promise<void>;
  /** closes the routers and starts `routers` fresh replicas with these options (e.g. another policy) */
  replaceRouters(router: RouterOptions): Promise<void>;
  /** resolves once every engine's modelled latencies so far have reached `onRequestDone` (threads post them in batches) */
  flushTimings(): Promise<void>;
  close(): Promise<void>;
}

export async function startStack(o: StackOptions = {}): Promise<Stack> {
  const model = o.model ?? 'qwen3-8b';
  const namespace = o.namespace ?? (o.nats ? `kvg${randomBytes(4).toString('hex')}` : 'default');
  const bus = await createBus(o.nats ? { nats: o.nats, ...o.natsAuth } : {});
  const engines: EngineHandle[] = [];
  const shims: ShimHandle[] = [];
  const routers: RouterHandle[] = [];
  let indexer: RunningIndexer | undefined;
  const close = async () => {
    for (const r of routers) await r.close().catch(() => undefined);
    for (const s of shims) await s.stop().catch(() => undefined);
    for (const e of engines) await e.close().catch(() => undefined);
    await indexer?.close().catch(() => undefined);
    await bus.close().catch(() => undefined);
  };
  const startRouters = async (ro: RouterOptions | undefined) => {
    const nr = o.routers ?? 2;
    for (let i = 0; i < nr; i++) {
      const r = await startRouter(bus, {
        namespace,
        id: `router-${i}`,
        ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}),
        // in one process the indexer answers by direct call (NATS: over the bus, as in production)
        ...(o.nats || o.indexOverBus ? {} : { index: indexer!.client }),
        ...(o.clusterSecret ? { clusterSecret: o.clusterSecret } : {}),
        ...(o.apiKeys?.length ? { apiKeys: o.apiKeys } : {}),
        ...(o.engineApiKey ? { engineApiKey: o.engineApiKey } : {}),
        ...ro,
        port: i === 0 ? (o.routerPort ?? 0) : 0,
      });
      routers.push(r);
      await r.waitForWorkers(engines.length, 15_000);
    }
  };
  try {
    indexer = await startIndexer(bus, { namespace });
    const n = o.engines ?? o.roles?.length ?? 4;
    if (o.roles && o.roles.length !== n) throw new RangeError(`roles names ${o.roles.length} engines, engines is ${n}`);
    for (let i = 0; i < n; i++) {
      const eo: SimEngineOptions = {
        model,
        engineId: `sim-${i}`,
        prefixCachingHashAlgo: 'xxhash',
        ...o.engine,
        ...(o.roles ? { role: o.roles[i]! } : {}),
        ...(o.engineApiKey ? { apiKey: o.engineApiKey } : {}),
        ...o.perEngine?.(i),
      };
      const e: EngineHandle = o.engineThreads
        ? await startEngineThread(eo, o.onRequestDone)
        : await startSimEngine(o.onRequestDone ? { ...eo, onRequestDone: o.onRequestDone } : eo);
      engines.push(e);
      shims.push(
        await startShim(bus, {
          worker: `sim-${i}`,
          model,
          role: e.role,
          engineUrl: e.url,
          kvEvents: e.kvEventsEndpoint!,
          ...(e.replayEndpoint ? { kvReplay: e.replayEndpoint } : {}),
          namespace,
          // P/D needs the shim's front; otherwise routers talk to the engine directly (one hop less)
          port: e.role === 'both' && !o.shimFronts ? -1 : 0,
          ...(o.clusterSecret ? { clusterSecret: o.clusterSecret } : {}),
          blockSize: e.blockSize,
          capacityBlocks: e.numBlocks,
          ...(o.engineApiKey ? { engineApiKey: o.engineApiKey } : {}),
          ...o.shim,
        }),
      );
    }
    await indexer.whenReady();
    await startRouters(o.router);
  } catch (e) {
    await close();
    throw e;
  }
  const resetCaches = async (timeoutMs = 15_000) => {
    const deadline = Date.now() + timeoutMs;
    for (const e of engines) {
      for (;;) {
        const res = await fetch(new URL('/reset_prefix_cache', e.url), { method: 'POST' });
        await res.arrayBuffer();
        if (res.ok) break;
        if (Date.now() > deadline) throw new Error(`reset_prefix_cache on ${e.url}: HTTP ${res.status}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    for (;;) {
      const workers = await indexer!.indexer.workers();
      if (Object.values(workers).every((w) => w.blocks === 0)) return;
      if (Date.now() > deadline) throw new Error(`index still holds blocks after reset: ${JSON.stringify(workers)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const replaceRouters = async (router: RouterOptions) => {
    for (const r of routers.splice(0)) await r.close();
    await startRouters(router);
  };
  const flushTimings = async () => {
    await Promise.all(engines.map((e) => ('flushTimings' in e ? e.flushTimings() : undefined)));
  };
  return { bus, namespace, engines, shims, indexer: indexer!, routers, resetCaches, replaceRouters, flushTimings, close };
}
