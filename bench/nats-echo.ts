/**
 * A NATS echo responder in a process of its own (bench/router-nats.ts's baseline): answers every request on the
 * subject it is given with 64 bytes at once. It measures what a plain request/reply to another process costs on
 * this machine — the floor under the index query's round trip, with no index, no decode and no match in it.
 * Usage (forked): nats-echo.ts <nats-url> <subject>; sends 'ready' over IPC once subscribed; exits on disconnect.
 */
import { connectNats } from '@kvgate/protocol';

const [url, subject] = process.argv.slice(2);
if (!url || !subject) {
  console.error('usage: nats-echo.ts <nats-url> <subject>');
  process.exit(2);
}
const bus = await connectNats(url, { name: 'bench-echo' });
const reply = new Uint8Array(64);
bus.subscribe(subject, { callback: (m) => void m.respond(reply) });
await bus.flush();
process.send?.('ready');
process.on('disconnect', () => void bus.close().finally(() => process.exit(0)));
