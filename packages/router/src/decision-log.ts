/**
 * The decision log: the bus edge of decision recording. Committed decisions (routing-core.ts) are appended to
 * `…decisions.<router>` (the replay/debug recording, `kvgate replay inspect --request`), fire and forget.
 *
 * Decisions wait here for a 1 ms timer: building and encoding one (128 hashes) and appending it to the stream
 * then runs after the upstream request went out, not between request in and upstream first byte. (A setImmediate
 * ran before undici's own deferred write of the upstream request on a reused connection: in the path.) Everything
 * a record is built from is fixed once the decision is made; only the time is taken at commit.
 */
import { encode, type Bus, type Logger, type RouteDecisionWire } from '@kvgate/protocol';
import type { DecisionSink, PendingDecision } from './routing-core.js';

export class DecisionLog implements DecisionSink {
  readonly #bus: Bus;
  readonly #subject: string;
  readonly #log: Logger;
  readonly #build: (p: PendingDecision) => RouteDecisionWire;
  #queue: PendingDecision[] = [];

  /** `build`: the record of a decision (routing-core.ts decisionRecord) */
  constructor(bus: Bus, subject: string, log: Logger, build: (p: PendingDecision) => RouteDecisionWire) {
    this.#bus = bus;
    this.#subject = subject;
    this.#log = log;
    this.#build = build;
  }

  add(p: PendingDecision): void {
    if (this.#queue.push(p) === 1) setTimeout(() => this.flush(), 1);
  }

  /** Build, encode and publish what waits (also at close). */
  flush(): void {
    const q = this.#queue;
    if (q.length === 0) return;
    this.#queue = [];
    for (const p of q) {
      try {
        this.#bus.publish(this.#subject, encode(this.#build(p)));
      } catch (e) {
        this.#log.warn({ err: (e as Error).message }, 'could not record a routing decision');
      }
    }
  }
}
