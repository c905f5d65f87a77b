import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parsePrometheusText } from '../src/prom-text.js';
import { engineLoad } from '../src/engine-load.js';
import { EngineSeq } from '../src/engine-seq.js';
import { LoraNames, parseLoraMap, lorasFromModels } from '../src/lora.js';

const VLLM = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen3-8b"} 3.0
vllm:num_requests_running{engine="1",model_name="qwen3-8b"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen3-8b"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen3-8b"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="2048",num_cpu_blocks="None",label_with_comma="a,b\\"c"} 1.0
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora",waiting_lora_adapters=""} 1.7e+09
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,chat",waiting_lora_adapters="x"} 1.8e+09
vllm:time_to_first_token_seconds_bucket{le="+Inf"} 12
this line is garbage
`;

test('parses the text format, labels with escapes, and skips junk', () => {
  const p = parsePrometheusText(VLLM);
  assert.is(p.skipped, 1);
  const cfg = p.samples.find((s) => s.name === 'vllm:cache_config_info')!;
  assert.is(cfg.labels.label_with_comma, 'a,b"c');
  assert.is(cfg.labels.num_gpu_blocks, '2048');
  assert.is(p.samples.find((s) => s.name === 'vllm:lora_requests_info')!.value, 1.7e9);
});

test('vLLM load: sums over engines, learns block size, capacity and loras', () => {
  const l = engineLoad(parsePrometheusText(VLLM).samples);
  assert.equal(l, { engine: 'vllm', waiting: 7, running: 5, kvUsage: 0.25, blockSize: 16, capacityBlocks: 2048, loras: ['sql-lora', 'chat', 'x'], maxLoras: 4 });
});

test('older vLLM gpu_cache_usage_perc', () => {
  const l = engineLoad(parsePrometheusText('vllm:gpu_cache_usage_perc 0.5\nvllm:num_requests_running 1\n').samples);
  assert.is(l.kvUsage, 0.5);
  assert.is(l.running, 1);
  assert.is(l.blockSize, undefined);
});

test('SGLang load', () => {
  const text = `sglang:num_running_reqs{model_name="m"} 4.0
sglang:num_queue_reqs{model_name="m"} 9.0
sglang:token_usage{model_name="m"} 0.75
sglang:max_total_num_tokens{model_name="m"} 161721.0
`;
  assert.equal(engineLoad(parsePrometheusText(text).samples), { engine: 'sglang', waiting: 9, running: 4, kvUsage: 0.75, capacityTokens: 161721 });
});

test('engine sequence: next, gap, restart', () => {
  const s = new EngineSeq();
  assert.equal(s.judge(0n), { kind: 'next' });
  s.accept(0n);
  assert.equal(s.judge(1n), { kind: 'next' });
  s.accept(1n);
  assert.equal(s.judge(5n), { kind: 'gap', from: 2n, to: 5n });
  assert.equal(s.judge(0n), { kind: 'restart', expected: 2n });
  s.reset();
  assert.equal(s.judge(3n), { kind: 'gap', from: 0n, to: 3n });
});

test('lora names: event name, flag map, /v1/models order', () => {
  const l = new LoraNames(parseLoraMap('2 = flagged'));
  assert.equal(l.resolve(null, undefined), { kind: 'base' });
  assert.equal(l.resolve(0, undefined), { kind: 'base' });
  assert.equal(l.resolve(5, 'named'), { kind: 'named', name: 'named' });
  assert.equal(l.resolve(2, undefined), { kind: 'named', name: 'flagged' });
  assert.equal(l.resolve(1, undefined), { kind: 'unknown', id: 1 });
  l.learnFromModels(lorasFromModels({ object: 'list', data: [{ id: 'base', parent: null }, { id: 'sql', parent: 'base' }, { id: 'chat', parent: 'base' }] }));
  assert.equal(l.resolve(1, undefined), { kind: 'named', name: 'sql' });
  assert.equal(l.resolve(2, undefined), { kind: 'named', name: 'flagged' });
  assert.throws(() => parseLoraMap('x=y'));
});

test.run();
