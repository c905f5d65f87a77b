/** Test helpers: HTTP calls and an independent KV-event subscriber (zeromq + @msgpack/msgpack, not kvgate's decoder). */
import * as zmq from 'zeromq';
import { decode } from '@msgpack/msgpack';

export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; text: string; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, json, text, ms: performance.now() - t0 };
}

/** Reads an SSE response; returns the data payloads in order and the wall ms to the first content token. */
export async function readSse(url: string, body: unknown): Promise<{ status: number; data: string[]; firstTokenMs: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const data: string[] = [];
  let firstTokenMs = NaN;
  let buf = '';
  const dec = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ')) throw new Error(`not an SSE data event: ${JSON.stringify(ev)}`);
      const payload = ev.slice(6);
      if (Number.isNaN(firstTokenMs) && payload !== '[DONE]') {
        const j = JSON.parse(payload);
        const c = j.choices?.[0];
        if (c && ((typeof c.text === 'string' && c.text !== '') || (typeof c.delta?.content === 'string' && c.delta.content !== ''))) firstTokenMs = performance.now() - t0;
      }
      data.push(payload);
    }
  }
  if (buf.trim() !== '') throw new Error(`trailing bytes after the last SSE event: ${JSON.stringify(buf)}`);
  return { status: res.status, data, firstTokenMs };
}

export type DecodedBatch = { seq: bigint; ts: number; events: any[]; dpRank: number | null };

const opts = { useBigInt64: true } as const;

/** Normalises a batch in either encoding to {ts, events as maps, dpRank}. */
export function decodeBatch(seq: bigint, payload: Uint8Array): DecodedBatch {
  const raw = decode(payload, opts) as any;
  const batch = Array.isArray(raw) ? { ts: raw[0], events: raw[1], dpRank: raw[2] ?? null } : { ts: raw.ts, events: raw.events, dpRank: raw.data_parallel_rank ?? null };
  const events = (batch.events as any[]).map((e) => {
    if (!Array.isArray(e)) return e;
    switch (e[0]) {
      case 'BlockStored':
        return { type: 'BlockStored', block_hashes: e[1], parent_block_hash: e[2], token_ids: e[3], block_size: e[4], lora_id: e[5], medium: e[6], lora_name: e[7] };
      case 'BlockRemoved':
        return { type: 'BlockRemoved', block_hashes: e[1], medium: e[2] };
      case 'AllBlocksCleared':
        return { type: 'AllBlocksCleared' };
      default:
        throw new Error(`unknown event tag ${e[0]}`);
    }
  });
  return { seq, ts: batch.ts, events, dpRank: batch.dpRank };
}

export class EventCollector {
  readonly batches: DecodedBatch[] = [];
  readonly raw: Array<{ topic: Buffer; seq: Buffer; payload: Buffer }> = [];
  #sub: zmq.Subscriber;
  #loop: Promise<void>;

  private constructor(sub: zmq.Subscriber) {
    this.#sub = sub;
    this.#loop = (async () => {
      try {
        for await (const frames of sub) {
          const [topic, seq, payload] = frames as [Buffer, Buffer, Buffer];
          this.raw.push({ topic, seq, payload });
          this.batches.push(decodeBatch(seq.readBigUInt64BE(0), payload));
        }
      } catch {
        /* closed */
      }
    })();
  }

  static async connect(endpoint: string): Promise<EventCollector> {
    const sub = new zmq.Subscriber({ linger: 0 });
    sub.subscribe();
    const connected = new Promise<void>((resolve) => {
      void (async () => {
        for await (const ev of sub.events) if (ev.type === 'handshake' || ev.type === 'connect') return resolve();
      })();
    });
    sub.connect(endpoint);
    await Promise.race([connected, sleep(2000)]);
    await sleep(150); // let the subscription reach the publisher (ZMQ slow joiner)
    return new EventCollector(sub);
  }

  events(): any[] {
    return this.batches.flatMap((b) => b.events);
  }

  async waitFor(pred: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const t0 = Date.now();
    while (!pred()) {
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
      await sleep(10);
    }
  }

  async close(): Promise<void> {
    this.#sub.close();
    await this.#loop;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Deterministic token ids in the tokenizer's ordinary range. */
export function tokens(n: number, seed: number): number[] {
  let x = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return 1000 + (x % 100_000);
  });
}

export async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(url + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '));
  if (!line) throw new Error(`metric ${name} missing`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}
