/**
 * bus.*: the two Bus implementations on the traffic kvgate puts on them, same run.
 *   bus.memory.pubsub       msgs/s, 256-byte messages to one callback subscriber; baseline: a bare EventEmitter
 *                           doing the same delivery with the same payload copy (what an in-process bus costs over
 *                           a function call)
 *   bus.memory.request.p50  µs per request/reply round trip (index.match shape); baseline: bus.nats.request.p50
 *   bus.nats.pubsub         msgs/s over loopback nats-server; baseline: bus.memory.pubsub
 *   bus.nats.request.p50    µs per round trip over loopback nats-server; baseline: bus.memory.request.p50
 *   bus.nats.append         stream appends/s (awaited one by one, JetStream file store); baseline: bus.memory.append
 * NATS figures need nats-server on PATH; without it they are skipped with a progress line.
 */
import { EventEmitter } from 'node:events';
import { MemoryBus, connectNats, type Bus } from '@kvgate/protocol';
import { copyBytes } from '@kvgate/protocol/bus/names';
import { startNatsServer } from '../test/harness/nats-server.js';
import { percentile, type BenchContext } from './figure.js';

async function pubsub(bus: Bus, n: number): Promise<number> {
  const payload = new Uint8Array(256);
  let got = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const sub = bus.subscribe('bench.ps', { callback: () => { if (++got === n) done(); } });
  await bus.flush();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    bus.publish('bench.ps', payload);
    if ((i & 1023) === 1023) await new Promise((r) => setImmediate(r)); // let delivery keep up
  }
  await finished;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  sub.unsubscribe();
  return n / secs;
}

async function requestP50(bus: Bus, n: number): Promise<number> {
  const sub = bus.subscribe('bench.rr', { callback: (m) => m.respond(m.data) });
  await bus.flush();
  const payload = new Uint8Array(512 * 8);
  for (let i = 0; i < 200; i++) await bus.request('bench.rr', payload);
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await bus.request('bench.rr', payload);
    samples.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  sub.unsubscribe();
  return percentile(samples, 50);
}

async function appendRate(bus: Bus, n: number): Promise<number> {
  const id = Date.now().toString(36);
  const subject = `bench.st${id}.w`;
  const st = await bus.stream(`BENCH_${id}`, { subjects: [subject] });
  const payload = new Uint8Array(200);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await st.append(subject, payload);
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

function emitterRate(n: number): number {
  const ee = new EventEmitter();
  const payload = new Uint8Array(256);
  let got = 0;
  ee.on('m', (d: Uint8Array) => { if (d.length) got++; });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) ee.emit('m', copyBytes(payload)); // the bus's own copy (slab-carved), so only the bus's structure differs
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (got !== n) throw new Error('emitter lost messages');
  return n / secs;
}

export default async function (ctx: BenchContext): Promise<void> {
  const nMsgs = ctx.quick ? 20_000 : 200_000;
  const nReq = ctx.quick ? 500 : 5_000;
  const nAppend = ctx.quick ? 500 : 5_000;

  const mem = new MemoryBus();
  const memPubsub = await pubsub(mem, nMsgs);
  const memReq = await requestP50(mem, nReq);
  const memAppend = await appendRate(mem, nAppend);
  await mem.close();
  ctx.report({ bench: 'bus.memory.pubsub', value: Math.round(memPubsub), unit: 'msgs/s', baseline: Math.round(emitterRate(nMsgs)), note: 'baseline: bare EventEmitter with the same payload copy' });

  let server;
  try {
    server = await startNatsServer();
  } catch (err) {
    ctx.progress(`nats-server not available, NATS figures skipped: ${(err as Error).message.split('\n')[0]}`);
    ctx.report({ bench: 'bus.memory.request.p50', value: memReq, unit: 'µs', note: 'no nats-server for a baseline' });
    return;
  }
  try {
    const nats = await connectNats(server.url, { name: 'bench' });
    const natsPubsub = await pubsub(nats, nMsgs);
    const natsReq = await requestP50(nats, nReq);
    const natsAppend = await appendRate(nats, nAppend);
    await nats.close();
    ctx.report({ bench: 'bus.memory.request.p50', value: memReq, unit: 'µs', baseline: natsReq, note: 'baseline: bus.nats.request.p50, 4 KiB payload' });
    ctx.report({ bench: 'bus.nats.pubsub', value: Math.round(natsPubsub), unit: 'msgs/s', baseline: Math.round(memPubsub), note: 'loopback nats-server 2.9; baseline: bus.memory.pubsub' });
    ctx.report({ bench: 'bus.nats.request.p50', value: natsReq, unit: 'µs', baseline: memReq, note: 'loopback; baseline: bus.memory.request.p50' });
    ctx.report({ bench: 'bus.nats.append', value: Math.round(natsAppend), unit: 'appends/s', baseline: Math.round(memAppend), note: 'awaited one at a time, file store; baseline: bus.memory.append' });
  } finally {
    await server.stop();
  }
}
