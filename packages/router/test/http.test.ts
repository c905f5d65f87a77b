import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KvgateError } from '@kvgate/protocol';
import { validateApiRequest } from '../src/http.js';

const buf = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));
function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof KvgateError ? e.code : 'not-kvgate';
  }
  return undefined;
}

test('completions: text, token ids, batches', () => {
  const a = validateApiRequest('completion', buf({ model: 'm', prompt: 'hi', stream: true, max_tokens: 5 }));
  assert.equal([a.kind, a.prompt, a.stream, a.maxTokens], ['completion', 'hi', true, 5]);
  const b = validateApiRequest('completion', buf({ model: 'm', prompt: [1, 2, 3] }));
  assert.equal(b.promptIds, [1, 2, 3]);
  assert.is(b.stream, false);
  assert.is(validateApiRequest('completion', buf({ model: 'm', prompt: ['x', 'y'] })).prompt, 'x');
  assert.equal(validateApiRequest('completion', buf({ model: 'm', prompt: [[4, 5], [6]] })).promptIds, [4, 5]);
});

test('chat: messages checked; /v1/route takes either shape', () => {
  const c = validateApiRequest('chat', buf({ model: 'm', messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 9 }));
  assert.equal([c.kind, c.messages!.length, c.maxTokens], ['chat', 1, 9]);
  assert.is(validateApiRequest('either', buf({ model: 'm', messages: [{ role: 'user', content: 'x' }] })).kind, 'chat');
  assert.equal(validateApiRequest('either', buf({ model: 'm', tokens: [7, 8] })).promptIds, [7, 8]);
});

test('cache_salt: top-level string on both kinds; SGLang batch form on completions; null = unsalted', () => {
  assert.is(validateApiRequest('completion', buf({ model: 'm', prompt: 'x', cache_salt: 'tenant-42' })).cacheSalt, 'tenant-42');
  assert.is(validateApiRequest('chat', buf({ model: 'm', messages: [{ role: 'user', content: 'x' }], cache_salt: 's' })).cacheSalt, 's');
  assert.is(validateApiRequest('either', buf({ model: 'm', messages: [{ role: 'user', content: 'x' }], cache_salt: 's2' })).cacheSalt, 's2');
  assert.is(validateApiRequest('completion', buf({ model: 'm', prompt: ['a', 'b'], cache_salt: ['s-a', 's-b'] })).cacheSalt, 's-a', 'a batch is routed by its first prompt, hashed with its salt');
  const unsalted = validateApiRequest('completion', buf({ model: 'm', prompt: 'x', cache_salt: null }));
  assert.is(unsalted.cacheSalt, undefined);
  assert.not.ok('cacheSalt' in validateApiRequest('completion', buf({ model: 'm', prompt: 'x' })));
  const raw = buf({ model: 'm', prompt: 'x', cache_salt: 'keep' });
  assert.is(validateApiRequest('completion', raw).raw, raw, 'forwarded byte for byte, salt included');
});

test('cache_salt: anything but a non-empty string (or a batch of them) is a KVG_BAD_REQUEST', () => {
  const msg = (fn: () => unknown): string => {
    try {
      fn();
    } catch (e) {
      assert.instance(e, KvgateError);
      assert.is((e as KvgateError).code, 'KVG_BAD_REQUEST');
      assert.is((e as KvgateError).httpStatus, 400);
      return (e as Error).message;
    }
    throw new Error('accepted');
  };
  for (const bad of [42, true, {}, { salt: 'x' }, '', [], [1], ['ok', ''], ['ok', 3]]) {
    assert.match(msg(() => validateApiRequest('completion', buf({ model: 'm', prompt: 'x', cache_salt: bad }))), /cache_salt must be a non-empty string/, JSON.stringify(bad));
  }
  for (const bad of [7, '', ['a']]) {
    assert.match(msg(() => validateApiRequest('chat', buf({ model: 'm', messages: [{ role: 'user', content: 'x' }], cache_salt: bad }))), /^cache_salt must be a non-empty string$/, JSON.stringify(bad));
  }
});

test('bad input becomes a coded error', () => {
  assert.is(code(() => validateApiRequest('completion', buf('{nope'))), 'KVG_BAD_JSON');
  assert.is(code(() => validateApiRequest('completion', buf('[1]'))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('completion', buf({ prompt: 'x' }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('completion', buf({ model: 'm' }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('completion', buf({ model: 'm', prompt: [1.5] }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('completion', buf({ model: 'm', prompt: 'x', stream: 'yes' }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('completion', buf({ model: 'm', prompt: 'x', max_tokens: -1 }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('chat', buf({ model: 'm', messages: [] }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('chat', buf({ model: 'm', messages: [{ content: 'x' }] }))), 'KVG_BAD_REQUEST');
  assert.is(code(() => validateApiRequest('chat', buf({ model: 'm', messages: [{ role: 'user', content: 5 }] }))), 'KVG_BAD_REQUEST');
});

test.run();
