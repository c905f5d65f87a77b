/** fatal.ts: the one table of start-up failures — each kind of error to its KVG_* code, exit code and one line. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BusError, KvgateError } from '@kvgate/protocol';
import { classify, fatalLine, FlagError } from '../src/fatal.js';

const sys = (code: string, extra: Record<string, unknown> = {}) => Object.assign(new Error(`${code}: boom\nsecond line`), { code, ...extra });

test('each kind of failure has its code and exit code', () => {
  const rows: [unknown, string, number][] = [
    [Object.assign(new TypeError("Unknown option '--x'"), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' }), 'KVG_BAD_FLAG', 2],
    [new FlagError('--port must be a number, got "x"'), 'KVG_BAD_FLAG', 2],
    [new KvgateError('KVG_CONFIG', 'role must be both, prefill or decode'), 'KVG_CONFIG', 2],
    [sys('EADDRINUSE', { address: '127.0.0.1', port: 8080, syscall: 'listen' }), 'KVG_PORT_IN_USE', 1],
    [new Error('Address already in use'), 'KVG_PORT_IN_USE', 1],
    [sys('EACCES', { address: '0.0.0.0', port: 80, syscall: 'listen' }), 'KVG_ADDRESS', 1],
    [new BusError('KVG_BUS', 'cannot connect to NATS at nats://x:4222: unreachable after 5000 ms (CONNECTION_REFUSED)'), 'KVG_NATS_UNREACHABLE', 1],
    [new BusError('KVG_TIMEOUT', 'stream KVGATE_EVENTS_default: timed out'), 'KVG_NATS', 1],
    [sys('ENOENT', { path: '/nope/tokenizer.json' }), 'KVG_FILE', 1],
    [sys('EACCES', { path: '/root/snap' }), 'KVG_FILE', 1],
    [new Error('something else'), 'KVG_STARTUP', 1],
    ['a string', 'KVG_STARTUP', 1],
  ];
  for (const [err, code, exit] of rows) {
    const f = classify('router', err);
    assert.is(f.code, code, String((err as Error).message ?? err));
    assert.is(f.exitCode, exit, code);
  }
});

test('one line: kvgate <cmd>: <what> (<hint>) [code]; the address of a port in use; first line of a message only', () => {
  const line = fatalLine('router', classify('router', sys('EADDRINUSE', { address: '0.0.0.0', port: 8080 })));
  assert.is(line, 'kvgate router: 0.0.0.0:8080 is already in use (stop what holds it, or choose another port with the flag that set it) [KVG_PORT_IN_USE]');
  const zmq = classify('sim-engine', Object.assign(new Error('Address already in use'), { code: 'EADDRINUSE', address: 'tcp://127.0.0.1:5557' }));
  assert.match(zmq.what, /^tcp:\/\/127\.0\.0\.1:5557 is already in use$/);
  const multi = fatalLine('shim', classify('shim', new Error('first\nsecond')));
  assert.not.match(multi, /\n|second/);
  assert.match(fatalLine('shim', classify('shim', new FlagError('--port must be a number'))), /^kvgate shim: --port must be a number \(kvgate shim --help lists the options\) \[KVG_BAD_FLAG\]$/);
});

test.run();
