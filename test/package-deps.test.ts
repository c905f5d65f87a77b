/**
 * The packages' dependency lines, read off each package.json (issue 14): the router is a product package and
 * depends on the protocol and what its HTTP edge needs only — never on the simulator, the shim, the indexer or the
 * harness (@kvgate/workload) — and what the router's and the harness's sources import is what they declare.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
interface PackageJson {
  name: string;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  workspaces?: string[];
}
const read = (p: string) => JSON.parse(readFileSync(join(root, p), 'utf8')) as PackageJson;
const rootPkg = read('package.json');
const workspaces = rootPkg.workspaces ?? [];
const pkgs = new Map(workspaces.map((w) => [read(join(w, 'package.json')).name, { dir: w, pkg: read(join(w, 'package.json')) }]));
const deps = (name: string) => Object.keys(pkgs.get(name)?.pkg.dependencies ?? {});

/** every bare module a package's src/ imports (package name only; node: builtins left out) */
function importedPackages(dir: string): Set<string> {
  const out = new Set<string>();
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (/\.(ts|mjs|js)$/.test(f)) {
        for (const m of readFileSync(p, 'utf8').matchAll(/(?:from|import\()\s*'([^'.][^']*)'/g)) {
          const spec = m[1]!;
          if (spec.startsWith('node:')) continue;
          out.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
        }
      }
    }
  };
  walk(join(root, dir, 'src'));
  return out;
}

test('the harness is a workspace package of its own', () => {
  assert.ok(pkgs.has('@kvgate/workload'), `root workspaces: ${workspaces.join(', ')}`);
  assert.ok(pkgs.has('@kvgate/router'));
});

test('@kvgate/router depends on the protocol and its edges\' libraries only', () => {
  const d = deps('@kvgate/router');
  assert.ok(d.includes('@kvgate/protocol'));
  for (const banned of ['@kvgate/sim-engine', '@kvgate/worker-shim', '@kvgate/indexer', '@kvgate/workload', '@kvgate/cli']) {
    assert.not.ok(d.includes(banned), `router depends on ${banned}`);
  }
  assert.equal(d.filter((x) => x.startsWith('@kvgate/')), ['@kvgate/protocol']);
  // the HTTP edge (undici upstream, prom-client metrics, lru-cache, ws for the dashboard's feed, issue 17) and a
  // gRPC endpoint-picker edge (issue 16)
  const edgeLibraries = new Set(['undici', 'lru-cache', 'prom-client', 'ws', '@grpc/grpc-js', '@grpc/proto-loader']);
  const other = d.filter((x) => !x.startsWith('@kvgate/') && !edgeLibraries.has(x));
  assert.equal(other, [], `router depends on ${other.join(', ')}`);
});

test('the router\'s and the harness\'s sources import only what their package.json declares', () => {
  for (const name of ['@kvgate/router', '@kvgate/workload']) {
    const declared = new Set(deps(name));
    const undeclared = [...importedPackages(pkgs.get(name)!.dir)].filter((m) => m !== name && !declared.has(m));
    assert.equal(undeclared, [], `${name} imports undeclared ${undeclared.join(', ')}`);
  }
  assert.not.ok(importedPackages(pkgs.get('@kvgate/router')!.dir).has('@kvgate/workload'));
});

test('kvgate start and replay whatif take the harness from @kvgate/workload', () => {
  assert.ok(deps('@kvgate/cli').includes('@kvgate/workload'));
  const start = readFileSync(join(root, 'packages/cli/src/commands/start.ts'), 'utf8');
  const whatif = readFileSync(join(root, 'packages/cli/src/replay/whatif.ts'), 'utf8');
  for (const src of [start, whatif]) {
    assert.match(src, /'@kvgate\/workload\//);
    assert.not.match(src, /@kvgate\/router\/workload/);
  }
});

test('every @kvgate dependency is a workspace, and the workspace graph has no cycle', () => {
  for (const [name, { pkg }] of pkgs) {
    for (const d of [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.devDependencies ?? {})]) {
      if (d.startsWith('@kvgate/')) assert.ok(pkgs.has(d), `${name} depends on ${d}, which is not in the root workspaces`);
    }
  }
  const state = new Map<string, 'open' | 'done'>();
  const visit = (n: string, path: string[]) => {
    if (state.get(n) === 'done') return;
    assert.is.not(state.get(n), 'open', `dependency cycle: ${[...path, n].join(' → ')}`);
    state.set(n, 'open');
    for (const d of deps(n)) if (pkgs.has(d)) visit(d, [...path, n]);
    state.set(n, 'done');
  };
  for (const n of pkgs.keys()) visit(n, []);
});

test.run();
