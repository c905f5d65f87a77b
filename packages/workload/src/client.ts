/**
 * The load client of `kvgate start`: sends OpenAI requests to the router replicas (round-robin over them, undici
 * keep-alive pools), always streaming, and measures per request: time to first token, the gaps between tokens,
 * end-to-end latency, and the engine's prompt / cached token counts (`usage`, asked for with include_usage).
 */
import { Pool } from 'undici';

export interface RequestResult {
  ok: boolean;
  status: number;
  /** worker that served it (x-kvgate-worker) */
  worker: string | undefined;
  ttftMs: number;
  e2eMs: number;
  /** gaps between consecutive token events */
  itlMs: number[];
  promptTokens: number;
  cachedTokens: number;
  /** the x-request-id it was sent with, when the plan names one (joins the engines' own latencies) */
  requestId?: string;
  error?: string;
}

interface SseChunk {
  choices?: Array<{ text?: string; delta?: { content?: string | null; reasoning_content?: string | null } }>;
  usage?: { prompt_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } | null } | null;
}

export class LoadClient {
  #pools: Pool[];
  #next = 0;
  readonly #headers: Record<string, string>;

  /** `apiKey`: sent as `Authorization: Bearer …` (routers with --api-key) */
  constructor(routerUrls: string[], connections = 1024, apiKey?: string) {
    this.#headers = { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) };
    this.#pools = routerUrls.map((u) => new Pool(u, { connections, keepAliveTimeout: 30_000, headersTimeout: 0, bodyTimeout: 0 }));
  }

  /**
   * `body` must be a JSON object text without `stream` / `stream_options` (they are added here). `requestId`:
   * sent as x-request-id (the router and engine keep it) and kept on the result.
   */
  async send(path: '/v1/completions' | '/v1/chat/completions', bodyJson: string, requestId?: string): Promise<RequestResult> {
    const pool = this.#pools[this.#next++ % this.#pools.length]!;
    const body = `{"stream":true,"stream_options":{"include_usage":true},${bodyJson.slice(1)}`;
    const t0 = performance.now();
    const out: RequestResult = { ok: false, status: 0, worker: undefined, ttftMs: NaN, e2eMs: NaN, itlMs: [], promptTokens: 0, cachedTokens: 0, ...(requestId ? { requestId } : {}) };
    try {
      const headers = requestId ? { ...this.#headers, 'x-request-id': requestId } : this.#headers;
      const res = await pool.request({ path, method: 'POST', body, headers });
      out.status = res.statusCode;
      const w = res.headers['x-kvgate-worker'];
      out.worker = typeof w === 'string' ? w : undefined;
      if (res.statusCode !== 200) {
        out.error = (await res.body.text()).slice(0, 300);
        out.e2eMs = performance.now() - t0;
        return out;
      }
      let buf = '';
      let last = NaN;
      for await (const chunk of res.body) {
        buf += chunk.toString();
        let cut: number;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          if (!event.startsWith('data: ')) continue;
          const data = event.slice(6);
          if (data === '[DONE]') continue;
          // token events are counted without parsing (hot path); the usage event is parsed
          if (data.includes('"usage":{')) {
            const j = JSON.parse(data) as SseChunk;
            out.promptTokens = j.usage?.prompt_tokens ?? 0;
            out.cachedTokens = j.usage?.prompt_tokens_details?.cached_tokens ?? 0;
            if (!j.choices || j.choices.length === 0) continue;
          } else if (!data.includes('"choices":[{')) continue;
          const now = performance.now();
          if (Number.isNaN(last)) out.ttftMs = now - t0;
          else out.itlMs.push(now - last);
          last = now;
        }
      }
      out.e2eMs = performance.now() - t0;
      out.ok = true;
      if (Number.isNaN(out.ttftMs)) out.ttftMs = out.e2eMs;
    } catch (e) {
      out.error = (e as Error).message;
      out.e2eMs = performance.now() - t0;
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.#pools.map((p) => p.destroy()));
  }
}
