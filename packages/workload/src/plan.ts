/**
 * A workload as a plan: every request's send time, endpoint and body, known up front, plus the blocks its prompt
 * covers (for the hit-rate bounds). Two sources: a Mooncake trace (trace.ts) and the built-in multi-turn chat
 * workload (shared system prompts; turn k of a conversation carries turns 1..k-1, so it extends an earlier prompt).
 * `runPlan` replays a plan open-loop against the routers: each request leaves at its time, whatever the replies.
 */
import { mulberry32, prefixHashes } from '@kvgate/protocol';
import type { ChatMessage } from '@kvgate/protocol/tokenizer';
import type { PromptTokenizer } from '@kvgate/router';
import type { BoundBlock } from './bounds.js';
import type { LoadClient, RequestResult } from './client.js';
import { readTrace, recordTokens, TRACE_BLOCK, type TraceRecord } from './trace.js';

export interface PlannedRequest {
  /** wall ms after the run starts */
  atMs: number;
  path: '/v1/completions' | '/v1/chat/completions';
  /** the JSON body (without stream options), built when sent */
  body(): string;
}

export interface Plan {
  name: string;
  requests: PlannedRequest[];
  /** prompt blocks per request, in send order (bounds.ts) */
  blocks(): Iterable<BoundBlock[]>;
  /** tokens per bound block */
  blockTokens: number;
}

/** Mooncake trace → plan. `compress` divides the trace's timestamps (10 = ten times faster). */
export function tracePlan(records: readonly TraceRecord[], model: string, compress: number): Plan {
  const requests = records.map((r) => ({
    atMs: r.timestamp / compress,
    path: '/v1/completions' as const,
    body: () => `{"model":${JSON.stringify(model)},"max_tokens":${Math.max(1, r.outputLength)},"ignore_eos":true,"prompt":[${recordTokens(r).join(',')}]}`,
  }));
  return {
    name: 'trace',
    requests,
    blockTokens: TRACE_BLOCK,
    *blocks() {
      for (const r of records) {
        yield r.hashIds.map((h, i) => ({ key: h, tokens: i < r.hashIds.length - 1 ? TRACE_BLOCK : r.inputLength - TRACE_BLOCK * i }));
      }
    },
  };
}

export interface ChatWorkloadOptions {
  /** distinct shared contexts: a system prompt with a reference document each (default 16) */
  systemPrompts?: number;
  /** words per shared context (default 6000, ≈ 6k tokens) */
  systemWords?: number;
  /** conversations (default 56); conversation c reads shared context c mod systemPrompts */
  conversations?: number;
  /** turns per conversation (default 5) */
  turns?: number;
  /** words per user turn (default 100) */
  userWords?: number;
  /** words per (scripted) assistant turn (default 60) */
  replyWords?: number;
  /** conversations start spread over this many wall ms (default 12000) */
  spreadMs?: number;
  /** wall ms between a conversation's turns (default 2000) */
  turnGapMs?: number;
  /** max_tokens per request (default 32) */
  maxTokens?: number;
  /**
   * what the client sends: 'tokens' (default) — /v1/completions with the token ids of the chat-rendered prompt
   * (the ids the engine would compute; needs a local tokenizer when the plan is built), or 'chat' — the messages to
   * /v1/chat/completions, tokenized by the routers (incrementally) and again, whole, by every engine.
   */
  format?: 'tokens' | 'chat';
  seed?: number;
}

const WORDS =
  'time person year way day thing man world life hand part child eye woman place work week case point government company number group problem fact be have do say get make go know take see come think look want give use find tell ask seem feel try leave call good new first last long great little own other old right big high different small large next early young important few public bad same able to of in for on with at by from up about into over after beneath under above the and a that I it not he you this but his they her she or an will my one all would there their river mountain engine cache router token block prefix worker queue latency memory network packet signal vector matrix tensor kernel thread socket buffer stream'.split(
    ' ',
  );


function words(r: () => number, n: number): string {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(WORDS[Math.floor(r() * WORDS.length)]!);
  return out.join(' ') + '.';
}

/**
 * The built-in workload, RAG / agent style: a few long shared contexts (system prompt + reference document, ≈ 6k
 * tokens each) and multi-turn conversations over them; each turn re-sends the conversation so far (scripted
 * assistant replies, so the plan is fixed), so its prompt extends the previous turn's. `tokenizer` (local) renders
 * the prompts for the 'tokens' format and gives the bound blocks.
 */
export function chatPlan(model: string, tokenizer: PromptTokenizer | undefined, blockSize: number, o: ChatWorkloadOptions = {}): Plan {
  const r = mulberry32(o.seed ?? 42);
  const nSystems = o.systemPrompts ?? 16;
  const systems = Array.from(
    { length: nSystems },
    (_, i) => `You are assistant #${i}. Answer from the reference document below.\n\n# Reference document ${i}\n\n${words(r, o.systemWords ?? 6000)}`,
  );
  const conversations = o.conversations ?? 56;
  const turns = o.turns ?? 5;
  const spread = o.spreadMs ?? 12_000;
  const gap = o.turnGapMs ?? 2000;
  const maxTokens = o.maxTokens ?? 32;
  const format = o.format ?? 'tokens';
  if (format === 'tokens' && !tokenizer) throw new Error("chatPlan: format 'tokens' needs a local tokenizer");
  const planned: Array<PlannedRequest & { messages: ChatMessage[]; ids: number[] | null }> = [];
  for (let c = 0; c < conversations; c++) {
    const start = (spread * c) / conversations + r() * 200;
    const messages: ChatMessage[] = [{ role: 'system', content: systems[c % nSystems]! }];
    for (let t = 0; t < turns; t++) {
      messages.push({ role: 'user', content: `Question ${t + 1} of conversation ${c}: ${words(r, o.userWords ?? 100)}` });
      const snapshot = messages.slice();
      let body: string;
      let ids: number[] | null = null;
      if (format === 'tokens') {
        ids = tokenizer!.chatLocal({ messages: snapshot });
        body = `{"model":${JSON.stringify(model)},"max_tokens":${maxTokens},"ignore_eos":true,"prompt":[${ids.join(',')}]}`;
        planned.push({ atMs: start + t * gap, path: '/v1/completions', body: () => body, messages: snapshot, ids });
      } else {
        body = JSON.stringify({ model, messages: snapshot, max_tokens: maxTokens, ignore_eos: true });
        planned.push({ atMs: start + t * gap, path: '/v1/chat/completions', body: () => body, messages: snapshot, ids });
      }
      messages.push({ role: 'assistant', content: words(r, o.replyWords ?? 60) });
    }
  }
  planned.sort((a, b) => a.atMs - b.atMs);
  return {
    name: 'chat',
    requests: planned,
    blockTokens: blockSize,
    *blocks() {
      for (const p of planned) {
        if (!tokenizer) throw new Error('chatPlan: bound blocks need a local tokenizer');
        const ids = p.ids ?? tokenizer.chatLocal({ messages: p.messages });
        yield prefixHashes(model, null, blockSize, ids).map((h) => ({ key: h, tokens: blockSize }));
      }
    },
  };
}

/** Sends every planned request at its time; resolves with the results in plan order. */
/** `requestIdPrefix`: request i is sent with x-request-id `<prefix>-<i>` (kept on its result) */
export async function runPlan(plan: Plan, client: LoadClient, onDone: (done: number) => void = () => {}, requestIdPrefix?: string): Promise<{ results: RequestResult[]; wallMs: number }> {
  const results = new Array<RequestResult>(plan.requests.length);
  const t0 = performance.now();
  let done = 0;
  const inflight: Promise<void>[] = [];
  for (let i = 0; i < plan.requests.length; i++) {
    const p = plan.requests[i]!;
    const wait = p.atMs - (performance.now() - t0);
    if (wait > 1) await new Promise((res) => setTimeout(res, wait));
    inflight.push(
      client.send(p.path, p.body(), requestIdPrefix === undefined ? undefined : `${requestIdPrefix}-${i}`).then((res) => {
        results[i] = res;
        onDone(++done);
      }),
    );
  }
  await Promise.all(inflight);
  return { results, wallMs: performance.now() - t0 };
}

/** A request as data (bodies built up front; it crosses into the load-client thread). */
export interface RequestData {
  atMs: number;
  path: PlannedRequest['path'];
  body: string;
}

/** A plan described by data (it crosses into the load-client thread). */
export type PlanSpec = (
  | { kind: 'trace'; path: string; limit: number; compress: number; model: string }
  | { kind: 'chat'; model: string; blockSize: number; options: ChatWorkloadOptions }
  | { kind: 'list'; name: string; blockTokens: number; requests: RequestData[] }
) & {
  /** warm-up: only the first N requests, sent `warmupGapMs` apart (default: the whole plan, on its clock) */
  warmup?: number;
  /** ms between warm-up requests (default 25) */
  warmupGapMs?: number;
  /** request i is sent with x-request-id `<prefix>-<i>` (runPlan) */
  requestIdPrefix?: string;
};

/** The plan's requests with their bodies built, to hand to another thread as `{kind: 'list'}`. */
export function planData(plan: Plan): RequestData[] {
  return plan.requests.map((r) => ({ atMs: r.atMs, path: r.path, body: r.body() }));
}

export function buildPlan(spec: PlanSpec, tokenizer?: PromptTokenizer): Plan {
  let plan: Plan;
  if (spec.kind === 'trace') {
    let records = readTrace(spec.path);
    if (spec.limit > 0) records = records.slice(0, spec.limit);
    plan = tracePlan(records, spec.model, spec.compress);
  } else if (spec.kind === 'list') {
    plan = {
      name: spec.name,
      blockTokens: spec.blockTokens,
      requests: spec.requests.map((r) => ({ atMs: r.atMs, path: r.path, body: () => r.body })),
      blocks: () => {
        throw new Error('a request list carries no bound blocks');
      },
    };
  } else plan = chatPlan(spec.model, tokenizer, spec.blockSize, spec.options);
  if (spec.warmup) {
    const gap = spec.warmupGapMs ?? 25;
    plan = { ...plan, name: `${plan.name} warm-up`, requests: plan.requests.slice(0, spec.warmup).map((r, i) => ({ ...r, atMs: i * gap })) };
  }
  return plan;
}

/** runPlan in a worker thread (client-thread.ts); `o.apiKey`: the client's key for routers that require one. */
export async function runPlanInThread(spec: PlanSpec, urls: string[], onDone: (done: number) => void = () => {}, o: { apiKey?: string } = {}): Promise<{ results: RequestResult[]; wallMs: number }> {
  const { Worker } = await import('node:worker_threads');
  const w = new Worker(new URL('./client-thread-boot.mjs', import.meta.url), { workerData: { spec, urls, ...(o.apiKey ? { apiKey: o.apiKey } : {}) }, env: process.env });
  return new Promise((resolve, reject) => {
    w.on('message', (m: { progress?: number; results?: RequestResult[]; wallMs?: number }) => {
      if (m.progress !== undefined) onDone(m.progress);
      if (m.results) resolve({ results: m.results, wallMs: m.wallMs! });
    });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`load client thread exited (${code}) before finishing`)));
  });
}
