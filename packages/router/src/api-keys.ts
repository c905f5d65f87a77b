/**
 * Router API keys (as vLLM's `--api-key`): a request is let in when its `Authorization: Bearer <key>` is one of
 * the configured keys. Keys are held as SHA-256 digests and compared with crypto.timingSafeEqual over all of them
 * (no early exit), so neither a key's content nor its length shows in the answer time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export class ApiKeys {
  readonly #keys: { digest: Buffer; label: string }[];

  constructor(keys: readonly string[]) {
    const uniq = [...new Set(keys.map((k) => k.trim()).filter((k) => k.length > 0))];
    // a label names a key in logs and rate-limit buckets without being it: the first 8 hex of its digest
    this.#keys = uniq.map((k) => {
      const d = digest(k);
      return { digest: d, label: `key:${d.toString('hex').slice(0, 8)}` };
    });
  }

  get size(): number {
    return this.#keys.length;
  }

  /** the matching key's label, or undefined (no header, not Bearer, or no such key) */
  check(authorization: string | undefined): string | undefined {
    if (authorization === undefined) return undefined;
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
    if (!m) return undefined;
    const d = digest(m[1]!);
    let found: string | undefined;
    for (const k of this.#keys) if (timingSafeEqual(k.digest, d) && found === undefined) found = k.label;
    return found;
  }
}

/** `--api-key-file`: one key per line; blank lines and lines starting with # are skipped */
export function parseApiKeyFile(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith('#'));
}
