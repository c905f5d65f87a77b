/**
 * The shim's ZMQ edge: the only code that touches the engine's event sockets.
 *   EngineSubscriber — SUB socket on the engine's PUB (`[topic, seq, payload]` messages), handed raw to a callback.
 *                      It connects to the engine's bound PUB, or (`bind`) binds for engines whose publisher
 *                      connects (vLLM/SGLang connect when their endpoint names a host, not `*`, `::`, ipc or inproc).
 *   requestReplay    — one DEALER round trip to the engine's ROUTER replay socket.
 */
import { Dealer, Subscriber } from 'zeromq';
import { decodeReplayFrames, logger, type ReplayMessage } from '@kvgate/protocol';

const log = logger('shim.zmq');

export interface SubscriberHandlers {
  onMessage(frames: Uint8Array[]): void;
  /** the engine's end of the connection went away (engine exit / restart) */
  onDisconnect(): void;
  /** connected (or reconnected) to the engine; in bind mode: an engine connected to us */
  onConnect(): void;
}

export interface SubscriberEndpoint {
  endpoint: string;
  /** bind the SUB socket (engines connect to it) instead of connecting to the engine's PUB */
  bind: boolean;
}

export class EngineSubscriber {
  readonly #sock: Subscriber;
  readonly #done: Promise<void>;
  #closed = false;

  /** connects (or binds) and starts reading; rejects if the bind fails (address in use, bad endpoint) */
  static async open(at: SubscriberEndpoint, topic: string, h: SubscriberHandlers): Promise<EngineSubscriber> {
    const sock = new Subscriber({ linger: 0, receiveHighWaterMark: 100_000 });
    // The socket monitor must be listening before the connect: zmq connects on its own I/O thread, and a
    // connection made before the monitor starts is never reported (no start-up replay probe would run).
    const sub = new EngineSubscriber(sock, at.bind, topic, h);
    try {
      if (at.bind) await sock.bind(at.endpoint);
      else sock.connect(at.endpoint);
    } catch (e) {
      await sub.close();
      throw e;
    }
    return sub;
  }

  private constructor(sock: Subscriber, bound: boolean, topic: string, h: SubscriberHandlers) {
    this.#sock = sock;
    sock.events.on('disconnect', () => {
      if (!this.#closed) h.onDisconnect();
    });
    // a bound socket sees the engine arrive as an accepted connection; a connecting one as its own connect
    sock.events.on(bound ? 'accept' : 'connect', () => {
      if (!this.#closed) h.onConnect();
    });
    if (topic === '') sock.subscribe();
    else sock.subscribe(topic);
    this.#done = (async () => {
      try {
        for await (const frames of sock) h.onMessage(frames);
      } catch (e) {
        if (!this.#closed) log.error({ err: e }, 'engine event socket failed');
      }
    })();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#sock.close();
    await this.#done;
  }
}

function seqFrame(seq: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt.asUintN(64, seq));
  return b;
}

/**
 * Asks the engine for every batch it still holds from `fromSeq` on. The request is `['', seq]` (an empty
 * delimiter then the 8-byte big-endian start, as vLLM's ROUTER expects from a REQ/DEALER client); replies
 * are read until the end marker or `timeoutMs` without a reply. Resolves with the batches in arrival
 * order; rejects if nothing valid comes back in time. A reply that does not decode ends the replay
 * (the batches before it are kept; the caller sees a shorter run and clears if it must).
 */
export async function requestReplay(endpoint: string, fromSeq: bigint, timeoutMs: number): Promise<ReplayMessage[]> {
  const sock = new Dealer({ linger: 0, receiveTimeout: timeoutMs, sendTimeout: timeoutMs });
  try {
    sock.connect(endpoint);
    await sock.send([Buffer.alloc(0), seqFrame(fromSeq)]);
    const out: ReplayMessage[] = [];
    for (;;) {
      let frames: Buffer[];
      try {
        frames = await sock.receive();
      } catch (e) {
        if (out.length === 0) throw e;
        log.warn({ got: out.length }, 'replay ended without its end marker');
        return out;
      }
      // Newer vLLM puts the topic in replies too: ['', topic, seq, payload]; keep [seq, payload].
      if (frames.length === 4 && frames[0]!.length === 0) frames = frames.slice(2);
      let m: ReplayMessage;
      try {
        m = decodeReplayFrames(frames);
      } catch (e) {
        log.warn({ err: String(e) }, 'malformed replay reply');
        return out;
      }
      if (m.end) return out;
      out.push(m);
    }
  } finally {
    sock.close();
  }
}
