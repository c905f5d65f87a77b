/**
 * What each kvgate role may publish and subscribe to on NATS, derived from `subjects()` and from the JetStream API
 * calls NatsBus makes (bus/nats.ts), and the nats-server `authorization` block that grants exactly that
 * (deploy/nats/kvgate-auth.conf is this module's output for namespace `default`; deploy/nats/generate.mjs writes it).
 *
 * Roles (one NATS user each; passwords are nats-server config references to environment variables, never values):
 *   router   requests `index.match` (and `index.match.<N>.<i>` of index shards); publishes `router.active`, `router.suspect`, its decisions and diag report;
 *            reads the workers bucket; creates/updates the decisions stream.
 *   indexer  answers `index.match` / `index.match.<N>.<i>` (queue group) and nothing else answers them; `index.gossip`
 *            (`index.gossip.<N>.<i>` among one shard's replicas), `index.sync.*`;
 *            asks shims for a resync; reads the event stream and the workers bucket; creates/updates/purges the
 *            event stream and creates the workers bucket.
 *   shim     publishes its workers' `events.<hash bits of w>.<w>`, `load.<w>`, `diag.shim.<w>` and puts its own registry key;
 *            answers `shim.resync.<w>`; reads the workers bucket (P/D prefill targets). A shim user names its
 *            workers, or is the shared `shim` user that may publish for any worker (fleets whose worker ids are
 *            not known when the config is written; see SECURITY.md).
 *   admin    everything under `kvgate.>`, the JetStream API and KV buckets: `kvgate replay`, `kvgate doctor`, `kvgate start --nats`.
 * Everything not allowed is denied (nats-server denies what an allow list leaves out). Replies: a role that answers
 * requests gets `allow_responses` (one reply to each request it received), never a publish right on `_INBOX.>`.
 */
import { registryKey, subjects, TOKEN_RE, type Subjects } from './subjects.js';
import { KvgateError } from './errors.js';

export type NatsRole = 'router' | 'indexer' | 'shim' | 'admin';

export interface RolePermissions {
  publish: string[];
  subscribe: string[];
  /** may answer requests it received (nats-server `allow_responses`) */
  allowResponses: boolean;
}

/** JetStream API subjects that read a stream (ordered consumers, direct and stored-message gets) */
function jsRead(stream: string): string[] {
  return [
    `$JS.API.STREAM.INFO.${stream}`,
    `$JS.API.STREAM.MSG.GET.${stream}`,
    `$JS.API.DIRECT.GET.${stream}`,
    `$JS.API.DIRECT.GET.${stream}.>`,
    // ordered consumers: create (with or without a filter in the subject), pull, look, delete
    `$JS.API.CONSUMER.CREATE.${stream}`,
    `$JS.API.CONSUMER.CREATE.${stream}.>`,
    `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`,
    `$JS.API.CONSUMER.INFO.${stream}.*`,
    `$JS.API.CONSUMER.DELETE.${stream}.*`,
  ];
}

/** stream (or bucket) creation and config updates: `stream()` / `kv()` are create-or-update */
function jsManage(stream: string): string[] {
  return [`$JS.API.STREAM.CREATE.${stream}`, `$JS.API.STREAM.UPDATE.${stream}`];
}

const INBOX = '_INBOX.>';

/**
 * The permissions of one role. `workers` (shim only): the worker ids this shim user publishes for (data-parallel
 * ranks are workers of their own, `<worker>-dp<rank>`); absent = any worker (the shared `shim` user).
 */
export function rolePermissions(role: NatsRole, o: { namespace?: string; workers?: readonly string[] } = {}): RolePermissions {
  const s: Subjects = subjects(o.namespace ?? 'default');
  const p = s.prefix;
  const kvStream = `KV_${s.workersBucket}`;
  const kv = `$KV.${s.workersBucket}`;
  switch (role) {
    case 'router':
      return {
        publish: [
          s.indexMatch,
          s.indexMatchShards,
          s.routerActive,
          `${p}.router.suspect`,
          s.decisionsAll,
          s.diagRouter('*'),
          '$JS.API.INFO',
          ...jsManage(s.decisionStream),
          `$JS.API.STREAM.INFO.${s.decisionStream}`,
          ...jsRead(kvStream),
        ],
        subscribe: [s.loadAll, s.routerActive, `${p}.router.suspect`, s.diagAsk, INBOX],
        allowResponses: false,
      };
    case 'indexer':
      return {
        publish: [
          s.indexGossip,
          s.indexGossipShards,
          s.indexSync('*'),
          s.shimResync('*'),
          '$JS.API.INFO',
          ...jsManage(s.eventStream),
          `$JS.API.STREAM.PURGE.${s.eventStream}`,
          ...jsRead(s.eventStream),
          ...jsManage(kvStream),
          ...jsRead(kvStream),
        ],
        subscribe: [s.indexMatch, s.indexMatchShards, s.indexGossip, s.indexGossipShards, s.indexSync('*'), INBOX],
        allowResponses: true,
      };
    case 'shim': {
      const ws = o.workers;
      if (ws !== undefined) {
        if (ws.length === 0) throw new KvgateError('KVG_CONFIG', 'a shim user needs at least one worker id');
        for (const w of ws) if (!TOKEN_RE.test(w)) throw new KvgateError('KVG_CONFIG', `invalid worker id ${JSON.stringify(w)} (letters, digits, _ - : @)`);
      }
      const each = (f: (w: string) => string): string[] => (ws ?? ['*']).map(f);
      return {
        publish: [
          // a worker's event subject carries its hash bits: the exact subject per named worker, every one for the shared user
          ...(ws ? ws.map((w) => s.events(w)) : [s.eventsAll]),
          ...each((w) => s.load(w)),
          ...each((w) => s.diagShim(w)),
          ...each((w) => `${kv}.${w === '*' ? '*' : registryKey(w)}`),
          '$JS.API.INFO',
          `$JS.API.STREAM.INFO.${s.eventStream}`,
          ...jsRead(kvStream),
        ],
        subscribe: [...each((w) => s.shimResync(w)), s.diagAsk, INBOX],
        allowResponses: true,
      };
    }
    case 'admin':
      return {
        // every namespace: replay import writes into another one
        publish: ['kvgate.>', '$JS.API.>', '$KV.>'],
        subscribe: ['kvgate.>', INBOX],
        allowResponses: true,
      };
  }
}

export interface NatsUser {
  user: string;
  role: NatsRole;
  /** shim users: the workers they publish for (absent = any) */
  workers?: readonly string[];
  /** environment variable nats-server reads the password from (`$NAME` in the config) */
  passwordEnv: string;
}

/** `KVGATE_NATS_<ROLE>_PASSWORD`; a per-worker shim `KVGATE_NATS_SHIM_<WORKER>_PASSWORD` (non-alphanumerics → _) */
export function passwordEnvOf(user: string): string {
  return `KVGATE_NATS_${user.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_PASSWORD`;
}

/**
 * The users of a deployment: router, indexer, admin, and either the shared `shim` user (no `shims`) or one
 * `shim-<first worker>` user per entry of `shims` (each the worker ids one shim process publishes for).
 */
export function natsUsers(o: { shims?: readonly (readonly string[])[] } = {}): NatsUser[] {
  const users: NatsUser[] = (['router', 'indexer', 'admin'] as const).map((role) => ({ user: role, role, passwordEnv: passwordEnvOf(role) }));
  if (!o.shims) users.push({ user: 'shim', role: 'shim', passwordEnv: passwordEnvOf('shim') });
  else {
    const seen = new Map<string, string>();
    for (const workers of o.shims) {
      const user = `shim-${workers[0] ?? ''}`;
      rolePermissions('shim', { workers }); // validates the ids
      const env = passwordEnvOf(user);
      const clash = seen.get(env);
      if (clash !== undefined) throw new KvgateError('KVG_CONFIG', `shim users ${clash} and ${user} would read the same password variable ${env}`);
      seen.set(env, user);
      users.push({ user, role: 'shim', workers, passwordEnv: env });
    }
  }
  return users;
}

const q = (v: string): string => JSON.stringify(v);

/** the nats-server config text of one permissions block */
function permissionsText(p: RolePermissions, indent: string): string {
  const list = (xs: string[]) => `[\n${xs.map((x) => `${indent}    ${q(x)}`).join(',\n')}\n${indent}  ]`;
  return [
    `{`,
    `${indent}  publish: { allow: ${list(p.publish)} }`,
    `${indent}  subscribe: { allow: ${list(p.subscribe)} }`,
    ...(p.allowResponses ? [`${indent}  allow_responses: true`] : []),
    `${indent}}`,
  ].join('\n');
}

/**
 * The nats-server `authorization { users: [...] }` block for a namespace: one user per role with its permissions,
 * passwords read by nats-server from the environment (a missing variable stops nats-server at start).
 */
export function natsAuthConfig(o: { namespace?: string; shims?: readonly (readonly string[])[] } = {}): string {
  const namespace = o.namespace ?? 'default';
  const users = natsUsers(o.shims ? { shims: o.shims } : {});
  const out: string[] = [
    `# kvgate NATS users and permissions for namespace ${q(namespace)}: generated by deploy/nats/generate.mjs from`,
    `# packages/protocol/src/nats-permissions.ts; do not edit by hand (regenerate). Passwords come from the environment`,
    `# of nats-server (${users.map((u) => u.passwordEnv).join(', ')}): no secret is written here.`,
    `# Anything a list leaves out is denied.`,
    `authorization {`,
    `  users: [`,
  ];
  for (const u of users) {
    const perms = rolePermissions(u.role, { namespace, ...(u.workers ? { workers: u.workers } : {}) });
    const who = u.role === 'shim' ? (u.workers ? `shim of ${u.workers.join(', ')}` : 'shared shim user: any worker') : u.role;
    out.push(`    # ${who}`);
    out.push(`    {\n      user: ${q(u.user)}\n      password: $${u.passwordEnv}\n      permissions: ${permissionsText(perms, '      ')}\n    }`);
  }
  out.push('  ]', '}', '');
  return out.join('\n');
}
