/**
 * LoRA id → LoRA name, for hashing (pure).
 *
 * vLLM's BlockStored carries `lora_id` (its internal int id, `lora_int_id`) and, in newer versions,
 * `lora_name`. kvgate hashes with the adapter's *name* (what clients put in `model`), so:
 *   1. `lora_name` on the event wins;
 *   2. else the operator's map (`--lora-map 1=sql-lora,2=chat-lora`);
 *   3. else the engine's /v1/models: vLLM lists static adapters (entries whose `parent` is set) in the
 *      order it loaded them, and gives them ids 1, 2, … in that order.
 * lora_id null or 0 is the base model. An id none of these name is unresolved: the caller drops the
 * event and counts it rather than hash it under the wrong adapter.
 */

export type LoraName = { kind: 'base' } | { kind: 'named'; name: string } | { kind: 'unknown'; id: number };

/** Parses `1=name,2=other` (whitespace allowed). Throws on a malformed pair. */
export function parseLoraMap(s: string | undefined): Map<number, string> {
  const out = new Map<number, string>();
  if (!s) return out;
  for (const part of s.split(',')) {
    const p = part.trim();
    if (p === '') continue;
    const m = /^(\d+)\s*=\s*(\S+)$/.exec(p);
    if (!m) throw new Error(`--lora-map entry ${JSON.stringify(p)} is not <id>=<name>`);
    out.set(Number(m[1]), m[2]!);
  }
  return out;
}

/** Adapter names from an OpenAI /v1/models body, in listed order: entries with a non-null `parent`. */
export function lorasFromModels(body: unknown): string[] {
  if (typeof body !== 'object' || body === null) return [];
  const data = (body as { data?: unknown }).data;
  if (!Array.isArray(data)) return [];
  const out: string[] = [];
  for (const m of data) {
    if (typeof m !== 'object' || m === null) continue;
    const { id, parent } = m as { id?: unknown; parent?: unknown };
    if (typeof id === 'string' && typeof parent === 'string' && parent !== '') out.push(id);
  }
  return out;
}

/**
 * The context length of `model` from an OpenAI /v1/models body: vLLM's ModelCard `max_model_len` of the entry
 * whose id is `model`, else of the first base entry (null `parent`: the name the engine serves under may differ).
 */
export function maxModelLenFromModels(body: unknown, model: string): number | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const data = (body as { data?: unknown }).data;
  if (!Array.isArray(data)) return undefined;
  const entries = data.filter((m): m is { id?: unknown; parent?: unknown; max_model_len?: unknown } => typeof m === 'object' && m !== null);
  const e = entries.find((m) => m.id === model) ?? entries.find((m) => m.parent === null || m.parent === undefined);
  const v = e?.max_model_len;
  return typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : undefined;
}

export class LoraNames {
  readonly #flags: Map<number, string>;
  #fromEngine = new Map<number, string>();

  constructor(flagMap: Map<number, string> = new Map()) {
    this.#flags = flagMap;
  }

  /** learn ids from the engine's /v1/models adapter list (ids 1.. in listed order) */
  learnFromModels(adapters: string[]): void {
    const m = new Map<number, string>();
    adapters.forEach((name, i) => m.set(i + 1, name));
    this.#fromEngine = m;
  }

  resolve(loraId: number | null | undefined, loraName: string | null | undefined): LoraName {
    if (typeof loraName === 'string' && loraName !== '') return { kind: 'named', name: loraName };
    if (loraId === null || loraId === undefined || loraId === 0) return { kind: 'base' };
    const name = this.#flags.get(loraId) ?? this.#fromEngine.get(loraId);
    return name === undefined ? { kind: 'unknown', id: loraId } : { kind: 'named', name };
  }
}
