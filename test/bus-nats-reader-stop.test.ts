/**
 * NatsBus over a real nats-server: a stream reader stopped while nats.js re-creates its ordered consumer (right
 * after a server restart — what the indexer does when it re-opens its read on reconnect) stays stopped. Before
 * NatsBus kept it so (keepStopped), the re-creation finished after the stop and left a consumer on the server,
 * pulling for nobody, and an idle-heartbeat timer that kept the process alive after the bus closed.
 * Waits are bounded, never timed assertions.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from 'nats';
import { createBus } from '@kvgate/protocol';
import { startNatsServer, type NatsServerHandle } from './harness/nats-server.js';

let nats: NatsServerHandle;
test.before(async () => {
  nats = await startNatsServer();
});
test.after(async () => {
  await nats.stop();
});

async function until(what: string, f: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!(await f())) {
    if (Date.now() - t0 > ms) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('follow readers stopped on reconnect, while their consumers are re-created: none is left on the server', async () => {
  const bus = await createBus({ nats: nats.url });
  const stream = await bus.stream('RSTOP', { subjects: ['rstop.>'] });
  for (let i = 0; i < 5; i++) await stream.append(`rstop.${i}`, Uint8Array.of(i));
  const N = 24;
  const readers = Array.from({ length: N }, () => stream.read({ follow: true }));
  const drains = readers.map(async (r) => {
    for await (const _ of r); // eslint-disable-line @typescript-eslint/no-unused-vars
  });
  const jsmOf = async () => {
    const nc = await connect({ servers: nats.url });
    try {
      return (await (await nc.jetstreamManager()).streams.info('RSTOP')).state.consumer_count;
    } finally {
      await nc.close();
    }
  };
  await until(`${N} consumers open`, async () => (await jsmOf().catch(() => -1)) === N);

  // stop the readers one by one from the moment the bus is back (reader k after k × 2 ms): some of them while
  // nats.js, having found their consumers gone with the server, is adding new ones
  const back = new Promise<void>((resolve) => {
    const off = bus.onStatus!((s) => {
      if (s !== 'reconnected') return;
      off();
      readers.forEach((r, k) => setTimeout(() => r.stop(), k * 2));
      setTimeout(resolve, N * 2);
    });
  });
  await nats.kill();
  await nats.start();
  await back;
  await Promise.all(drains);
  // a re-creation that finished after the stop left its consumer (and its pulls) behind for good
  await until('no consumer left', async () => (await jsmOf().catch(() => -1)) === 0);
  await new Promise((r) => setTimeout(r, 3000)); // and none comes back late
  assert.is(await jsmOf(), 0);
  await bus.close();
});

test.run();
