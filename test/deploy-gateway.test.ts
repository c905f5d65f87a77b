/**
 * deploy/gateway (issue 16): the manifests parse (yaml) and agree with each other and with the code —
 *   - InferencePool (inference.networking.k8s.io/v1): selector = the vLLM pods' labels, targetPorts[0].number = the
 *     engine port the shims register (the picker's endpoints are registered engine addresses), endpointPickerRef
 *     {group "", kind Service, name, port.number, failureMode} naming the picker's Service port that reaches the
 *     ext_proc port; the HTTPRoute's backendRef is that pool;
 *   - the `kvgate epp` Deployment: ≥ 2 replicas, its arguments accepted by the real CLI, ports = the CLI defaults
 *     (ext_proc 9002, health 9003, metrics 9090), gRPC probes on the health port with the services the picker
 *     answers (liveness, readiness);
 *   - the Envoy bootstrap: ext_proc with request/response headers SEND, bodies FULL_DUPLEX_STREAMED, trailers SEND,
 *     its gRPC cluster HTTP/2 on the ext_proc port with a gRPC health check of the ext_proc service on the health
 *     port, message_timeout above the queue deadline; the route's cluster ORIGINAL_DST reading the destination
 *     header the picker sets.
 * (No Envoy binary on this machine — not in Debian's archive or npm — so the bootstrap is checked, not run.)
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { parseAllDocuments } from 'yaml';
import { EPP_DEFAULTS, parseObjectives } from '../packages/cli/src/commands/epp.js';
import { DESTINATION_HEADER } from '../packages/router/src/epp/messages.js';
import { EXT_PROC_SERVICE } from '../packages/router/src/epp/protos.js';

const root = new URL('..', import.meta.url).pathname;
const BIN = `${root}bin/kvgate.js`;

type Doc = Record<string, any>;
function docs(path: string): Doc[] {
  const parsed = parseAllDocuments(readFileSync(`${root}${path}`, 'utf8'));
  for (const d of parsed) if (d.errors.length > 0) throw new Error(`${path}: ${d.errors[0]!.message}`);
  return parsed.map((d) => d.toJS() as Doc).filter((d) => d !== null);
}
function only(all: Doc[], kind: string, name?: string): Doc {
  const found = all.filter((d) => d.kind === kind && (name === undefined || d.metadata?.name === name));
  assert.is(found.length, 1, `one ${kind}${name ? ` ${name}` : ''}`);
  return found[0]!;
}
/** the value after `--flag` in an argument list (or inside a `sh -c` string) */
function flag(args: string[], name: string): string | undefined {
  const words = args.flatMap((a) => a.split(/\s+/));
  const i = words.indexOf(`--${name}`);
  return i >= 0 ? words[i + 1] : undefined;
}

const gateway = [...docs('deploy/gateway/inferencepool.yaml'), ...docs('deploy/gateway/epp.yaml')];
const workers = docs('deploy/k8s/vllm-worker.yaml');
const pool = only(gateway, 'InferencePool');
const eppDeploy = only(gateway, 'Deployment', 'kvgate-epp');
const eppService = only(gateway, 'Service', 'kvgate-epp');
const eppContainer = eppDeploy.spec.template.spec.containers[0];
const eppArgs: string[] = eppContainer.command;

test('InferencePool v1: selector, targetPorts and endpointPickerRef agree with the workers and the picker', () => {
  assert.is(pool.apiVersion, 'inference.networking.k8s.io/v1');
  const worker = only(workers, 'Deployment');
  assert.equal(pool.spec.selector.matchLabels, worker.spec.template.metadata.labels);
  assert.is(pool.spec.targetPorts.length, 1, 'GIE v1 allows exactly one target port');
  const port = pool.spec.targetPorts[0].number;
  const containers = worker.spec.template.spec.containers as Doc[];
  const engine = containers.find((c) => c.name === 'vllm')!;
  assert.ok(engine.ports.some((p: Doc) => p.containerPort === port), 'the target port is the engine container port');
  // the picker's endpoints are the registered engine addresses: the shim must register podIP:targetPort
  const shim = containers.find((c) => c.name === 'kvgate-shim')!;
  assert.is(flag(shim.command, 'engine-url'), `http://$(POD_IP):${port}`);
  const ref = pool.spec.endpointPickerRef;
  assert.equal(Object.keys(ref).sort(), ['failureMode', 'group', 'kind', 'name', 'port']);
  assert.is(ref.group, '');
  assert.is(ref.kind, 'Service');
  assert.is(ref.name, eppService.metadata.name);
  assert.ok(['FailOpen', 'FailClose'].includes(ref.failureMode));
  assert.is(eppService.metadata.namespace, pool.metadata.namespace);
  const svcPort = (eppService.spec.ports as Doc[]).find((p) => p.port === ref.port.number);
  assert.ok(svcPort, 'endpointPickerRef.port.number is a port of the Service');
  assert.is(svcPort!.targetPort, EPP_DEFAULTS.port);
  assert.equal(eppService.spec.selector, eppDeploy.spec.template.metadata.labels);
  const route = only(gateway, 'HTTPRoute');
  assert.equal(route.spec.rules[0].backendRefs[0], { group: 'inference.networking.k8s.io', kind: 'InferencePool', name: pool.metadata.name });
});

test('the kvgate epp Deployment: ≥ 2 replicas, CLI-default ports, gRPC probes, arguments the CLI accepts', () => {
  assert.ok(eppDeploy.spec.replicas >= 2);
  assert.equal(eppArgs.slice(0, 3), ['node', 'bin/kvgate.js', 'epp']);
  assert.is(Number(flag(eppArgs, 'port')), EPP_DEFAULTS.port);
  assert.is(Number(flag(eppArgs, 'health-port')), EPP_DEFAULTS.healthPort);
  assert.is(Number(flag(eppArgs, 'metrics-port')), EPP_DEFAULTS.metricsPort);
  assert.is(flag(eppArgs, 'host'), '0.0.0.0');
  assert.equal((eppContainer.ports as Doc[]).map((p) => p.containerPort).sort(), [EPP_DEFAULTS.port, EPP_DEFAULTS.healthPort, EPP_DEFAULTS.metricsPort].sort());
  assert.equal(eppContainer.livenessProbe.grpc, { port: EPP_DEFAULTS.healthPort, service: 'liveness' });
  assert.equal(eppContainer.readinessProbe.grpc, { port: EPP_DEFAULTS.healthPort, service: 'readiness' });
  // every flag and env value of the manifest parses: the real CLI, --help after them (strict parsing sees them first)
  const env = Object.fromEntries((eppContainer.env as Doc[]).filter((e) => e.value !== undefined).map((e) => [e.name, e.value]));
  const r = spawnSync(process.execPath, [BIN, ...eppArgs.slice(2), '--help'], { env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /--max-endpoints/);
  assert.equal(parseObjectives(env.KVGATE_OBJECTIVES), { interactive: 10, default: 0, batch: -1 });
});

test('Envoy bootstrap: ext_proc FULL_DUPLEX_STREAMED to the picker, ORIGINAL_DST on the destination header', () => {
  const [boot] = docs('deploy/gateway/envoy.yaml');
  const clusters = new Map((boot!.static_resources.clusters as Doc[]).map((c) => [c.name, c]));
  const hcm = boot!.static_resources.listeners[0].filter_chains[0].filters[0];
  assert.is(hcm.name, 'envoy.filters.network.http_connection_manager');
  const filters = hcm.typed_config.http_filters as Doc[];
  assert.equal(filters.map((f) => f.name), ['envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
  const ext = filters[0]!.typed_config;
  assert.is(ext['@type'], 'type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor');
  assert.equal(ext.processing_mode, {
    request_header_mode: 'SEND',
    response_header_mode: 'SEND',
    request_body_mode: 'FULL_DUPLEX_STREAMED',
    response_body_mode: 'FULL_DUPLEX_STREAMED',
    request_trailer_mode: 'SEND',
    response_trailer_mode: 'SEND',
  });
  // a request queued for a saturated pool waits up to --queue-timeout-ms (default 30 s) for its headers answer
  assert.ok(Number(/^(\d+)s$/.exec(ext.message_timeout)![1]) > 30);
  const epp = clusters.get(ext.grpc_service.envoy_grpc.cluster_name)!;
  assert.ok(epp, 'the ext_proc cluster exists');
  assert.ok(epp.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].explicit_http_config.http2_protocol_options, 'gRPC: HTTP/2');
  const ep = epp.load_assignment.endpoints[0].lb_endpoints[0].endpoint;
  assert.is(ep.address.socket_address.port_value, EPP_DEFAULTS.port);
  assert.is(ep.health_check_config.port_value, EPP_DEFAULTS.healthPort);
  assert.is(epp.health_checks[0].grpc_health_check.service_name, EXT_PROC_SERVICE);
  const route = hcm.typed_config.route_config.virtual_hosts[0].routes[0].route;
  const up = clusters.get(route.cluster)!;
  assert.is(up.type, 'ORIGINAL_DST');
  assert.is(up.lb_policy, 'CLUSTER_PROVIDED');
  assert.equal(up.original_dst_lb_config, { use_http_header: true, http_header_name: DESTINATION_HEADER });
});

test.run();
