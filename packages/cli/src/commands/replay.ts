import { readFileSync, writeFileSync } from 'node:fs';
import { createBus, parseKvlog, initHashing, prefixHashes, hexToHash, hashToHex, type Bus, type KvlogRecord } from '@kvgate/protocol';
import { parseFlags, intFlag, numberFlag } from '../flags.js';
import { PROFILE_SPEC, profileFrom } from '../profile-flags.js';
import { classify, fatalLine, FlagError } from '../fatal.js';
import { parseShard, type IndexShard } from '@kvgate/indexer';
import { NATS_AUTH_SPEC, natsOptionsFrom, type NatsAuthFlags } from '../nats-flags.js';
import { parseTimeArg } from '../replay/time-arg.js';
import { readStreams, writeKvlog, importRecords } from '../replay/stream-io.js';
import { inspect } from '../replay/inspect.js';

export const summary = 'record, re-import, inspect and re-run event streams for debugging (export|import|inspect|whatif)';

const USAGE = `kvgate replay export --nats URL [--from T1] [--to T2] -o f.kvlog
kvgate replay import f.kvlog --nats URL [--namespace NS]
kvgate replay inspect (--nats URL | f.kvlog) (--at T | --seq N) [--prefix-of TEXT | --tokens IDS] [--request ID] [--shard i/N] [--json]
kvgate replay whatif --trace trace.jsonl|f.kvlog [--policy kv,least-loaded,round-robin] [--engines K] [--routers R] [--model-profile M --gpu G --tensor-parallel-size N] [--report out.html] [--json]

T: ms since epoch, ISO 8601, or relative (-5m, -30s, now).`;

const SPEC = {
  nats: { type: 'string', help: 'NATS URL (JetStream) holding the streams' },
  namespace: { type: 'string', help: 'kvgate namespace (import: target, default "replay")', default: 'default' },
  from: { type: 'string', help: 'export: window start' },
  to: { type: 'string', help: 'export: window end' },
  out: { type: 'string', short: 'o', help: 'export: output .kvlog path' },
  at: { type: 'string', help: 'inspect: rebuild the index as it stood at this time' },
  seq: { type: 'string', help: 'inspect: … or up to this event-stream sequence' },
  'prefix-of': { type: 'string', help: 'inspect: match this prompt text (tokenized with the default tokenizer)' },
  tokens: { type: 'string', help: 'inspect: match these comma-separated token ids' },
  hashes: { type: 'string', help: 'inspect: match these comma-separated 16-hex prefix hashes' },
  model: { type: 'string', help: 'inspect: model for hashing --tokens/--prefix-of', default: 'qwen3-8b' },
  lora: { type: 'string', help: 'inspect: LoRA name for hashing' },
  'block-size': { type: 'string', help: 'inspect: block size for hashing', default: '16' },
  request: { type: 'string', help: 'inspect: show what the router saw and chose for this request id' },
  shard: { type: 'string', help: 'inspect: rebuild only index shard i/N (what kvgate indexer --shard i/N holds)' },
  trace: { type: 'string', help: 'whatif: Mooncake trace (.jsonl) or .kvlog' },
  policy: { type: 'string', help: 'whatif: policies to compare', default: 'kv,least-loaded,round-robin' },
  engines: { type: 'string', help: 'whatif: simulated engines', default: '4' },
  routers: { type: 'string', help: 'whatif: router replicas requests alternate between, each with its own round-robin cursor (as kvgate start)', default: '2' },
  'num-blocks': { type: 'string', help: 'whatif: KV blocks per engine (default: derived from the profile, as vLLM)' },
  ...PROFILE_SPEC,
  'engine-block-size': { type: 'string', help: 'whatif: engine KV block size in tokens (128 as start --trace; vLLM accepts it)', default: '128' },
  compress: { type: 'string', help: 'whatif: divide trace arrival times by this', default: '1' },
  limit: { type: 'string', help: 'whatif: replay only the first N requests' },
  report: { type: 'string', help: 'whatif: also write a self-contained HTML report (plots per policy: hit rate over time, TTFT CDF, per-engine load)' },
  json: { type: 'boolean', help: 'machine-readable output' },
  ...NATS_AUTH_SPEC,
} as const;

type Parsed = NonNullable<ReturnType<typeof parseFlags<typeof SPEC>>>;

async function withBus<T>(f: NatsAuthFlags & { nats?: string | undefined }, fn: (bus: Bus) => Promise<T>): Promise<T> {
  if (!f.nats) throw new Error('--nats URL is required (the in-memory bus lives only inside one process)');
  const bus = await createBus({ nats: f.nats, ...natsOptionsFrom(f) });
  try {
    return await fn(bus);
  } finally {
    await bus.close();
  }
}

const progress = (verb: string) => (n: number) => process.stderr.write(`\r[replay] ${verb} ${n} records…`);

async function loadRecords(p: Parsed): Promise<KvlogRecord[]> {
  const file = p.positionals[1];
  if (file) return parseKvlog(readFileSync(file)).records;
  return withBus(p.flags, (bus) => readStreams(bus, { namespace: p.flags.namespace ?? 'default', progress: progress('read') }));
}

async function queryHashes(p: Parsed): Promise<bigint[] | undefined> {
  const f = p.flags;
  if (f.hashes) return f.hashes.split(',').map((s) => hexToHash(s.trim()));
  let tokens: number[] | undefined;
  if (f.tokens) tokens = f.tokens.split(',').map((s) => Number(s.trim()));
  else if (f['prefix-of'] !== undefined) {
    const { loadTokenizer } = await import('@kvgate/protocol/tokenizer');
    tokens = (await loadTokenizer()).encode(f['prefix-of']);
  }
  if (!tokens) return undefined;
  if (tokens.some((t) => !Number.isInteger(t) || t < 0)) throw new Error('--tokens must be comma-separated non-negative integers');
  await initHashing();
  return prefixHashes(f.model ?? 'qwen3-8b', f.lora ?? '', intFlag(f['block-size'], 'block-size', 16), tokens);
}

export async function run(argv: string[]): Promise<number> {
  const p = parseFlags(argv, USAGE, SPEC);
  if (!p) return 0;
  const verb = p.positionals[0];
  const f = p.flags;
  try {
    switch (verb) {
      case 'export': {
        if (!f.out) throw new Error('export needs -o f.kvlog');
        const from = parseTimeArg(f.from), to = parseTimeArg(f.to);
        const ns = f.namespace ?? 'default';
        const records = await withBus(f, (bus) => readStreams(bus, { namespace: ns, ...(from !== undefined ? { from } : {}), ...(to !== undefined ? { to } : {}), progress: progress('read') }));
        writeFileSync(f.out, writeKvlog(records, { namespace: ns, ...(from !== undefined ? { from } : {}), ...(to !== undefined ? { to } : {}) }));
        const ev = records.filter((r) => r.kind === 'event').length;
        process.stderr.write('\n');
        console.log(f.json ? JSON.stringify({ out: f.out, events: ev, decisions: records.length - ev }) : `wrote ${f.out}: ${ev} event batches, ${records.length - ev} routing decisions`);
        return 0;
      }
      case 'import': {
        const file = p.positionals[1];
        if (!file) throw new Error('import needs a .kvlog file');
        const { records } = parseKvlog(readFileSync(file));
        const ns = argv.includes('--namespace') || process.env.KVGATE_NAMESPACE ? f.namespace ?? 'replay' : 'replay';
        const counts = await withBus(f, (bus) => importRecords(bus, records, ns, progress('imported')));
        process.stderr.write('\n');
        console.log(f.json ? JSON.stringify({ namespace: ns, ...counts }) : `imported into namespace ${ns}: ${counts.events} event batches, ${counts.decisions} routing decisions`);
        return 0;
      }
      case 'inspect': {
        if (f.at === undefined && f.seq === undefined && f.request === undefined) throw new Error('inspect needs --at T, --seq N or --request ID');
        const shard = f.shard !== undefined ? shardFlag(f.shard) : undefined;
        const records = await loadRecords(p);
        const at = parseTimeArg(f.at);
        const report = inspect(records, {
          ...(at !== undefined ? { at } : {}),
          ...(f.seq !== undefined ? { seq: intFlag(f.seq, 'seq', 0) } : {}),
          ...(f.request !== undefined ? { requestId: f.request } : {}),
          ...(shard ? { shard } : {}),
          ...((await queryHashes(p)) ? { hashes: (await queryHashes(p))! } : {}),
        });
        if (f.json) {
          console.log(JSON.stringify(report, (_k, v) => (typeof v === 'bigint' ? hashToHex(v) : v)));
          return 0;
        }
        const u = report.upTo;
        console.log(`${report.shard ? `index shard ${report.shard}` : 'index'} as of stream seq ${u.seq ?? '-'} (${u.time ? new Date(u.time).toISOString() : '-'}), ${u.eventsApplied} batches applied`);
        console.log(`${'worker'.padEnd(24)} ${'blocks'.padStart(8)} ${'last seq'.padStart(9)}`);
        for (const [w, s] of Object.entries(report.workers)) console.log(`${w.padEnd(24)} ${String(s.blocks).padStart(8)} ${String(s.lastSeq).padStart(9)}`);
        if (report.match) console.log(`match (gpu blocks): ${JSON.stringify(report.match)}`);
        if (report.matchTiers) {
          for (const [w, t] of Object.entries(report.matchTiers)) console.log(`  ${w}: gpu ${t.gpu}, +cpu ${t.cpu}, +disk ${t.disk} blocks (cumulative, as vLLM loads them)`);
        }
        if (f.request !== undefined) {
          if (!report.request) console.log(`request ${f.request}: no routing decision recorded`);
          else {
            const r = report.request;
            console.log(`request ${f.request}: router ${r.decision.router} chose ${r.decision.chosen}${r.decision.prefill ? ` (prefill ${r.decision.prefill})` : ''} by ${r.decision.policy}${r.decision.degraded ? ' (index did not answer: load only)' : ''}`);
            console.log(`  router saw overlaps ${JSON.stringify(r.decision.overlaps)} scores ${JSON.stringify(r.decision.scores)}`);
            console.log(`  index then held  ${JSON.stringify(r.indexAtDecision)}${r.betterHeld.length ? `; better-placed: ${r.betterHeld.join(', ')}` : ''}`);
          }
        }
        return 0;
      }
      case 'whatif': {
        const { runWhatif } = await import('../replay/whatif.js');
        return await runWhatif({
          trace: f.trace,
          policies: (f.policy ?? 'kv').split(','),
          engines: intFlag(f.engines, 'engines', 4),
          routers: numberFlag(f.routers, 'routers', 2, { min: 1, integer: true }),
          json: f.json,
          profile: profileFrom(f),
          ...(f['num-blocks'] !== undefined ? { numBlocks: numberFlag(f['num-blocks'], 'num-blocks', 0, { min: 1, integer: true }) } : {}),
          blockSize: intFlag(f['engine-block-size'], 'engine-block-size', 128),
          compress: intFlag(f.compress, 'compress', 1),
          ...(f.limit !== undefined ? { limit: intFlag(f.limit, 'limit', Infinity) } : {}),
          ...(f.report !== undefined ? { report: f.report } : {}),
        });
      }
      default:
        console.error(`kvgate replay: expected export|import|inspect|whatif\n\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    // refused NATS credentials: the fatal line with its code (KVG_NATS_AUTH), the URL redacted by the bus
    const fatal = classify(`replay ${verb}`, e);
    console.error(fatal.code === 'KVG_NATS_AUTH' ? fatalLine(`replay ${verb}`, fatal) : `kvgate replay ${verb}: ${(e as Error).message}`);
    return 1;
  }
}

/** `--shard i/N` (the indexers' form); a bad value is a flag error */
function shardFlag(v: string): IndexShard {
  try {
    return parseShard(v);
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
}
