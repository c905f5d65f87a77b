/**
 * The bus edge of the diag reports (diag.ts): a shim or router publishes its report on `…diag.<source>.<id>`
 * every `intervalMs`, and at once when `kvgate doctor` publishes on `…diag.ask`. A failing bus is logged now and
 * then, never thrown (a timer must not take the process down).
 */
import type { Bus } from './bus/bus.js';
import { encodeDiag, type DiagReport, type DiagWorker } from './diag.js';
import { logger } from './log.js';
import type { Subjects } from './subjects.js';

const log = logger('diag');

export interface DiagPublisherOptions {
  bus: Bus;
  subjects: Subjects;
  source: DiagReport['source'];
  /** the shim's worker id (stem of its DP ranks) or the router's id */
  id: string;
  /** default 2000 ms */
  intervalMs?: number;
  /** the current entries (judged now) */
  check(): DiagWorker[];
}

export function startDiagPublisher(o: DiagPublisherOptions): { publish(): void; stop(): void } {
  const subject = o.source === 'shim' ? o.subjects.diagShim(o.id) : o.subjects.diagRouter(o.id);
  let failing = 0;
  const publish = () => {
    try {
      o.bus.publish(subject, encodeDiag({ source: o.source, id: o.id, ts: Date.now(), workers: o.check() }));
      failing = 0;
    } catch (e) {
      if (failing++ % 30 === 0) log.warn({ source: o.source, id: o.id, err: String(e) }, 'diag report not published');
    }
  };
  const timer = setInterval(publish, o.intervalMs ?? 2000);
  timer.unref();
  const ask = o.bus.subscribe(o.subjects.diagAsk, { callback: () => publish() });
  return {
    publish,
    stop() {
      clearInterval(timer);
      ask.unsubscribe();
    },
  };
}
