/**
 * `kvgate <command>`: one binary, one module per subcommand under ./commands/.
 * Each command module exports `summary` (one line for `kvgate --help`) and `run(argv) → exit code`.
 */
import { reportFatal } from './fatal.js';

export interface Command {
  summary: string;
  run(argv: string[]): Promise<number>;
}

const COMMANDS: Record<string, () => Promise<Command>> = {
  start: () => import('./commands/start.js'),
  router: () => import('./commands/router.js'),
  epp: () => import('./commands/epp.js'),
  indexer: () => import('./commands/indexer.js'),
  shim: () => import('./commands/shim.js'),
  'sim-engine': () => import('./commands/sim-engine.js'),
  replay: () => import('./commands/replay.js'),
  bench: () => import('./commands/bench.js'),
  hash: () => import('./commands/hash.js'),
  doctor: () => import('./commands/doctor.js'),
};

async function usage(): Promise<string> {
  const lines = ['kvgate — KV-cache-aware router for LLM inference', '', 'usage: kvgate <command> [options]   (kvgate <command> --help for its options)', '', 'commands:'];
  for (const [name, load] of Object.entries(COMMANDS)) {
    let summary = '(not available)';
    try {
      summary = (await load()).summary;
    } catch {
      /* command module missing in this build */
    }
    lines.push(`  ${name.padEnd(12)} ${summary}`);
  }
  lines.push('', 'Every flag also reads KVGATE_<FLAG> from the environment (e.g. --nats → KVGATE_NATS).');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(await usage());
    return name ? 0 : 1;
  }
  const load = COMMANDS[name];
  if (!load) {
    console.error(`kvgate: unknown command ${JSON.stringify(name)}\n\n${await usage()}`);
    return 2;
  }
  const cmd = await load();
  // an error thrown from a callback (a socket's 'error' with no listener, a timer) is fatal too: one line, no stack
  const onUncaught = (err: unknown) => {
    process.exitCode = reportFatal(name, err);
    process.exit();
  };
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  try {
    return await cmd.run(rest);
  } catch (e) {
    // bad flags, a port in use, NATS unreachable, …: one clear line, no stack (fatal.ts)
    return reportFatal(name, e);
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
  }
}
