/** The chaos suite's verdicts (test/chaos/judge.ts): how answers are classified and when a fault's row fails. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { classify, problems, row, table } from './judge.js';

test('answers: JSON 200 ok; a stream ok only with [DONE]; a stream ending in a KVG_* error event is a clear failure', () => {
  assert.equal(classify(200, '{"choices":[]}'), { kind: 'ok' });
  assert.equal(classify(200, 'data: {"choices":[]}\n\ndata: [DONE]\n\n'), { kind: 'ok' });
  assert.equal(classify(200, 'data: {"choices":[]}\n\n'), { kind: '5xx', status: 200, code: 'stream cut without [DONE]' });
  assert.equal(classify(200, 'data: {"choices":[]}\n\ndata: {"error":{"message":"shutting down","type":"server_error","param":null,"code":503,"kvg_code":"KVG_SHUTTING_DOWN"}}\n\ndata: [DONE]\n\n'), { kind: 'clear', status: 200, code: 'KVG_SHUTTING_DOWN' });
});

test('answers: 4xx with a code is clear, 5xx never is, no answer in time is hung, a refused router is clear, a cut only from the killed router', () => {
  assert.equal(classify(429, '{"error":{"code":429,"kvg_code":"KVG_RATE_LIMITED"}}'), { kind: 'clear', status: 429, code: 'KVG_RATE_LIMITED' });
  assert.equal(classify(503, '{"error":{"code":503,"kvg_code":"KVG_NO_WORKER"}}'), { kind: '5xx', status: 503, code: 'KVG_NO_WORKER' });
  assert.equal(classify(400, 'oops'), { kind: '5xx', status: 400, code: 'no error body' });
  assert.equal(classify(0, '', 'timeout'), { kind: 'hung' });
  assert.equal(classify(0, '', 'ECONNREFUSED'), { kind: 'clear', status: 0, code: 'ECONNREFUSED' });
  assert.equal(classify(0, '', 'ECONNRESET'), { kind: '5xx', status: 0, code: 'ECONNRESET' });
  // cut by the router the fault killed under the request: clear; the same from a router left running: 5xx
  assert.equal(classify(0, '', 'ECONNRESET', true), { kind: 'clear', status: 0, code: 'ECONNRESET (its router killed)' });
  assert.equal(classify(0, '', 'UND_ERR_SOCKET', true), { kind: 'clear', status: 0, code: 'UND_ERR_SOCKET (its router killed)' });
  assert.equal(classify(0, '', 'UND_ERR_SOCKET', false), { kind: '5xx', status: 0, code: 'UND_ERR_SOCKET' });
  assert.equal(classify(0, '', 'ENOTFOUND', true), { kind: '5xx', status: 0, code: 'ENOTFOUND' });
});

test('a row fails on a hang, on a 5xx in a bus/indexer/router fault (not in an engine fault), on slow or no reconvergence, on a bystander exiting', () => {
  const ok = row('nats: all 3 down for 5 s', [{ kind: 'ok' }, { kind: 'clear', status: 0, code: 'ECONNREFUSED' }], 10_000, []);
  assert.equal([ok.sent, ok.succeeded, ok.failedClear], [2, 1, 1]);
  assert.equal(problems(ok), []);
  assert.ok(problems(row('nats: all 3 down for 5 s', [{ kind: '5xx', status: 503, code: 'KVG_NO_WORKER' }], 1000, [])).some((p) => /5xx/.test(p)));
  assert.equal(problems(row('engine kill -9 + restart', [{ kind: 'ok' }, { kind: '5xx', status: 502, code: 'KVG_UPSTREAM' }], 1000, [])), []);
  assert.ok(problems(row('engine kill -9 + restart', [{ kind: 'hung' }], 1000, [])).some((p) => /hung/.test(p)));
  assert.ok(problems(row('shim kill -9 + restart', [{ kind: 'ok' }], 31_000, [])).some((p) => /reconverge/.test(p)));
  assert.ok(problems(row('shim kill -9 + restart', [{ kind: 'ok' }], null, [])).some((p) => /reconverge/.test(p)));
  assert.ok(problems(row('router kill -9 + restart', [{ kind: 'ok' }], 0, ['indexer-1'])).some((p) => /indexer-1/.test(p)));
  assert.ok(problems(row('router kill -9 + restart', [], 0, [])).some((p) => /no request/.test(p)));
  assert.match(table([ok]), /nats: all 3 down for 5 s\s+2\s+1\s+1\s+0\s+0\s+10\.0\s+0\s+ok/);
  assert.match(table([row('router kill -9 + restart', [{ kind: 'ok' }], 0, ['indexer-1'])]), /0\.0\s+indexer-1\s+FAIL: exited: indexer-1/);
});

test.run();
