/** The Bus and its two implementations; `createBus` picks one from config (no NATS URL → in-memory). */
import type { Bus } from './bus.js';
import { MemoryBus, type MemoryHub } from './memory.js';
import { connectNats, type NatsBusOptions } from './nats.js';

export { Channel } from './channel.js';
export { MemoryBus, MemoryHub } from './memory.js';
export { NatsBus, connectNats, type NatsBusOptions } from './nats.js';

export interface CreateBusOptions extends NatsBusOptions {
  /** nats://host:port[,nats://…]; absent or empty → MemoryBus */
  nats?: string;
  /** MemoryBus only: join this hub instead of starting a new one (several actors, one process) */
  hub?: MemoryHub;
}

export async function createBus(opts: CreateBusOptions = {}): Promise<Bus> {
  if (opts.nats) return connectNats(opts.nats, opts);
  return new MemoryBus({ hub: opts.hub });
}
