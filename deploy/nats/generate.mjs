#!/usr/bin/env node
// Writes the nats-server authorization block (users and per-role permissions) for a kvgate namespace to stdout.
//   node deploy/nats/generate.mjs                              → kvgate-auth.conf as shipped (namespace default, shared shim user)
//   node deploy/nats/generate.mjs --namespace prod --shim pod-a --shim pod-b-dp0,pod-b-dp1
//                                                               → one shim user per --shim (the workers it publishes for)
// The subjects come from packages/protocol/src/nats-permissions.ts (run from a checkout: TypeScript through tsx).
import { register } from 'tsx/esm/api';
register();
const { natsAuthConfig } = await import('../../packages/protocol/src/nats-permissions.ts');

const USAGE = 'usage: node deploy/nats/generate.mjs [--namespace NS] [--shim WORKER[,WORKER…]]…';
let namespace = 'default';
const shims = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const v = argv[i + 1];
  if (a === '--help' || a === '-h') {
    console.log(USAGE);
    process.exit(0);
  } else if ((a === '--namespace' || a === '--shim') && v !== undefined) {
    if (a === '--namespace') namespace = v;
    else shims.push(v.split(',').filter(Boolean));
    i++;
  } else {
    console.error(`generate.mjs: unknown or incomplete argument ${JSON.stringify(a)}\n${USAGE}`);
    process.exit(2);
  }
}
try {
  process.stdout.write(natsAuthConfig({ namespace, ...(shims.length ? { shims } : {}) }));
} catch (err) {
  console.error(`generate.mjs: ${err.code ? `${err.code}: ` : ''}${err.message}`);
  process.exit(2);
}
