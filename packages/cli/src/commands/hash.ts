import { initHashing, prefixHashes, hashToHex } from '@kvgate/protocol';
import { parseFlags, intFlag } from '../flags.js';

export const summary = 'print kvgate prefix hashes of a token list (debug "overlap is always zero")';

const USAGE = 'kvgate hash --model M [--lora L] [--salt S] --block-size B --tokens 1,2,3,...';
const SPEC = {
  model: { type: 'string', help: 'model name as the engine reports it' },
  lora: { type: 'string', help: 'LoRA adapter name (empty: base model)' },
  salt: { type: 'string', help: "the request's cache_salt (empty: unsalted)" },
  'block-size': { type: 'string', help: 'engine KV block size in tokens', default: '16' },
  tokens: { type: 'string', help: 'comma-separated token ids' },
  json: { type: 'boolean', help: 'print a JSON array instead of one hash per line' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const parsed = parseFlags(argv, USAGE, SPEC);
  if (!parsed) return 0;
  const { flags } = parsed;
  if (!flags.model || flags.tokens === undefined) {
    console.error(`kvgate hash: --model and --tokens are required\nusage: ${USAGE}`);
    return 2;
  }
  const blockSize = intFlag(flags['block-size'], 'block-size', 16);
  if (!Number.isInteger(blockSize) || blockSize <= 0) {
    console.error('kvgate hash: --block-size must be a positive integer');
    return 2;
  }
  const parts = flags.tokens.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const tokens = parts.map(Number);
  const bad = parts.findIndex((s, i) => !/^\d+$/.test(s) || tokens[i]! > 0xffffffff);
  if (bad >= 0) {
    console.error(`kvgate hash: token ${JSON.stringify(parts[bad])} is not an unsigned 32-bit integer`);
    return 2;
  }
  await initHashing();
  const hashes = prefixHashes(flags.model, flags.lora ?? '', blockSize, tokens, undefined, flags.salt || null).map(hashToHex);
  console.log(flags.json ? JSON.stringify(hashes) : hashes.join('\n'));
  return 0;
}
