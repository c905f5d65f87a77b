/** `…shim.resync.<worker>` (DESIGN.md §4): subject and the request/reply codecs, against an independent msgpack encoder. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encode as independentEncode } from '@msgpack/msgpack';
import { decodeResyncReply, decodeResyncRequest } from '../src/schemas.js';
import { DecodeError } from '../src/errors.js';
import { subjects } from '../src/subjects.js';

test('resync subject', () => {
  assert.is(subjects('ns1').shimResync('w-1'), 'kvgate.ns1.shim.resync.w-1');
  assert.is(subjects().shimResync('a:b'), 'kvgate.default.shim.resync.a:b');
});

test('resync request: fromSeq optional, a non-negative integer', () => {
  assert.equal(decodeResyncRequest(independentEncode({})), {});
  assert.equal(decodeResyncRequest(independentEncode({ fromSeq: null })), {});
  assert.equal(decodeResyncRequest(independentEncode({ fromSeq: 0 })), { fromSeq: 0 });
  assert.equal(decodeResyncRequest(independentEncode({ fromSeq: 123456 })), { fromSeq: 123456 });
  assert.equal(decodeResyncRequest(independentEncode({ fromSeq: 2n ** 40n }, { useBigInt64: true })), { fromSeq: 2 ** 40 });
  for (const bad of [[], 'x', 5, { fromSeq: -1 }, { fromSeq: 1.5 }, { fromSeq: 'x' }]) {
    assert.throws(() => decodeResyncRequest(independentEncode(bad)), (e: unknown) => e instanceof DecodeError, JSON.stringify(bad));
  }
  assert.throws(() => decodeResyncRequest(Uint8Array.of(0x81, 0xa1)), (e: unknown) => e instanceof DecodeError);
});

test('resync reply: seq required; an error body is refused', () => {
  assert.equal(decodeResyncReply(independentEncode({ seq: 7 })), { seq: 7 });
  for (const bad of [{}, { seq: -2 }, { seq: 'x' }, { error: { message: 'm', type: 't', code: 'KVG_INTERNAL' } }, null]) {
    assert.throws(() => decodeResyncReply(independentEncode(bad)), (e: unknown) => e instanceof DecodeError, JSON.stringify(bad));
  }
});

test.run();
