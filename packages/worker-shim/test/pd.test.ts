import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KvgateError } from '@kvgate/protocol';
import { prefillerBaseUrl, prefillRequest, validateDescriptor } from '../src/pd.js';
import { registryKey } from '../src/registry.js';
import { resolveOptions } from '../src/options.js';

const DESC = { do_remote_prefill: true, do_remote_decode: false, remote_engine_id: 'e1', remote_block_ids: [1, 2, 3], remote_host: '10.0.0.1', remote_port: 5600, tp_size: 1, remote_request_id: 'r', extra_future_field: { a: 1 } };

test('x-prefiller-host-port: host:port, [v6]:port; anything else is a 400', () => {
  assert.is(prefillerBaseUrl('prefill-0.svc:8000'), 'http://prefill-0.svc:8000');
  assert.is(prefillerBaseUrl('[::1]:8000'), 'http://[::1]:8000');
  for (const bad of ['nohost', 'a:0', 'a:70000', 'http://a:1', 'a b:1', 'a:1/x']) {
    try {
      prefillerBaseUrl(bad);
      assert.unreachable(bad);
    } catch (e) {
      assert.instance(e, KvgateError);
      assert.is((e as KvgateError).httpStatus, 400, bad);
    }
  }
});

test('prefill request: do_remote_decode, max_tokens 1, no stream', () => {
  const r = prefillRequest({ model: 'm', prompt: 'x', stream: true, stream_options: { include_usage: true }, max_tokens: 99 }, false);
  assert.equal(r, { model: 'm', prompt: 'x', stream: false, max_tokens: 1, kv_transfer_params: { do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null } });
  assert.is(prefillRequest({ messages: [], max_completion_tokens: 50 }, true).max_completion_tokens, 1);
});

test('descriptor: valid shapes pass through untouched, bad ones are KVG_BAD_DESCRIPTOR', () => {
  assert.is(validateDescriptor(DESC), DESC);
  assert.ok(validateDescriptor({ ...DESC, remote_block_ids: [[1, 2], [3]] }));
  for (const bad of [null, undefined, [], 'x', { ...DESC, do_remote_prefill: false }, { ...DESC, remote_engine_id: 3 }, { ...DESC, remote_block_ids: [1, -2] }, { ...DESC, remote_block_ids: 'x' }, { ...DESC, remote_host: '' }, { ...DESC, remote_port: 0 }, { ...DESC, remote_port: 1.5 }, { ...DESC, tp_size: 0 }]) {
    try {
      validateDescriptor(bad);
      assert.unreachable(JSON.stringify(bad));
    } catch (e) {
      assert.is((e as KvgateError).code, 'KVG_BAD_DESCRIPTOR');
    }
  }
});

test('registry keys are valid KV keys and distinct for distinct ids', () => {
  assert.is(registryKey('w-1_a'), 'w-1_a');
  assert.is(registryKey('pod:0@m'), 'pod=3a0=40m');
  assert.not.equal(registryKey('a:b'), registryKey('a@b'));
  assert.match(registryKey('x:y@z'), /^[A-Za-z0-9_\-=.]+$/);
});

test('options: required fields and bad values are KVG_CONFIG', () => {
  const ok = { worker: 'w', model: 'm', engineUrl: 'http://e/', kvEvents: 'tcp://a:1' };
  const r = resolveOptions(ok);
  assert.equal([r.engineUrl, r.role, r.registryTtlMs, r.heartbeatMs, r.loadIntervalMs], ['http://e', 'both', 3000, 1000, 250]);
  for (const bad of [{ ...ok, worker: 'a.b' }, { ...ok, model: '' }, { ...ok, role: 'x' as 'both' }, { ...ok, loraMap: 'x' }, { ...ok, heartbeatMs: -1 }]) {
    try {
      resolveOptions(bad);
      assert.unreachable();
    } catch (e) {
      assert.is((e as KvgateError).code, 'KVG_CONFIG');
    }
  }
});

test.run();
