/**
 * Worker registration in the workers KV bucket, kept alive by a heartbeat (re-put every `heartbeatMs`;
 * the bucket's TTL expires a worker whose shim stopped putting, e.g. because its pod died).
 */
import { encode, logger, registryKey, type KvStore, type WorkerRegistration } from '@kvgate/protocol';

const log = logger('shim.registry');

/** Bucket key of a worker (protocol's registryKey; the NATS permissions of a shim name it too). */
export { registryKey };

export class Registration {
  readonly #kv: KvStore;
  readonly #key: string;
  readonly #build: () => WorkerRegistration;
  readonly #heartbeatMs: number;
  #timer: NodeJS.Timeout | undefined;
  #failures = 0;
  #last: Promise<void> = Promise.resolve();

  constructor(kv: KvStore, worker: string, build: () => WorkerRegistration, heartbeatMs: number) {
    this.#kv = kv;
    this.#key = registryKey(worker);
    this.#build = build;
    this.#heartbeatMs = heartbeatMs;
  }

  /** put now (and again on every heartbeat); resolves after the first put */
  async start(): Promise<void> {
    await this.put();
    this.#timer ??= setInterval(() => void this.put(), this.#heartbeatMs);
    this.#timer.unref();
  }

  /** put the current registration now (also used when the worker's shape changes) */
  put(): Promise<void> {
    this.#last = this.#kv.put(this.#key, encode(this.#build())).then(
      () => {
        this.#failures = 0;
      },
      (e) => {
        if (this.#failures++ % 20 === 0) log.warn({ err: String(e) }, 'registration put failed');
      },
    );
    return this.#last;
  }

  /** stop the heartbeat; `deregister` deletes the entry (clean shutdown) instead of letting it expire */
  async stop(deregister: boolean): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#last;
    if (deregister) {
      try {
        await this.#kv.delete(this.#key);
      } catch (e) {
        log.warn({ err: String(e) }, 'deregistration failed');
      }
    }
  }
}
