/** `kvgate sim-engine` P/D flags: --kv-fabric (names, Gb/s), --kv-fabric-gbps, the older GB/s flags, --api-key. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { optionsFromArgv } from '../src/commands/sim-engine.js';

test('--kv-fabric names and Gb/s; --kv-fabric-gbps; --rdma-bandwidth (GB/s) and --rdma-latency-ms', () => {
  assert.equal(optionsFromArgv([]).transfer, { bandwidthGBps: 50, latencyMs: 0.5 }, 'default rdma-400g');
  assert.equal(optionsFromArgv(['--kv-fabric', 'roce-200g']).transfer, { bandwidthGBps: 25, latencyMs: 1 });
  assert.equal(optionsFromArgv(['--kv-fabric', 'tcp-25g']).transfer, { bandwidthGBps: 3.125, latencyMs: 2 });
  assert.equal(optionsFromArgv(['--kv-fabric', '100']).transfer, { bandwidthGBps: 12.5, latencyMs: 1 });
  assert.equal(optionsFromArgv(['--kv-fabric-gbps', '200']).transfer, { bandwidthGBps: 25, latencyMs: 1 });
  assert.equal(optionsFromArgv(['--rdma-bandwidth', '10']).transfer, { bandwidthGBps: 10, latencyMs: 0.5 });
  assert.equal(optionsFromArgv(['--kv-fabric', 'tcp-25g', '--rdma-latency-ms', '0']).transfer, { bandwidthGBps: 3.125, latencyMs: 0 });
});

test('bad or conflicting link flags are clear errors', () => {
  assert.throws(() => optionsFromArgv(['--kv-fabric', 'infiniband']), /kv fabric must be rdma-400g, roce-200g, tcp-25g or a line rate in Gb\/s/);
  assert.throws(() => optionsFromArgv(['--kv-fabric', 'tcp-25g', '--rdma-bandwidth', '5']), /--kv-fabric and --rdma-bandwidth both set the KV link/);
  assert.throws(() => optionsFromArgv(['--kv-fabric-gbps', '0']), /--kv-fabric-gbps must be a positive number/);
  assert.throws(() => optionsFromArgv(['--rdma-latency-ms', 'soon']), /--rdma-latency-ms must be non-negative/);
});

test('--api-key (or VLLM_API_KEY) reaches the engine options; none by default', () => {
  const saved = process.env.VLLM_API_KEY;
  delete process.env.VLLM_API_KEY;
  try {
    assert.is(optionsFromArgv([]).apiKey, undefined);
    assert.is(optionsFromArgv(['--api-key', 'k1']).apiKey, 'k1');
    process.env.VLLM_API_KEY = 'from-env';
    assert.is(optionsFromArgv([]).apiKey, 'from-env');
    assert.is(optionsFromArgv(['--api-key', 'flag-wins']).apiKey, 'flag-wins');
  } finally {
    if (saved === undefined) delete process.env.VLLM_API_KEY;
    else process.env.VLLM_API_KEY = saved;
  }
});

test.run();
