/**
 * `kvgate start --nats` as a user runs it, with auth on everywhere (issue 13's positive path): a nats-server that
 * requires a password (given as --nats-user + KVGATE_NATS_PASSWORD), routers that require an API key (the load
 * client sends it), and the cluster secret (every shim front takes only signed router calls). A short workload must
 * complete with no failed request, and neither the password nor the key nor the secret may be printed.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { startNatsServer } from '../../../test/harness/nats-server.js';

const BIN = new URL('../../../bin/kvgate.js', import.meta.url).pathname;

test('kvgate start --nats with NATS credentials, API keys and the cluster secret: the workload completes', async () => {
  const nats = await startNatsServer({ auth: 'password' });
  const auth = nats.auth as { user: string; pass: string };
  const KEY = 'start-api-key-7f3a';
  const SECRET = 'start-cluster-secret-91c2';
  try {
    const args = ['start', '--nats', nats.url, '--nats-user', auth.user, '--api-key', KEY, '--cluster-secret', SECRET,
      '--engines', '2', '--routers', '2', '--policy', 'kv,round-robin', '--conversations', '3', '--turns', '2', '--contexts', '2', '--context-words', '200', '--warmup', '4', '--json'];
    const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [BIN, ...args], { env: { ...process.env, KVGATE_NATS_PASSWORD: auth.pass, KVGATE_LOG_LEVEL: 'info' }, timeout: 240_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
        resolve({ code, stdout, stderr });
      });
    });
    const what = `stdout: ${out.stdout.slice(-2000)}\nstderr: ${out.stderr.slice(-3000)}`;
    assert.is(out.code, 0, what);
    assert.match(out.stderr, /NATS nats:\/\/127\.0\.0\.1:\d+.*API keys on, cluster secret on/, what);
    const json = JSON.parse(out.stdout.trim().split('\n').filter((l) => l.startsWith('{"infinite')).at(-1)!) as { policies: { policy: string; errors: number; hitRate: number }[] };
    assert.equal(json.policies.map((p) => p.policy), ['kv', 'round-robin']);
    for (const p of json.policies) {
      assert.is(p.errors, 0, `${p.policy}: ${what}`);
      // prompts share contexts: a served workload hits the cache; a refused one has no hit at all
      assert.ok(p.hitRate > 0, `${p.policy}: ${what}`);
    }
    for (const s of [auth.pass, KEY, SECRET]) assert.not.ok(out.stdout.includes(s) || out.stderr.includes(s), `a secret is printed: ${s}`);
  } finally {
    await nats.stop();
  }
});

test.run();
