import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadTokenizer, type ChatMessage } from '@kvgate/protocol/tokenizer';
import { PromptTokenizer } from '../src/tokenize.js';

const convo: ChatMessage[] = [
  { role: 'system', content: 'You are a terse assistant. Answer in one line.' },
  { role: 'user', content: 'What is the capital of France?' },
  { role: 'assistant', content: 'Paris.' },
  { role: 'user', content: 'And of Italy? Ünïcödé ✓ <b>tags</b>' },
];

test('chat pieces cut at special tokens concatenate to the whole encoding', async () => {
  const tok = await loadTokenizer();
  const pt = new PromptTokenizer({ tokenizer: tok });
  const whole = tok.encode(tok.applyChatTemplate(convo), { addSpecialTokens: false });
  assert.equal(pt.chatLocal({ messages: convo }), whole);
});

test('a later turn re-encodes only its new pieces', async () => {
  const tok = await loadTokenizer();
  const pt = new PromptTokenizer({ tokenizer: tok });
  pt.chatLocal({ messages: convo.slice(0, 2) });
  const misses0 = pt.misses;
  const ids = pt.chatLocal({ messages: convo });
  assert.equal(ids, tok.encode(tok.applyChatTemplate(convo), { addSpecialTokens: false }));
  const newPieces = pt.misses - misses0;
  assert.ok(newPieces > 0 && newPieces <= 4, `new pieces encoded: ${newPieces}`);
  assert.ok(pt.hits >= 3);
});

test('plain prompts are cached by digest', async () => {
  const tok = await loadTokenizer();
  const pt = new PromptTokenizer({ tokenizer: tok });
  const a = await pt.prompt('hello world', 'm');
  const b = await pt.prompt('hello world', 'm');
  assert.equal(a, tok.encode('hello world'));
  assert.equal(b, a);
  assert.is(pt.hits, 1);
});

test('without a local tokenizer the engine /tokenize answers; failure gives null', async () => {
  let calls = 0;
  const srv = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      calls++;
      const j = JSON.parse(body) as { prompt?: string; messages?: unknown[] };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ tokens: j.prompt ? [...j.prompt].map((c) => c.charCodeAt(0)) : [1, 2, 3], count: 3 }));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  const pt = new PromptTokenizer();
  assert.equal(await pt.prompt('ab', 'm', url), [97, 98]);
  assert.equal(await pt.prompt('ab', 'm', url), [97, 98]);
  assert.is(calls, 1);
  assert.equal(await pt.chat({ messages: convo }, 'm', url), [1, 2, 3]);
  srv.close();
  assert.is(await pt.prompt('zz', 'm', url), null);
  assert.is(await pt.prompt('zz', 'm'), null);
});

test.run();
