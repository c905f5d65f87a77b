#!/usr/bin/env node
// kvgate CLI entry: runs the TypeScript sources through tsx (no build step).
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../packages/cli/src/main.ts');
const code = await main(process.argv.slice(2));
process.exitCode = code;
// a command that failed part-way may leave a handle open (a socket, a worker thread, a reconnecting bus):
// never linger after it is done
setTimeout(() => process.exit(code), 1000).unref();
