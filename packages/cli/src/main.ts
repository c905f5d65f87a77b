/**
 * `kvgate <command>`: one binary, one module per subcommand under ./commands/.
 * Each command module exports `summary` (one line for `kvgate --help`) and `run(argv) → exit code`.
 */
export interface Command {
  summary: string;
  run(argv: string[]): Promise<number>;
}

const COMMANDS: Record<string, () => Promise<Command>> = {
  start: () => import('./commands/start.js'),
  router: () => import('./commands/router.js'),
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
  try {
    return await cmd.run(rest);
  } catch (e) {
    // bad flags and other usage errors: one clear line, no stack
    const err = e as { code?: string; message?: string };
    if (typeof err.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS')) {
      console.error(`kvgate ${name}: ${err.message}\n(kvgate ${name} --help lists the options)`);
      return 2;
    }
    throw e;
  }
}
