/**
 * The router bench's NATS leg: the same router, workload and stub engines as router.overhead, but the bus is a
 * real nats-server and the indexer is a process of its own (`kvgate indexer --nats …`), as in a deployment. What
 * it measures is how often a routing decision misses the index budget (5 ms) and falls back to load-only with no
 * fault anywhere: the share issue 14 found at ~1 % on a real cluster.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { encode, prefixHashes, subjects, type Bus } from '@kvgate/protocol';
import { createBus } from '@kvgate/protocol/bus/index';
import { startRouter, type RouterHandle } from '@kvgate/router';
import { startNatsServer, type NatsServerHandle } from '../test/harness/nats-server.js';
import { freePort } from './peers.js';

const KVGATE = fileURLToPath(new URL('../bin/kvgate.js', import.meta.url));
const ECHO = fileURLToPath(new URL('./nats-echo.ts', import.meta.url));
const ECHO_SUBJECT = 'bench.echo';

export interface NatsLeg {
  router: RouterHandle;
  /** the indexer process's HTTP edge (/metrics, /debug/workers) */
  indexerUrl: string;
  /**
   * The baseline of the index query's budget: `count` requests at `rate`/s of the index query's size (~1 KiB) from
   * the router's own NATS connection to an echo process (bench/nats-echo.ts) with the same deadline; how many missed.
   */
  echoMisses(count: number, rate: number, timeoutMs: number): Promise<number>;
  close(): Promise<void>;
}

export interface NatsLegOptions {
  engines: string[];
  model: string;
  blockSize: number;
  /** distinct 256-block prefixes indexed before the measurement (spread over the workers) */
  prefixes: number;
  progress(m: string): void;
  /** node flags for the indexer process (e.g. --cpu-prof to see where its time goes); default KVGATE_BENCH_INDEXER_NODE_ARGS */
  indexerNodeArgs?: string[];
}

/** nats-server + indexer process + a router over NATS in this process, the workers registered and indexed */
export async function startNatsLeg(o: NatsLegOptions): Promise<NatsLeg> {
  let nats: NatsServerHandle | undefined;
  let indexer: ChildProcess | undefined;
  let bus: Bus | undefined;
  let router: RouterHandle | undefined;
  let heartbeat: NodeJS.Timeout | undefined;
  let echo: ChildProcess | undefined;
  const close = async () => {
    clearInterval(heartbeat);
    if (echo?.connected) echo.disconnect();
    await router?.close().catch(() => undefined);
    if (indexer && indexer.exitCode === null && indexer.signalCode === null) {
      const gone = new Promise((r) => indexer!.once('exit', r));
      indexer.kill('SIGTERM');
      const t = setTimeout(() => indexer!.kill('SIGKILL'), 8000);
      await gone;
      clearTimeout(t);
    }
    await bus?.close().catch(() => undefined);
    await nats?.stop();
  };
  try {
    nats = await startNatsServer();
    const port = await freePort();
    const nodeArgs = o.indexerNodeArgs ?? (process.env.KVGATE_BENCH_INDEXER_NODE_ARGS?.split(' ').filter(Boolean) ?? []);
    indexer = spawn(process.execPath, [...nodeArgs, KVGATE, 'indexer', '--nats', nats.url, '--port', String(port), '--host', '127.0.0.1', '--id', 'bench-indexer', '--ttl-ms', '15000'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, KVGATE_LOG_LEVEL: process.env.KVGATE_LOG_LEVEL ?? 'warn' },
    });
    const indexerUrl = `http://127.0.0.1:${port}`;
    await until(async () => (await fetch(`${indexerUrl}/readyz`).catch(() => null))?.status === 200, 30_000, 'indexer /readyz');
    bus = await createBus({ nats: nats.url });
    const s = subjects('default');
    const kv = await bus.kv(s.workersBucket, { ttlMs: 15_000 });
    const registerAll = () => Promise.all(o.engines.map((e, i) => kv.put(`w${i}`, encode({ worker: `w${i}`, model: o.model, role: 'both', url: e, engineUrl: e, blockSize: o.blockSize, capacityBlocks: 100_000, loras: [], ts: Date.now() }))));
    await registerAll();
    heartbeat = setInterval(() => void registerAll().catch(() => undefined), 5_000);
    // the indexer made the event stream before /readyz said yes: a plain publish on the subject is stored in it
    const workers = o.engines.length;
    for (let p = 0; p < o.prefixes; p++) {
      const toks = Array.from({ length: 256 * o.blockSize }, (_, i) => (p * 7919 + i * 31) % 150_000);
      const hashes = prefixHashes(o.model, null, o.blockSize, toks);
      const body = encode({ worker: `w${p % workers}`, seq: Math.floor(p / workers) + 1, ts: Date.now(), model: o.model, events: [{ t: 'stored', parent: null, hashes }] });
      bus.publish(s.events(`w${p % workers}`), body);
    }
    await bus.flush();
    const want = o.prefixes * 256;
    await until(async () => {
      const r = await fetch(`${indexerUrl}/debug/workers`).catch(() => null);
      if (!r || r.status !== 200) return false;
      const v = (await r.json()) as { workers: Record<string, { blocks: number }> };
      return Object.values(v.workers).reduce((a, w) => a + w.blocks, 0) >= want;
    }, 60_000, `indexer holding ${want} blocks`);
    router = await startRouter(bus, { port: 0, id: 'bench-router-nats', registryTtlMs: 15_000 });
    await router.waitForWorkers(workers);
    o.progress('router over NATS up (indexer in its own process)');
    echo = fork(ECHO, [nats.url, ECHO_SUBJECT], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    await new Promise<void>((resolve, reject) => {
      echo!.once('message', () => resolve());
      echo!.once('exit', (c) => reject(new Error(`echo process exited (${c})`)));
    });
    const echoBus = bus;
    const echoMisses = async (count: number, rate: number, timeoutMs: number): Promise<number> => {
      const payload = new Uint8Array(1040); // the index query: model, lora and 128 packed hashes
      let missed = 0;
      const pending: Promise<void>[] = [];
      const t0 = performance.now();
      for (let i = 0; i < count; i++) {
        const wait = t0 + (i * 1000) / rate - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        pending.push(echoBus.request(ECHO_SUBJECT, payload, { timeoutMs }).then(() => undefined, () => void missed++));
      }
      await Promise.all(pending);
      return missed;
    };
    return { router, indexerUrl, echoMisses, close };
  } catch (e) {
    await close();
    throw e;
  }
}

async function until(ok: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
