import { startSimEngine, engineProfile, resolveProfile, formatCapacity, KV_FABRICS, parseKvFabric, kvFabricLabel, bytesPerBlock, type ModelShape, type SimEngineOptions, type EngineRole, type EventEncoding, type BlockHashFormat, type HashAlgo } from '@kvgate/sim-engine';
import { parseFlags, intFlag } from '../flags.js';
import { FlagError } from '../fatal.js';
import { PROFILE_SPEC, profileFrom } from '../profile-flags.js';
import { HTTP_LIMITS_SPEC, httpLimitsFrom } from '../http-flags.js';
import { drainMs, LIFECYCLE_SPEC, serveUntilSignal, within } from '../lifecycle.js';
import { initTracing } from '@kvgate/protocol';

export const summary = 'run one simulated vLLM engine (OpenAI HTTP, /metrics, ZMQ KV events + replay, P/D)';

const USAGE = 'kvgate sim-engine [--port 8000] [--kv-events-endpoint tcp://*:5557] [--kv-replay-endpoint tcp://*:5558] [--model qwen3-8b] [--role both] [--speedup 1] ...';
const SPEC = {
  host: { type: 'string', help: 'HTTP bind address', default: '127.0.0.1' },
  port: { type: 'string', help: 'HTTP port (0 = any free port)', default: '8000' },
  model: { type: 'string', help: 'served model name', default: 'qwen3-8b' },
  tokenizer: { type: 'string', help: 'Hugging Face tokenizer.json path (default: bundled Qwen3 tokenizer)' },
  role: { type: 'string', help: 'P/D role: prefill | decode | both', default: 'both' },
  'engine-id': { type: 'string', help: 'engine id in transfer descriptors (default: sim-<random>)' },
  'block-size': { type: 'string', help: 'tokens per KV block', default: '16' },
  ...PROFILE_SPEC,
  'num-blocks': { type: 'string', help: 'KV cache capacity in blocks (default: derived from the profile, as vLLM)' },
  'max-model-len': { type: 'string', help: 'max prompt + completion tokens', default: '32768' },
  'max-num-seqs': { type: 'string', help: 'max sequences per batch', default: '256' },
  'max-num-batched-tokens': { type: 'string', help: 'token budget per step (chunked prefill)', default: '8192' },
  speedup: { type: 'string', help: 'simulated time runs this many times faster than wall time', default: '1' },
  'kv-events-endpoint': { type: 'string', help: 'ZMQ PUB endpoint for KV events (port 0 or * = free port)', default: 'tcp://*:5557' },
  'no-kv-events': { type: 'boolean', help: 'do not publish KV events' },
  'kv-replay-endpoint': { type: 'string', help: 'ZMQ ROUTER endpoint serving missed batches (default: none)' },
  'kv-events-topic': { type: 'string', help: 'ZMQ topic frame', default: '' },
  'kv-events-encoding': { type: 'string', help: 'event payload: array (vLLM ≤ 0.23) | map (newer vLLM)', default: 'array' },
  'block-hash-format': { type: 'string', help: 'block hashes in events: int (uint64) | bytes (32-byte digest)', default: 'int' },
  'prefix-caching-hash-algo': { type: 'string', help: 'engine block-hash algorithm: sha256 | xxhash (as vLLM)', default: 'sha256' },
  'hash-seed': { type: 'string', help: 'seed of the engine block-hash chain (default: random, like vLLM)' },
  'default-max-tokens': { type: 'string', help: 'max_tokens when a request gives none', default: '16' },
  'max-body-bytes': { type: 'string', help: 'request body limit', default: String(16 * 1024 * 1024) },
  'kv-hold-timeout': { type: 'string', help: 'seconds a P/D prefill keeps blocks for the decode side', default: '480' },
  'prefill-coeffs': { type: 'string', help: 'prefill ms = a·T² + b·T + c, as a,b,c (default: the profile\'s; qwen3-8b on h100: 4.21e-7,1.518e-2,16.5)' },
  'decode-coeffs': { type: 'string', help: 'decode ms = max(1, p·u² + q·u + r) + s·seqs, as p,q,r,s (default: the profile\'s; qwen3-8b on h100: -25.74,54.01,5.74,0.02)' },
  'num-layers': { type: 'string', help: 'model layers (bytes per block; default: the profile\'s)' },
  'num-kv-heads': { type: 'string', help: 'KV heads per layer (bytes per block; default: the profile\'s)' },
  'head-dim': { type: 'string', help: 'head dimension (bytes per block; default: the profile\'s)' },
  'dtype-bytes': { type: 'string', help: 'bytes per KV element (bytes per block; default: the profile\'s)' },
  'kv-fabric': { type: 'string', help: `modelled P/D KV link of this (decode) engine: ${Object.keys(KV_FABRICS).join(' | ')} or a line rate in Gb/s (e.g. 100); default rdma-400g` },
  'kv-fabric-gbps': { type: 'string', help: 'the same as --kv-fabric <Gb/s>' },
  'rdma-bandwidth': { type: 'string', help: 'modelled P/D link bandwidth, GB/s (bytes; --kv-fabric takes Gb/s; default 50)' },
  'rdma-latency-ms': { type: 'string', help: 'modelled P/D transfer latency, ms (default: the fabric\'s, 0.5 for rdma-400g)' },
  'api-key': { type: 'string', help: 'as vLLM --api-key: the /v1 routes need Authorization: Bearer <key> (default: env VLLM_API_KEY, else none)' },
  'cpu-offload-blocks': { type: 'string', help: 'CPU offload tier in blocks, as vLLM\'s OffloadingConnector (0 = off)', default: '0' },
  'offload-bandwidth': { type: 'string', help: 'modelled GPU ↔ host link of the offload tier, GB/s (PCIe 4.0 ×16)', default: '25' },
  ...LIFECYCLE_SPEC,
  ...HTTP_LIMITS_SPEC,
} as const;

function coeffs(v: string | undefined, name: string, n: number): number[] {
  const parts = (v ?? '').split(',').map((s) => Number(s.trim()));
  if (parts.length !== n || parts.some((x) => !Number.isFinite(x))) throw new Error(`--${name} needs ${n} comma-separated numbers, got ${JSON.stringify(v)}`);
  return parts;
}

function oneOf<T extends string>(v: string | undefined, name: string, allowed: readonly T[]): T {
  if (!allowed.includes(v as T)) throw new Error(`--${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
  return v as T;
}

/** --kv-fabric / --kv-fabric-gbps (a named fabric or Gb/s), or the older --rdma-bandwidth (GB/s); --rdma-latency-ms overrides the latency */
function transferFromFlags(f: { 'kv-fabric'?: string | undefined; 'kv-fabric-gbps'?: string | undefined; 'rdma-bandwidth'?: string | undefined; 'rdma-latency-ms'?: string | undefined }): { bandwidthGBps: number; latencyMs: number } {
  const given = (['kv-fabric', 'kv-fabric-gbps', 'rdma-bandwidth'] as const).filter((k) => f[k] !== undefined);
  if (given.length > 1) throw new Error(`--${given.join(' and --')} both set the KV link; give one`);
  let t = parseKvFabric(f['kv-fabric'] ?? 'rdma-400g');
  if (f['kv-fabric-gbps'] !== undefined) {
    const g = Number(f['kv-fabric-gbps']);
    if (!(g > 0)) throw new Error(`--kv-fabric-gbps must be a positive number of Gb/s, got ${JSON.stringify(f['kv-fabric-gbps'])}`);
    t = parseKvFabric(String(g));
  }
  if (f['rdma-bandwidth'] !== undefined) {
    const b = Number(f['rdma-bandwidth']);
    if (!(b > 0)) throw new Error(`--rdma-bandwidth must be positive, got ${JSON.stringify(f['rdma-bandwidth'])}`);
    t = { bandwidthGBps: b, latencyMs: 0.5 };
  }
  if (f['rdma-latency-ms'] !== undefined) {
    const l = Number(f['rdma-latency-ms']);
    if (!(l >= 0)) throw new Error(`--rdma-latency-ms must be non-negative, got ${JSON.stringify(f['rdma-latency-ms'])}`);
    t = { ...t, latencyMs: l };
  }
  return t;
}

export function optionsFromFlags(f: NonNullable<ReturnType<typeof parseFlags<typeof SPEC>>>['flags']): SimEngineOptions {
  const pos = (name: keyof typeof SPEC, def: number, allowZero = false) => {
    const x = intFlag(f[name] as string | undefined, name, def);
    if (!(allowZero ? x >= 0 : x > 0)) throw new Error(`--${name} must be ${allowZero ? 'non-negative' : 'positive'}, got ${x}`);
    return x;
  };
  const profile = profileFrom(f);
  // the profile's timing and shape, each flag given overriding its part
  const base = resolveProfile(profile);
  const t = base.timing;
  const [a, b, c] = f['prefill-coeffs'] !== undefined ? (coeffs(f['prefill-coeffs'], 'prefill-coeffs', 3) as [number, number, number]) : [t.prefillA, t.prefillB, t.prefillC];
  const [p, q, r, s] = f['decode-coeffs'] !== undefined ? (coeffs(f['decode-coeffs'], 'decode-coeffs', 4) as [number, number, number, number]) : [t.decodeP, t.decodeQ, t.decodeR, t.decodePerSeq];
  return {
    profile,
    host: f.host ?? '127.0.0.1',
    port: pos('port', 8000, true),
    model: f.model ?? 'qwen3-8b',
    ...(f.tokenizer ? { tokenizer: f.tokenizer } : {}),
    role: oneOf<EngineRole>(f.role, 'role', ['prefill', 'decode', 'both']),
    ...(f['engine-id'] ? { engineId: f['engine-id'] } : {}),
    blockSize: pos('block-size', 16),
    ...(f['num-blocks'] !== undefined ? { numBlocks: pos('num-blocks', 0) } : {}),
    maxModelLen: pos('max-model-len', 32768),
    maxNumSeqs: pos('max-num-seqs', 256),
    maxNumBatchedTokens: pos('max-num-batched-tokens', 8192),
    speedup: pos('speedup', 1),
    kvEventsEndpoint: f['no-kv-events'] ? null : (f['kv-events-endpoint'] ?? 'tcp://*:5557'),
    kvReplayEndpoint: f['kv-replay-endpoint'] ?? null,
    kvEventsTopic: f['kv-events-topic'] ?? '',
    kvEventsEncoding: oneOf<EventEncoding>(f['kv-events-encoding'], 'kv-events-encoding', ['array', 'map']),
    blockHashFormat: oneOf<BlockHashFormat>(f['block-hash-format'], 'block-hash-format', ['int', 'bytes']),
    prefixCachingHashAlgo: oneOf<HashAlgo>(f['prefix-caching-hash-algo'], 'prefix-caching-hash-algo', ['sha256', 'xxhash']),
    ...(f['hash-seed'] !== undefined ? { hashSeed: f['hash-seed'] } : {}),
    defaultMaxTokens: pos('default-max-tokens', 16),
    maxBodyBytes: pos('max-body-bytes', 16 * 1024 * 1024),
    kvHoldTimeoutS: pos('kv-hold-timeout', 480),
    timing: { prefillA: a, prefillB: b, prefillC: c, decodeP: p, decodeQ: q, decodeR: r, decodePerSeq: s },
    shape: { layers: pos('num-layers', base.shape.layers), kvHeads: pos('num-kv-heads', base.shape.kvHeads), headDim: pos('head-dim', base.shape.headDim), dtypeBytes: pos('dtype-bytes', base.shape.dtypeBytes) },
    transfer: transferFromFlags(f),
    ...((f['api-key'] ?? process.env.VLLM_API_KEY) ? { apiKey: (f['api-key'] ?? process.env.VLLM_API_KEY)! } : {}),
    cpuOffloadBlocks: pos('cpu-offload-blocks', 0, true),
    offloadLink: { bandwidthGBps: pos('offload-bandwidth', 25) },
  };
}

/** The engine options `kvgate sim-engine <argv>` would start with (tests); throws on a bad flag. */
export function optionsFromArgv(argv: string[]): SimEngineOptions {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) throw new Error('--help');
  return optionsFromFlags(parsed.flags);
}

export async function run(argv: string[]): Promise<number> {
  await initTracing('kvgate-sim-engine');
  // a bad flag or a start-up failure throws: main.ts prints it in one line (fatal.ts)
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  let opts: SimEngineOptions;
  let drain: number;
  try {
    opts = { ...optionsFromFlags(parsed.flags), httpLimits: httpLimitsFrom(parsed.flags) };
    drain = drainMs(parsed.flags);
  } catch (e) {
    throw e instanceof FlagError ? e : new FlagError((e as Error).message);
  }
  const engine = await startSimEngine(opts);
  console.error(`kvgate sim-engine: ${formatCapacity(engineProfile(opts))}`);
  console.error(
    `kvgate sim-engine ${engine.engineId} (${engine.model}, role ${engine.role}) listening on ${engine.url}\n` +
      `  KV events: ${engine.kvEventsEndpoint ?? 'off'}   replay: ${engine.replayEndpoint ?? 'off'}   block size ${engine.blockSize}, ${engine.numBlocks} blocks${engine.cpuOffloadBlocks > 0 ? ` + ${engine.cpuOffloadBlocks} CPU offload blocks` : ''}, speedup ${opts.speedup}` +
      (engine.role !== 'both' ? `\n  KV fabric (modelled): ${kvFabricLabel(opts.transfer as { bandwidthGBps: number; latencyMs: number })}, ${opts.transfer!.bandwidthGBps} GB/s + ${opts.transfer!.latencyMs} ms per pull; ${(bytesPerBlock(opts.shape as ModelShape, 1) / 1024).toFixed(0)} KiB of KV per token` : ''),
  );
  return serveUntilSignal('sim-engine', drain, async (ms) => {
    await within(ms + 2000, 'engine close', engine.close({ drainMs: ms }));
  });
}
