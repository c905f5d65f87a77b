/**
 * Prompt → token ids, for hashing. Never on the critical path of correctness: when no token ids can be had, the
 * router routes by load alone.
 *
 * Sources, in order: token ids in the request (used as they are); the local tokenizer (`--tokenizer`, tokenizer.json
 * + chat template) when configured; else the pool engine's `POST /tokenize` (vLLM's API), with a short timeout.
 * Results are cached in an LRU keyed by a digest of the text.
 *
 * Chat: the rendered template is cut before every special token (`<|im_start|>`, `<|im_end|>`, …). Special tokens
 * are split out before any BPE merge, so encoding the pieces one by one gives exactly the ids of the whole, and
 * every earlier turn's pieces are already cached: a multi-turn request tokenizes only its new turn.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { request, type Dispatcher } from 'undici';
import type { ChatMessage, Tokenizer } from '@kvgate/protocol/tokenizer';

export interface TokenizeOptions {
  /** local tokenizer; absent = ask the engine */
  tokenizer?: Tokenizer;
  /** cached tokenizations (whole prompts and chat pieces); default 20000 */
  cacheEntries?: number;
  /** budget for an engine /tokenize call; default 250 ms */
  remoteTimeoutMs?: number;
  /** undici dispatcher for engine calls (the router's keep-alive agent) */
  dispatcher?: Dispatcher;
  /** `Authorization` header value for the engines' /tokenize (the router's engine API key); default none */
  authorization?: string;
}

export interface ChatTokenizeInput {
  messages: ChatMessage[];
  tools?: unknown[];
  kwargs?: Record<string, unknown>;
  addGenerationPrompt?: boolean;
}

function digest(kind: string, text: string): string {
  return createHash('sha1').update(kind).update('\0').update(text).digest('base64');
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export class PromptTokenizer {
  #tok: Tokenizer | undefined;
  #cache: LRUCache<string, number[]>;
  #timeoutMs: number;
  #dispatcher: Dispatcher | undefined;
  #headers: Record<string, string>;
  #splitRe: RegExp | undefined;
  /** counters for metrics: pieces served from the cache / encoded */
  hits = 0;
  misses = 0;

  constructor(opts: TokenizeOptions = {}) {
    this.#tok = opts.tokenizer;
    this.#cache = new LRUCache({ max: opts.cacheEntries ?? 20_000 });
    this.#timeoutMs = opts.remoteTimeoutMs ?? 250;
    this.#dispatcher = opts.dispatcher;
    this.#headers = { 'content-type': 'application/json', ...(opts.authorization ? { authorization: opts.authorization } : {}) };
    if (this.#tok) {
      const tok = this.#tok;
      const specials = [...tok.specialTokenIds].map((id) => tok.decode([id])).filter((s) => s.length > 0);
      if (specials.length > 0) this.#splitRe = new RegExp(`(?=${specials.sort((a, b) => b.length - a.length).map(escapeRe).join('|')})`, 'g');
    }
  }

  get local(): boolean {
    return this.#tok !== undefined;
  }

  /** Token ids of a plain prompt (the text is encoded as-is; completions add no chat template). */
  async prompt(text: string, model: string, engineUrl?: string): Promise<number[] | null> {
    const key = digest(`p|${this.#tok ? '' : model}`, text);
    const hit = this.#cache.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    let ids: number[] | null;
    if (this.#tok) ids = this.#tok.encode(text, { addSpecialTokens: true });
    else ids = engineUrl ? await this.#remote(engineUrl, { model, prompt: text }) : null;
    if (ids) this.#cache.set(key, ids);
    return ids;
  }

  /** Token ids of a chat request as the engine will see it (template applied, generation prompt added). */
  async chat(input: ChatTokenizeInput, model: string, engineUrl?: string): Promise<number[] | null> {
    if (this.#tok) return this.chatLocal(input);
    const body = {
      model,
      messages: input.messages,
      add_generation_prompt: input.addGenerationPrompt ?? true,
      ...(input.tools ? { tools: input.tools } : {}),
      ...(input.kwargs ? { chat_template_kwargs: input.kwargs } : {}),
    };
    const key = digest(`c|${model}`, JSON.stringify(body));
    const hit = this.#cache.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const ids = engineUrl ? await this.#remote(engineUrl, body) : null;
    if (ids) this.#cache.set(key, ids);
    return ids;
  }

  /** Local chat tokenization, piece by piece (see the module comment). Synchronous. */
  chatLocal(input: ChatTokenizeInput): number[] {
    const tok = this.#tok!;
    const text = tok.applyChatTemplate(input.messages, {
      addGenerationPrompt: input.addGenerationPrompt ?? true,
      ...(input.tools ? { tools: input.tools } : {}),
      ...(input.kwargs ? { kwargs: input.kwargs } : {}),
    });
    const pieces = this.#splitRe ? text.split(this.#splitRe) : [text];
    const out: number[] = [];
    for (const piece of pieces) {
      if (piece.length === 0) continue;
      const key = digest('s', piece);
      let ids = this.#cache.get(key);
      if (ids) this.hits++;
      else {
        this.misses++;
        ids = tok.encode(piece, { addSpecialTokens: false });
        this.#cache.set(key, ids);
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    }
    return out;
  }

  async #remote(engineUrl: string, body: unknown): Promise<number[] | null> {
    try {
      const res = await request(new URL('/tokenize', engineUrl), {
        method: 'POST',
        headers: this.#headers,
        body: JSON.stringify(body),
        ...(this.#dispatcher ? { dispatcher: this.#dispatcher } : {}),
        headersTimeout: this.#timeoutMs,
        bodyTimeout: this.#timeoutMs,
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      if (res.statusCode !== 200) {
        await res.body.dump();
        return null;
      }
      const j = (await res.body.json()) as { tokens?: unknown };
      if (!Array.isArray(j.tokens) || !j.tokens.every((t) => Number.isInteger(t))) return null;
      return j.tokens as number[];
    } catch {
      return null;
    }
  }
}
