/**
 * KV events exactly as vLLM publishes them (vllm/distributed/kv_events.py, ZmqEventPublisher):
 *
 * - ZMQ PUB, multipart [topic, seq (8-byte big-endian, from 0), payload]; one batch per scheduler step.
 * - payload, `array` encoding (older vLLM, array_like structs: every field of that version, in order):
 *     [ts, [event…], dp_rank] with
 *     ["BlockStored", block_hashes, parent_block_hash|nil, token_ids, block_size, lora_id|nil, medium, lora_name|nil]
 *     ["BlockRemoved", block_hashes, medium]   ["AllBlocksCleared"]
 * - `map` encoding (current vLLM: tagged msgspec structs, omit_defaults): {ts, events, data_parallel_rank}, each
 *   event a map whose "type" tag comes first, then the fields in declaration order. Fields without a default are
 *   always written (nil included); defaulted fields only when they differ from their default (None):
 *     {type: "BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
 *      extra_keys, group_idx, kv_cache_spec_kind}
 *   The GPU store carries what block_pool.cache_full_blocks sets: extra_keys one entry per block (nil = none, as
 *   for a plain text prompt), group_idx 0 and kv_cache_spec_kind "full_attention" (the sim has one full-attention
 *   group; kv_cache_spec_sliding_window stays None and is omitted). BlockRemoved: {type, block_hashes, medium,
 *   group_idx}. AllBlocksCleared: {type}.
 * - CPU offload tier (vLLM's OffloadingConnector, take_events): hash-only placeholders in the same batch as the
 *   GPU events: BlockStored with parent nil, token_ids [], lora_id nil, medium "CPU", lora_name nil and
 *   block_size 0 (map, current vLLM) or the offloaded block size (array, older vLLM, where the connector passed
 *   the manager event's block size); BlockRemoved {type, block_hashes, medium: "CPU"} (no group_idx: the
 *   connector does not set it).
 * - Block hashes: uint64 ints by default, or 32-byte digests (`bytes`).
 * - Replay: a ROUTER socket; a client sends [empty, start seq (8-byte BE)] (a REQ socket adds the empty frame);
 *   the engine answers [empty, seq, payload] for each batch it still holds with seq ≥ start, then
 *   [empty, 0xFFFFFFFFFFFFFFFF, empty]. The last `bufferSteps` batches are kept (vLLM: 10,000).
 *
 * `encodeEventBatch` is pure; `KvEventPublisher` is the socket edge.
 */
import { Packr } from 'msgpackr';
import * as zmq from 'zeromq';
import { logger } from '@kvgate/protocol';
import type { BlockDigest } from './block-hash.js';
import type { KvCacheEvent } from './kv-cache.js';

export type EventEncoding = 'array' | 'map';
export type BlockHashFormat = 'int' | 'bytes';

/** vLLM's KVCacheSpecKind.FULL_ATTENTION value */
const FULL_ATTENTION = 'full_attention';
const packr = new Packr({ useRecords: false, variableMapSize: true });

function hashOut(d: BlockDigest, f: BlockHashFormat): bigint | Buffer {
  return f === 'int' ? d.key : d.bytes;
}

/** msgpack payload of one batch, in vLLM's layout. */
export function encodeEventBatch(events: readonly KvCacheEvent[], ts: number, dpRank: number, encoding: EventEncoding, hashFormat: BlockHashFormat): Uint8Array {
  const out = events.map((e) => {
    switch (e.type) {
      case 'BlockStored': {
        const hashes = e.hashes.map((d) => hashOut(d, hashFormat));
        const medium = e.medium ?? 'GPU';
        if (medium === 'CPU') {
          return encoding === 'array'
            ? ['BlockStored', hashes, null, [], e.blockSize, null, medium, null]
            : { type: 'BlockStored', block_hashes: hashes, parent_block_hash: null, token_ids: [], block_size: 0, lora_id: null, medium, lora_name: null };
        }
        const parent = e.parent ? hashOut(e.parent, hashFormat) : null;
        return encoding === 'array'
          ? ['BlockStored', hashes, parent, e.tokenIds, e.blockSize, null, medium, null]
          : {
              type: 'BlockStored',
              block_hashes: hashes,
              parent_block_hash: parent,
              token_ids: e.tokenIds,
              block_size: e.blockSize,
              lora_id: null,
              medium,
              lora_name: null,
              extra_keys: hashes.map(() => null),
              group_idx: 0,
              kv_cache_spec_kind: FULL_ATTENTION,
            };
      }
      case 'BlockRemoved': {
        const hashes = e.hashes.map((d) => hashOut(d, hashFormat));
        const medium = e.medium ?? 'GPU';
        if (encoding === 'array') return ['BlockRemoved', hashes, medium];
        return medium === 'CPU' ? { type: 'BlockRemoved', block_hashes: hashes, medium } : { type: 'BlockRemoved', block_hashes: hashes, medium, group_idx: 0 };
      }
      case 'AllBlocksCleared':
        return encoding === 'array' ? ['AllBlocksCleared'] : { type: 'AllBlocksCleared' };
    }
  });
  // ts is a float in vLLM; keep it fractional so msgpack encodes a float64
  const t = Number.isInteger(ts) ? ts + 1e-6 : ts;
  return packr.pack(encoding === 'array' ? [t, out, dpRank] : { ts: t, events: out, data_parallel_rank: dpRank });
}

export interface KvEventPublisherOptions {
  /** PUB endpoint; always bound. `tcp://host:0` or `:*` picks a free port (default tcp://127.0.0.1:*) */
  endpoint: string;
  /** ROUTER replay endpoint; null = no replay socket */
  replayEndpoint: string | null;
  /** ZMQ topic frame (default '') */
  topic?: string;
  /** batches kept for replay (default 10,000) */
  bufferSteps?: number;
  encoding?: EventEncoding;
  hashFormat?: BlockHashFormat;
  dpRank?: number;
}

const END_SEQ = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

function bindable(endpoint: string): string {
  return endpoint.replace(/:0$/, ':*');
}
/** The address a client on this host connects to (wildcard hosts become 127.0.0.1). */
function connectable(endpoint: string): string {
  return endpoint.replace('//0.0.0.0:', '//127.0.0.1:').replace('//*:', '//127.0.0.1:').replace('//[::]:', '//127.0.0.1:');
}
function seqBytes(seq: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(seq));
  return b;
}

export class KvEventPublisher {
  readonly endpoint: string;
  readonly replayEndpoint: string | null;
  #pub: zmq.Publisher;
  #router: zmq.Router | null;
  #topic: Buffer;
  #encoding: EventEncoding;
  #hashFormat: BlockHashFormat;
  #dpRank: number;
  #seq = 0;
  // ring buffer of the last `bufferSteps` [seq, payload] batches, for replay
  #ring: Array<[number, Uint8Array]>;
  #ringStart = 0;
  #ringLen = 0;
  #sending: Promise<void> = Promise.resolve();
  #closed = false;
  #log = logger('sim-engine.kv-events');

  private constructor(pub: zmq.Publisher, router: zmq.Router | null, opts: KvEventPublisherOptions) {
    this.#pub = pub;
    this.#router = router;
    this.endpoint = connectable(pub.lastEndpoint ?? opts.endpoint);
    this.replayEndpoint = router ? connectable(router.lastEndpoint ?? opts.replayEndpoint ?? '') : null;
    this.#topic = Buffer.from(opts.topic ?? '', 'utf8');
    this.#encoding = opts.encoding ?? 'array';
    this.#hashFormat = opts.hashFormat ?? 'int';
    this.#dpRank = opts.dpRank ?? 0;
    this.#ring = new Array(Math.max(1, opts.bufferSteps ?? 10_000));
    if (router) void this.#serveReplay(router);
  }

  static async open(opts: KvEventPublisherOptions): Promise<KvEventPublisher> {
    const pub = new zmq.Publisher({ linger: 0, sendHighWaterMark: 100_000 });
    let router: zmq.Router | null = null;
    try {
      await pub.bind(bindable(opts.endpoint));
      if (opts.replayEndpoint) {
        router = new zmq.Router({ linger: 0 });
        await router.bind(bindable(opts.replayEndpoint));
      }
    } catch (e) {
      pub.close();
      router?.close();
      throw e;
    }
    return new KvEventPublisher(pub, router, opts);
  }

  /** Next sequence number to be published (= batches published so far). */
  get nextSeq(): number {
    return this.#seq;
  }

  /** Publishes one batch (no-op for an empty list). Sends are serialised: zeromq allows one in flight per socket. */
  publish(events: readonly KvCacheEvent[], tsSeconds: number): void {
    if (this.#closed || events.length === 0) return;
    const payload = encodeEventBatch(events, tsSeconds, this.#dpRank, this.#encoding, this.#hashFormat);
    const seq = this.#seq++;
    const cap = this.#ring.length;
    if (this.#ringLen < cap) this.#ring[(this.#ringStart + this.#ringLen++) % cap] = [seq, payload];
    else {
      this.#ring[this.#ringStart] = [seq, payload];
      this.#ringStart = (this.#ringStart + 1) % cap;
    }
    const frames = [this.#topic, seqBytes(seq), payload];
    this.#sending = this.#sending.then(() => (this.#closed ? undefined : this.#pub.send(frames))).catch((e: unknown) => {
      if (!this.#closed) this.#log.warn({ err: (e as Error).message }, 'kv event publish failed');
    });
  }

  async #serveReplay(router: zmq.Router): Promise<void> {
    try {
      for await (const frames of router) {
        if (frames.length !== 3 || frames[2]!.length !== 8) {
          this.#log.warn({ frames: frames.length }, 'invalid replay request ignored');
          continue;
        }
        const [identity, , start] = frames as [Buffer, Buffer, Buffer];
        const from = Number(start.readBigUInt64BE(0));
        const cap = this.#ring.length;
        for (let i = 0; i < this.#ringLen; i++) {
          const [seq, payload] = this.#ring[(this.#ringStart + i) % cap]!;
          if (seq >= from) await router.send([identity, Buffer.alloc(0), seqBytes(seq), payload]);
        }
        await router.send([identity, Buffer.alloc(0), END_SEQ, Buffer.alloc(0)]);
      }
    } catch (e) {
      if (!this.#closed) this.#log.warn({ err: (e as Error).message }, 'replay socket stopped');
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#sending;
    this.#closed = true;
    this.#pub.close();
    this.#router?.close();
  }
}
