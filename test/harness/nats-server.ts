/**
 * Starts a real `nats-server -js` on a free loopback port with a temp store dir, for integration tests.
 *   const nats = await startNatsServer();  … nats.url …  await nats.stop();
 * With `{ auth: 'password' | 'token' }` the server requires credentials (a generated config with a random user
 * password or token): `nats.auth` holds them (NatsBusOptions' user/pass or token), `nats.authUrl` is the URL with
 * them in it (nats://user:pass@host or nats://token@host); `nats.url` has none (a client using it is refused).
 * With `{ configFile, env }` it runs that nats-server config (e.g. deploy/nats/nats-server.conf: users and
 * permissions) with `env` added to its environment (the passwords the config reads); port, address and store dir
 * still come from the command line, which overrides the file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServerHandle {
  url: string;
  port: number;
  storeDir: string;
  /** the credentials the server requires (spread into createBus / connectNats options); undefined without auth */
  auth: { user: string; pass: string } | { token: string } | undefined;
  /** `url` with the credentials in it; `url` itself without auth */
  authUrl: string;
  /** kill -9 and restart on the same port and store (tests of reconnection / durability) */
  restart(): Promise<void>;
  /** kill -9 only (an outage: clients see the server gone until `start()`); no-op when already down */
  kill(): Promise<void>;
  /** start again after `kill()`, on the same port and store; no-op when running */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** what nats-server has written to stdout/stderr so far (e.g. its permission-violation lines) */
  log(): string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A free port below Linux's ephemeral range (32768+), for a test that must give a port up and bind it again
 * (an engine restarted on the same ports): port-0 allocations by other tests running at the same time can then
 * never be handed the port while it is free.
 */
export async function stablePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const ok = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port found in 20000-31999');
}

function natsBinary(): string {
  for (const p of ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server']) if (existsSync(p)) return p;
  return 'nats-server';
}

async function waitForPort(port: number, child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (child.exitCode !== null) throw new Error(`nats-server exited with code ${child.exitCode}`);
    const ok = await new Promise<boolean>((res) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); res(true); });
      s.once('error', () => res(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nats-server did not listen on ${port} within ${timeoutMs} ms`);
}

export interface NatsServerOptions {
  /** require credentials: a user with a random password, or a random token (default none) */
  auth?: 'password' | 'token';
  /** run this config file (`-c`); exclusive with `auth` */
  configFile?: string;
  /** added to nats-server's environment (variables the config file reads) */
  env?: Record<string, string>;
}

export async function startNatsServer(o: NatsServerOptions = {}): Promise<NatsServerHandle> {
  // restart() binds the same port again, so take one no concurrent port-0 allocation can be handed meanwhile
  const port = await stablePort();
  const storeDir = mkdtempSync(join(tmpdir(), 'kvgate-nats-'));
  const secret = randomBytes(12).toString('hex');
  const auth = o.auth === 'password' ? { user: 'kvgate', pass: secret } : o.auth === 'token' ? { token: secret } : undefined;
  if (o.auth && o.configFile) throw new Error('startNatsServer: auth and configFile exclude each other');
  const args = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir];
  if (o.configFile) args.push('-c', o.configFile);
  if (auth) {
    const conf = join(storeDir, 'auth.conf');
    writeFileSync(conf, 'token' in auth ? `authorization { token: "${auth.token}" }\n` : `authorization { user: "${auth.user}", password: "${auth.pass}" }\n`);
    args.push('-c', conf);
  }
  const url = `nats://127.0.0.1:${port}`;
  const authUrl = !auth ? url : 'token' in auth ? `nats://${auth.token}@127.0.0.1:${port}` : `nats://${auth.user}:${auth.pass}@127.0.0.1:${port}`;
  let child: ChildProcess;
  let log = '';
  const launch = async () => {
    child = spawn(natsBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'], ...(o.env ? { env: { ...process.env, ...o.env } } : {}) });
    child.stdout?.on('data', (d) => (log += d));
    child.stderr?.on('data', (d) => (log += d));
    try {
      await waitForPort(port, child);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${log}`);
    }
  };
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const done = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await done;
  };
  await launch();
  const onExit = () => { try { child.kill('SIGKILL'); } catch { /* already gone */ } };
  process.once('exit', onExit);
  return {
    url,
    port,
    storeDir,
    auth,
    authUrl,
    async restart() {
      await kill();
      await launch();
    },
    kill,
    log: () => log,
    async start() {
      if (child.exitCode === null && child.signalCode === null) return;
      await launch();
    },
    async stop() {
      process.off('exit', onExit);
      await kill();
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}
