/** The Bus and its two implementations; `createBus` picks one from config (no NATS URL → in-memory). */
import type { Bus } from './bus.js';
import { MemoryBus, type MemoryHub } from './memory.js';
import { connectNats, type NatsBusOptions } from './nats.js';
import { FaultyBus, parseBusFaults } from './faulty.js';
import { logger } from '../log.js';

export { Channel } from './channel.js';
export { MemoryBus, MemoryHub } from './memory.js';
export { NatsBus, connectNats, natsAuthOptions, redactNatsUrl, type NatsBusOptions } from './nats.js';
export { FaultyBus, parseBusFaults, type BusFaults, type FaultCounts } from './faulty.js';

export interface CreateBusOptions extends NatsBusOptions {
  /** nats://host:port[,nats://…]; absent or empty → MemoryBus */
  nats?: string;
  /** MemoryBus only: join this hub instead of starting a new one (several actors, one process) */
  hub?: MemoryHub;
}

export async function createBus(opts: CreateBusOptions = {}): Promise<Bus> {
  const bus: Bus = opts.nats ? await connectNats(opts.nats, opts) : new MemoryBus({ hub: opts.hub });
  // chaos testing only: KVGATE_BUS_FAULTS loses, duplicates and reorders what this process publishes (faulty.ts)
  const spec = process.env.KVGATE_BUS_FAULTS;
  if (!spec) return bus;
  const faults = parseBusFaults(spec);
  logger('bus').warn({ faults }, 'KVGATE_BUS_FAULTS is set: this process drops, duplicates and reorders some messages on purpose');
  return new FaultyBus(bus, faults);
}
