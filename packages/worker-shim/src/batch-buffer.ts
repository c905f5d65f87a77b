/**
 * BatchBuffer (pure): the encoded batches one worker could not get stored yet, oldest first, bounded by count
 * and bytes. The publisher peeks at the head, appends those, then settles: the head leaves, the failed ones go
 * back to the front in their order.
 */
export interface BufferedBatch {
  seq: number;
  data: Uint8Array;
  /** made while the bus was down, or its append failed once: counted as replayed when it is stored */
  delayed: boolean;
}

export interface BatchBufferOptions {
  maxBatches: number;
  maxBytes: number;
}

export class BatchBuffer {
  #items: BufferedBatch[] = [];
  #head = 0;
  #bytes = 0;
  readonly #maxBatches: number;
  readonly #maxBytes: number;

  constructor(o: BatchBufferOptions) {
    this.#maxBatches = o.maxBatches;
    this.#maxBytes = o.maxBytes;
  }

  get length(): number {
    return this.#items.length - this.#head;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** false (nothing added) when the batch would pass a bound */
  push(b: BufferedBatch): boolean {
    if (this.length + 1 > this.#maxBatches || this.#bytes + b.data.length > this.#maxBytes) return false;
    this.#items.push(b);
    this.#bytes += b.data.length;
    return true;
  }

  /** the oldest `n` batches, left in place */
  peek(n: number): BufferedBatch[] {
    return this.#items.slice(this.#head, this.#head + n);
  }

  /** the `n` oldest were tried: they leave, except `failed` (a subset of them), which go back to the front in order */
  settle(n: number, failed: BufferedBatch[]): void {
    const taken = this.#items.slice(this.#head, this.#head + n);
    this.#head += taken.length;
    for (const t of taken) this.#bytes -= t.data.length;
    if (failed.length > 0) {
      const back = [...failed].sort((a, b) => a.seq - b.seq);
      this.#items = [...back, ...this.#items.slice(this.#head)];
      this.#head = 0;
      for (const f of back) this.#bytes += f.data.length;
    } else if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
  }

  clear(): void {
    this.#items = [];
    this.#head = 0;
    this.#bytes = 0;
  }
}
