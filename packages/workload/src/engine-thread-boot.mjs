// Worker-thread entry for engine-thread.ts: on Node 20 `execArgv: ['--import', 'tsx']` does not make a worker's
// entry load as TypeScript, so this plain-JS entry registers tsx through its API, then imports the module.
import { register } from 'tsx/esm/api';

register();
await import('./engine-thread.ts');
