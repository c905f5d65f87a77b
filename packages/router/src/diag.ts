/**
 * The router's misconfiguration signals (issue 11; judges in @kvgate/protocol diag.ts), per worker, from the
 * engine's own `usage` in the responses it proxies:
 *   prompt-token-mismatch      the router's prompt token count ≠ `usage.prompt_tokens` (tokenizer / chat template);
 *   cache-prediction-mismatch  the index's predicted cached tokens ≫ `usage.prompt_tokens_details.cached_tokens`.
 * `UsageTap` reads the usage off the response body chunks as the relay passes them on: it never holds the client
 * stream back, and keeps at most 4 MiB of a JSON body and the last 16 KiB of an SSE stream (where the final usage
 * chunk is, when the client asked for `stream_options.include_usage`). `RouterDiag` keeps each worker's last 64
 * requests (RouterWindow), sets the gauges `kvgate_router_worker_prompt_token_mismatch{worker}` and
 * `kvgate_router_worker_cache_prediction_mismatch{worker}` (1 = the problem holds), warns at most once per worker
 * per condition per minute, and gives the entries of its `…diag.router.<router>` report.
 */
import { Gauge, type Registry } from 'prom-client';
import { DIAG_DEFAULTS, judgeRouter, predictedCachedTokens, RateGate, RouterWindow, type DiagThresholds, type DiagWorker, type Logger } from '@kvgate/protocol';

const JSON_CAP = 4 * 1024 * 1024;
const SSE_TAIL = 16 * 1024;

export interface EngineUsage {
  promptTokens: number | null;
  cachedTokens: number | null;
}

function usageOf(v: unknown): EngineUsage | null {
  if (typeof v !== 'object' || v === null) return null;
  const u = (v as { usage?: unknown }).usage;
  if (typeof u !== 'object' || u === null) return null;
  const p = (u as { prompt_tokens?: unknown }).prompt_tokens;
  const d = (u as { prompt_tokens_details?: unknown }).prompt_tokens_details;
  const c = typeof d === 'object' && d !== null ? (d as { cached_tokens?: unknown }).cached_tokens : undefined;
  return { promptTokens: nonNegInt(p), cachedTokens: nonNegInt(c) };
}

function nonNegInt(x: unknown): number | null {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 ? x : null;
}

/** Collects what it needs of one response body, chunk by chunk; `usage()` at the end. */
export class UsageTap {
  readonly #stream: boolean;
  #chunks: Buffer[] = [];
  #bytes = 0;
  #overflow = false;

  constructor(stream: boolean) {
    this.#stream = stream;
  }

  push(chunk: Buffer): void {
    if (this.#overflow) return;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    if (this.#stream) {
      // keep the tail: drop whole chunks from the front while what stays still covers SSE_TAIL
      while (this.#chunks.length > 1 && this.#bytes - this.#chunks[0]!.length >= SSE_TAIL) this.#bytes -= this.#chunks.shift()!.length;
    } else if (this.#bytes > JSON_CAP) {
      this.#overflow = true;
      this.#chunks = [];
    }
  }

  /** the engine's usage, or null when the body carried none (or was too large to keep) */
  usage(): EngineUsage | null {
    if (this.#overflow || this.#chunks.length === 0) return null;
    const text = Buffer.concat(this.#chunks).toString('utf8');
    if (!this.#stream) {
      try {
        return usageOf(JSON.parse(text));
      } catch {
        return null;
      }
    }
    // the last `data:` event carrying usage (vLLM sends it last, with choices [])
    const lines = text.split('\n');
    for (let i = lines.length - 1; i >= 0; i--) {
      const line = lines[i]!.trim();
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]' || !data.includes('"usage"')) continue;
      try {
        const u = usageOf(JSON.parse(data));
        if (u) return u;
      } catch {
        /* the tail's first line may be cut */
      }
    }
    return null;
  }
}

/** What the router knew of one request when it sent it. */
export interface SentRequest {
  /** the router's prompt token count; null when it routed without token ids */
  routerTokens: number | null;
  /** the index's GPU overlap (blocks) for the chosen worker; null when the index was not asked or is not comparable (P/D) */
  overlapBlocks: number | null;
  blockSize: number;
  /** a batch of prompts (usage sums them): not comparable */
  batch: boolean;
}

type Code = 'prompt-token-mismatch' | 'cache-prediction-mismatch';

export class RouterDiag {
  readonly #windows = new Map<string, RouterWindow>();
  readonly #t: DiagThresholds;
  readonly #gate = new RateGate(60_000);
  readonly #gauges: Record<Code, Gauge<'worker'>>;
  readonly #log: Logger;

  constructor(o: { registry: Registry; log: Logger; thresholds?: Partial<DiagThresholds> }) {
    this.#t = { ...DIAG_DEFAULTS, ...o.thresholds };
    this.#log = o.log;
    const registers = [o.registry];
    this.#gauges = {
      'prompt-token-mismatch': new Gauge({
        name: 'kvgate_router_worker_prompt_token_mismatch',
        help: "1 when this router's prompt token counts differ from the engine's usage.prompt_tokens over its recent requests to the worker (tokenizer or chat template mismatch)",
        labelNames: ['worker'],
        registers,
      }),
      'cache-prediction-mismatch': new Gauge({
        name: 'kvgate_router_worker_cache_prediction_mismatch',
        help: "1 when the index's predicted cached tokens far exceed the engine's usage.prompt_tokens_details.cached_tokens over recent requests to the worker (hash mismatch)",
        labelNames: ['worker'],
        registers,
      }),
    };
  }

  /** one finished 200 response from `worker` */
  observe(worker: string, sent: SentRequest, usage: EngineUsage | null): void {
    if (!usage || sent.batch) return;
    let w = this.#windows.get(worker);
    if (!w) this.#windows.set(worker, (w = new RouterWindow(this.#t.window)));
    const engineTokens = usage.promptTokens;
    const promptTokens = engineTokens ?? sent.routerTokens ?? 0;
    w.add({
      routerTokens: sent.routerTokens,
      engineTokens,
      predictedTokens: sent.overlapBlocks === null ? null : predictedCachedTokens(sent.overlapBlocks, sent.blockSize, promptTokens),
      cachedTokens: usage.cachedTokens,
      blockSize: sent.blockSize,
    });
    this.#judge(worker, w);
  }

  /** the worker left the registry */
  forget(worker: string): void {
    if (!this.#windows.delete(worker)) return;
    for (const g of Object.values(this.#gauges)) g.remove({ worker });
  }

  /** every worker seen, judged now (the report's entries) */
  check(): DiagWorker[] {
    return [...this.#windows].map(([worker, w]) => this.#judge(worker, w));
  }

  #judge(worker: string, w: RouterWindow): DiagWorker {
    const router = w.facts();
    const findings = judgeRouter(router, this.#t);
    for (const code of Object.keys(this.#gauges) as Code[]) this.#gauges[code].set({ worker }, findings.some((f) => f.code === code) ? 1 : 0);
    for (const f of findings) if (this.#gate.pass(`${worker}|${f.code}`)) this.#log.warn({ worker, problem: f.code, check: f.check }, `worker ${worker}: ${f.message}`);
    return { worker, findings, router };
  }
}
