/** cluster-auth.ts: a signed call verifies; each tampered part, a wrong secret, an old or future time and a replay are refused. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ClusterVerifier, NONCE_HEADER, SIGNATURE_HEADER, signRequest, TIMESTAMP_HEADER } from '../src/cluster-auth.js';

const body = Buffer.from('{"model":"m","prompt":"hi"}');
const T = 1_800_000_000_000;

test('a signed call verifies once; the same headers again are a replay', () => {
  let now = T;
  const v = new ClusterVerifier('s3cret', { now: () => now });
  const h = signRequest('s3cret', 'POST', '/v1/completions', body, T);
  assert.equal(v.verify('POST', '/v1/completions', body, h), { ok: true });
  const again = v.verify('POST', '/v1/completions', body, h);
  assert.is(again.ok, false);
  assert.match((again as { reason: string }).reason, /replay/);
  // two identical requests in the same second are two calls (fresh nonces)
  assert.equal(v.verify('POST', '/v1/completions', body, signRequest('s3cret', 'POST', '/v1/completions', body, T)), { ok: true });
  now = T + 29_000;
  assert.equal(v.verify('POST', '/v1/completions', body, signRequest('s3cret', 'POST', '/v1/completions', body, T)), { ok: true }, '29 s of clock difference is accepted');
});

test('refused: no headers, wrong secret, another method, path or body, a changed nonce, expired or future timestamps', () => {
  let now = T;
  const v = new ClusterVerifier('s3cret', { now: () => now });
  const h = () => signRequest('s3cret', 'POST', '/v1/completions', body, T);
  const reason = (r: ReturnType<ClusterVerifier['verify']>) => (r.ok ? 'accepted' : r.reason);
  assert.match(reason(v.verify('POST', '/v1/completions', body, {})), /missing/);
  assert.match(reason(v.verify('POST', '/v1/completions', body, signRequest('other', 'POST', '/v1/completions', body, T))), /bad signature/);
  assert.match(reason(v.verify('GET', '/v1/completions', body, h())), /bad signature/);
  assert.match(reason(v.verify('POST', '/v1/chat/completions', body, h())), /bad signature/);
  assert.match(reason(v.verify('POST', '/v1/completions', Buffer.from('{"model":"m","prompt":"ho"}'), h())), /bad signature/);
  assert.match(reason(v.verify('POST', '/v1/completions', body, { ...h(), [NONCE_HEADER]: 'ffffffffffffffff' })), /bad signature/);
  assert.match(reason(v.verify('POST', '/v1/completions', body, { ...h(), [SIGNATURE_HEADER]: 'abc' })), /bad signature/);
  assert.match(reason(v.verify('POST', '/v1/completions', body, { ...h(), [TIMESTAMP_HEADER]: 'soon' })), /unix seconds/);
  now = T + 32_000;
  assert.match(reason(v.verify('POST', '/v1/completions', body, h())), /outside the accepted window/, 'expired');
  now = T - 31_000;
  assert.match(reason(v.verify('POST', '/v1/completions', body, h())), /outside the accepted window/, 'from the future');
});

test('the replay cache forgets signatures once their time is out of the window, and stays bounded', () => {
  let now = T;
  const v = new ClusterVerifier('k', { now: () => now, replayCacheSize: 2 });
  const a = signRequest('k', 'POST', '/p', body, T);
  assert.ok(v.verify('POST', '/p', body, a).ok);
  assert.ok(v.verify('POST', '/p', body, signRequest('k', 'POST', '/p', body, T)).ok);
  assert.ok(v.verify('POST', '/p', body, signRequest('k', 'POST', '/p', body, T)).ok);
  // past the cap the oldest is forgotten; it is still refused once its time leaves the window
  now = T + 40_000;
  assert.is(v.verify('POST', '/p', body, a).ok, false);
});

test.run();
