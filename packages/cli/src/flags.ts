/**
 * Flag parsing shared by every subcommand: node:util parseArgs, with each flag's default taken
 * from KVGATE_<FLAG_NAME> (dashes → underscores, upper case) when the flag is absent. A `multiple` flag may be given
 * several times (its value is then a string[]); its env variable holds one value, or several separated by commas.
 */
import { parseArgs } from 'node:util';
import { FlagError } from './fatal.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  short?: string;
  default?: string | boolean;
  /** one line for --help */
  help: string;
  multiple?: boolean;
}

export type Flags<S extends Record<string, FlagSpec>> = {
  [K in keyof S]: S[K]['type'] extends 'boolean' ? boolean : S[K]['multiple'] extends true ? string[] : string | undefined;
};

export function helpText(usage: string, spec: Record<string, FlagSpec>): string {
  const rows = Object.entries(spec).map(([name, s]) => {
    const flag = `--${name}${s.type === 'string' ? ' <v>' : ''}${s.multiple ? ' …' : ''}`;
    const def = s.default !== undefined && s.default !== false ? ` (default ${s.default})` : '';
    return `  ${flag.padEnd(28)} ${s.help}${def}`;
  });
  return `${usage}\n\noptions:\n${rows.join('\n')}\n  ${'--help'.padEnd(28)} this text`;
}

/** Returns null when --help was asked (help already printed). Throws with a clear message on a bad flag. */
export function parseFlags<S extends Record<string, FlagSpec>>(argv: string[], usage: string, spec: S): { flags: Flags<S>; positionals: string[] } | null {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, s] of Object.entries(spec)) options[name] = { type: s.type, ...(s.short ? { short: s.short } : {}), ...(s.multiple ? { multiple: true } : {}) };
  const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  if (values.help) {
    console.log(helpText(usage, spec));
    return null;
  }
  const flags: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(spec)) {
    let v: unknown = values[name];
    if (v === undefined) {
      const env = process.env[`KVGATE_${name.replace(/-/g, '_').toUpperCase()}`];
      if (env !== undefined) v = s.type === 'boolean' ? env === '1' || env === 'true' : s.multiple ? env.split(',').map((x) => x.trim()).filter(Boolean) : env;
    }
    if (v === undefined) v = s.multiple ? [] : (s.default ?? (s.type === 'boolean' ? false : undefined));
    flags[name] = v;
  }
  return { flags: flags as Flags<S>, positionals };
}

/** A number ≥ `min` (default 0), integer when `integer`; `def` when absent. A bad value throws FlagError naming the flag. */
export function numberFlag(v: string | undefined, name: string, def: number, o: { min?: number; integer?: boolean } = {}): number {
  const n = intFlag(v, name, def);
  const min = o.min ?? 0;
  if (n < min || (o.integer && !Number.isInteger(n))) throw new FlagError(`--${name} must be ${o.integer ? 'an integer' : 'a number'} ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}

export function intFlag(v: string | undefined, name: string, def: number): number {
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new FlagError(`--${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
}
