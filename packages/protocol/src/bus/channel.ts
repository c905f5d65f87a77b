import { Fifo } from '../fifo.js';
import type { Msg, Subscription } from './bus.js';

/**
 * Channel: an unbounded FIFO read through async iterators, the plumbing under every Subscription,
 * StreamReader and KvWatcher of both buses. `push` never blocks; `end` lets the consumer drain what is
 * buffered, then finishes the iterator. Several iterators may be taken (one after another, or at once:
 * they then share the items, each item going to one next() call, in call order). Leaving a `for await`
 * early (break/return/throw) calls `onReturn`, which the owner uses to unsubscribe.
 */
export class Channel<T> implements AsyncIterable<T> {
  readonly #buf = new Fifo<T>();
  #waiters: { resolve: (r: IteratorResult<T>) => void; reject: (err: unknown) => void }[] = [];
  #ended = false;
  #error: unknown;
  readonly #onReturn: (() => void) | undefined;
  readonly #closed: Promise<void>;
  #resolveClosed!: () => void;

  constructor(onReturn?: () => void) {
    this.#onReturn = onReturn;
    this.#closed = new Promise((r) => (this.#resolveClosed = r));
  }

  /** resolves when `end` is called */
  get closed(): Promise<void> {
    return this.#closed;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** buffered, not yet consumed */
  get pending(): number {
    return this.#buf.length;
  }

  push(v: T): void {
    if (this.#ended) return;
    const w = this.#waiters.shift();
    if (w) {
      w.resolve({ value: v, done: false });
      return;
    }
    this.#buf.push(v);
  }

  /** finish: the consumer sees buffered items, then the end (or `error`, thrown from next()) */
  end(error?: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#resolveClosed();
    // waiters exist only while the buffer is empty
    const ws = this.#waiters;
    this.#waiters = [];
    ws.forEach((w, i) => {
      if (error !== undefined && i === 0) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    });
    if (ws.length > 0) this.#error = undefined;
  }

  #next(): Promise<IteratorResult<T>> {
    if (this.#buf.length > 0) return Promise.resolve({ value: this.#buf.shift() as T, done: false });
    if (this.#ended) {
      if (this.#error !== undefined) {
        const e = this.#error;
        this.#error = undefined;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => this.#next(),
      return: async () => {
        this.#onReturn?.();
        this.end();
        return { value: undefined, done: true };
      },
    };
  }
}

/**
 * The Subscription both buses hand out: iteration drains `chan`, except in callback mode, where the callback
 * already receives every message and iterating would silently get nothing.
 */
export function subscriptionHandle(subject: string, chan: Channel<Msg>, end: () => void, callbackMode: boolean): Subscription {
  return {
    subject,
    closed: chan.closed,
    unsubscribe: end,
    [Symbol.asyncIterator]: () => {
      if (callbackMode) throw new Error('subscription delivers to its callback; it cannot also be iterated');
      return chan[Symbol.asyncIterator]();
    },
  };
}
