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

/** Modelled RDMA link (NIXL / UCX): a transfer costs latency + bytes / bandwidth. */
export interface TransferModel {
  /** link bandwidth, GB/s (default 50, i.e. 400 Gb/s) */
  bandwidthGBps: number;
  /** fixed cost per transfer, ms (default 0.5) */
  latencyMs: number;
}

export const DEFAULT_TRANSFER: TransferModel = { bandwidthGBps: 50, latencyMs: 0.5 };

export function transferMs(t: TransferModel, bytes: number): number {
  if (bytes <= 0) return 0;
  return t.latencyMs + bytes / (t.bandwidthGBps * 1e9) * 1e3;
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
