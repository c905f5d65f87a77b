/**
 * @kvgate/sim-engine: a vLLM-compatible simulated engine. `startSimEngine(options)` runs one instance (HTTP +
 * ZMQ KV events + replay) and returns a handle; many instances coexist in one process.
 * The pure core (KvCache, Scheduler, timing model) is exported for virtual-clock drivers (`kvgate replay whatif`).
 */
import { applyHttpLimits, HttpDrain, httpServerOptions, initHashing, resolveHttpLimits, type HttpLimits } from '@kvgate/protocol';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { loadTokenizer, logger, type Tokenizer } from '@kvgate/protocol';
import { EngineCore, type RequestTimingSink } from './engine.js';
export type { RequestTimingSink } from './engine.js';
import { EngineMetrics } from './metrics.js';
import { KvEventPublisher, type EventEncoding, type BlockHashFormat } from './kv-events.js';
import { createHttpHandler, type EngineRole } from './openai-http.js';
import { DEFAULT_OFFLOAD_LINK, DEFAULT_TRANSFER, bytesPerBlock, type ModelShape, type OffloadLinkModel, type TimingModel, type TransferModel } from './timing.js';
import type { SchedulerStats } from './scheduler.js';
import { resolveProfile, type ProfileSpec, type SimProfile } from './profile.js';

export * from './timing.js';
export * from './profile.js';
export { KvCache, type KvCacheEvent, type Medium } from './kv-cache.js';
export { CpuOffloadTier, type OffloadStoreResult } from './kv-offload.js';
export { Scheduler, type SchedulerOptions, type SubmitRequest, type StepResult, type TokenOutput, type SchedulerStats, type HeldBlocks } from './scheduler.js';
export { BlockHasher, type BlockDigest, type HashAlgo } from './block-hash.js';
import type { HashAlgo } from './block-hash.js';
export { encodeEventBatch, KvEventPublisher, type EventEncoding, type BlockHashFormat } from './kv-events.js';
export { parseDescriptor, type TransferDescriptor } from './pd.js';
export type { EngineRole } from './openai-http.js';

/** One options type for the simulated engine; each default is what `kvgate sim-engine` uses unless noted. */
export interface SimEngineOptions {
  /** HTTP bind host (default 127.0.0.1) */
  host?: string;
  /** HTTP port; 0 = a free port (default 0 here, 8000 in the CLI) */
  port?: number;
  /** served model name (default qwen3-8b) */
  model?: string;
  /** tokenizer: undefined = bundled Qwen3, or a Hugging Face tokenizer.json path */
  tokenizer?: string;
  /** P/D role (default both) */
  role?: EngineRole;
  /** engine id in transfer descriptors and logs (default sim-<random>) */
  engineId?: string;
  /** tokens per KV block (default 16) */
  blockSize?: number;
  /** KV capacity in blocks (default: derived from `profile`, as vLLM sizes num_gpu_blocks) */
  numBlocks?: number;
  /**
   * simulation profile: model shape, GPU, TP, gpu-memory-utilization (default qwen3-8b on one H100 80 GB at 0.9:
   * 25,178 blocks of 16 tokens); sets numBlocks, the timing model and the shape unless those are given
   */
  profile?: ProfileSpec;
  /** max prompt + completion tokens (default 32768, capped at the KV capacity) */
  maxModelLen?: number;
  /** max sequences per batch (default 256) */
  maxNumSeqs?: number;
  /** token budget per step, chunked prefill (default 8192) */
  maxNumBatchedTokens?: number;
  /** simulated ms per wall ms (default 1; tests use 20-100) */
  speedup?: number;
  /** timing model overrides (defaults: the profile's, fitted to Qwen3-8B on one H100) */
  timing?: Partial<TimingModel>;
  /** model shape for bytes per block (defaults: the profile's model, Qwen3-8B bf16) */
  shape?: Partial<ModelShape>;
  /** modelled KV link of a decode engine's pulls (defaults: 50 GB/s, 0.5 ms, i.e. KV_FABRICS['rdma-400g']) */
  transfer?: Partial<TransferModel>;
  /** vLLM --api-key: the /v1 routes answer 401 without `Authorization: Bearer <key>` (default none) */
  apiKey?: string;
  /** ZMQ PUB endpoint for KV events; null = none (default tcp://127.0.0.1:* here, tcp://*:5557 in the CLI) */
  kvEventsEndpoint?: string | null;
  /** ZMQ ROUTER replay endpoint; null = none (default tcp://127.0.0.1:* here, none in the CLI) */
  kvReplayEndpoint?: string | null;
  /** ZMQ topic (default '') */
  kvEventsTopic?: string;
  /** payload encoding (default array) */
  kvEventsEncoding?: EventEncoding;
  /** block hashes in events: uint64 ints or 32-byte digests (default int) */
  blockHashFormat?: BlockHashFormat;
  /** batches kept for replay (default 10,000) */
  replayBufferSteps?: number;
  /** seed of the engine's block-hash chain (default random per instance, like vLLM without PYTHONHASHSEED) */
  hashSeed?: string;
  /** engine block-hash algorithm, as vLLM's --prefix-caching-hash-algo: sha256 (default) | xxhash */
  prefixCachingHashAlgo?: HashAlgo;
  /** max_tokens when a request gives none (default 16) */
  defaultMaxTokens?: number;
  /** request body limit in bytes (default 16 MiB) */
  maxBodyBytes?: number;
  /** seconds (simulated) a P/D prefill keeps its blocks for the decode side (default 480) */
  kvHoldTimeoutS?: number;
  /**
   * a decode request whose KV pull fails (prefill engine gone, blocks expired): 'fail' answers an error (vLLM's
   * `kv_load_failure_policy` default), 'recompute' prefills locally and serves it
   */
  kvLoadFailurePolicy?: 'fail' | 'recompute';
  /** data-parallel rank written into event batches (default 0) */
  dpRank?: number;
  /**
   * CPU offload tier in blocks (vLLM's OffloadingConnector; default 0 = off): GPU evictions move there, hits
   * on it are reloaded over the host link instead of prefilled, and its events carry medium "CPU"
   */
  cpuOffloadBlocks?: number;
  /** GPU ↔ host link of the offload tier (defaults: 25 GB/s, 0 ms) */
  offloadLink?: Partial<OffloadLinkModel>;
  /** header/body timeouts, keep-alive (default 65 s here) and connection cap of the HTTP server (protocol http-limits.ts) */
  httpLimits?: HttpLimits;
  /** each finished request that carried an x-request-id: its modelled TTFT and end-to-end ms (EngineCore onRequestDone) */
  onRequestDone?: RequestTimingSink;
}

export interface SimEngineHandle {
  /** http://host:port */
  url: string;
  port: number;
  model: string;
  engineId: string;
  role: EngineRole;
  blockSize: number;
  numBlocks: number;
  /** CPU offload tier capacity in blocks (0 = off) */
  cpuOffloadBlocks: number;
  /** connectable ZMQ PUB endpoint (tcp://127.0.0.1:port), null when disabled */
  kvEventsEndpoint: string | null;
  /** connectable ZMQ ROUTER replay endpoint, null when disabled */
  replayEndpoint: string | null;
  stats(): SchedulerStats;
  /** stop: with `drainMs`, requests in flight get that long to finish before they are cut (SSE: an error event) */
  close(opts?: { drainMs?: number }): Promise<void>;
}

/** Token ids the simulator "generates": common single-token English words, so output reads as text. */
function sampleVocabulary(tok: Tokenizer): number[] {
  const passage =
    'the of and to in is was for on that with as by at from his her an which or be are this had not but what all were when we there can one your they time said each she do how their if will up other about out many then them these so some would make like him into has look two more write go see number no way could people my than first water been call who its now find long down day did get come made may part over new sound take only little work know place year live me back give most very after thing our just name good sentence man think say great where help through much before line right too mean old any same tell boy follow came want show also around form three small set put end does another well large must big even such because turn here why ask went men read need land different home us move try kind hand picture again change off play spell air away animal house point page letter mother answer found study still learn should world';
  const ids: number[] = [];
  const seen = new Set<number>();
  for (const w of passage.split(' ')) {
    const t = tok.encode(' ' + w, { addSpecialTokens: false });
    if (t.length === 1 && !seen.has(t[0]!)) {
      seen.add(t[0]!);
      ids.push(t[0]!);
    }
  }
  return ids.length > 0 ? ids : [tok.encode(' the', { addSpecialTokens: false })[0] ?? 0];
}

/** The profile an engine with these options runs: its profile spec, with blockSize / numBlocks / batch limits applied. */
export function engineProfile(options: Pick<SimEngineOptions, 'profile' | 'blockSize' | 'numBlocks' | 'maxNumBatchedTokens' | 'maxNumSeqs'>): SimProfile {
  return resolveProfile({
    ...options.profile,
    ...(options.blockSize !== undefined ? { blockSize: options.blockSize } : {}),
    ...(options.maxNumBatchedTokens !== undefined ? { maxNumBatchedTokens: options.maxNumBatchedTokens } : {}),
    ...(options.maxNumSeqs !== undefined ? { maxNumSeqs: options.maxNumSeqs } : {}),
    ...(options.numBlocks !== undefined ? { numBlocksOverride: options.numBlocks } : {}),
  });
}

export async function startSimEngine(options: SimEngineOptions = {}): Promise<SimEngineHandle> {
  const model = options.model ?? 'qwen3-8b';
  const role = options.role ?? 'both';
  if (!['prefill', 'decode', 'both'].includes(role)) throw new RangeError(`role must be prefill, decode or both, got ${role}`);
  // validated before anything is started (a bad value must not leave sockets behind)
  const limits = resolveHttpLimits(options.httpLimits, { keepAliveTimeoutMs: 65_000 });
  const engineId = options.engineId ?? `sim-${randomUUID().slice(0, 8)}`;
  if (options.prefixCachingHashAlgo === 'xxhash') await initHashing();
  const profile = engineProfile(options);
  const blockSize = profile.blockSize;
  const numBlocks = profile.numBlocks;
  const maxModelLen = Math.min(options.maxModelLen ?? 32768, numBlocks * blockSize);
  const cpuOffloadBlocks = options.cpuOffloadBlocks ?? 0;
  if (!Number.isInteger(cpuOffloadBlocks) || cpuOffloadBlocks < 0) throw new RangeError(`cpuOffloadBlocks must be a non-negative integer, got ${cpuOffloadBlocks}`);
  const shape = { ...profile.shape, ...options.shape };
  const transfer = { ...DEFAULT_TRANSFER, ...options.transfer };
  if (!(transfer.bandwidthGBps > 0) || !(transfer.latencyMs >= 0)) throw new RangeError(`transfer bandwidth must be > 0 and latency ≥ 0, got ${transfer.bandwidthGBps} GB/s, ${transfer.latencyMs} ms`);
  const log = logger('sim-engine', { engine: engineId });

  const tokenizer = await loadTokenizer(options.tokenizer);
  const vocab = sampleVocabulary(tokenizer);
  const textOf = new Map<number, string>(vocab.map((id) => [id, tokenizer.decode([id])]));
  const sample = (reqId: string, index: number): number => {
    let h = 2166136261;
    for (let i = 0; i < reqId.length; i++) h = Math.imul(h ^ reqId.charCodeAt(i), 16777619);
    return vocab[((h >>> 0) + Math.imul(index + 1, 40503)) % vocab.length]!;
  };

  const publisher =
    options.kvEventsEndpoint === null
      ? null
      : await KvEventPublisher.open({
          endpoint: options.kvEventsEndpoint ?? 'tcp://127.0.0.1:*',
          replayEndpoint: options.kvReplayEndpoint === undefined ? 'tcp://127.0.0.1:*' : options.kvReplayEndpoint,
          topic: options.kvEventsTopic ?? '',
          bufferSteps: options.replayBufferSteps ?? 10_000,
          encoding: options.kvEventsEncoding ?? 'array',
          hashFormat: options.blockHashFormat ?? 'int',
          dpRank: options.dpRank ?? 0,
        });

  let core!: EngineCore;
  const metrics = new EngineMetrics(model, { blockSize, numBlocks }, () => core.stats());
  core = new EngineCore(
    {
      scheduler: {
        numBlocks,
        blockSize,
        maxNumSeqs: options.maxNumSeqs ?? 256,
        maxNumBatchedTokens: options.maxNumBatchedTokens ?? 8192,
        timing: { ...profile.timing, ...options.timing },
        ...(options.hashSeed !== undefined ? { hashSeed: options.hashSeed } : {}),
        ...(options.prefixCachingHashAlgo !== undefined ? { hashAlgo: options.prefixCachingHashAlgo } : {}),
        sample,
        cpuOffloadBlocks,
        kvBytesPerBlock: bytesPerBlock(shape, blockSize),
        offloadLink: { ...DEFAULT_OFFLOAD_LINK, ...options.offloadLink },
      },
      speedup: options.speedup ?? 1,
      holdTimeoutMs: (options.kvHoldTimeoutS ?? 480) * 1000,
      onEvents: (events, ts) => publisher?.publish(events, ts),
      ...(options.onRequestDone ? { onRequestDone: options.onRequestDone } : {}),
    },
    metrics,
  );

  const host = options.host ?? '127.0.0.1';
  const advertiseHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  let port = 0;
  const handler = createHttpHandler({
    model,
    engineId,
    role,
    tokenizer,
    core,
    metrics,
    maxModelLen,
    defaultMaxTokens: options.defaultMaxTokens ?? 16,
    maxBodyBytes: options.maxBodyBytes ?? 16 * 1024 * 1024,
    blockSize,
    shape,
    transfer,
    link: { freeAtMs: 0 },
    ...(options.apiKey ? { apiKey: options.apiKey } : {}),
    holdRealMs: ((options.kvHoldTimeoutS ?? 480) * 1000) / core.speedup,
    kvLoadFailurePolicy: options.kvLoadFailurePolicy ?? 'fail',
    advertise: () => ({ host: advertiseHost, port }),
    tokenText: (id) => textOf.get(id) ?? tokenizer.decode([id]),
  });
  const server: Server = createServer(httpServerOptions(limits), handler);
  applyHttpLimits(server, limits, 'sim-engine');
  const drain = new HttpDrain(server, 'engine');
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    core.close();
    await publisher?.close();
    throw e;
  }
  port = (server.address() as AddressInfo).port;
  const url = `http://${advertiseHost.includes(':') ? `[${advertiseHost}]` : advertiseHost}:${port}`;
  log.info({ url, kvEvents: publisher?.endpoint ?? null, replay: publisher?.replayEndpoint ?? null, role, blockSize, numBlocks, cpuOffloadBlocks, speedup: core.speedup }, 'sim engine listening');

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    model,
    engineId,
    role,
    blockSize,
    numBlocks,
    cpuOffloadBlocks,
    kvEventsEndpoint: publisher?.endpoint ?? null,
    replayEndpoint: publisher?.replayEndpoint ?? null,
    stats: () => core.stats(),
    close: (opts) =>
      (closing ??= (async () => {
        // stop accepting, let requests finish, then stop the engine core (no more tokens) and cut the rest
        await drain.close(server, opts?.drainMs ?? 0, () => core.close());
        await publisher?.close();
      })()),
  };
}
