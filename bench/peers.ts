/**
 * The peers of router.overhead: nginx and HAProxy as plain round-robin HTTP proxies in front of the same stub
 * engines, so the router bench can put kvgate's added latency beside what the proxy a user would otherwise run
 * adds. Each peer: its binary found (Debian packages `nginx-light`/`nginx`, `haproxy`) or installed with apt-get
 * (`apt-get update` first; through `sudo -n` when not root), a config generated in a temp dir (pid, logs and
 * temp files in there too), run in the foreground as the current user on a free loopback port, stopped after.
 * A peer that cannot be found, installed or started is returned as `{ skipped: reason }`: the bench reports the
 * note and goes on without it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** nginx and HAProxy, and `node`: a bare Node.js proxy (bench/node-proxy.ts), the runtime's own floor */
export type PeerName = 'nginx' | 'haproxy' | 'node';

export interface Peer {
  name: PeerName;
  url: string;
  /** the binary's version line */
  version: string;
  stop(): Promise<void>;
}

interface PeerSpec {
  bin: string;
  packages: string[];
  version(bin: string): string;
}

const SPECS: Record<Exclude<PeerName, 'node'>, PeerSpec> = {
  // nginx-light is enough (upstream + proxy modules); nginx is the fallback package name
  nginx: { bin: 'nginx', packages: ['nginx-light', 'nginx'], version: (b) => firstLine(spawnSync(b, ['-v'], { encoding: 'utf8' }).stderr) },
  haproxy: { bin: 'haproxy', packages: ['haproxy'], version: (b) => firstLine(spawnSync(b, ['-v'], { encoding: 'utf8' }).stdout) },
};

const firstLine = (s: string | null | undefined) => (s ?? '').split('\n')[0]!.trim();

function findBinary(bin: string): string | null {
  for (const dir of ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin']) if (existsSync(join(dir, bin))) return join(dir, bin);
  const which = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  return which.status === 0 && which.stdout.trim() ? which.stdout.trim() : null;
}

let aptUpdated = false;

/** apt-get (through `sudo -n` when not root); null on success, else why not */
function apt(args: string[], progress: (m: string) => void): string | null {
  const root = process.getuid?.() === 0;
  if (!root && !findBinary('sudo')) return 'not root and no sudo';
  const [cmd, argv] = root ? ['apt-get', args] : ['sudo', ['-n', 'apt-get', ...args]];
  progress(`${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 300_000 });
  if (r.error) return `${cmd}: ${r.error.message}`;
  if (r.status !== 0) return `${cmd} ${argv.join(' ')} exited ${r.status}: ${firstLine(r.stderr.split('\n').filter((l) => l.trim()).slice(-1)[0])}`;
  return null;
}

/** the peer's binary, installed with apt-get when missing; or why it cannot be had */
export function ensurePeer(name: PeerName, progress: (m: string) => void): { bin: string } | { skipped: string } {
  if (name === 'node') return { bin: process.execPath };
  const spec = SPECS[name];
  const found = findBinary(spec.bin);
  if (found) return { bin: found };
  if (!findBinary('apt-get')) return { skipped: `${spec.bin} not installed and no apt-get` };
  if (!aptUpdated) {
    const err = apt(['update'], progress);
    if (err) return { skipped: `${spec.bin} not installed; ${err}` };
    aptUpdated = true;
  }
  let last = '';
  for (const pkg of spec.packages) {
    const err = apt(['install', '-y', '--no-install-recommends', pkg], progress);
    const bin = findBinary(spec.bin);
    if (!err && bin) return { bin };
    last = err ?? `${pkg} installed but no ${spec.bin} binary`;
  }
  return { skipped: `${spec.bin} not installed; ${last}` };
}

/** a free loopback port (bound, then given back) */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, logFile: string, what: string, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const log = existsSync(logFile) ? readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ') : '';
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode})${log ? `: ${log}` : ''}`);
    }
    const ok = await new Promise<boolean>((res) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), res(true)));
      s.once('error', () => res(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
}

const hostPort = (url: string) => {
  const u = new URL(url);
  return `${u.hostname}:${u.port}`;
};

export interface NginxOptions {
  /**
   * a bare `proxy_pass` with nginx's defaults otherwise (what a user's first config is): HTTP/1.0 to the upstream,
   * a new connection per request, `proxy_buffering on`. nginx then holds a proxied response in its buffers and
   * passes it on a buffer at a time (an SSE stream in bursts) unless the response says `X-Accel-Buffering: no`.
   */
  plain?: boolean;
}

/**
 * nginx: one worker process (the router is one process too), keep-alive to the upstreams (as the router's pool),
 * request bodies held in memory (the 2k-token bodies are ~12 KB: past the 8 KB default buffer nginx would write
 * each one to a temp file), no access log. Round-robin is nginx's default balancing.
 */
export function nginxConfig(dir: string, port: number, upstreams: string[], o: NginxOptions = {}): string {
  const asRoot = process.getuid?.() === 0;
  const location = o.plain
    ? ['      proxy_pass http://engines;']
    : ['      proxy_pass http://engines;', '      proxy_http_version 1.1;', '      proxy_set_header Connection "";'];
  return [
    'daemon off;',
    'worker_processes 1;',
    // as root the worker would switch to nobody, who cannot write the 0700 temp dir: stay the current user
    ...(asRoot ? ['user root;'] : []),
    `pid ${join(dir, 'nginx.pid')};`,
    `error_log ${join(dir, 'error.log')} warn;`,
    'events { worker_connections 4096; }',
    'http {',
    '  access_log off;',
    `  client_body_temp_path ${join(dir, 'client_body')};`,
    `  proxy_temp_path ${join(dir, 'proxy')};`,
    `  fastcgi_temp_path ${join(dir, 'fastcgi')};`,
    `  uwsgi_temp_path ${join(dir, 'uwsgi')};`,
    `  scgi_temp_path ${join(dir, 'scgi')};`,
    '  client_max_body_size 64m;',
    '  client_body_buffer_size 1m;',
    '  keepalive_requests 1000000;',
    '  upstream engines {',
    ...upstreams.map((u) => `    server ${hostPort(u)};`),
    ...(o.plain ? [] : ['    keepalive 128;']),
    '  }',
    '  server {',
    `    listen 127.0.0.1:${port};`,
    '    location / {',
    ...location,
    '    }',
    '  }',
    '}',
    '',
  ].join('\n');
}

/** HAProxy: HTTP mode, one thread, round-robin, idle upstream connections reused (http-reuse always), no log. */
export function haproxyConfig(dir: string, port: number, upstreams: string[]): string {
  return [
    'global',
    `  pidfile ${join(dir, 'haproxy.pid')}`,
    '  nbthread 1',
    '  maxconn 4096',
    'defaults',
    '  mode http',
    '  timeout connect 5s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  option http-keep-alive',
    'frontend fe',
    `  bind 127.0.0.1:${port}`,
    '  default_backend engines',
    'backend engines',
    '  balance roundrobin',
    '  http-reuse always',
    ...upstreams.map((u, i) => `  server e${i} ${hostPort(u)}`),
    '',
  ].join('\n');
}

/** Starts one peer in front of `upstreams`; `{ skipped }` when it cannot be installed or started. */
export async function startPeer(name: PeerName, upstreams: string[], progress: (m: string) => void, o: NginxOptions = {}): Promise<Peer | { skipped: string }> {
  const got = ensurePeer(name, progress);
  if ('skipped' in got) return got;
  const dir = mkdtempSync(join(tmpdir(), `kvgate-bench-${name}-`));
  const port = await freePort();
  const conf = join(dir, `${name}.conf`);
  const logFile = join(dir, 'error.log');
  let child: ChildProcess;
  if (name === 'node') {
    // the same loader as the router under test (tsx), so the floor pays what the router pays for it
    child = spawn(got.bin, ['--import', 'tsx', fileURLToPath(new URL('./node-proxy.ts', import.meta.url)), String(port), ...upstreams], { stdio: ['ignore', 'ignore', 'pipe'] });
  } else if (name === 'nginx') {
    writeFileSync(conf, nginxConfig(dir, port, upstreams, o));
    // -p: the prefix for relative paths; -e: the start-up error log before the config's is open
    child = spawn(got.bin, ['-p', dir, '-c', conf, '-e', logFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  } else {
    writeFileSync(conf, haproxyConfig(dir, port, upstreams));
    // -db: foreground, no daemon; -W off
    child = spawn(got.bin, ['-db', '-f', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  }
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => void (stderr = (stderr + c.toString()).slice(-2000)));
  child.on('error', (e) => void (stderr += e.message));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, child, logFile, name);
  } catch (e) {
    await stop();
    return { skipped: `${name} did not start: ${(e as Error).message}${stderr ? ` (${firstLine(stderr)})` : ''}` };
  }
  return { name, url: `http://127.0.0.1:${port}`, version: name === 'node' ? `node ${process.version}` : SPECS[name].version(got.bin), stop };
}
