/**
 * Authentication flags of the `kvgate` commands (issue 13):
 *   - parsing: API keys from --api-key (repeatable), --api-key-file and KVGATE_API_KEY; rate limits, the cluster
 *     secret, NATS auth combinations; every bad value a FlagError (one fatal line, exit 2);
 *   - as processes against a real nats-server that requires a password: every command that connects (router,
 *     indexer, shim, doctor, replay) refuses to start without credentials and with a wrong password — exit ≠ 0,
 *     one line `… [KVG_NATS_AUTH]`, and the password appears nowhere in stdout or stderr; with the right ones the
 *     router serves, requires its API key, and the indexer's log names the URL redacted; the shim binds 127.0.0.1;
 *     the same for a token server (KVGATE_NATS_TOKEN, or the token in the URL).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { apiKeysFrom, clusterSecretFrom, parseKeyFile, routerAuthFrom } from '../src/auth-flags.js';
import { FlagError } from '../src/fatal.js';
import { parseFlags } from '../src/flags.js';
import { natsOptionsFrom } from '../src/nats-flags.js';
import { freePort, startNatsServer, type NatsServerHandle } from '../../../test/harness/nats-server.js';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

// ---- parsing -------------------------------------------------------------------------------------------------

const flagError = (fn: () => unknown, re: RegExp) => {
  try {
    fn();
  } catch (e) {
    assert.instance(e, FlagError);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable(`no FlagError (${re})`);
};

test('--api-key is repeatable; KVGATE_API_KEY holds one key or several separated by commas', () => {
  const spec = { 'api-key': { type: 'string', multiple: true, help: '' } } as const;
  assert.equal(parseFlags(['--api-key', 'a', '--api-key', 'b'], '', spec)!.flags['api-key'], ['a', 'b']);
  process.env.KVGATE_API_KEY = 'k1, k2,';
  try {
    assert.equal(parseFlags([], '', spec)!.flags['api-key'], ['k1', 'k2']);
    // a flag wins over the env
    assert.equal(parseFlags(['--api-key', 'x'], '', spec)!.flags['api-key'], ['x']);
  } finally {
    delete process.env.KVGATE_API_KEY;
  }
  assert.equal(parseFlags([], '', spec)!.flags['api-key'], []);
});

test('API keys from flags and a key file (one per line, blanks and # comments skipped), deduplicated', () => {
  assert.equal(parseKeyFile('# keys\n  one \n\r\ntwo\r\n#three\n'), ['one', 'two']);
  const files: Record<string, string> = { '/k': 'two\nthree\n', '/empty': '# nothing\n\n' };
  assert.equal(apiKeysFrom({ 'api-key': ['one', 'two'], 'api-key-file': '/k' }, (p) => files[p]!), ['one', 'two', 'three']);
  flagError(() => apiKeysFrom({ 'api-key-file': '/empty' }, (p) => files[p]!), /holds no key/);
  flagError(() => apiKeysFrom({ 'api-key': [''] }), /must not be empty/);
  flagError(() => apiKeysFrom({ 'api-key': ['a b'] }), /whitespace/);
});

test('routerAuthFrom: RouterOptions from the flags; refuses what does not fit', () => {
  assert.equal(routerAuthFrom({}), {});
  assert.equal(
    routerAuthFrom({
      'api-key': ['k'],
      'auth-health': true,
      'rate-limit-rps': '5',
      'rate-limit-burst': '10',
      'rate-limit-tokens-per-s': '1000',
      'rate-limit-keys': '50',
      'engine-api-key': 'ek',
      'forward-client-auth': true,
      'trust-client-pd': true,
      'cluster-secret': '0123456789abcdef',
    }),
    {
      apiKeys: ['k'],
      authHealth: true,
      rateLimit: { requestsPerS: 5, requestBurst: 10, tokensPerS: 1000, maxKeys: 50 },
      engineApiKey: 'ek',
      forwardClientAuth: true,
      trustClientPd: true,
      clusterSecret: '0123456789abcdef',
    },
  );
  // rate limits apply per client address without keys
  assert.equal(routerAuthFrom({ 'rate-limit-tokens-per-s': '100', 'rate-limit-token-burst': '400' }).rateLimit, { tokensPerS: 100, tokenBurst: 400, maxKeys: 10_000 });
  flagError(() => routerAuthFrom({ 'auth-health': true }), /--auth-health needs API keys/);
  flagError(() => routerAuthFrom({ 'rate-limit-rps': 'fast' }), /--rate-limit-rps must be a number/);
  flagError(() => routerAuthFrom({ 'rate-limit-rps': '-1' }), /--rate-limit-rps must be a number ≥ 0/);
  flagError(() => routerAuthFrom({ 'rate-limit-burst': '3' }), /--rate-limit-burst needs --rate-limit-rps/);
  flagError(() => routerAuthFrom({ 'rate-limit-rps': '1', 'rate-limit-keys': '0.5' }), /--rate-limit-keys must be an integer/);
  flagError(() => routerAuthFrom({ 'cluster-secret': 'short' }), /at least 16 characters \(the secret itself is not shown\)/);
  assert.is(clusterSecretFrom(''), undefined);
  assert.is(clusterSecretFrom(undefined), undefined);
});

test('natsOptionsFrom: one authentication at a time; TLS cert and key together', () => {
  assert.equal(natsOptionsFrom({ 'nats-user': 'u', 'nats-password': 'p', 'nats-tls-ca': '/ca.pem' }), { user: 'u', pass: 'p', tls: { caFile: '/ca.pem' } });
  assert.equal(natsOptionsFrom({ 'nats-token': 't' }), { token: 't' });
  flagError(() => natsOptionsFrom({ 'nats-user': 'u', 'nats-token': 't' }), /one NATS authentication/);
  flagError(() => natsOptionsFrom({ 'nats-creds': '/c', 'nats-nkey': '/n' }), /one NATS authentication/);
  flagError(() => natsOptionsFrom({ 'nats-tls-cert': '/c' }), /--nats-tls-cert and --nats-tls-key go together/);
});

// ---- as processes, against a nats-server that requires a password ---------------------------------------------

interface Run {
  child: ChildProcess;
  out: { stdout: string; stderr: string };
  exited: Promise<number | null>;
}

function kvgate(args: string[], env: Record<string, string> = {}): Run {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, KVGATE_LOG_LEVEL: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (c: Buffer) => (out.stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out.stderr += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, out, exited };
}

async function waitFor(r: Run, re: RegExp, ms = 30_000): Promise<RegExpMatchArray> {
  const t0 = Date.now();
  for (;;) {
    const m = re.exec(r.out.stderr) ?? re.exec(r.out.stdout);
    if (m) return m;
    if (r.child.exitCode !== null) throw new Error(`exited ${r.child.exitCode} before ${re}:\n${r.out.stderr}`);
    if (Date.now() - t0 > ms) throw new Error(`no ${re} within ${ms} ms:\n${r.out.stderr}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

async function stop(r: Run): Promise<void> {
  if (r.child.exitCode !== null) return;
  r.child.kill('SIGTERM');
  await r.exited;
}

const plainLines = (s: string): string[] => s.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));

let nats: NatsServerHandle;
const WRONG = 'Wr0ngPassw0rdXYZ';

test.before(async () => {
  nats = await startNatsServer({ auth: 'password' });
});
test.after(async () => {
  await nats.stop();
});

const commands = (url: string, port: number): Array<{ cmd: string; args: string[]; exit?: number }> => [
  { cmd: 'router', args: ['router', '--port', '0', '--host', '127.0.0.1', '--nats', url] },
  { cmd: 'indexer', args: ['indexer', '--port', '0', '--host', '127.0.0.1', '--nats', url] },
  { cmd: 'shim', args: ['shim', '--worker-id', 'w', '--model', 'm', '--port', '0', '--engine-url', `http://127.0.0.1:${port}`, '--kv-events', `tcp://127.0.0.1:${port}`, '--nats', url] },
  { cmd: 'doctor', args: ['doctor', '--nats', url, '--wait-ms', '100'], exit: 2 },
  { cmd: 'replay', args: ['replay', 'export', '--nats', url, '-o', join(mkdtempSync(join(tmpdir(), 'kvg-auth-')), 'x.kvlog')] },
];

async function expectRefused(args: string[], cmd: string, env: Record<string, string>, exit: number | undefined, secrets: string[]): Promise<void> {
  const r = kvgate(args, env);
  const code = await r.exited;
  const what = `kvgate ${args.join(' ')} (env ${Object.keys(env).join(',')}):\nstdout: ${r.out.stdout}\nstderr: ${r.out.stderr}`;
  assert.ok(code !== 0 && code !== null, `${what}\nexit ${code}`);
  if (exit !== undefined) assert.is(code, exit, what);
  const lines = plainLines(r.out.stderr);
  assert.is(lines.length, 1, what);
  assert.match(lines[0]!, new RegExp(`^kvgate ${cmd}(?: \\w+)?: .*rejected the credentials.* \\[KVG_NATS_AUTH\\]$`), what);
  for (const s of secrets) {
    assert.not.ok(r.out.stdout.includes(s), `${what}\n(the secret is in stdout)`);
    assert.not.ok(r.out.stderr.includes(s), `${what}\n(the secret is in stderr)`);
  }
}

test('every command refuses NATS without credentials: one KVG_NATS_AUTH line, exit ≠ 0', async () => {
  const port = await freePort();
  for (const c of commands(nats.url, port)) await expectRefused(c.args, c.cmd, {}, c.exit, []);
});

test('a wrong password (in the URL, or as --nats-user + KVGATE_NATS_PASSWORD): KVG_NATS_AUTH, and the password is never printed', async () => {
  const port = await freePort();
  const inUrl = nats.url.replace('nats://', `nats://kvgate:${WRONG}@`);
  for (const c of commands(inUrl, port)) await expectRefused(c.args, c.cmd, {}, c.exit, [WRONG]);
  for (const c of commands(nats.url, port)) {
    await expectRefused([...c.args, '--nats-user', 'kvgate'], c.cmd, { KVGATE_NATS_PASSWORD: WRONG }, c.exit, [WRONG]);
  }
});

test('the right credentials: the router serves and requires its API key; the indexer logs the URL redacted; the shim binds 127.0.0.1', async () => {
  const auth = nats.auth as { user: string; pass: string };
  const dir = mkdtempSync(join(tmpdir(), 'kvg-keys-'));
  writeFileSync(join(dir, 'keys'), '# router keys\nfile-key\n');
  const router = kvgate(['router', '--port', '0', '--host', '127.0.0.1', '--nats', nats.url, '--nats-user', auth.user, '--api-key', 'flag-key', '--api-key-file', join(dir, 'keys'), '--cluster-secret', 'a-cluster-secret-of-length'], {
    KVGATE_NATS_PASSWORD: auth.pass,
  });
  const indexer = kvgate(['indexer', '--port', '0', '--host', '127.0.0.1', '--nats', nats.authUrl]);
  const enginePort = await freePort();
  const shim = kvgate(['shim', '--worker-id', 'w-auth', '--model', 'm', '--port', '0', '--engine-url', `http://127.0.0.1:${enginePort}`, '--kv-events', `tcp://127.0.0.1:${enginePort}`, '--nats', nats.url, '--nats-user', auth.user, '--cluster-secret', 'a-cluster-secret-of-length'], {
    KVGATE_NATS_PASSWORD: auth.pass,
  });
  try {
    const url = (await waitFor(router, /"url":"(http:\/\/[^"]+)".*router ready/))[1]!;
    assert.is((await request(`${url}/v1/models`)).statusCode, 401);
    assert.is((await request(`${url}/v1/models`, { headers: { authorization: 'Bearer wrong' } })).statusCode, 401);
    for (const key of ['flag-key', 'file-key']) {
      const res = await request(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
      await res.body.text();
      assert.is(res.statusCode, 200, key);
    }
    // health stays open without --auth-health
    const h = await request(`${url}/healthz`);
    await h.body.text();
    assert.is(h.statusCode, 200);
    const listening = (await waitFor(indexer, /\{[^\n]*indexer listening[^\n]*\}/))[0]!;
    assert.match(listening, /"nats":"nats:\/\/kvgate:\*\*\*@127\.0\.0\.1:\d+"/);
    assert.match((await waitFor(shim, /worker w-auth up at (\S+)/))[1]!, /^http:\/\/127\.0\.0\.1:\d+$/);
  } finally {
    await Promise.all([stop(router), stop(indexer), stop(shim)]);
  }
  for (const r of [router, indexer, shim]) {
    assert.not.ok(r.out.stdout.includes(auth.pass) || r.out.stderr.includes(auth.pass), `the password is printed:\n${r.out.stderr}`);
    assert.not.ok(r.out.stderr.includes('a-cluster-secret-of-length'), 'the cluster secret is printed');
    assert.not.ok(r.out.stderr.includes('flag-key') || r.out.stderr.includes('file-key'), 'an API key is printed');
  }
});

test('a token server: a wrong token (KVGATE_NATS_TOKEN, or in the URL) is refused and never printed; the right one serves', async () => {
  const tokenNats = await startNatsServer({ auth: 'token' });
  const WRONG_TOKEN = 'WrongTokenQ9z8y7x6';
  try {
    const args = ['router', '--port', '0', '--host', '127.0.0.1'];
    await expectRefused([...args, '--nats', tokenNats.url], 'router', { KVGATE_NATS_TOKEN: WRONG_TOKEN }, 1, [WRONG_TOKEN]);
    await expectRefused([...args, '--nats', tokenNats.url.replace('nats://', `nats://${WRONG_TOKEN}@`)], 'router', {}, 1, [WRONG_TOKEN]);
    const token = (tokenNats.auth as { token: string }).token;
    const ok = kvgate([...args, '--nats', tokenNats.url], { KVGATE_NATS_TOKEN: token });
    try {
      await waitFor(ok, /router ready/);
    } finally {
      await stop(ok);
    }
    assert.not.ok(ok.out.stdout.includes(token) || ok.out.stderr.includes(token), 'the token is printed');
  } finally {
    await tokenNats.stop();
  }
});

test('bad auth flag values: one KVG_BAD_FLAG line, exit 2', async () => {
  for (const args of [
    ['router', '--port', '0', '--auth-health'],
    ['router', '--port', '0', '--rate-limit-rps', 'lots'],
    ['router', '--port', '0', '--cluster-secret', 'short'],
    ['shim', '--worker-id', 'w', '--model', 'm', '--publish-buffer-batches', '0'],
    ['indexer', '--port', '0', '--nats-user', 'u', '--nats-token', 't'],
  ]) {
    const r = kvgate(args, { KVGATE_LOG_LEVEL: 'warn' });
    const code = await r.exited;
    const lines = plainLines(r.out.stderr);
    assert.is(code, 2, `${args.join(' ')}: ${r.out.stderr}`);
    assert.is(lines.length, 1, r.out.stderr);
    assert.match(lines[0]!, /^kvgate \w+: .+ \[KVG_BAD_FLAG\]$/, r.out.stderr);
  }
});

test.run();
