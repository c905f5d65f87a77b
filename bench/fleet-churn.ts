/**
 * The fleet simulation's churn model (issue 18): how fast one engine stores and evicts KV blocks, measured on the
 * sim engine's own scheduler (packages/sim-engine Scheduler: vLLM's block pool and prefix cache, the timing model
 * fitted to Qwen3-8B on one H100) in virtual time, so it costs a second or two of CPU, not minutes of wall clock.
 *
 * Workload: a closed loop of `concurrency` conversations kept in flight (the engine never idles: the busiest an
 * engine gets, so the fleet rate it gives is an upper bound), RAG / agent style as the built-in chat workload
 * (workload/plan.ts chatPlan): 16 shared contexts of 6,000 tokens, each conversation 5 turns of 130 user tokens
 * re-sending the conversation so far, 128 generated tokens per turn. Counted after the cache first filled (from
 * then on every stored block evicts one): blocks stored and removed per simulated second, and batches (scheduler
 * steps that had KV events: one published batch each, as the shim relays them) per second.
 */
import { Scheduler } from '@kvgate/sim-engine';
import { initHashing, mulberry32 } from '@kvgate/protocol';

export interface EngineChurn {
  /** blocks stored per second (after the cache filled) */
  storedPerS: number;
  /** blocks removed (evicted) per second */
  removedPerS: number;
  /** scheduler steps with KV events per second (one event batch each) */
  batchesPerS: number;
  /** simulated seconds measured */
  seconds: number;
  /** KV capacity of the simulated engine, blocks */
  numBlocks: number;
}

export async function measureEngineChurn(o: { numBlocks?: number; concurrency?: number; seconds?: number; seed?: number } = {}): Promise<EngineChurn> {
  await initHashing();
  const numBlocks = o.numBlocks ?? 16384;
  const sched = new Scheduler({ numBlocks, blockSize: 16, hashSeed: 'fleet', hashAlgo: 'xxhash', recordEvents: true });
  const r = mulberry32(o.seed ?? 18);
  const toks = (n: number) => Array.from({ length: n }, () => Math.floor(r() * 150_000));
  const contexts = Array.from({ length: 16 }, () => toks(6000));
  const concurrency = o.concurrency ?? 64;
  const TURNS = 5, USER = 130, OUT = 128;
  interface Conv { prompt: number[]; turn: number }
  const convs = new Map<string, Conv>();
  let nextConv = 0, nextReq = 0;
  const submit = (c: Conv, now: number) => {
    c.prompt = c.prompt.concat(toks(USER));
    const id = `r${nextReq++}`;
    convs.set(id, c);
    sched.submit({ id, promptTokens: c.prompt, maxTokens: OUT, arrivalMs: now });
  };
  const newConv = (now: number) => submit({ prompt: contexts[nextConv++ % contexts.length]!.slice(), turn: 0 }, now);
  for (let i = 0; i < concurrency; i++) newConv(0);
  const endMs = (o.seconds ?? 120) * 1000;
  let now = 0, full = false, fullAt = 0, stored = 0, removed = 0, batches = 0;
  while (now < endMs) {
    const step = sched.step(now);
    if (!step) break;
    now = step.endMs;
    for (const out of step.outputs) {
      if (!out.finishReason) continue;
      const c = convs.get(out.id)!;
      convs.delete(out.id);
      if (++c.turn >= TURNS) newConv(now);
      else {
        c.prompt = c.prompt.concat(toks(OUT)); // the reply, re-sent with the next turn
        submit(c, now);
      }
    }
    let s = 0, rm = 0;
    for (const e of step.events) {
      if (e.type === 'BlockStored') s += e.hashes.length;
      else if (e.type === 'BlockRemoved') rm += e.hashes.length;
    }
    if (!full && rm > 0) {
      full = true;
      fullAt = step.startMs;
    }
    if (full && (s > 0 || rm > 0)) {
      stored += s;
      removed += rm;
      batches++;
    }
  }
  const secs = Math.max(1e-9, (now - fullAt) / 1000);
  return { storedPerS: stored / secs, removedPerS: removed / secs, batchesPerS: batches / secs, seconds: secs, numBlocks };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const t0 = performance.now();
  const c = await measureEngineChurn({ numBlocks: Number(process.argv[2] ?? 16384) });
  console.log(JSON.stringify({ ...c, wallMs: Math.round(performance.now() - t0) }));
}
