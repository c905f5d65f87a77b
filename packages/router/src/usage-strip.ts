/**
 * The engine's usage for every stream (issue 17): the router asks the engine for the final usage chunk
 * (`stream_options.include_usage`) even when the client did not, reads the cached tokens off it (diag.ts UsageTap),
 * and keeps that chunk out of the client's stream (`UsageStrip`), so the client sees what it would have seen
 * straight from the engine.
 *
 * vLLM (serving_completion.py / serving_chat.py, `should_include_usage`) sends the usage chunk last, before
 * `data: [DONE]`, with `choices: []`; `continuous_usage_stats` adds usage to every chunk, but only when
 * `include_usage` is set: a client that asked for continuous stats alone never got any, so the router turns it off
 * when it adds `include_usage`.
 */
const USAGE = Buffer.from('"usage"');

/** true when the client asked for usage itself (then nothing is injected or stripped) */
export function clientWantsUsage(body: Record<string, unknown>): boolean {
  const so = body.stream_options;
  return typeof so === 'object' && so !== null && (so as { include_usage?: unknown }).include_usage === true;
}

/** the request body asking the engine for the final usage chunk (the client's other stream options kept) */
export function withUsage(body: Record<string, unknown>): Record<string, unknown> {
  const so = body.stream_options;
  const rest = typeof so === 'object' && so !== null && !Array.isArray(so) ? (so as Record<string, unknown>) : {};
  return { ...body, stream_options: { ...rest, include_usage: true, continuous_usage_stats: false } };
}

const USAGE_FIELD = Buffer.from(',"stream_options":{"include_usage":true}');

/**
 * `raw` (the validated JSON object `body` was parsed from) asking the engine for the usage chunk. Without
 * `stream_options` in the body the field is spliced in before the closing brace (no re-serialisation: a 2k-token
 * prompt costs ~0.2 ms to stringify); otherwise the body is written anew (`withUsage`).
 */
export function withUsageRaw(raw: Buffer, body: Record<string, unknown>): Buffer {
  if (!('stream_options' in body) && Object.keys(body).length > 0) {
    const end = raw.lastIndexOf(0x7d); // '}': only whitespace may follow a JSON object's closing brace
    if (end > 0) return Buffer.concat([raw.subarray(0, end), USAGE_FIELD, raw.subarray(end)]);
  }
  return Buffer.from(JSON.stringify(withUsage(body)));
}

/** the end of the first SSE event at or after `from` (index after its blank line), or -1 */
function eventEnd(buf: Buffer, from: number): number {
  const lf = buf.indexOf('\n\n', from);
  const crlf = buf.indexOf('\r\n\r\n', from);
  if (lf < 0) return crlf < 0 ? -1 : crlf + 4;
  if (crlf < 0 || lf < crlf) return lf + 2;
  return crlf + 4;
}

/** a usage-only event: `data: {…, "choices": [], "usage": {…}}` */
function isUsageChunk(ev: Buffer): boolean {
  if (ev.indexOf(USAGE) < 0) return false;
  for (const raw of ev.toString('utf8').split('\n')) {
    const line = raw.trim();
    if (!line.startsWith('data:')) continue;
    try {
      const v = JSON.parse(line.slice(5)) as { choices?: unknown; usage?: unknown };
      return Array.isArray(v.choices) && v.choices.length === 0 && typeof v.usage === 'object' && v.usage !== null;
    } catch {
      return false;
    }
  }
  return false;
}

/**
 * Passes an SSE body on event by event without its usage-only chunks. A chunk made of whole events and carrying no
 * `"usage"` passes as it is (the common case: engines write one event per chunk); otherwise complete events are
 * passed and an unfinished one is held until its end arrives (a client can do nothing with half an event).
 */
export class UsageStrip {
  #rest: Buffer | null = null;
  /** usage chunks dropped */
  dropped = 0;

  /** what to write for `chunk` (possibly empty) */
  push(chunk: Buffer): Buffer {
    const buf = this.#rest ? Buffer.concat([this.#rest, chunk]) : chunk;
    this.#rest = null;
    if (buf.indexOf(USAGE) < 0 && endsEvent(buf)) return buf;
    const keep: Buffer[] = [];
    let start = 0;
    for (;;) {
      const end = eventEnd(buf, start);
      if (end < 0) break;
      const ev = buf.subarray(start, end);
      if (isUsageChunk(ev)) this.dropped++;
      else keep.push(ev);
      start = end;
    }
    if (start < buf.length) this.#rest = Buffer.from(buf.subarray(start));
    return keep.length === 1 ? keep[0]! : Buffer.concat(keep);
  }

  /** at the end of the body: whatever was held (an unterminated last event passes as it came) */
  flush(): Buffer | null {
    const r = this.#rest;
    this.#rest = null;
    return r;
  }
}

function endsEvent(b: Buffer): boolean {
  const n = b.length;
  return n >= 2 && b[n - 1] === 0x0a && (b[n - 2] === 0x0a || (n >= 4 && b[n - 2] === 0x0d && b[n - 3] === 0x0a && b[n - 4] === 0x0d));
}
