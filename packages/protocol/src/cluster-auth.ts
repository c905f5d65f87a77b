/**
 * Router → shim request signing with the cluster secret (DESIGN.md §5). Pure: no I/O, the clock is injected.
 *
 *   x-kvgate-timestamp: <unix seconds>
 *   x-kvgate-nonce:     <16 hex digits, fresh per call>
 *   x-kvgate-signature: hex HMAC-SHA256(secret, METHOD \n path \n hex sha256(body) \n timestamp \n nonce)
 *
 * `path` is the request target as sent (path and query). A verifier accepts a timestamp within ±30 s of its own
 * clock, compares the MAC in constant time, and remembers each signature until its timestamp leaves the window, so
 * a captured request cannot be sent again (the nonce keeps two identical requests in one second distinct).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'x-kvgate-signature';
export const TIMESTAMP_HEADER = 'x-kvgate-timestamp';
export const NONCE_HEADER = 'x-kvgate-nonce';
/** accepted clock difference between signer and verifier, ms */
export const SIGNATURE_WINDOW_MS = 30_000;

function mac(secret: string, method: string, path: string, body: Uint8Array, timestamp: string, nonce: string): Buffer {
  const digest = createHash('sha256').update(body).digest('hex');
  return createHmac('sha256', secret).update(`${method.toUpperCase()}\n${path}\n${digest}\n${timestamp}\n${nonce}`).digest();
}

/** The three headers that sign one call. `nowMs` and `nonce` are for tests; by default the clock and 8 random bytes. */
export function signRequest(secret: string, method: string, path: string, body: Uint8Array, nowMs = Date.now(), nonce = randomBytes(8).toString('hex')): Record<string, string> {
  const timestamp = String(Math.floor(nowMs / 1000));
  return {
    [TIMESTAMP_HEADER]: timestamp,
    [NONCE_HEADER]: nonce,
    [SIGNATURE_HEADER]: mac(secret, method, path, body, timestamp, nonce).toString('hex'),
  };
}

export type VerifyResult = { ok: true } | { ok: false; reason: string };

export interface ClusterVerifierOptions {
  /** accepted clock difference, ms (default SIGNATURE_WINDOW_MS = 30000) */
  windowMs?: number;
  /** signatures remembered against replay (default 100,000; the oldest are forgotten first past it) */
  replayCacheSize?: number;
  /** the clock, ms (default Date.now) */
  now?: () => number;
}

type Headers = Record<string, string | string[] | undefined>;

const one = (h: Headers, name: string): string | undefined => {
  const v = h[name];
  return typeof v === 'string' ? v : undefined;
};

export class ClusterVerifier {
  readonly #secret: string;
  readonly #windowMs: number;
  readonly #max: number;
  readonly #now: () => number;
  /** signature → ms after which its timestamp is outside the window (insertion order = expiry order, roughly) */
  readonly #seen = new Map<string, number>();

  constructor(secret: string, o: ClusterVerifierOptions = {}) {
    if (secret.length === 0) throw new Error('cluster secret must not be empty');
    this.#secret = secret;
    this.#windowMs = o.windowMs ?? SIGNATURE_WINDOW_MS;
    this.#max = o.replayCacheSize ?? 100_000;
    this.#now = o.now ?? Date.now;
  }

  /** Checks one call's headers against its method, request target and body. Never throws. */
  verify(method: string, path: string, body: Uint8Array, headers: Headers): VerifyResult {
    const sig = one(headers, SIGNATURE_HEADER);
    const ts = one(headers, TIMESTAMP_HEADER);
    const nonce = one(headers, NONCE_HEADER) ?? '';
    if (sig === undefined || ts === undefined) return { ok: false, reason: `missing ${SIGNATURE_HEADER} or ${TIMESTAMP_HEADER}` };
    if (!/^\d{1,12}$/.test(ts)) return { ok: false, reason: `${TIMESTAMP_HEADER} is not unix seconds` };
    const now = this.#now();
    const tsMs = Number(ts) * 1000;
    // the timestamp is whole seconds: allow the second it was cut from
    if (tsMs < now - this.#windowMs - 1000 || tsMs > now + this.#windowMs) return { ok: false, reason: 'signature timestamp outside the accepted window (expired, or clocks differ by more than 30 s)' };
    if (!/^[0-9a-f]{64}$/.test(sig)) return { ok: false, reason: 'bad signature' };
    const want = mac(this.#secret, method, path, body, ts, nonce);
    if (!timingSafeEqual(want, Buffer.from(sig, 'hex'))) return { ok: false, reason: 'bad signature' };
    this.#prune(now);
    if (this.#seen.has(sig)) return { ok: false, reason: 'signature already used (replay)' };
    this.#seen.set(sig, tsMs + this.#windowMs + 1000);
    if (this.#seen.size > this.#max) this.#seen.delete(this.#seen.keys().next().value!);
    return { ok: true };
  }

  #prune(now: number): void {
    for (const [k, until] of this.#seen) {
      if (until >= now) break;
      this.#seen.delete(k);
    }
  }
}
