/**
 * The index-shard flags (issue 18): the routers' and epp's `--index-shards N` (routing-flags.ts) and
 * `kvgate indexer --shard i/N` as a process (a bad value is one line, exit 2, naming the flag).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { ROUTING_SPEC, routingOptionsFrom, type RoutingFlags } from '../src/routing-flags.js';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

/** the flags as parseFlags fills them: every default, then `over` */
const flags = (over: RoutingFlags = {}): RoutingFlags => ({ ...Object.fromEntries(Object.entries(ROUTING_SPEC).map(([k, v]) => [k, (v as { default?: string }).default])), ...over });

test('--index-shards: default 1, an integer 1 … 1024, else KVG_BAD_FLAG naming the value', () => {
  assert.is(routingOptionsFrom(flags()).indexShards, 1);
  assert.is(routingOptionsFrom(flags({ 'index-shards': '2' })).indexShards, 2);
  assert.is(routingOptionsFrom(flags({ 'index-shards': '1024' })).indexShards, 1024);
  for (const bad of ['0', '-1', '1.5', '1025', 'two']) {
    try {
      routingOptionsFrom(flags({ 'index-shards': bad }));
      assert.unreachable(`accepted ${bad}`);
    } catch (e) {
      assert.is((e as { code?: string }).code, 'KVG_BAD_FLAG', bad);
      assert.match((e as Error).message, /--index-shards/);
    }
  }
});

for (const bad of ['2/2', 'x']) {
  test(`kvgate indexer --shard ${bad}: one line, exit 2`, async () => {
    const child = spawn(process.execPath, [BIN, 'indexer', '--shard', bad, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    assert.is(code, 2);
    assert.match(err, /--shard/);
    assert.is(err.trim().split('\n').length, 1, err);
  });
}

test.run();
