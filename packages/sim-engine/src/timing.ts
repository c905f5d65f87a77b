/**
 * The simulator's timing model (pure). All results are in *simulated* milliseconds: what the step would take on
 * the modelled GPU. The real-time driver divides by `speedup`; a virtual-clock driver adds them up.
 *
 * Defaults are fitted to an ~8B model on one H100 (bf16):
 *   prefill step  ms ≈ a·T² + b·T + c              T = new (uncached) tokens computed in the step
 *   decode step   ms ≈ max(min, p·u² + q·u + r) + s·n   u = KV-cache utilisation (0..1), n = sequences decoding
 * A step that mixes a prefill chunk with decodes costs both terms (one forward pass doing both kinds of work).
 */
export interface TimingModel {
  /** prefill quadratic coefficient (default 4.21e-7) */
  prefillA: number;
  /** prefill linear coefficient, ms per token (default 1.518e-2) */
  prefillB: number;
  /** prefill constant, ms (default 16.5) */
  prefillC: number;
  /** decode quadratic coefficient on KV utilisation (default −25.74) */
  decodeP: number;
  /** decode linear coefficient (default 54.01) */
  decodeQ: number;
  /** decode constant, ms (default 5.74) */
  decodeR: number;
  /** decode floor, ms (default 1) */
  decodeMin: number;
  /** extra ms per decoding sequence in the batch (default 0.02) */
  decodePerSeq: number;
}

export const DEFAULT_TIMING: TimingModel = {
  prefillA: 4.21e-7,
  prefillB: 1.518e-2,
  prefillC: 16.5,
  decodeP: -25.74,
  decodeQ: 54.01,
  decodeR: 5.74,
  decodeMin: 1,
  decodePerSeq: 0.02,
};

export function prefillMs(m: TimingModel, tokens: number): number {
  return tokens <= 0 ? 0 : m.prefillA * tokens * tokens + m.prefillB * tokens + m.prefillC;
}

export function decodeMs(m: TimingModel, kvUtilisation: number, sequences: number): number {
  if (sequences <= 0) return 0;
  const u = Math.min(1, Math.max(0, kvUtilisation));
  return Math.max(m.decodeMin, m.decodeP * u * u + m.decodeQ * u + m.decodeR) + m.decodePerSeq * sequences;
}

/** One scheduler step: `prefillTokens` new prompt tokens and `decodeSeqs` one-token decodes in the same batch. */
export function stepMs(m: TimingModel, prefillTokens: number, decodeSeqs: number, kvUtilisation: number): number {
  return prefillMs(m, prefillTokens) + decodeMs(m, kvUtilisation, decodeSeqs);
}

/** Model shape that sets the size of one KV block (K and V, every layer). Defaults: Qwen3-8B in bf16. */
export interface ModelShape {
  /** transformer layers (default 36) */
  layers: number;
  /** KV heads per layer (default 8) */
  kvHeads: number;
  /** head dimension (default 128) */
  headDim: number;
  /** bytes per element (default 2, bf16) */
  dtypeBytes: number;
}

export const QWEN3_8B_SHAPE: ModelShape = { layers: 36, kvHeads: 8, headDim: 128, dtypeBytes: 2 };

export function bytesPerBlock(shape: ModelShape, blockSize: number): number {
  return 2 * shape.layers * shape.kvHeads * shape.headDim * shape.dtypeBytes * blockSize;
}

/**
 * Modelled KV link of a decode engine (NIXL over RDMA / UCX): a transfer costs latency + bytes / bandwidth. One
 * link per engine: concurrent pulls queue behind each other on it (linkTransfer).
 */
export interface TransferModel {
  /** link bandwidth, GB/s (default 50, i.e. 400 Gb/s) */
  bandwidthGBps: number;
  /** fixed cost per transfer, ms (default 0.5) */
  latencyMs: number;
}

export const DEFAULT_TRANSFER: TransferModel = { bandwidthGBps: 50, latencyMs: 0.5 };

/**
 * Named KV fabrics (`--kv-fabric`): the decode engine's link for pulls, line rate in gigabits per second and a
 * fixed cost per transfer (NIXL's handshake-free post + completion notification; a TCP fallback pays the kernel
 * stack and UCX's staging). The bandwidth is the line rate; no protocol overhead is subtracted.
 *   rdma-400g  400 Gb/s InfiniBand NDR / 400 GbE RDMA NIC per GPU   50 GB/s     0.5 ms
 *   roce-200g  200 Gb/s RoCEv2                                    25 GB/s     1 ms
 *   tcp-25g    25 GbE without RDMA (UCX over TCP)                  3.125 GB/s  2 ms
 */
export const KV_FABRICS = {
  'rdma-400g': { bandwidthGBps: 50, latencyMs: 0.5 },
  'roce-200g': { bandwidthGBps: 25, latencyMs: 1 },
  'tcp-25g': { bandwidthGBps: 3.125, latencyMs: 2 },
} as const satisfies Record<string, TransferModel>;

export type KvFabricName = keyof typeof KV_FABRICS;

/**
 * `--kv-fabric` value → transfer model: a name of KV_FABRICS, or a line rate in Gb/s (`100`, `100g`; latency then
 * 1 ms). Throws RangeError naming the choices.
 */
export function parseKvFabric(v: string): TransferModel {
  const name = v.trim().toLowerCase();
  if (name in KV_FABRICS) return { ...KV_FABRICS[name as KvFabricName] };
  const m = /^(\d+(?:\.\d+)?)\s*(?:g|gb\/s|gbps)?$/.exec(name);
  const gbit = m ? Number(m[1]) : NaN;
  if (!(gbit > 0)) throw new RangeError(`kv fabric must be ${Object.keys(KV_FABRICS).join(', ')} or a line rate in Gb/s (e.g. 100), got ${JSON.stringify(v)}`);
  return { bandwidthGBps: gbit / 8, latencyMs: 1 };
}

/** "rdma-400g" when `t` is that named fabric, else "<Gb/s>g" */
export function kvFabricLabel(t: TransferModel): string {
  for (const [k, f] of Object.entries(KV_FABRICS)) if (f.bandwidthGBps === t.bandwidthGBps && f.latencyMs === t.latencyMs) return k;
  return `${+(t.bandwidthGBps * 8).toFixed(3)}g`;
}

export function transferMs(t: TransferModel, bytes: number): number {
  if (bytes <= 0) return 0;
  return t.latencyMs + bytes / (t.bandwidthGBps * 1e9) * 1e3;
}

/**
 * A pull of `bytes` on a link busy until `freeAtMs` (simulated ms), asked at `nowMs`: the bytes go out after the
 * ones already queued (one NIC, FIFO), then the fixed latency. Returns when it is done and the link's new free time.
 */
export function linkTransfer(t: TransferModel, bytes: number, nowMs: number, freeAtMs: number): { doneMs: number; freeAtMs: number; ms: number } {
  if (bytes <= 0) return { doneMs: nowMs, freeAtMs, ms: 0 };
  const start = Math.max(nowMs, freeAtMs);
  const wireEnd = start + (bytes / (t.bandwidthGBps * 1e9)) * 1e3;
  const doneMs = wireEnd + t.latencyMs;
  return { doneMs, freeAtMs: wireEnd, ms: doneMs - nowMs };
}

/**
 * Modelled host link of the CPU offload tier (vLLM's OffloadingConnector copies KV between GPU and pinned host
 * memory over PCIe): reloading `n` blocks costs latency + n × bytesPerBlock / bandwidth, paid in the step that
 * admits the request, instead of the prefill compute of those tokens.
 *
 * Default 25 GB/s: what a PCIe 4.0 ×16 link (32 GB/s raw per direction) sustains for large pinned copies.
 * With Qwen3-8B bf16 (147,456 KV bytes per token: 2 × 36 layers × 8 KV heads × 128 dims × 2 bytes) a 16-token
 * block is 2.36 MB and reloads in 0.094 ms; a 6,000-token context in ≈ 35 ms, where its prefill takes ≈ 123 ms.
 */
export interface OffloadLinkModel {
  /** GPU ↔ host bandwidth, GB/s (default 25, PCIe 4.0 ×16) */
  bandwidthGBps: number;
  /** fixed cost per reload, ms (default 0: the copy is one batched transfer per step) */
  latencyMs: number;
}

export const DEFAULT_OFFLOAD_LINK: OffloadLinkModel = { bandwidthGBps: 25, latencyMs: 0 };

/** Time to reload `bytes` of KV from the CPU tier. */
export function reloadMs(link: OffloadLinkModel, bytes: number): number {
  if (bytes <= 0) return 0;
  return link.latencyMs + (bytes / (link.bandwidthGBps * 1e9)) * 1e3;
}
