/**
 * NATS credentials and TLS, the same flags on every command that connects (router, indexer, shim, doctor, replay,
 * start --nats, bench --nats); each also reads KVGATE_<FLAG> (flags.ts), e.g. KVGATE_NATS_PASSWORD.
 * A secret is never printed: flag values of these options go only into the connection, URLs are logged through
 * redactNatsUrl (nats://user:***@host).
 */
import type { NatsBusOptions } from '@kvgate/protocol';
import type { FlagSpec } from './flags.js';
import { FlagError } from './fatal.js';

export const NATS_AUTH_SPEC = {
  'nats-user': { type: 'string', help: 'NATS user (or nats://user:pass@host in --nats)' },
  'nats-password': { type: 'string', help: 'NATS password (prefer KVGATE_NATS_PASSWORD: a flag shows in ps)' },
  'nats-token': { type: 'string', help: 'NATS token (prefer KVGATE_NATS_TOKEN)' },
  'nats-nkey': { type: 'string', help: 'NATS nkey seed file (SU…)' },
  'nats-creds': { type: 'string', help: 'NATS .creds file (user JWT + seed)' },
  'nats-tls-ca': { type: 'string', help: 'CA bundle (PEM) that signed the NATS server certificate; turns TLS on' },
  'nats-tls-cert': { type: 'string', help: 'client certificate (PEM) for NATS mTLS' },
  'nats-tls-key': { type: 'string', help: 'client key (PEM) for NATS mTLS' },
} as const satisfies Record<string, FlagSpec>;

export type NatsAuthFlags = { [K in keyof typeof NATS_AUTH_SPEC]?: string | undefined };

/** NatsBusOptions' auth and TLS fields from the parsed flags (absent flags add nothing); ways that exclude each other throw FlagError */
export function natsOptionsFrom(f: NatsAuthFlags): Pick<NatsBusOptions, 'user' | 'pass' | 'token' | 'nkeySeedFile' | 'credsFile' | 'tls'> {
  const ways = [f['nats-user'] || f['nats-password'] ? '--nats-user/--nats-password' : '', f['nats-token'] ? '--nats-token' : '', f['nats-nkey'] ? '--nats-nkey' : '', f['nats-creds'] ? '--nats-creds' : ''].filter(Boolean);
  if (ways.length > 1) throw new FlagError(`give one NATS authentication, not ${ways.join(' and ')}`);
  if ((f['nats-tls-cert'] && !f['nats-tls-key']) || (f['nats-tls-key'] && !f['nats-tls-cert'])) throw new FlagError('--nats-tls-cert and --nats-tls-key go together');
  const tls = {
    ...(f['nats-tls-ca'] ? { caFile: f['nats-tls-ca'] } : {}),
    ...(f['nats-tls-cert'] ? { certFile: f['nats-tls-cert'] } : {}),
    ...(f['nats-tls-key'] ? { keyFile: f['nats-tls-key'] } : {}),
  };
  return {
    ...(f['nats-user'] ? { user: f['nats-user'] } : {}),
    ...(f['nats-password'] ? { pass: f['nats-password'] } : {}),
    ...(f['nats-token'] ? { token: f['nats-token'] } : {}),
    ...(f['nats-nkey'] ? { nkeySeedFile: f['nats-nkey'] } : {}),
    ...(f['nats-creds'] ? { credsFile: f['nats-creds'] } : {}),
    ...(Object.keys(tls).length ? { tls } : {}),
  };
}
