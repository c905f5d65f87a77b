/**
 * Per-key rate limits (pure; the clock is injected): two token buckets per key, one on requests/s and one on
 * prompt tokens/s, each refilled continuously up to its burst. A key is an API key's label, or the client's
 * address when the router has no keys.
 *
 * A prompt larger than the token burst is charged the burst (it needs a full bucket), so it is never refused
 * forever. Buckets live in a Map capped at `maxKeys`: past it the longest-unused key is forgotten (a forgotten
 * key starts again with a full bucket, which only ever lets a request through that would have waited).
 */

export class TokenBucket {
  readonly rate: number;
  readonly burst: number;
  #level: number;
  #at: number;

  /** `rate` per second, at most `burst` banked; starts full */
  constructor(rate: number, burst: number, nowMs: number) {
    this.rate = rate;
    this.burst = burst;
    this.#level = burst;
    this.#at = nowMs;
  }

  /** takes `n` (capped at the burst) and returns 0, or takes nothing and returns the ms until `n` are banked */
  take(n: number, nowMs: number): number {
    const cost = Math.min(n, this.burst);
    if (nowMs > this.#at) {
      this.#level = Math.min(this.burst, this.#level + ((nowMs - this.#at) / 1000) * this.rate);
      this.#at = nowMs;
    }
    if (this.#level >= cost) {
      this.#level -= cost;
      return 0;
    }
    return ((cost - this.#level) / this.rate) * 1000;
  }
}

export interface RateLimitOptions {
  /** requests per second per key; 0 or absent = unlimited */
  requestsPerS?: number;
  /** requests banked per key (default max(1, requestsPerS)) */
  requestBurst?: number;
  /** prompt tokens per second per key; 0 or absent = unlimited */
  tokensPerS?: number;
  /** prompt tokens banked per key (default tokensPerS: one second's worth) */
  tokenBurst?: number;
  /** keys remembered (default 10,000) */
  maxKeys?: number;
}

interface Buckets {
  requests: TokenBucket | undefined;
  tokens: TokenBucket | undefined;
}

export class RateLimiter {
  readonly #o: { rps: number; rBurst: number; tps: number; tBurst: number; max: number };
  readonly #now: () => number;
  readonly #keys = new Map<string, Buckets>();

  constructor(o: RateLimitOptions, now: () => number = Date.now) {
    const rps = o.requestsPerS ?? 0;
    const tps = o.tokensPerS ?? 0;
    for (const [name, v] of [['requests per second', rps], ['tokens per second', tps], ['request burst', o.requestBurst ?? 1], ['token burst', o.tokenBurst ?? 1]] as const) {
      if (!Number.isFinite(v) || v < 0) throw new RangeError(`rate limit: ${name} must be a non-negative number, got ${v}`);
    }
    this.#o = { rps, rBurst: o.requestBurst || Math.max(1, rps), tps, tBurst: o.tokenBurst || Math.max(1, tps), max: o.maxKeys ?? 10_000 };
    this.#now = now;
  }

  /** any limit configured? */
  get enabled(): boolean {
    return this.#o.rps > 0 || this.#o.tps > 0;
  }

  /** one request by `key`: 0 = go, else the seconds to wait (whole, at least 1: a Retry-After value) */
  request(key: string): number {
    return this.#take(key, 'requests', 1);
  }

  /** `n` prompt tokens by `key`: 0 = go, else the seconds to wait */
  tokens(key: string, n: number): number {
    return this.#take(key, 'tokens', n);
  }

  #take(key: string, which: keyof Buckets, n: number): number {
    const now = this.#now();
    let b = this.#keys.get(key);
    if (b) this.#keys.delete(key); // re-insert: the Map's order is least recently used first
    else {
      b = {
        requests: this.#o.rps > 0 ? new TokenBucket(this.#o.rps, this.#o.rBurst, now) : undefined,
        tokens: this.#o.tps > 0 ? new TokenBucket(this.#o.tps, this.#o.tBurst, now) : undefined,
      };
      if (this.#keys.size >= this.#o.max) this.#keys.delete(this.#keys.keys().next().value!);
    }
    this.#keys.set(key, b);
    const bucket = b[which];
    if (!bucket) return 0;
    const waitMs = bucket.take(n, now);
    return waitMs === 0 ? 0 : Math.max(1, Math.ceil(waitMs / 1000));
  }
}
