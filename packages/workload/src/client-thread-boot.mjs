// Worker-thread entry for client-thread.ts (see engine-thread-boot.mjs for why this file is plain JS).
import { register } from 'tsx/esm/api';

register();
await import('./client-thread.ts');
