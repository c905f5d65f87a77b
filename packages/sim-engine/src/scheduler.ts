/**
 * Continuous batching with chunked prefill (pure: time is an input, nothing here reads a clock or a socket),
 * modelled on vLLM v1's scheduler:
 *
 * - Each `step(now)` builds one batch under a token budget (`maxNumBatchedTokens`) and a sequence cap
 *   (`maxNumSeqs`): running requests first (one token per decode, the next chunk for a partial prefill), then
 *   waiting requests in arrival order, each starting from its longest prefix-cache hit.
 * - When a running request needs a block and none is free, the most recently scheduled running request is
 *   preempted (recompute: its blocks are freed, it goes back to the front of the queue).
 * - The step's duration comes from the timing model; its effects (computed tokens, newly cached blocks,
 *   sampled tokens) are applied at once and stamped with `endMs = now + duration`. A real-time driver delivers
 *   them after `duration / speedup`; a virtual-clock driver (replay whatif) just advances its clock.
 *
 * CPU offload (`cpuOffloadBlocks` > 0): a prompt's hit is its GPU prefix, then the run of following blocks held on
 * the CPU tier (vLLM's OffloadingConnector: get_num_new_matched_tokens looks up after the local hit). CPU-hit
 * blocks get fresh GPU blocks and are reloaded in the admitting step: that step costs their PCIe copy time
 * (timing.reloadMs) on top of its compute, and their tokens are not prefilled. Once reloaded they are cached on
 * GPU again (a BlockStored GPU with their tokens, as vLLM's cache_full_blocks emits after a connector load).
 * `cachedTokens` counts GPU + CPU hits (vLLM's num_cached_tokens = local + external computed tokens).
 *
 * P/D: a request submitted with `remoteKv` has its prompt's KV delivered from a prefill engine (the driver has
 * already moved the bytes); it computes only its last prompt token, timed as one more sequence of the decode batch. A request with `holdOnFinish` keeps its
 * blocks after finishing until `releaseHeld` (the prefill side waiting for the decode side to pull them).
 */
import { BlockHasher, type BlockDigest, type HashAlgo } from './block-hash.js';
import { KvCache, type KvCacheEvent } from './kv-cache.js';
import { DEFAULT_OFFLOAD_LINK, DEFAULT_TIMING, QWEN3_8B_SHAPE, bytesPerBlock, reloadMs, stepMs, type OffloadLinkModel, type TimingModel } from './timing.js';

export interface SchedulerOptions {
  /** KV capacity in blocks (default 16384) */
  numBlocks?: number;
  /** tokens per block (default 16) */
  blockSize?: number;
  /** max sequences in one batch (default 256) */
  maxNumSeqs?: number;
  /** token budget per step, shared by decodes and prefill chunks (default 8192) */
  maxNumBatchedTokens?: number;
  /** timing model (default DEFAULT_TIMING) */
  timing?: TimingModel;
  /** seed of the engine's block-hash chain (default: random per instance, like vLLM) */
  hashSeed?: string;
  /** engine block-hash algorithm, as vLLM's --prefix-caching-hash-algo (default sha256) */
  hashAlgo?: HashAlgo;
  /** output token for a request's `index`-th generated token (default: a deterministic spread over 100..10099) */
  sample?: (requestId: string, index: number) => number;
  /** CPU offload tier capacity in blocks; 0 = off (default 0) */
  cpuOffloadBlocks?: number;
  /** KV bytes of one block, for the reload time (default: Qwen3-8B bf16 at this block size) */
  kvBytesPerBlock?: number;
  /** GPU ↔ host link of the offload tier (default DEFAULT_OFFLOAD_LINK: 25 GB/s) */
  offloadLink?: OffloadLinkModel;
  /** record KV events (default true; a virtual-clock driver that never reads them turns them off) */
  recordEvents?: boolean;
}

export interface SubmitRequest {
  id: string;
  promptTokens: readonly number[];
  /** tokens to generate (≥ 1); the request finishes with 'length' after that many */
  maxTokens: number;
  /** simulated arrival time, ms */
  arrivalMs: number;
  /** the prompt's KV arrives from a remote prefill engine (decode side of P/D) */
  remoteKv?: boolean;
  /** keep the blocks when finished, until releaseHeld(id) (prefill side of P/D) */
  holdOnFinish?: boolean;
  /** the prompt's block digests, as this scheduler's prefixDigests(promptTokens) gives them (saves hashing again) */
  digests?: readonly BlockDigest[];
}

export interface TokenOutput {
  id: string;
  token: number;
  /** 0 for the first generated token */
  index: number;
  /** set on the request's last token */
  finishReason: 'length' | null;
  promptTokens: number;
  /** prompt tokens served from the prefix cache at first scheduling, GPU + CPU tier (vLLM's num_cached_tokens) */
  cachedTokens: number;
  /** of those, tokens reloaded from the CPU tier (vLLM's num_external_computed_tokens) */
  cpuCachedTokens: number;
  /** simulated time this token became available (the step's end) */
  atMs: number;
}

export interface StepResult {
  startMs: number;
  durationMs: number;
  endMs: number;
  /** new prompt tokens computed in this step */
  prefillTokens: number;
  /** one-token decodes in this step */
  decodeSeqs: number;
  /** blocks reloaded from the CPU tier in this step, and the ms that took (included in durationMs) */
  reloadBlocks: number;
  reloadMs: number;
  outputs: TokenOutput[];
  /** KV events of this step, oldest first (one published batch) */
  events: KvCacheEvent[];
  preempted: string[];
}

export interface HeldBlocks {
  blockIds: number[];
  promptTokens: readonly number[];
}

export interface SchedulerStats {
  waiting: number;
  running: number;
  held: number;
  kvUsage: number;
  numBlocks: number;
  blockSize: number;
  freeBlocks: number;
  cachedBlocks: number;
  /** prompt tokens looked up in the GPU prefix cache / found there (vLLM's prefix_cache_queries / hits) */
  prefixQueries: number;
  prefixHits: number;
  /**
   * prompt tokens looked up by the offload connector / found on CPU (vLLM's external_prefix_cache_queries /
   * hits: the whole prompt is the query, the CPU run after the GPU hit the hits); 0 while the tier is off
   */
  externalQueries: number;
  externalHits: number;
  /** CPU tier: capacity and blocks held now (0 when off), blocks reloaded to GPU so far */
  cpuBlocks: number;
  cpuCachedBlocks: number;
  cpuReloadedBlocks: number;
  preemptions: number;
  promptTokensComputed: number;
  /** P/D decode side: prompt tokens whose KV came from a prefill engine (vLLM prompt_tokens_by_source external_kv_transfer) */
  promptTokensTransferred: number;
  generationTokens: number;
}

interface Req {
  id: string;
  tokens: number[];
  promptLen: number;
  maxTokens: number;
  arrivalMs: number;
  digests: BlockDigest[];
  blocks: number[];
  /** leading blocks already registered in the cache (hit or cached after compute) */
  cachedUpTo: number;
  numComputed: number;
  outputs: number;
  cachedTokens: number;
  cpuCachedTokens: number;
  looked: boolean;
  remoteKv: boolean;
  holdOnFinish: boolean;
  running: boolean;
}

function defaultSample(id: string, index: number): number {
  let h = 2166136261;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619);
  return 100 + ((((h >>> 0) + Math.imul(index + 1, 2654435761)) >>> 0) % 10000);
}

export class Scheduler {
  readonly cache: KvCache;
  readonly hasher: BlockHasher;
  readonly blockSize: number;
  #maxNumSeqs: number;
  #budget: number;
  #timing: TimingModel;
  #sample: (id: string, index: number) => number;
  #waiting: Req[] = [];
  #running: Req[] = [];
  #byId = new Map<string, Req>();
  #held = new Map<string, HeldBlocks>();
  #stats = { prefixQueries: 0, prefixHits: 0, externalQueries: 0, externalHits: 0, cpuReloadedBlocks: 0, preemptions: 0, promptTokensComputed: 0, promptTokensTransferred: 0, generationTokens: 0 };
  #bytesPerBlock: number;
  #link: OffloadLinkModel;

  constructor(opts: SchedulerOptions = {}) {
    this.blockSize = opts.blockSize ?? 16;
    this.cache = new KvCache(opts.numBlocks ?? 16384, this.blockSize, opts.cpuOffloadBlocks ?? 0, opts.recordEvents ?? true);
    this.#bytesPerBlock = opts.kvBytesPerBlock ?? bytesPerBlock(QWEN3_8B_SHAPE, this.blockSize);
    this.#link = opts.offloadLink ?? DEFAULT_OFFLOAD_LINK;
    if (!(this.#bytesPerBlock >= 0) || !(this.#link.bandwidthGBps > 0) || !(this.#link.latencyMs >= 0)) throw new RangeError('kvBytesPerBlock must be ≥ 0, offload bandwidth > 0 and latency ≥ 0');
    this.hasher = new BlockHasher(opts.hashSeed, opts.hashAlgo);
    this.#maxNumSeqs = opts.maxNumSeqs ?? 256;
    this.#budget = opts.maxNumBatchedTokens ?? 8192;
    this.#timing = opts.timing ?? DEFAULT_TIMING;
    this.#sample = opts.sample ?? defaultSample;
    if (this.#budget < 1 || this.#maxNumSeqs < 1) throw new RangeError('maxNumBatchedTokens and maxNumSeqs must be ≥ 1');
  }

  /** Blocks a request needs at most (prompt + all generated tokens). */
  blocksNeeded(promptTokens: number, maxTokens: number): number {
    return Math.ceil((promptTokens + maxTokens) / this.blockSize);
  }

  submit(r: SubmitRequest): void {
    if (this.#byId.has(r.id) || this.#held.has(r.id)) throw new Error(`duplicate request id ${r.id}`);
    if (r.promptTokens.length === 0) throw new RangeError('prompt must hold at least one token');
    if (!(r.maxTokens >= 1)) throw new RangeError('maxTokens must be ≥ 1');
    if (this.blocksNeeded(r.promptTokens.length, r.maxTokens) > this.cache.numBlocks) throw new RangeError('request exceeds the KV cache capacity');
    const req: Req = {
      id: r.id,
      tokens: r.promptTokens.slice(),
      promptLen: r.promptTokens.length,
      maxTokens: r.maxTokens,
      arrivalMs: r.arrivalMs,
      digests: r.digests ? r.digests.slice() : [],
      blocks: [],
      cachedUpTo: 0,
      numComputed: 0,
      outputs: 0,
      cachedTokens: 0,
      cpuCachedTokens: 0,
      looked: false,
      remoteKv: r.remoteKv ?? false,
      holdOnFinish: r.holdOnFinish ?? false,
      running: false,
    };
    this.hasher.extend(req.digests, req.tokens, this.blockSize);
    this.#byId.set(req.id, req);
    this.#waiting.push(req);
  }

  /** Drops a request wherever it is (client gone); frees its blocks. True if it was known. */
  abort(id: string): boolean {
    if (this.releaseHeld(id)) return true;
    const req = this.#byId.get(id);
    if (!req) return false;
    this.#byId.delete(id);
    if (req.running) this.#running.splice(this.#running.indexOf(req), 1);
    else this.#waiting.splice(this.#waiting.indexOf(req), 1);
    this.#freeBlocks(req);
    return true;
  }

  /** Blocks kept after a holdOnFinish request finished. */
  held(id: string): HeldBlocks | undefined {
    return this.#held.get(id);
  }

  /** Frees held blocks (pulled by the decode side, or expired). */
  releaseHeld(id: string): boolean {
    const h = this.#held.get(id);
    if (!h) return false;
    this.#held.delete(id);
    this.cache.free([...h.blockIds].reverse());
    return true;
  }

  /** Clears the prefix cache; refused while any block is in use. Its AllBlocksCleared event comes with the next drain. */
  resetPrefixCache(): boolean {
    return this.cache.reset();
  }

  /** Events not tied to a step (e.g. a reset while idle). */
  drainEvents(): KvCacheEvent[] {
    return this.cache.drainEvents();
  }

  /** Full blocks of `tokens` this engine holds cached now (a peek; changes nothing). */
  cachedPrefixBlocks(tokens: readonly number[]): number {
    return this.cache.longestHit(this.prefixDigests(tokens));
  }

  /** Digests of the full blocks of `tokens` under this engine's hash seed. */
  prefixDigests(tokens: readonly number[]): BlockDigest[] {
    const digests: BlockDigest[] = [];
    this.hasher.extend(digests, tokens, this.blockSize);
    return digests;
  }

  /** Leading `digests` (from prefixDigests, or a scheduler with the same seed) the GPU cache holds. */
  cachedDigestBlocks(digests: readonly BlockDigest[]): number {
    return this.cache.longestHit(digests);
  }

  /** Full blocks of `tokens` after that GPU prefix that the CPU tier holds (a peek; 0 when the tier is off). */
  cpuPrefixBlocks(tokens: readonly number[]): number {
    const off = this.cache.offload;
    if (!off) return 0;
    const digests: BlockDigest[] = [];
    this.hasher.extend(digests, tokens, this.blockSize);
    return off.run(digests, this.cache.longestHit(digests));
  }

  get idle(): boolean {
    return this.#running.length === 0 && this.#waiting.length === 0;
  }

  stats(): SchedulerStats {
    return {
      waiting: this.#waiting.length,
      running: this.#running.length,
      held: this.#held.size,
      kvUsage: this.cache.usage,
      numBlocks: this.cache.numBlocks,
      blockSize: this.blockSize,
      freeBlocks: this.cache.freeBlocks,
      cachedBlocks: this.cache.cachedBlocks,
      cpuBlocks: this.cache.offload?.capacity ?? 0,
      cpuCachedBlocks: this.cache.offload?.size ?? 0,
      ...this.#stats,
    };
  }

  /** Runs one step at simulated time `now` (ms). Null when there is nothing it can schedule. */
  step(now: number): StepResult | null {
    const B = this.blockSize;
    let budget = this.#budget;
    const sched: Array<{ req: Req; n: number; decode: boolean }> = [];
    const preempted: string[] = [];
    const offload = this.cache.offload;
    let reloadBlocks = 0;
    let remoteLastTokens = 0;

    // 1. running requests, oldest first
    for (let i = 0; i < this.#running.length && budget > 0; i++) {
      const req = this.#running[i]!;
      const n = Math.min(req.tokens.length - req.numComputed, budget);
      let ok = this.#ensureBlocks(req, req.numComputed + n);
      while (!ok) {
        const victim = this.#running[this.#running.length - 1]!;
        this.#preempt(victim);
        preempted.push(victim.id);
        if (victim === req) break;
        ok = this.#ensureBlocks(req, req.numComputed + n);
      }
      if (!ok) break; // req itself was preempted (it was the last running one)
      sched.push({ req, n, decode: req.outputs > 0 && req.numComputed === req.tokens.length - 1 });
      budget -= n;
    }

    // 2. waiting requests in order (none admitted in a step that had to preempt, as vLLM)
    while (preempted.length === 0 && budget > 0 && this.#waiting.length > 0 && this.#running.length < this.#maxNumSeqs) {
      const req = this.#waiting[0]!;
      let hitCount = 0;
      let cpuHit: BlockDigest[] = [];
      const fresh = req.numComputed === 0;
      if (fresh) {
        // the whole hit (GPU + CPU) leaves at least the last prompt token to compute, as vLLM's lookups do
        const maxHit = Math.floor((req.tokens.length - 1) / B);
        const hit = this.cache.longestHit(req.digests, maxHit);
        req.blocks = this.cache.touch(req.digests, hit);
        hitCount = hit;
        req.cachedUpTo = hit;
        // a P/D decode request's prompt KV arrives over the wire: nothing to reload for it
        if (offload && !req.remoteKv) {
          cpuHit = req.digests.slice(hit, hit + offload.run(req.digests, hit, maxHit));
          // the GPU evictions that make room for this request go to CPU: they must not push out what it reloads
          offload.pin(cpuHit);
        }
        req.numComputed = (hit + cpuHit.length) * B;
      }
      const remote = req.remoteKv && req.outputs === 0 && req.numComputed < req.tokens.length - 1;
      const target = remote ? req.tokens.length : req.numComputed + Math.min(req.tokens.length - req.numComputed, budget);
      const ok = this.#ensureBlocks(req, target);
      if (cpuHit.length) offload!.unpin(cpuHit);
      if (!ok) {
        this.#freeBlocks(req);
        break;
      }
      this.#waiting.shift();
      if (fresh) {
        // counted once per admission, as vLLM counts one lookup per scheduled request
        this.#stats.prefixQueries += req.tokens.length;
        this.#stats.prefixHits += hitCount * B;
        if (offload) {
          this.#stats.externalQueries += req.tokens.length;
          this.#stats.externalHits += cpuHit.length * B;
        }
        if (cpuHit.length) {
          offload!.touch(cpuHit);
          reloadBlocks += cpuHit.length;
        }
        if (!req.looked) {
          req.cachedTokens = (hitCount + cpuHit.length) * B;
          req.cpuCachedTokens = cpuHit.length * B;
        }
        req.looked = true;
      }
      req.running = true;
      this.#running.push(req);
      if (remote) {
        // KV of all prompt tokens but the last came over the (modelled) wire: no compute for them
        this.#stats.promptTokensTransferred += req.tokens.length - 1 - req.numComputed;
        req.numComputed = req.tokens.length - 1;
        req.remoteKv = false;
      }
      const n = Math.min(req.tokens.length - req.numComputed, budget);
      // after a transfer only the last prompt token is computed: one more row of the decode batch (vLLM schedules
      // it as such), not a prefill step with its fixed cost
      sched.push({ req, n, decode: remote });
      if (remote) remoteLastTokens += n;
      budget -= n;
    }

    if (sched.length === 0) return null;

    let prefillTokens = 0, decodeSeqs = 0;
    for (const s of sched) {
      if (s.decode) decodeSeqs++;
      else prefillTokens += s.n;
    }
    // the reload is a copy on the host link, not compute: it adds to the step that needs the blocks
    const reload = reloadMs(this.#link, reloadBlocks * this.#bytesPerBlock);
    const durationMs = stepMs(this.#timing, prefillTokens, decodeSeqs, this.cache.usage) + reload;
    const endMs = now + durationMs;
    this.#stats.promptTokensComputed += prefillTokens + remoteLastTokens;
    this.#stats.cpuReloadedBlocks += reloadBlocks;

    const outputs: TokenOutput[] = [];
    const finished: Req[] = [];
    for (const { req, n } of sched) {
      req.numComputed += n;
      this.#cacheComputed(req);
      if (req.numComputed === req.tokens.length) {
        const token = this.#sample(req.id, req.outputs);
        const index = req.outputs++;
        req.tokens.push(token);
        this.#stats.generationTokens++;
        const done = req.outputs >= req.maxTokens;
        outputs.push({ id: req.id, token, index, finishReason: done ? 'length' : null, promptTokens: req.promptLen, cachedTokens: req.cachedTokens, cpuCachedTokens: req.cpuCachedTokens, atMs: endMs });
        if (done) finished.push(req);
      }
    }
    for (const req of finished) {
      this.#running.splice(this.#running.indexOf(req), 1);
      this.#byId.delete(req.id);
      req.running = false;
      if (req.holdOnFinish) this.#held.set(req.id, { blockIds: req.blocks, promptTokens: req.tokens.slice(0, req.promptLen) });
      else this.#freeBlocks(req);
    }
    return { startMs: now, durationMs, endMs, prefillTokens, decodeSeqs, reloadBlocks, reloadMs: reload, outputs, events: this.cache.drainEvents(), preempted };
  }

  /** Grows req.blocks to cover `tokens` tokens; false (nothing allocated) when the pool is short. */
  #ensureBlocks(req: Req, tokens: number): boolean {
    const need = Math.ceil(tokens / this.blockSize) - req.blocks.length;
    if (need <= 0) return true;
    const got = this.cache.allocate(need);
    if (!got) return false;
    for (const id of got) req.blocks.push(id);
    return true;
  }

  #freeBlocks(req: Req): void {
    this.cache.free(req.blocks.slice().reverse());
    req.blocks = [];
    req.cachedUpTo = 0;
    req.numComputed = 0;
  }

  #preempt(req: Req): void {
    this.#running.splice(this.#running.indexOf(req), 1);
    req.running = false;
    this.#freeBlocks(req);
    this.#waiting.unshift(req);
    this.#stats.preemptions++;
  }

  /** Registers the request's newly full, computed blocks in the cache; one BlockStored per contiguous run. */
  #cacheComputed(req: Req): void {
    const B = this.blockSize;
    const full = Math.floor(req.numComputed / B);
    if (full <= req.cachedUpTo) return;
    if (req.digests.length < full) this.hasher.extend(req.digests, req.tokens, B);
    let runStart = -1;
    const flush = (end: number) => {
      if (runStart < 0) return;
      if (this.cache.recordsEvents) this.cache.recordStored(req.digests.slice(runStart, end), runStart === 0 ? null : req.digests[runStart - 1]!, req.tokens.slice(runStart * B, end * B));
      runStart = -1;
    };
    for (let i = req.cachedUpTo; i < full; i++) {
      const r = this.cache.cacheBlock(req.blocks[i]!, req.digests[i]!);
      req.blocks[i] = r.id;
      if (r.stored) {
        if (runStart < 0) runStart = i;
      } else flush(i);
    }
    flush(full);
    req.cachedUpTo = full;
  }
}
