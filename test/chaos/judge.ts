/**
 * The chaos suite's verdicts (pure): per-fault outcomes of the requests sent while the fault was on, and whether
 * a fault's row meets the bar of issue 12 (hung = 0 always; no 5xx while engines were up for the NATS, indexer
 * and router faults; index reconverged within 30 s).
 */

/** one request's outcome, as the load generator saw it */
export type Outcome =
  | { kind: 'ok' }
  /** an error the client can act on: an OpenAI-shaped body with a KVG_* kvg_code, or a refused connection */
  | { kind: 'clear'; status: number; code: string }
  /** a 5xx (or a non-clear failure: reset, garbage) while every engine process was up */
  | { kind: '5xx'; status: number; code: string }
  /** no complete answer within the request timeout */
  | { kind: 'hung' };

export interface FaultRow {
  fault: string;
  sent: number;
  succeeded: number;
  failedClear: number;
  hung: number;
  fivexxWhileEnginesUp: number;
  /** ms from the fault's recovery until every indexer's per-worker block count equals its engine's; null = never */
  reconvergeMs: number | null;
  /** processes other than the faulted one that exited during the fault (names) */
  exited: string[];
}

export function row(fault: string, outcomes: Outcome[], reconvergeMs: number | null, exited: string[]): FaultRow {
  const r: FaultRow = { fault, sent: outcomes.length, succeeded: 0, failedClear: 0, hung: 0, fivexxWhileEnginesUp: 0, reconvergeMs, exited };
  for (const o of outcomes) {
    if (o.kind === 'ok') r.succeeded++;
    else if (o.kind === 'clear') r.failedClear++;
    else if (o.kind === 'hung') r.hung++;
    else r.fivexxWhileEnginesUp++;
  }
  return r;
}

/** faults where a 5xx is never acceptable (the engines are all up; the pool can answer) */
const NO_5XX = /^(nats|indexer|router|garbage|events)/;
export const RECONVERGE_BUDGET_MS = 30_000;

/** why a row fails the bar (empty: it passes) */
export function problems(r: FaultRow): string[] {
  const out: string[] = [];
  if (r.sent === 0) out.push('no request was sent during the fault');
  if (r.hung > 0) out.push(`${r.hung} request(s) hung`);
  if (NO_5XX.test(r.fault) && r.fivexxWhileEnginesUp > 0) out.push(`${r.fivexxWhileEnginesUp} 5xx while every engine was up`);
  if (r.reconvergeMs === null || r.reconvergeMs > RECONVERGE_BUDGET_MS) out.push(`index did not reconverge within ${RECONVERGE_BUDGET_MS / 1000} s`);
  if (r.exited.length > 0) out.push(`exited: ${r.exited.join(', ')}`);
  return out;
}

/** socket errors of a connection whose server process died under it */
const CUT = new Set(['ECONNRESET', 'UND_ERR_SOCKET', 'EPIPE']);

/**
 * Classify one HTTP answer. `status` 0 = no HTTP answer: `err` is the socket error. ECONNREFUSED to a killed
 * router is clear: a client or a load balancer tries another replica. So is a connection cut (reset, closed
 * mid-answer) by the router the request was sent to when that router is the process the fault kills
 * (`targetKilled`): nothing can answer from a process that died under the request. The same cut from a router
 * that was not killed is a 5xx.
 */
export function classify(status: number, body: string, err?: string, targetKilled = false): Outcome {
  if (status === 0) {
    if (err === 'timeout') return { kind: 'hung' };
    if (err === 'ECONNREFUSED') return { kind: 'clear', status: 0, code: 'ECONNREFUSED' };
    if (targetKilled && err !== undefined && CUT.has(err)) return { kind: 'clear', status: 0, code: `${err} (its router killed)` };
    return { kind: '5xx', status: 0, code: err ?? 'socket' };
  }
  if (status === 200) {
    if (!body.startsWith('data:')) return { kind: 'ok' }; // a whole JSON answer
    // a stream: one that ends in an error event is a failure, clear when the event names a KVG_* code
    const err = /data:\s*\{"error":.*?"kvg_code"\s*:\s*"(KVG_[A-Z_]+)"/.exec(body);
    if (err) return { kind: 'clear', status, code: err[1]! };
    if (!body.includes('data: [DONE]')) return { kind: '5xx', status, code: 'stream cut without [DONE]' };
    return { kind: 'ok' };
  }
  // kvgate's bodies: {"error":{…,"code":<status>,"kvg_code":"KVG_…"}}; an engine's (vLLM) only the numeric code
  const code = /"kvg_code"\s*:\s*"([A-Za-z_]+)"/.exec(body)?.[1] ?? '';
  if (status >= 500) return { kind: '5xx', status, code };
  return code ? { kind: 'clear', status, code } : { kind: '5xx', status, code: 'no error body' };
}

export function table(rows: FaultRow[]): string {
  const head = ['fault', 'sent', 'succeeded', 'failed (clear)', 'hung', '5xx, engines up', 'reconverge s', 'other exits', 'verdict'];
  const lines = rows.map((r) => [
    r.fault,
    String(r.sent),
    String(r.succeeded),
    String(r.failedClear),
    String(r.hung),
    String(r.fivexxWhileEnginesUp),
    r.reconvergeMs === null ? 'never' : (r.reconvergeMs / 1000).toFixed(1),
    r.exited.length === 0 ? '0' : r.exited.join(', '),
    problems(r).length === 0 ? 'ok' : `FAIL: ${problems(r).join('; ')}`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (l: string[]) => l.map((c, i) => (i === 0 || i === l.length - 1 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ').trimEnd();
  return [fmt(head), ...lines.map(fmt)].join('\n');
}
