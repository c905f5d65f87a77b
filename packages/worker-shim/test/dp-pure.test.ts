/**
 * The pure parts of data parallelism, against upstream rules:
 *   offsetEndpoint — vLLM `ZmqEventPublisher.offset_endpoint_port` (vllm/distributed/kv_events.py): rank 0 keeps
 *     the endpoint, inproc gets `_dp<r>`, tcp's port after the last colon grows by r, anything else is an error;
 *   peekDpRank     — the rank in hand-written EventBatch bytes: vLLM's map `{ts, events, data_parallel_rank}`,
 *     the older array `[ts, events, data_parallel_rank]`, SGLang's array `[ts, events, attn_dp_rank]`;
 *   engineLoad     — one rank's load: vLLM `engine="<r>"` series (vllm/v1/metrics/loggers.py labelnames
 *     ["model_name", "engine"]), SGLang `dp_rank="<r>"`, else the server's totals split evenly;
 *   resolveOptions — the flags' rules.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { offsetEndpoint, peekDpRank, rankWorkerId } from '../src/dp.js';
import { engineLoad } from '../src/engine-load.js';
import { parsePrometheusText } from '../src/prom-text.js';
import { resolveOptions } from '../src/options.js';
import { mp } from './fake-engine.js';

const bytes = (b: number[]) => Uint8Array.from(b);
const ts = mp.float64(1_700_000_000.25);
const storedEv = mp.map([
  ['type', mp.str('BlockStored')],
  ['block_hashes', mp.array([mp.uint(0xffff_ffff_ffff_fff0n)])],
  ['parent_block_hash', mp.nil()],
  ['token_ids', mp.array([1, 2, 3, 4].map(mp.uint))],
  ['block_size', mp.uint(4)],
  ['lora_id', mp.nil()],
  ['medium', mp.str('GPU')],
  ['lora_name', mp.nil()],
]);

test('offsetEndpoint follows vLLM offset_endpoint_port', () => {
  assert.is(offsetEndpoint('tcp://*:5557', 0), 'tcp://*:5557');
  assert.is(offsetEndpoint('tcp://*:5557', 2), 'tcp://*:5559');
  assert.is(offsetEndpoint('tcp://10.0.0.7:5557', 1), 'tcp://10.0.0.7:5558');
  assert.is(offsetEndpoint('tcp://[::1]:5557', 3), 'tcp://[::1]:5560', 'the port is after the last colon');
  assert.is(offsetEndpoint('inproc://cache', 1), 'inproc://cache_dp1');
  assert.is(offsetEndpoint('ipc:///tmp/kv', 0), 'ipc:///tmp/kv', 'rank 0 keeps any endpoint');
  assert.throws(() => offsetEndpoint('ipc:///tmp/kv', 1), /tcp:\/\/ ports and inproc/);
  assert.throws(() => offsetEndpoint('tcp://*:65535', 1), /65535/);
  assert.is(rankWorkerId('pod-a', 1), 'pod-a-dp1');
});

test('peekDpRank reads the batch rank in every encoding, and nothing else', () => {
  // current vLLM: a map, data_parallel_rank after the events (which may hold anything)
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([storedEv])], ['data_parallel_rank', mp.uint(3)]]))), 3);
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([])], ['data_parallel_rank', mp.uint(300)]]))), 300, 'uint16');
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([])]]))), undefined, 'no rank field');
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([])], ['data_parallel_rank', mp.nil()]]))), undefined, 'nil rank');
  // a key of the same name inside an event is not the batch's
  const inner = mp.map([['type', mp.str('BlockRemoved')], ['block_hashes', mp.array([])], ['data_parallel_rank', mp.uint(9)]]);
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([inner])], ['data_parallel_rank', mp.uint(1)]]))), 1);
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([inner])]]))), undefined);
  // a long unknown key (str8) and a bin value before the rank are skipped
  const long = 'x'.repeat(40);
  assert.is(peekDpRank(bytes(mp.map([[long, mp.bin(new Uint8Array(33))], ['ts', ts], ['events', mp.array([])], ['data_parallel_rank', mp.uint(2)]]))), 2);
  // vLLM ≤ 0.23 and SGLang (attn_dp_rank): arrays, the rank third
  assert.is(peekDpRank(bytes(mp.array([ts, mp.array([storedEv]), mp.uint(1)]))), 1);
  assert.is(peekDpRank(bytes(mp.array([ts, mp.array([storedEv])]))), undefined, 'two fields: no rank');
  assert.is(peekDpRank(bytes(mp.array([ts, mp.array([]), mp.nil()]))), undefined);
  // SGLang's name in a map form, and data_parallel_rank first when both are there
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['events', mp.array([])], ['attn_dp_rank', mp.uint(4)]]))), 4);
  assert.is(peekDpRank(bytes(mp.map([['attn_dp_rank', mp.uint(4)], ['data_parallel_rank', mp.uint(5)]]))), 5);
  // what cannot be read names no rank (the relay's decoder judges it as usual)
  const full = mp.map([['ts', ts], ['events', mp.array([storedEv])], ['data_parallel_rank', mp.uint(3)]]);
  assert.is(peekDpRank(bytes(full.slice(0, full.length - 3))), undefined, 'truncated');
  assert.is(peekDpRank(bytes(mp.map([['ts', ts], ['data_parallel_rank', mp.str('1')]]))), undefined, 'not an integer');
  assert.is(peekDpRank(bytes(mp.map([['data_parallel_rank', [0xd0, 0xff]]]))), undefined, 'negative');
  assert.is(peekDpRank(bytes([])), undefined);
  assert.is(peekDpRank(bytes(mp.str('junk'))), undefined);
});

const VLLM_DP = `vllm:num_requests_running{engine="0",model_name="m"} 3
vllm:num_requests_running{engine="1",model_name="m"} 1
vllm:num_requests_waiting{engine="0",model_name="m"} 5
vllm:num_requests_waiting{engine="1",model_name="m"} 2
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:cache_config_info{block_size="16",engine="0",model_name="m",num_gpu_blocks="1000"} 1
vllm:cache_config_info{block_size="16",engine="1",model_name="m",num_gpu_blocks="900"} 1
`;

test('engineLoad per rank: vLLM engine label', () => {
  const s = parsePrometheusText(VLLM_DP).samples;
  assert.equal(engineLoad(s, { rank: 0, size: 2 }), { engine: 'vllm', waiting: 5, running: 3, kvUsage: 0.5, blockSize: 16, capacityBlocks: 1000 });
  assert.equal(engineLoad(s, { rank: 1, size: 2 }), { engine: 'vllm', waiting: 2, running: 1, kvUsage: 0.25, blockSize: 16, capacityBlocks: 900 });
  assert.equal(engineLoad(s, { rank: 1, size: null }), engineLoad(s, { rank: 1, size: 2 }), 'labelled: the size does not matter');
  assert.equal(engineLoad(s, { rank: 5, size: 8 }), { engine: 'vllm', waiting: 0, running: 0, kvUsage: 0 }, 'a rank the server does not label is idle, not the server');
  assert.equal(engineLoad(s), { engine: 'vllm', waiting: 7, running: 4, kvUsage: 0.5, blockSize: 16, capacityBlocks: 1900 }, 'no rank: the server');
});

test('engineLoad per rank: SGLang dp_rank label', () => {
  const text = `sglang:num_running_reqs{dp_rank="0",model_name="m",tp_rank="0"} 4
sglang:num_running_reqs{dp_rank="1",model_name="m",tp_rank="0"} 6
sglang:num_queue_reqs{dp_rank="0",model_name="m",tp_rank="0"} 1
sglang:num_queue_reqs{dp_rank="1",model_name="m",tp_rank="0"} 0
sglang:token_usage{dp_rank="0",model_name="m",tp_rank="0"} 0.1
sglang:token_usage{dp_rank="1",model_name="m",tp_rank="0"} 0.7
sglang:max_total_num_tokens{dp_rank="0",model_name="m",tp_rank="0"} 8000
sglang:max_total_num_tokens{dp_rank="1",model_name="m",tp_rank="0"} 8000
`;
  const s = parsePrometheusText(text).samples;
  assert.equal(engineLoad(s, { rank: 1, size: 2 }), { engine: 'sglang', waiting: 0, running: 6, kvUsage: 0.7, capacityTokens: 8000 });
});

test('engineLoad per rank without per-rank series: counts and capacity split evenly, usage kept, flagged', () => {
  const s = parsePrometheusText('vllm:num_requests_running 6\nvllm:num_requests_waiting 4\nvllm:kv_cache_usage_perc 0.3\nvllm:cache_config_info{block_size="16",num_gpu_blocks="3000"} 1\n').samples;
  assert.equal(engineLoad(s, { rank: 2, size: 3 }), { engine: 'vllm', waiting: 4 / 3, running: 2, kvUsage: 0.3, blockSize: 16, capacityBlocks: 1000, split: true });
  assert.equal(engineLoad(s, { rank: 0, size: null }), { engine: 'vllm', waiting: 4, running: 6, kvUsage: 0.3, blockSize: 16, capacityBlocks: 3000 }, 'this URL serves this rank alone');
});

test('resolveOptions: data-parallel flags', () => {
  const base = { worker: 'w', model: 'm', engineUrl: 'http://e', kvEvents: 'tcp://127.0.0.1:5557' };
  assert.is(resolveOptions({ ...base, dataParallelSize: 1 }).dp, null, 'size 1 is no data parallelism');
  assert.is(resolveOptions(base).dp, null);
  assert.equal(resolveOptions({ ...base, dataParallelSize: 3 }).dp, { dpSize: 3, ranks: [0, 1, 2].map((rank) => ({ rank, worker: `w-dp${rank}` })) });
  assert.equal(resolveOptions({ ...base, dpRank: 1 }).dp, { dpSize: null, ranks: [{ rank: 1, worker: 'w-dp1' }] });
  assert.equal(resolveOptions({ ...base, dpRank: 0, dataParallelSize: 1 }).dp, { dpSize: 1, ranks: [{ rank: 0, worker: 'w-dp0' }] });
  assert.throws(() => resolveOptions({ ...base, dpRank: 2, dataParallelSize: 2 }), /not below/);
  assert.throws(() => resolveOptions({ ...base, dataParallelSize: 0 }), /≥ 1/);
  assert.throws(() => resolveOptions({ ...base, dpRank: -1 }), /≥ 0/);
  assert.throws(() => resolveOptions({ ...base, kvEvents: 'ipc:///tmp/kv', dataParallelSize: 2 }), /cannot offset/);
  assert.throws(() => resolveOptions({ ...base, kvReplay: 'tcp://127.0.0.1', dataParallelSize: 2 }), /cannot offset/);
  assert.throws(() => resolveOptions({ ...base, kvEventsBind: 'tcp://*:5557' }), /not both/);
  assert.equal(resolveOptions({ worker: 'w', model: 'm', engineUrl: 'http://e', kvEventsBind: 'tcp://*:5557' }).kvEvents, { endpoint: 'tcp://*:5557', bind: true });
});

test.run();
