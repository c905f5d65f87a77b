/**
 * Moving records between kvgate's durable streams and `.kvlog` files.
 * Export reads the KV event stream and the routing-decision stream in a time window; import appends them back into a
 * namespace (by default a separate one, so a recording never mixes with live traffic).
 */
import {
  subjects, eventStreamConfig, decisionStreamConfig, decodeEventBatch, decode, encode, encodeHeader, encodeRecord, type Bus, type KvlogRecord, toRouteDecision,
} from '@kvgate/protocol';

export interface ExportOptions {
  namespace: string;
  from?: number;
  to?: number;
  progress?: (n: number) => void;
}

export async function readStreams(bus: Bus, opts: ExportOptions): Promise<KvlogRecord[]> {
  const subj = subjects(opts.namespace);
  const out: KvlogRecord[] = [];
  const events = await bus.stream(subj.eventStream, eventStreamConfig(subj));
  const decisions = await bus.stream(subj.decisionStream, decisionStreamConfig(subj));
  for (const [stream, kind] of [[events, 'event'], [decisions, 'route']] as const) {
    const info = await stream.info();
    if (info.messages === 0) continue;
    const reader = stream.read(opts.from !== undefined ? { fromTime: opts.from } : { fromSeq: info.firstSeq });
    for await (const m of reader) {
      if (opts.to !== undefined && m.time > opts.to) {
        reader.stop();
        break;
      }
      if (kind === 'event') out.push({ kind, seq: m.seq, time: m.time, subject: m.subject, batch: decodeEventBatch(m.data) });
      else out.push({ kind, seq: m.seq, time: m.time, subject: m.subject, decision: toRouteDecision(decode(m.data)) });
      if (out.length % 1000 === 0) opts.progress?.(out.length);
    }
  }
  out.sort((a, b) => a.time - b.time || (a.kind === b.kind ? a.seq - b.seq : a.kind === 'event' ? -1 : 1));
  return out;
}

export function writeKvlog(records: KvlogRecord[], header: { namespace: string; from?: number; to?: number }): Buffer {
  const parts: Uint8Array[] = [encodeHeader({ namespace: header.namespace, createdAt: Date.now(), ...(header.from !== undefined ? { from: header.from } : {}), ...(header.to !== undefined ? { to: header.to } : {}) })];
  for (const r of records) parts.push(encodeRecord(r));
  return Buffer.concat(parts);
}

/** Append a recording's records into `namespace`'s streams, rewriting subjects to that namespace. Returns counts. */
export async function importRecords(bus: Bus, records: KvlogRecord[], namespace: string, progress?: (n: number) => void): Promise<{ events: number; decisions: number }> {
  const subj = subjects(namespace);
  const events = await bus.stream(subj.eventStream, eventStreamConfig(subj));
  const decisions = await bus.stream(subj.decisionStream, decisionStreamConfig(subj));
  let ne = 0, nd = 0;
  for (const r of records) {
    if (r.kind === 'event') {
      await events.append(subj.events(r.batch.worker), encode(r.batch));
      ne++;
    } else {
      await decisions.append(subj.decisions(r.decision.router), encode(r.decision));
      nd++;
    }
    if ((ne + nd) % 1000 === 0) progress?.(ne + nd);
  }
  return { events: ne, decisions: nd };
}
