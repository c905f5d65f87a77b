/**
 * `kvgate doctor --indexer URL …` (issue 18): one line per indexer replica given — its shard (`--shard i/N`, or
 * unsharded), readiness, stream position and lag, the workers it holds — and what is wrong across them: a replica
 * that does not answer, replicas that disagree on the shard count N, a worker held by a shard it does not hash to,
 * and (with the registry, i.e. --nats) a registered worker that no replica given for its shard holds, or a shard
 * 0 … N − 1 with no replica given at all. `judgeIndexers` is pure; `readIndexers` reads the HTTP edges.
 */
import { request } from 'undici';
import { shardOf } from '@kvgate/indexer';

export interface IndexerFacts {
  url: string;
  /** null: unreachable (then `error`) */
  id: string | null;
  /** "i/N", or null unsharded */
  shard: string | null;
  ready: boolean;
  streamSeq: number;
  lag: number | null;
  workers: string[];
  error?: string;
}

export interface IndexerVerdict extends IndexerFacts {
  ok: boolean;
  problems: { code: string; message: string }[];
}

async function getJson(url: string): Promise<any> {
  const res = await request(url, { headersTimeout: 3000, bodyTimeout: 3000 });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode} from ${url}`);
  return JSON.parse(text);
}

export async function readIndexers(urls: string[]): Promise<IndexerFacts[]> {
  return Promise.all(
    urls.map(async (url): Promise<IndexerFacts> => {
      const base = url.replace(/\/+$/, '');
      try {
        const w = await getJson(`${base}/debug/workers`);
        return { url: base, id: String(w.indexer), shard: typeof w.shard === 'string' ? w.shard : null, ready: w.ready === true, streamSeq: Number(w.streamSeq), lag: typeof w.lag === 'number' ? w.lag : null, workers: Object.keys(w.workers ?? {}).sort() };
      } catch (e) {
        return { url: base, id: null, shard: null, ready: false, streamSeq: 0, lag: null, workers: [], error: (e as Error).message };
      }
    }),
  );
}

const parse = (s: string | null) => (s ? s.split('/').map(Number) as [number, number] : ([0, 1] as [number, number]));

/** `registered`: the registry's workers (null without --nats: the coverage checks are skipped) */
export function judgeIndexers(facts: IndexerFacts[], registered: readonly string[] | null): IndexerVerdict[] {
  const counts = new Set(facts.filter((f) => f.id !== null).map((f) => parse(f.shard)[1]));
  const out = facts.map((f): IndexerVerdict => {
    const problems: IndexerVerdict['problems'] = [];
    if (f.id === null) problems.push({ code: 'indexer-unreachable', message: `no answer from ${f.url}/debug/workers (${f.error}) (check: the indexer's --port and --host)` });
    else {
      const [i, n] = parse(f.shard);
      if (counts.size > 1) problems.push({ code: 'shard-count-mismatch', message: `the indexers given run with different shard counts (${[...counts].sort().join(', ')}) (check: every indexer's --shard i/N and the routers' --index-shards N agree)` });
      const foreign = n > 1 ? f.workers.filter((w) => shardOf(w, n) !== i) : [];
      if (foreign.length > 0) problems.push({ code: 'foreign-workers', message: `holds ${foreign.join(', ')}, which hash to other shards of ${n}` });
      if (!f.ready) problems.push({ code: 'indexer-not-ready', message: `still catching up with the event stream (at ${f.streamSeq}, ${f.lag ?? '?'} behind)` });
    }
    return { ...f, ok: problems.length === 0, problems };
  });
  // coverage: every registered worker held by some answering replica of its shard (per shard count seen)
  if (registered) {
    for (const n of counts) {
      for (let i = 0; i < n; i++) {
        const replicas = out.filter((v) => v.id !== null && parse(v.shard)[1] === n && parse(v.shard)[0] === i);
        const mine = registered.filter((w) => n === 1 || shardOf(w, n) === i);
        const label = n === 1 ? 'unsharded' : `shard ${i}/${n}`;
        if (replicas.length === 0) {
          if (mine.length > 0) out.push({ url: '', id: null, shard: n === 1 ? null : `${i}/${n}`, ready: false, streamSeq: 0, lag: null, workers: [], ok: false, problems: [{ code: 'shard-missing', message: `no indexer given for ${label}: its workers ${mine.join(', ')} are routed by load alone if none runs (check: a kvgate indexer --shard ${i}/${n} runs, and its URL is given)` }] });
          continue;
        }
        for (const r of replicas) {
          const missing = mine.filter((w) => !r.workers.includes(w));
          if (missing.length > 0) {
            r.problems.push({ code: 'workers-not-held', message: `registered workers of ${label} it holds no state for: ${missing.join(', ')} (check: their shims' KV events reach this NATS)` });
            r.ok = false;
          }
        }
      }
    }
  }
  return out;
}

export function formatIndexer(v: IndexerVerdict): string {
  const name = v.id ?? (v.url || '-');
  const where = v.shard ? `shard ${v.shard}` : 'unsharded';
  if (!v.ok) return `indexer ${name} (${where})  PROBLEM  ${v.problems.map((p) => `${p.code}: ${p.message}`).join('  |  ')}`;
  return `indexer ${name} (${where})  ok  (ready, stream seq ${v.streamSeq}, lag ${v.lag ?? '?'}, holds ${v.workers.length} worker${v.workers.length === 1 ? '' : 's'})`;
}

export function jsonIndexer(v: IndexerVerdict): string {
  return JSON.stringify({ indexer: v.id, url: v.url, shard: v.shard, ok: v.ok, problems: v.problems, ready: v.ready, streamSeq: v.streamSeq, lag: v.lag, workers: v.workers });
}
