/**
 * Fifo: an array-backed queue with O(1) `shift` (a head index instead of Array#shift, which moves every
 * element). Taken slots are cleared so they do not keep values alive; the array is compacted once more than
 * half of it (and over 1,024 slots) is behind the head. The queue under Channel and the shim relay's mailbox.
 */
export class Fifo<T> {
  #buf: (T | undefined)[] = [];
  #head = 0;

  get length(): number {
    return this.#buf.length - this.#head;
  }

  push(v: T): void {
    this.#buf.push(v);
  }

  /** the oldest item, removed; undefined when empty */
  shift(): T | undefined {
    if (this.#head >= this.#buf.length) return undefined;
    const v = this.#buf[this.#head];
    this.#buf[this.#head] = undefined;
    this.#head++;
    if (this.#head > 1024 && this.#head * 2 > this.#buf.length) {
      this.#buf = this.#buf.slice(this.#head);
      this.#head = 0;
    }
    return v;
  }

  /** the newest item, left in place; undefined when empty */
  last(): T | undefined {
    return this.length > 0 ? this.#buf[this.#buf.length - 1] : undefined;
  }
}
