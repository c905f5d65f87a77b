/**
 * The project's .proto subset (packages/router/proto, upstream field numbers) loaded once with @grpc/proto-loader:
 * the ext_proc service and the gRPC health service. Options: field names as written (keepCase), oneofs named,
 * enums as numbers, no defaults filled in (an absent message stays absent), bytes as Buffers.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PROTO_DIR = fileURLToPath(new URL('../../proto', import.meta.url));

let loaded: { extProc: grpc.ServiceClientConstructor; health: grpc.ServiceClientConstructor } | undefined;

export function protos(): { extProc: grpc.ServiceClientConstructor; health: grpc.ServiceClientConstructor } {
  if (loaded) return loaded;
  const def = protoLoader.loadSync(['envoy/service/ext_proc/v3/external_processor.proto', 'grpc/health/v1/health.proto'], {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: Number,
    defaults: false,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    envoy: { service: { ext_proc: { v3: { ExternalProcessor: grpc.ServiceClientConstructor } } } };
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  loaded = { extProc: pkg.envoy.service.ext_proc.v3.ExternalProcessor, health: pkg.grpc.health.v1.Health };
  return loaded;
}

export const SERVING = 1;
export const NOT_SERVING = 2;
export const SERVICE_UNKNOWN = 3;
export const EXT_PROC_SERVICE = 'envoy.service.ext_proc.v3.ExternalProcessor';
