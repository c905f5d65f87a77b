/**
 * The router's authentication flags (issue 13): client API keys, per-key rate limits, the engine's own key, what
 * a client may carry through, and the cluster secret the shims check. Each also reads KVGATE_<FLAG> (flags.ts):
 * KVGATE_API_KEY (one key, or several separated by commas), KVGATE_CLUSTER_SECRET, KVGATE_ENGINE_API_KEY, …
 * Secrets go only into the options: never into a log line or an error.
 */
import { readFileSync } from 'node:fs';
import type { RouterOptions } from '@kvgate/router';
import { FlagError } from './fatal.js';
import { numberFlag, type FlagSpec } from './flags.js';

export const CLUSTER_SECRET_SPEC = {
  'cluster-secret': { type: 'string', help: 'shared router ↔ shim secret: routers sign every call, shims accept only signed ones (prefer KVGATE_CLUSTER_SECRET)' },
} as const satisfies Record<string, FlagSpec>;

export const API_KEY_SPEC = {
  'api-key': { type: 'string', multiple: true, help: 'require Authorization: Bearer <key> on /v1/*; repeatable (prefer KVGATE_API_KEY or --api-key-file: a flag shows in ps)' },
  'api-key-file': { type: 'string', help: 'file of API keys, one per line (blank lines and # comments skipped)' },
} as const satisfies Record<string, FlagSpec>;

export const ROUTER_AUTH_SPEC = {
  ...API_KEY_SPEC,
  'auth-health': { type: 'boolean', help: 'with API keys: /healthz, /readyz and /metrics need a key too' },
  'rate-limit-rps': { type: 'string', help: 'requests per second per API key (per client address without keys); 0 = unlimited', default: '0' },
  'rate-limit-burst': { type: 'string', help: 'requests banked per key (default max(1, rps))' },
  'rate-limit-tokens-per-s': { type: 'string', help: 'prompt tokens per second per key; 0 = unlimited', default: '0' },
  'rate-limit-token-burst': { type: 'string', help: 'prompt tokens banked per key (default one second\'s worth)' },
  'rate-limit-keys': { type: 'string', help: 'keys (or client addresses) the rate limiter remembers', default: '10000' },
  'engine-api-key': { type: 'string', help: 'sent upstream (engines, shims, prefill leg, /tokenize) as Authorization: Bearer (prefer KVGATE_ENGINE_API_KEY)' },
  'forward-client-auth': { type: 'boolean', help: "pass the client's own Authorization upstream instead of dropping it" },
  'trust-client-pd': { type: 'boolean', help: 'keep client kv_transfer_params / x-prefiller-host-port (a gateway in front does the P/D pairing)' },
  ...CLUSTER_SECRET_SPEC,
} as const satisfies Record<string, FlagSpec>;

export interface ApiKeyFlags {
  'api-key'?: string[];
  'api-key-file'?: string | undefined;
}

export type RouterAuthFlags = ApiKeyFlags & {
  'auth-health'?: boolean;
  'rate-limit-rps'?: string | undefined;
  'rate-limit-burst'?: string | undefined;
  'rate-limit-tokens-per-s'?: string | undefined;
  'rate-limit-token-burst'?: string | undefined;
  'rate-limit-keys'?: string | undefined;
  'engine-api-key'?: string | undefined;
  'forward-client-auth'?: boolean;
  'trust-client-pd'?: boolean;
  'cluster-secret'?: string | undefined;
};

/** The keys of an --api-key-file: one per line, trimmed; blank lines and lines starting with # skipped. */
export function parseKeyFile(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

/** --api-key values and the keys of --api-key-file, deduplicated; a key file without a key is refused (it would leave the router open). */
export function apiKeysFrom(f: ApiKeyFlags, readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): string[] {
  const keys = [...(f['api-key'] ?? [])];
  if (keys.some((k) => k.trim() === '')) throw new FlagError('--api-key must not be empty');
  const file = f['api-key-file'];
  if (file) {
    const fromFile = parseKeyFile(readFile(file));
    if (fromFile.length === 0) throw new FlagError(`--api-key-file ${file} holds no key (one per line)`);
    keys.push(...fromFile);
  }
  for (const k of keys) if (/\s/.test(k)) throw new FlagError('an API key must not contain whitespace (the key itself is not shown)');
  return [...new Set(keys)];
}

type RouterAuthOptions = Pick<RouterOptions, 'apiKeys' | 'authHealth' | 'rateLimit' | 'engineApiKey' | 'forwardClientAuth' | 'trustClientPd' | 'clusterSecret'>;

/** RouterOptions' auth fields from the parsed flags; a bad value throws FlagError (one fatal line, exit 2). */
export function routerAuthFrom(f: RouterAuthFlags, readFile?: (path: string) => string): RouterAuthOptions {
  const apiKeys = apiKeysFrom(f, readFile);
  if (f['auth-health'] && apiKeys.length === 0) throw new FlagError('--auth-health needs API keys (--api-key, --api-key-file or KVGATE_API_KEY)');
  const rps = numberFlag(f['rate-limit-rps'], 'rate-limit-rps', 0);
  const tps = numberFlag(f['rate-limit-tokens-per-s'], 'rate-limit-tokens-per-s', 0);
  const rBurst = f['rate-limit-burst'] !== undefined ? numberFlag(f['rate-limit-burst'], 'rate-limit-burst', 1, { min: 1 }) : undefined;
  const tBurst = f['rate-limit-token-burst'] !== undefined ? numberFlag(f['rate-limit-token-burst'], 'rate-limit-token-burst', 1, { min: 1 }) : undefined;
  if (rBurst !== undefined && rps === 0) throw new FlagError('--rate-limit-burst needs --rate-limit-rps');
  if (tBurst !== undefined && tps === 0) throw new FlagError('--rate-limit-token-burst needs --rate-limit-tokens-per-s');
  const rateLimit = {
    ...(rps > 0 ? { requestsPerS: rps } : {}),
    ...(rBurst !== undefined ? { requestBurst: rBurst } : {}),
    ...(tps > 0 ? { tokensPerS: tps } : {}),
    ...(tBurst !== undefined ? { tokenBurst: tBurst } : {}),
    maxKeys: numberFlag(f['rate-limit-keys'], 'rate-limit-keys', 10_000, { min: 1, integer: true }),
  };
  const secret = clusterSecretFrom(f['cluster-secret']);
  const engineKey = f['engine-api-key'];
  return {
    ...(apiKeys.length ? { apiKeys } : {}),
    ...(f['auth-health'] ? { authHealth: true } : {}),
    ...(rps > 0 || tps > 0 ? { rateLimit } : {}),
    ...(engineKey ? { engineApiKey: engineKey } : {}),
    ...(f['forward-client-auth'] ? { forwardClientAuth: true } : {}),
    ...(f['trust-client-pd'] ? { trustClientPd: true } : {}),
    ...(secret ? { clusterSecret: secret } : {}),
  };
}

/** The shim's --cluster-secret, checked as the router's is (at least 16 characters); undefined when absent. */
export function clusterSecretFrom(v: string | undefined): string | undefined {
  if (v === undefined || v === '') return undefined;
  if (v.length < 16) throw new FlagError('--cluster-secret must be at least 16 characters (the secret itself is not shown)');
  return v;
}
