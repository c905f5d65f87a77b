/**
 * The gateway edge: Envoy's ext_proc `Process` stream on one port (default 9002) and the gRPC health service on
 * another (default 9003), over the same routing core as the HTTP edge. It owns the two gRPC servers, the flow gate
 * and the picker's metrics; each stream's conversation is stream.ts's, each decision picker.ts's.
 *
 * Health (GIE endpoint-picker protocol): `liveness` SERVING while the process answers; `readiness` and
 * `envoy.service.ext_proc.v3.ExternalProcessor` SERVING once the registry is loaded and the index answered a probe
 * (kept for `indexProbeMs`), NOT_SERVING otherwise; any other name SERVICE_UNKNOWN.
 */
import * as grpc from '@grpc/grpc-js';
import { Histogram } from 'prom-client';
import type { Logger } from '@kvgate/protocol';
import type { ClusterView } from '../cluster-view.js';
import type { RouterMetrics } from '../metrics.js';
import type { CacheAccounting } from '../cache-accounting.js';
import type { IndexQuery, RoutingCore } from '../routing-core.js';
import type { Admission } from '../admission.js';
import type { ProcessingRequest, ProcessingResponse } from './messages.js';
import { Picker } from './picker.js';
import { EXT_PROC_SERVICE, NOT_SERVING, protos, SERVICE_UNKNOWN, SERVING } from './protos.js';
import { EppStream } from './stream.js';

export interface EppOptions {
  /** ext_proc port; 0 = any free port. Default 9002. */
  port?: number;
  /** gRPC health port; 0 = any free port. Default 9003. */
  healthPort?: number;
  /** bind address; default 127.0.0.1 */
  host?: string;
  /** the model of a request whose body names none (or that has no body); default none (400) */
  pool?: string;
  /** buffered request body cap; default 10 MiB (past it: 413) */
  bodyLimitBytes?: number;
  /** endpoints in x-gateway-destination-endpoint, the first choice included (Envoy's ORIGINAL_DST cluster reads one: 1); default 0 = all eligible */
  maxEndpoints?: number;
  /** per-endpoint scores in envoy.lb/x-gateway-destination-endpoint-scores; default false */
  scores?: boolean;
  /** each pick's latency, ms from the last request message in to the headers answer out (benchmarks; the metric is kvgate_epp_pick_seconds) */
  onPick?(ms: number): void;
  /** a successful index probe counts for readiness this long; default 5000 ms */
  indexProbeMs?: number;
}

export interface EppEdgeDeps {
  core: RoutingCore;
  cluster: ClusterView;
  index: IndexQuery;
  /** priority and flow control (admission.ts), shared with the HTTP edge */
  admission: Admission;
  metrics: RouterMetrics;
  log: Logger;
  /** predicted vs actual cached tokens (the HTTP edge's, shared: one set of totals per router) */
  cache?: CacheAccounting;
}

export class EppEdge {
  readonly #o: EppOptions;
  readonly #d: EppEdgeDeps;
  readonly #picker: Picker;
  readonly #server = new grpc.Server();
  readonly #healthServer = new grpc.Server();
  readonly #streams = new Set<EppStream>();
  readonly #pickSeconds: Histogram;
  #indexOkAt = -Infinity;
  #probing = false;
  port = 0;
  healthPort = 0;

  constructor(o: EppOptions, d: EppEdgeDeps) {
    this.#o = o;
    this.#d = d;
    const registers = [d.metrics.registry];
    this.#pickSeconds = new Histogram({ name: 'kvgate_epp_pick_seconds', help: 'last request message in → headers answer out', buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1], registers });
    this.#picker = new Picker({ core: d.core, workers: d.cluster.workers, admission: d.admission, ...(o.pool ? { defaultModel: o.pool } : {}), ...(o.maxEndpoints ? { maxEndpoints: o.maxEndpoints } : {}) });
    // grpc-js logs its own errors (a failed bind) on stderr; kvgate reports them itself (GRPC_VERBOSITY overrides)
    if (process.env.GRPC_VERBOSITY === undefined) grpc.setLogVerbosity(grpc.logVerbosity.NONE);
    const { extProc, health } = protos();
    this.#server.addService(extProc.service, { Process: (call: grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>) => this.#process(call) });
    this.#healthServer.addService(health.service, {
      Check: (call: grpc.ServerUnaryCall<{ service?: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, { status: this.status(call.request.service ?? '') }),
      Watch: (call: grpc.ServerWritableStream<{ service?: string }, unknown>) => this.#watch(call),
    });
  }

  /** The health status of `service` (gRPC health v1 ServingStatus). */
  status(service: string): number {
    if (service === 'liveness' || service === '') return SERVING;
    if (service !== 'readiness' && service !== EXT_PROC_SERVICE) return SERVICE_UNKNOWN;
    return this.ready() ? SERVING : NOT_SERVING;
  }

  /** the registry loaded and the index answered lately (a probe is started when the last one is old) */
  ready(): boolean {
    if (!this.#d.cluster.registryLoaded) return false;
    const fresh = performance.now() - this.#indexOkAt < (this.#o.indexProbeMs ?? 5000);
    if (!fresh) this.#probe();
    return fresh;
  }

  async listen(): Promise<void> {
    const host = this.#o.host ?? '127.0.0.1';
    this.port = await bind(this.#server, host, this.#o.port ?? 9002);
    this.healthPort = await bind(this.#healthServer, host, this.#o.healthPort ?? 9003);
    this.#probe();
  }

  async close(): Promise<void> {
    for (const s of this.#streams) s.end();
    await Promise.all([shutdown(this.#server), shutdown(this.#healthServer)]);
  }

  #process(call: grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>): void {
    const stream = new EppStream(
      {
        picker: this.#picker,
        core: this.#d.core,
        ...(this.#o.bodyLimitBytes !== undefined ? { bodyLimit: this.#o.bodyLimitBytes } : {}),
        scores: this.#o.scores === true,
        log: this.#d.log,
        ...(this.#d.cache ? { cache: this.#d.cache } : {}),
        onPicked: (ms) => {
          this.#pickSeconds.observe(ms / 1000);
          this.#o.onPick?.(ms);
        },
        onFinished: () => this.#d.admission.poke(),
      },
      (r) => {
        if (!call.writableEnded && !call.destroyed) call.write(r);
      },
    );
    this.#streams.add(stream);
    const end = () => {
      if (!this.#streams.delete(stream)) return;
      stream.end();
    };
    call.on('data', (m: ProcessingRequest) => void stream.onMessage(m));
    call.on('end', () => {
      end();
      if (!call.writableEnded) call.end();
    });
    call.on('cancelled', end);
    call.on('error', end);
    call.on('close', end);
  }

  #watch(call: grpc.ServerWritableStream<{ service?: string }, unknown>): void {
    const service = call.request.service ?? '';
    let last = -1;
    const send = () => {
      const s = this.status(service);
      if (s !== last) call.write({ status: (last = s) });
    };
    send();
    const t = setInterval(send, 1000);
    t.unref();
    call.on('cancelled', () => clearInterval(t));
    call.on('close', () => clearInterval(t));
  }

  #probe(): void {
    if (this.#probing) return;
    this.#probing = true;
    // an empty prompt: any index answers it (overlaps {}); silence within the budget = not ready
    this.#d
      .index('', null, new BigUint64Array(0))
      .then((r) => {
        if (r !== null) this.#indexOkAt = performance.now();
      })
      .catch(() => undefined)
      .finally(() => (this.#probing = false));
  }

}

/** A bind failure as Node's own listen errors look (code, address, port), so a CLI says "host:port is already in use". */
function bind(server: grpc.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => {
      if (!err) return resolve(p);
      const code = /\b(EADDRINUSE|EACCES|EADDRNOTAVAIL|EPERM)\b/.exec(err.message)?.[1];
      reject(Object.assign(new Error(code === 'EADDRINUSE' ? `listen EADDRINUSE: address already in use ${host}:${port}` : `gRPC bind ${host}:${port}: ${err.message}`), { code, address: host, port }));
    }),
  );
}

function shutdown(server: grpc.Server): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, 1000);
    server.tryShutdown(() => {
      clearTimeout(t);
      resolve();
    });
  });
}
