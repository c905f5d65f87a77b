/**
 * Simulation profiles (pure): a public model's shape on a GPU type, sized the way vLLM sizes its KV cache.
 * One place decides how big a simulated engine is and how fast it runs; `kvgate sim-engine`, `kvgate start` and
 * `kvgate replay whatif` all resolve their engines through `resolveProfile`.
 *
 * vLLM (v1 gpu_worker.determine_available_memory + kv_cache_utils.get_num_blocks):
 *   requested   = total GPU memory × gpu_memory_utilization
 *   available   = requested − non_kv_cache_memory      (weights + profile_run's torch peak + non-torch increase)
 *   num_blocks  = available // (page_size × num_layers), page_size = 2 × block_size × kv_heads × head_dim × dtype
 * which is (GPU memory × utilization − weights − activation reserve) / (block size × KV bytes per token) with
 * KV bytes per token = 2 × layers × KV heads (on this GPU) × head dim × dtype bytes.
 *
 * Simplifications (say so when quoting a number):
 * - GPU memory is the card's nvidia-smi memory.total; vLLM reads cudaMemGetInfo's total, a few hundred MiB less.
 * - weights = parameters × dtype bytes / TP, parameters counted from the published config.json (embeddings,
 *   untied LM head, attention, MLP, norms); replicated norms are divided by TP too (a few hundred KB).
 * - the activation reserve is an estimate of profile_run's peak, not a measurement: the MLP's largest
 *   intermediates of one max_num_batched_tokens forward, T × (3 × intermediate / TP + 4 × hidden) × dtype, plus the
 *   dummy sampler's float32 logits and probabilities for max_num_seqs, 2 × S × vocab × 4 bytes. For an 8B model at
 *   T = 8192, S = 256 that is ≈ 1.1 GiB, where vLLM logs ≈ 1.2 GiB of torch peak for Llama-3.1-8B.
 *   CUDA graphs are not charged (vLLM only subtracts their estimate when VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS
 *   is set), nor NCCL buffers under TP.
 * - with TP each GPU holds KV heads / TP (at least one: vLLM replicates KV heads when TP > KV heads) and the same
 *   number of blocks, so a block still covers block_size tokens of the whole model.
 *
 * Timing: DEFAULT_TIMING is fitted to Qwen3-8B on one H100; another model or GPU scales it to first order —
 * prefill (compute-bound) by parameters per GPU ÷ bf16 dense TFLOPS, decode (bandwidth-bound) by weight bytes
 * per GPU ÷ HBM bandwidth, both relative to that reference. Constants (prefill c, decode floor) stay; TP
 * communication is not modelled.
 */
import { DEFAULT_TIMING, type ModelShape, type TimingModel } from './timing.js';

/** A model's config.json fields that size it (Hugging Face names in the comments). */
export interface ModelSpec {
  /** Hugging Face repository the values come from */
  hf: string;
  /** num_hidden_layers */
  layers: number;
  /** hidden_size */
  hidden: number;
  /** num_attention_heads */
  heads: number;
  /** num_key_value_heads */
  kvHeads: number;
  /** head_dim (hidden_size / num_attention_heads when the config has none) */
  headDim: number;
  /** intermediate_size */
  intermediate: number;
  /** vocab_size */
  vocab: number;
  /** tie_word_embeddings */
  tiedEmbeddings: boolean;
  /** q_norm / k_norm per layer (Qwen3) */
  qkNorm: boolean;
  /** torch_dtype bytes (bfloat16 = 2) */
  dtypeBytes: number;
}

/** Built-in models, from their published config.json (all bfloat16, untied embeddings). */
export const MODELS: Record<string, ModelSpec> = {
  'qwen3-8b': { hf: 'Qwen/Qwen3-8B', layers: 36, hidden: 4096, heads: 32, kvHeads: 8, headDim: 128, intermediate: 12288, vocab: 151936, tiedEmbeddings: false, qkNorm: true, dtypeBytes: 2 },
  'qwen3-32b': { hf: 'Qwen/Qwen3-32B', layers: 64, hidden: 5120, heads: 64, kvHeads: 8, headDim: 128, intermediate: 25600, vocab: 151936, tiedEmbeddings: false, qkNorm: true, dtypeBytes: 2 },
  'llama-3.1-8b': { hf: 'meta-llama/Llama-3.1-8B', layers: 32, hidden: 4096, heads: 32, kvHeads: 8, headDim: 128, intermediate: 14336, vocab: 128256, tiedEmbeddings: false, qkNorm: false, dtypeBytes: 2 },
  'llama-3.1-70b': { hf: 'meta-llama/Llama-3.1-70B', layers: 80, hidden: 8192, heads: 64, kvHeads: 8, headDim: 128, intermediate: 28672, vocab: 128256, tiedEmbeddings: false, qkNorm: false, dtypeBytes: 2 },
};

export interface GpuSpec {
  /** memory.total as nvidia-smi reports it, MiB */
  memoryMiB: number;
  /** dense bf16 tensor throughput, TFLOPS (datasheet, without sparsity) */
  bf16Tflops: number;
  /** HBM / GDDR bandwidth, GB/s (datasheet) */
  bandwidthGBps: number;
}

export const GPUS: Record<string, GpuSpec> = {
  'h100-80gb': { memoryMiB: 81559, bf16Tflops: 989, bandwidthGBps: 3350 },
  'h200-141gb': { memoryMiB: 143771, bf16Tflops: 989, bandwidthGBps: 4800 },
  'a100-80gb': { memoryMiB: 81920, bf16Tflops: 312, bandwidthGBps: 2039 },
  'l40s-48gb': { memoryMiB: 46068, bf16Tflops: 362, bandwidthGBps: 864 },
};

export const DEFAULT_MODEL_PROFILE = 'qwen3-8b';
export const DEFAULT_GPU = 'h100-80gb';
/** vLLM's defaults */
export const DEFAULT_GPU_MEMORY_UTILIZATION = 0.9;
export const DEFAULT_BLOCK_SIZE = 16;

export interface ProfileSpec {
  /** key of MODELS (default qwen3-8b) */
  model?: string;
  /** key of GPUS (default h100-80gb) */
  gpu?: string;
  /** GPUs per engine (default 1) */
  tensorParallelSize?: number;
  /** share of GPU memory vLLM may use (default 0.9) */
  gpuMemoryUtilization?: number;
  /** tokens per KV block (default 16) */
  blockSize?: number;
  /** profile_run's token count (default 8192, the simulator's max_num_batched_tokens) */
  maxNumBatchedTokens?: number;
  /** profile_run's sequences (default 256) */
  maxNumSeqs?: number;
  /** --num-blocks: use this many blocks instead of the derived number */
  numBlocksOverride?: number;
}

export interface SimProfile {
  model: string;
  gpu: string;
  tensorParallelSize: number;
  gpuMemoryUtilization: number;
  blockSize: number;
  /** parameters counted from the config */
  params: number;
  /** bytes, per GPU */
  gpuMemoryBytes: number;
  weightsBytes: number;
  activationBytes: number;
  /** requested − weights − activation, per GPU (may be ≤ 0: the model does not fit) */
  availableKvBytes: number;
  /** per GPU: 2 × layers × KV heads on this GPU × head dim × dtype */
  kvBytesPerToken: number;
  /** what the formula gives */
  derivedNumBlocks: number;
  /** what the engine gets (derived, or the override) */
  numBlocks: number;
  overridden: boolean;
  /** numBlocks × blockSize */
  tokens: number;
  /** the whole model's KV shape (bytes per block for offload / P/D transfers) */
  shape: ModelShape;
  timing: TimingModel;
}

const MiB = 1024 * 1024;

/** Parameters of a dense decoder from its config: embeddings (+ untied LM head), per-layer attention, MLP, norms. */
export function paramCount(m: ModelSpec): number {
  const q = m.hidden * m.heads * m.headDim;
  const kv = 2 * m.hidden * m.kvHeads * m.headDim;
  const o = m.heads * m.headDim * m.hidden;
  const attn = q + kv + o + (m.qkNorm ? 2 * m.headDim : 0);
  const mlp = 3 * m.hidden * m.intermediate;
  const norms = 2 * m.hidden;
  const embed = m.vocab * m.hidden * (m.tiedEmbeddings ? 1 : 2);
  return m.layers * (attn + mlp + norms) + embed + m.hidden;
}

/** KV heads one GPU holds under tensor parallelism (vLLM replicates them when TP exceeds their number). */
export function kvHeadsPerGpu(m: ModelSpec, tp: number): number {
  return Math.max(1, Math.floor(m.kvHeads / tp));
}

/** Estimate of vLLM's profile_run activation peak on one GPU (see the header). */
export function activationReserveBytes(m: ModelSpec, tp: number, maxNumBatchedTokens: number, maxNumSeqs: number): number {
  const mlp = maxNumBatchedTokens * ((3 * m.intermediate) / tp + 4 * m.hidden) * m.dtypeBytes;
  const sampler = 2 * maxNumSeqs * m.vocab * 4;
  return mlp + sampler;
}

function lookup<T>(table: Record<string, T>, key: string, what: string): T {
  const v = table[key.toLowerCase()];
  if (!v) throw new RangeError(`unknown ${what} ${JSON.stringify(key)} (${Object.keys(table).join(', ')})`);
  return v;
}

const REFERENCE = { model: MODELS[DEFAULT_MODEL_PROFILE]!, gpu: GPUS[DEFAULT_GPU]! };

/** The timing model scaled from the Qwen3-8B / H100 fit to this model, GPU and TP (see the header). */
export function scaledTiming(m: ModelSpec, g: GpuSpec, tp: number, base: TimingModel = DEFAULT_TIMING): TimingModel {
  const refParams = paramCount(REFERENCE.model);
  const prefill = (paramCount(m) / tp / refParams) * (REFERENCE.gpu.bf16Tflops / g.bf16Tflops);
  const decode = ((paramCount(m) * m.dtypeBytes) / tp / (refParams * REFERENCE.model.dtypeBytes)) * (REFERENCE.gpu.bandwidthGBps / g.bandwidthGBps);
  return {
    ...base,
    prefillA: base.prefillA * prefill,
    prefillB: base.prefillB * prefill,
    decodeP: base.decodeP * decode,
    decodeQ: base.decodeQ * decode,
    decodeR: base.decodeR * decode,
    decodePerSeq: base.decodePerSeq * decode,
  };
}

export function resolveProfile(spec: ProfileSpec = {}): SimProfile {
  const modelName = (spec.model ?? DEFAULT_MODEL_PROFILE).toLowerCase();
  const gpuName = (spec.gpu ?? DEFAULT_GPU).toLowerCase();
  const m = lookup(MODELS, modelName, 'model profile');
  const g = lookup(GPUS, gpuName, 'GPU');
  const tp = spec.tensorParallelSize ?? 1;
  if (!Number.isInteger(tp) || tp < 1) throw new RangeError(`tensor-parallel-size must be a positive integer, got ${tp}`);
  if (m.heads % tp !== 0) throw new RangeError(`tensor-parallel-size ${tp} does not divide ${modelName}'s ${m.heads} attention heads`);
  const util = spec.gpuMemoryUtilization ?? DEFAULT_GPU_MEMORY_UTILIZATION;
  if (!(util > 0 && util <= 1)) throw new RangeError(`gpu-memory-utilization must be in (0, 1], got ${util}`);
  const blockSize = spec.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new RangeError(`block size must be a positive integer, got ${blockSize}`);
  const params = paramCount(m);
  const gpuMemoryBytes = g.memoryMiB * MiB;
  const weightsBytes = (params * m.dtypeBytes) / tp;
  const activationBytes = activationReserveBytes(m, tp, spec.maxNumBatchedTokens ?? 8192, spec.maxNumSeqs ?? 256);
  const availableKvBytes = gpuMemoryBytes * util - weightsBytes - activationBytes;
  const kvBytesPerToken = 2 * m.layers * kvHeadsPerGpu(m, tp) * m.headDim * m.dtypeBytes;
  const derivedNumBlocks = Math.max(0, Math.floor(availableKvBytes / (blockSize * kvBytesPerToken)));
  const overridden = spec.numBlocksOverride !== undefined;
  const numBlocks = spec.numBlocksOverride ?? derivedNumBlocks;
  if (!Number.isInteger(numBlocks) || numBlocks < 1) {
    throw new RangeError(
      overridden
        ? `num-blocks must be a positive integer, got ${numBlocks}`
        : `${modelName} does not fit on ${tp} × ${gpuName} at gpu-memory-utilization ${util}: weights ${(weightsBytes / 2 ** 30).toFixed(1)} GiB + activations ${(activationBytes / 2 ** 30).toFixed(1)} GiB per GPU leave no room for KV (raise --tensor-parallel-size or pick a larger GPU)`,
    );
  }
  return {
    model: modelName,
    gpu: gpuName,
    tensorParallelSize: tp,
    gpuMemoryUtilization: util,
    blockSize,
    params,
    gpuMemoryBytes,
    weightsBytes,
    activationBytes,
    availableKvBytes,
    kvBytesPerToken,
    derivedNumBlocks,
    numBlocks,
    overridden,
    tokens: numBlocks * blockSize,
    shape: { layers: m.layers, kvHeads: m.kvHeads, headDim: m.headDim, dtypeBytes: m.dtypeBytes },
    timing: scaledTiming(m, g, tp),
  };
}

/** One line: model, GPU, TP, blocks × block size = tokens (and what the override replaced). */
export function formatCapacity(p: SimProfile): string {
  const gib = (b: number) => (b / 2 ** 30).toFixed(1);
  const head = `${p.model}, ${p.tensorParallelSize} × ${p.gpu} (TP ${p.tensorParallelSize}), gpu-memory-utilization ${p.gpuMemoryUtilization}`;
  const tokens = `${p.numBlocks} blocks × ${p.blockSize} tokens = ${p.tokens.toLocaleString('en-US')} tokens of KV per engine`;
  return p.overridden
    ? `${head}: ${tokens} (--num-blocks; the profile gives ${p.derivedNumBlocks})`
    : `${head}: ${tokens} (${gib(p.availableKvBytes)} GiB for KV per GPU after ${gib(p.weightsBytes)} GiB weights, ${gib(p.activationBytes)} GiB activations)`;
}
