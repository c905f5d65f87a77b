/** UsageStrip (usage-strip.ts): the usage-only chunk leaves the stream however the engine's bytes are cut. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { clientWantsUsage, UsageStrip, withUsage, withUsageRaw } from '../src/usage-strip.js';

const tok = (t: string) => `data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":"${t}","finish_reason":null}]}\n\n`;
const usage = 'data: {"id":"c","object":"text_completion","choices":[],"usage":{"prompt_tokens":64,"total_tokens":68,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":48}}}\n\n';
const done = 'data: [DONE]\n\n';
const whole = tok('a') + tok('b') + usage + done;

function run(chunks: string[]): { out: string; writes: number; dropped: number } {
  const s = new UsageStrip();
  let out = '';
  let writes = 0;
  for (const c of chunks) {
    const b = s.push(Buffer.from(c));
    if (b.length > 0) writes++;
    out += b.toString();
  }
  out += s.flush()?.toString() ?? '';
  return { out, writes, dropped: s.dropped };
}

test('one event per chunk: the usage chunk is dropped, the rest passes chunk for chunk', () => {
  const r = run([tok('a'), tok('b'), usage, done]);
  assert.is(r.out, tok('a') + tok('b') + done);
  assert.is(r.writes, 3);
  assert.is(r.dropped, 1);
});

test('cut anywhere (every split point of the stream in two, and byte by byte): the same output', () => {
  for (let i = 0; i <= whole.length; i++) assert.is(run([whole.slice(0, i), whole.slice(i)]).out, tok('a') + tok('b') + done, `split at ${i}`);
  assert.is(run([...whole]).out, tok('a') + tok('b') + done);
});

test('CRLF framing, a token chunk that mentions "usage" in its text, an unterminated tail', () => {
  const crlf = usage.replace(/\n\n$/, '\r\n\r\n');
  assert.is(run([tok('a'), crlf, done]).out, tok('a') + done);
  const mention = tok('the \\"usage\\" word');
  assert.is(run([mention, usage, done]).out, mention + done);
  assert.is(run([tok('a'), 'data: {"partial"']).out, tok('a') + 'data: {"partial"');
});

test('request side: include_usage added, continuous stats off, other stream options kept; the client\'s own ask detected', () => {
  assert.equal(withUsage({ model: 'm', stream: true }), { model: 'm', stream: true, stream_options: { include_usage: true, continuous_usage_stats: false } });
  assert.equal(withUsage({ stream_options: { continuous_usage_stats: true, x: 1 } }).stream_options, { continuous_usage_stats: false, x: 1, include_usage: true });
  assert.is(clientWantsUsage({ stream_options: { include_usage: true } }), true);
  assert.is(clientWantsUsage({ stream_options: { include_usage: false } }), false);
  assert.is(clientWantsUsage({ stream_options: null }), false);
  assert.is(clientWantsUsage({}), false);
});

test('withUsageRaw: spliced before the closing brace (whitespace after it kept), re-written when stream_options is there', () => {
  for (const raw of ['{"model":"m","stream":true,"prompt":[1,2,3]}', '{ "model": "m", "stream": true }\n  ', '{"model":"m","nested":{"a":{}},"stream":true}']) {
    const body = JSON.parse(raw) as Record<string, unknown>;
    const out = withUsageRaw(Buffer.from(raw), body);
    assert.equal(JSON.parse(out.toString()), { ...body, stream_options: { include_usage: true } }, raw);
    assert.ok(out.toString().startsWith(raw.slice(0, raw.lastIndexOf('}'))), 'the client\'s bytes kept as they were');
  }
  const withOpts = { model: 'm', stream: true, stream_options: { continuous_usage_stats: true } };
  assert.equal(JSON.parse(withUsageRaw(Buffer.from(JSON.stringify(withOpts)), withOpts).toString()), withUsage(withOpts));
});

test.run();
