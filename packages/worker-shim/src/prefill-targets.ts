/**
 * Where a decode shim may send a prefill, and which KV-transfer peers it lets its engine pull from: only the live
 * prefill workers of the registry (the `…workers` KV bucket the routers watch). A client that reaches the shim
 * must not choose where the shim POSTs a prompt (`x-prefiller-host-port`) nor where the engine connects to pull
 * blocks (`kv_transfer_params.remote_host` / `remote_port`).
 *
 *   - `PrefillTargets` (no I/O, clock injected): the registry entries, fed with the watch's puts and deletes;
 *     `lookup("host:port")` answers the live workers with role `prefill` or `both` that advertise that address
 *     (their `engineUrl`, where routers send the prefill leg, or their `url`). Data-parallel ranks of one server
 *     share an address, so it is a list.
 *   - A lapse (TTL expiry, seen as a delete carrying the key's last put revision) is not a worker leaving while the
 *     bus may be away: the entry is kept until the watch has delivered some later put at least `confirmMs` after the
 *     lapse (every live shim, this one included, re-puts its registration each heartbeat, so a bus that is up is
 *     heard). Same rule as the router's registry hold (packages/router/src/registry-hold.ts). An explicit delete
 *     (a shim deregistering) drops the worker at once.
 *   - `descriptorPeer` checks a transfer descriptor against those workers (below).
 *   - `watchPrefillTargets` feeds a `PrefillTargets` from a bucket, watching again when the watch ends or breaks;
 *     `loaded()` resolves once the entries present at the start were read (a request arriving before that waits
 *     for it, bounded, instead of being refused by a view still empty).
 *
 * Addresses are compared as written (host lower-cased, IPv6 brackets dropped), never resolved: a name that would
 * resolve to a worker's IP is not that worker (DNS answers can change between the check and the call).
 */
import { decodeRegistration, logger, type KvStore, type KvWatcher, type WorkerRegistration } from '@kvgate/protocol';

const log = logger('shim.prefill-targets');

/** vLLM's default NIXL side-channel port (`VLLM_NIXL_SIDE_CHANNEL_PORT`, vllm/envs.py); the connector adds the DP rank */
export const NIXL_SIDE_CHANNEL_PORT = 5600;

/** `host` lower-cased without IPv6 brackets + `|` + port; undefined for what is not an address */
function addrKey(host: string, port: number): string {
  return `${host.replace(/^\[|\]$/g, '').toLowerCase()}|${port}`;
}

/** the address key of a URL (`http://h:p`, default ports filled in) */
export function urlAddr(u: string): string | undefined {
  try {
    const url = new URL(u);
    const port = url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : url.protocol === 'http:' ? 80 : 0;
    if (!url.hostname || port <= 0) return undefined;
    return addrKey(url.hostname, port);
  } catch {
    return undefined;
  }
}

/** the address key of `host:port` / `[v6]:port` (the `x-prefiller-host-port` form) */
export function hostPortAddr(hp: string): string | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(hp.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return addrKey(m[1] ?? m[2]!, port);
}

function hostOf(u: string): string | undefined {
  try {
    const h = new URL(u).hostname;
    return h ? h.replace(/^\[|\]$/g, '').toLowerCase() : undefined;
  } catch {
    return undefined;
  }
}

export interface PrefillTargetsOptions {
  /** a lapsed registration is dropped once a put is heard this long after the lapse; default 3000 ms (the registry TTL) */
  confirmMs?: number;
  now?: () => number;
}

export interface RegistryChange {
  key: string;
  op: 'put' | 'delete';
  revision: number;
  /** the decoded registration of a put */
  reg?: WorkerRegistration;
}

export class PrefillTargets {
  readonly #confirmMs: number;
  readonly #now: () => number;
  /** bucket key → registration (every role: a put may change a worker's role) */
  #regs = new Map<string, WorkerRegistration>();
  #putRevision = new Map<string, number>();
  /** keys whose registration lapsed → when */
  #lapsed = new Map<string, number>();
  /** address key → bucket keys of prefill-capable workers advertising it */
  #byAddr = new Map<string, Set<string>>();
  #loaded = false;
  #onLoaded: (() => void)[] = [];

  constructor(o: PrefillTargetsOptions = {}) {
    this.#confirmMs = Math.max(1, o.confirmMs ?? 3000);
    this.#now = o.now ?? Date.now;
  }

  apply(c: RegistryChange): void {
    if (c.op === 'put' && c.reg) {
      this.#unindex(c.key);
      this.#regs.set(c.key, c.reg);
      this.#putRevision.set(c.key, c.revision);
      this.#lapsed.delete(c.key);
      this.#index(c.key, c.reg);
      this.#confirmLapses();
      return;
    }
    if (c.op === 'delete') {
      if (!this.#regs.has(c.key)) return;
      if (this.#putRevision.get(c.key) === c.revision) {
        if (!this.#lapsed.has(c.key)) this.#lapsed.set(c.key, this.#now());
      } else this.#drop(c.key);
    }
  }

  /** the registry as it was at the start has been read */
  markLoaded(): void {
    if (this.#loaded) return;
    this.#loaded = true;
    for (const f of this.#onLoaded.splice(0)) f();
  }

  get isLoaded(): boolean {
    return this.#loaded;
  }

  /** resolves once loaded, or after `timeoutMs` (then the view is used as it is) */
  loaded(timeoutMs: number): Promise<void> {
    if (this.#loaded) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, timeoutMs);
      t.unref();
      const self = this;
      function done(): void {
        clearTimeout(t);
        const i = self.#onLoaded.indexOf(done);
        if (i >= 0) self.#onLoaded.splice(i, 1);
        resolve();
      }
      this.#onLoaded.push(done);
    });
  }

  /** keys gone from a fresh listing (after a broken watch): lapses too */
  reconcile(liveKeys: Set<string>): void {
    const now = this.#now();
    for (const k of this.#regs.keys()) if (!liveKeys.has(k) && !this.#lapsed.has(k)) this.#lapsed.set(k, now);
  }

  /** the live prefill-capable workers advertising `host:port` (empty: none; the caller refuses the target) */
  lookup(hostPort: string): WorkerRegistration[] {
    const a = hostPortAddr(hostPort);
    const keys = a === undefined ? undefined : this.#byAddr.get(a);
    if (!keys) return [];
    const out: WorkerRegistration[] = [];
    for (const k of keys) out.push(this.#regs.get(k)!);
    return out;
  }

  /** every live prefill-capable worker */
  all(): WorkerRegistration[] {
    return [...this.#regs.values()].filter(isPrefillCapable);
  }

  get size(): number {
    return this.#regs.size;
  }

  #index(key: string, reg: WorkerRegistration): void {
    if (!isPrefillCapable(reg)) return;
    for (const u of new Set([reg.engineUrl, reg.url])) {
      const a = urlAddr(u);
      if (a === undefined) continue;
      let s = this.#byAddr.get(a);
      if (!s) this.#byAddr.set(a, (s = new Set()));
      s.add(key);
    }
  }

  #unindex(key: string): void {
    const old = this.#regs.get(key);
    if (!old) return;
    for (const u of [old.engineUrl, old.url]) {
      const a = urlAddr(u);
      const s = a === undefined ? undefined : this.#byAddr.get(a);
      if (!s) continue;
      s.delete(key);
      if (s.size === 0) this.#byAddr.delete(a!);
    }
  }

  #drop(key: string): void {
    this.#unindex(key);
    this.#regs.delete(key);
    this.#putRevision.delete(key);
    this.#lapsed.delete(key);
  }

  /** a put was heard now: the bus is up; lapses older than confirmMs are workers gone */
  #confirmLapses(): void {
    if (this.#lapsed.size === 0) return;
    const now = this.#now();
    for (const [k, at] of [...this.#lapsed]) if (now - at >= this.#confirmMs) this.#drop(k);
  }
}

function isPrefillCapable(r: WorkerRegistration): boolean {
  return r.role === 'prefill' || r.role === 'both';
}

/**
 * The worker among `workers` a transfer descriptor's peer belongs to, or undefined. The descriptor's `remote_host`
 * must be the host of the worker's `engineUrl` or `url`, and `remote_port` either that URL's port (engines that
 * serve the pull over HTTP, like kvgate's sim engine) or the worker's NIXL side channel: vLLM's NixlConnector puts
 * `remote_host = VLLM_NIXL_SIDE_CHANNEL_HOST` and `remote_port = VLLM_NIXL_SIDE_CHANNEL_PORT + data-parallel index`
 * into the descriptor (vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py, `request_finished`), so
 * with DP rank r the port is `sideChannelPort + r`. The side channel host must therefore be set to the address the
 * worker registers (vLLM's default `localhost` matches only a worker registered as localhost).
 */
export function descriptorPeer(desc: { remote_host?: unknown; remote_port?: unknown }, workers: readonly WorkerRegistration[], sideChannelPort = NIXL_SIDE_CHANNEL_PORT): WorkerRegistration | undefined {
  if (typeof desc.remote_host !== 'string' || !Number.isInteger(desc.remote_port)) return undefined;
  const host = desc.remote_host.replace(/^\[|\]$/g, '').toLowerCase();
  const port = desc.remote_port as number;
  for (const w of workers) {
    for (const u of [w.engineUrl, w.url]) {
      if (hostOf(u) !== host) continue;
      if (urlAddr(u) === addrKey(host, port) || port === sideChannelPort + (w.dpRank ?? 0)) return w;
    }
  }
  return undefined;
}

/**
 * Feeds `targets` from the bucket's watch until `stop()`: current entries first, then every change; a watch that
 * ends or breaks is watched again (with a back-off) after re-listing the keys (those gone meanwhile are lapses).
 */
export function watchPrefillTargets(kv: Pick<KvStore, 'watch' | 'keys'>, targets: PrefillTargets): { stop(): Promise<void> } {
  let stopped = false;
  let watcher: KvWatcher | undefined;
  let wake: (() => void) | undefined;
  const loop = (async () => {
    let delayMs = 250;
    let first = true;
    while (!stopped) {
      try {
        if (!first) targets.reconcile(new Set(await kv.keys()));
        watcher = kv.watch();
        // the keys present now: once each was delivered (or the bucket is empty), the view is loaded
        const initial = first ? new Set(await kv.keys()) : undefined;
        first = false;
        if (initial?.size === 0) targets.markLoaded();
        for await (const e of watcher) {
          let reg: WorkerRegistration | undefined;
          if (e.op === 'put' && e.value) {
            try {
              reg = decodeRegistration(e.value);
            } catch (err) {
              log.warn({ key: e.key, err: (err as Error).message }, 'bad worker registration ignored');
              continue;
            }
          }
          targets.apply({ key: e.key, op: e.op, revision: e.revision, reg });
          if (initial && initial.delete(e.key) && initial.size === 0) targets.markLoaded();
          delayMs = 250;
        }
        if (!stopped) log.warn('registry watch ended; watching again (known prefill workers are kept)');
      } catch (err) {
        if (stopped) break;
        log.warn({ err: (err as Error).message }, 'registry watch broke; watching again (known prefill workers are kept)');
      }
      if (stopped) break;
      await new Promise<void>((r) => {
        const t = setTimeout(r, delayMs);
        t.unref();
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
      wake = undefined;
      delayMs = Math.min(delayMs * 2, 5000);
    }
  })();
  return {
    async stop() {
      stopped = true;
      watcher?.stop();
      wake?.();
      await loop;
    },
  };
}
