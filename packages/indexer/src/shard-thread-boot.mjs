// Worker-thread bootstrap for shard-thread.ts. On Node 20, `execArgv: ['--import', 'tsx']` alone does not make
// a worker's entry module load as TypeScript (the hooks are not active yet when the entry is resolved), so
// this plain-JS entry registers tsx through its API first, then imports the TypeScript module.
import { register } from 'tsx/esm/api';

register();
await import('./shard-thread.ts');
