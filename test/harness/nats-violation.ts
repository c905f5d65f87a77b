/** NATS permission tests: the violation nats-server reports to a connection, awaited. */
import { Events, type NatsConnection, type Status } from 'nats';

/** resolves with the permissions violation the server reports for (op, subject) on this connection */
export function violation(nc: NatsConnection, op: 'publish' | 'subscription', subject: string): Promise<Status> {
  return (async () => {
    for await (const s of nc.status()) {
      const ctx = (s as Status & { permissionContext?: { operation: string; subject: string } }).permissionContext;
      if (s.type === Events.Error && s.data === 'PERMISSIONS_VIOLATION' && ctx?.operation === op && ctx.subject === subject) return s;
    }
    throw new Error(`connection closed before a ${op} violation on ${subject}`);
  })();
}
