/** rate-limit.ts on a fake clock: bursts, refill, Retry-After seconds, per-key buckets, oversized prompts, the key cap. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RateLimiter, TokenBucket } from '../src/rate-limit.js';

test('token bucket: a burst, then one per 1/rate, the wait in ms', () => {
  const b = new TokenBucket(2, 3, 0);
  assert.equal([b.take(1, 0), b.take(1, 0), b.take(1, 0)], [0, 0, 0]);
  assert.is(b.take(1, 0), 500);
  assert.is(b.take(1, 250), 250);
  assert.is(b.take(1, 500), 0);
  // it refills to the burst, not beyond
  assert.equal([b.take(3, 10_000), b.take(1, 10_000)], [0, 500]);
});

test('requests per second per key: over the burst → Retry-After seconds, other keys unaffected, refilled later', () => {
  let now = 0;
  const l = new RateLimiter({ requestsPerS: 2, requestBurst: 2 }, () => now);
  assert.ok(l.enabled);
  assert.equal([l.request('a'), l.request('a')], [0, 0]);
  assert.is(l.request('a'), 1, 'a third request at once waits (at least 1 s)');
  assert.is(l.request('b'), 0, 'another key has its own bucket');
  now = 500;
  assert.is(l.request('a'), 0);
  assert.is(l.request('a'), 1);
});

test('prompt tokens per second: charged per request; a prompt over the burst needs a full bucket, never refused forever', () => {
  let now = 0;
  const l = new RateLimiter({ tokensPerS: 1000, tokenBurst: 2000 }, () => now);
  assert.is(l.tokens('k', 1500), 0);
  assert.is(l.tokens('k', 1500), 1, '1000 more needed at 1000/s');
  assert.is(l.request('k'), 0, 'no request limit set');
  now = 1000;
  assert.is(l.tokens('k', 1500), 0);
  assert.is(l.tokens('k', 50_000), 2, 'an oversized prompt is charged the burst: 2000 at 1000/s from empty');
  now = 3000;
  assert.is(l.tokens('k', 50_000), 0);
});

test('off by default; the key map is capped (a forgotten key starts full)', () => {
  assert.is(new RateLimiter({}).enabled, false);
  assert.is(new RateLimiter({}).request('x'), 0);
  const l = new RateLimiter({ requestsPerS: 1, maxKeys: 2 }, () => 0);
  assert.is(l.request('a'), 0);
  assert.is(l.request('a'), 1);
  l.request('b');
  l.request('c'); // a is forgotten
  assert.is(l.request('a'), 0);
  assert.throws(() => new RateLimiter({ requestsPerS: -1 }), /non-negative/);
});

test.run();
