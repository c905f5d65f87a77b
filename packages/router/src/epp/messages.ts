/**
 * Envoy ext_proc messages as @grpc/proto-loader hands them over (keepCase, oneofs: the set field's name under the
 * oneof's name), and the pure builders and readers kvgate's picker needs. No I/O.
 *
 * Names from the Gateway API Inference Extension's endpoint-picker protocol (kubernetes-sigs/
 * gateway-api-inference-extension docs/proposals/004-endpoint-picker-protocol): the picked endpoints go out in the
 * header and in dynamic metadata `envoy.lb` / `x-gateway-destination-endpoint` (same value, `ip:port[,ip:port…]`);
 * the proxy's candidate subset comes in filter metadata `envoy.lb.subset_hint` /
 * `x-gateway-destination-endpoint-subset`; the endpoint that served comes back in `envoy.lb` /
 * `x-gateway-destination-endpoint-served`.
 */

export const DESTINATION_HEADER = 'x-gateway-destination-endpoint';
export const LB_NAMESPACE = 'envoy.lb';
export const SUBSET_NAMESPACE = 'envoy.lb.subset_hint';
export const SUBSET_KEY = 'x-gateway-destination-endpoint-subset';
export const SERVED_KEY = 'x-gateway-destination-endpoint-served';
export const SCORES_KEY = 'x-gateway-destination-endpoint-scores';
/** the largest body chunk sent back to Envoy (the GIE reference picker's limit, under Envoy's 64 KiB buffer) */
export const BODY_CHUNK_BYTES = 62_000;

/** google.protobuf.Value as proto-loader decodes it (oneofs: `kind` names the set field) */
export interface PbValue {
  kind?: string;
  nullValue?: number;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: PbStruct;
  listValue?: { values?: PbValue[] };
}
export interface PbStruct {
  fields?: Record<string, PbValue>;
}

export interface HeaderValue {
  key: string;
  value?: string;
  raw_value?: Buffer;
}
export interface HttpHeaders {
  headers?: { headers?: HeaderValue[] };
  end_of_stream?: boolean;
}
export interface HttpBody {
  body?: Buffer;
  end_of_stream?: boolean;
}

export interface ProcessingRequest {
  request?: 'request_headers' | 'response_headers' | 'request_body' | 'response_body' | 'request_trailers' | 'response_trailers';
  request_headers?: HttpHeaders;
  response_headers?: HttpHeaders;
  request_body?: HttpBody;
  response_body?: HttpBody;
  request_trailers?: { trailers?: { headers?: HeaderValue[] } };
  response_trailers?: { trailers?: { headers?: HeaderValue[] } };
  metadata_context?: { filter_metadata?: Record<string, PbStruct> };
}

export interface HeaderValueOption {
  header: { key: string; raw_value: Buffer };
  /** OVERWRITE_IF_EXISTS_OR_ADD = 2 */
  append_action: number;
}
export interface HeaderMutation {
  set_headers?: HeaderValueOption[];
  remove_headers?: string[];
}
export interface CommonResponse {
  status?: number;
  header_mutation?: HeaderMutation;
  body_mutation?: { streamed_response: { body: Buffer; end_of_stream: boolean } };
  clear_route_cache?: boolean;
}
export interface ProcessingResponse {
  request_headers?: { response: CommonResponse };
  response_headers?: { response: CommonResponse };
  request_body?: { response: CommonResponse };
  response_body?: { response: CommonResponse };
  request_trailers?: { header_mutation?: HeaderMutation };
  response_trailers?: { header_mutation?: HeaderMutation };
  immediate_response?: { status: { code: number }; headers?: HeaderMutation; body?: Buffer; details?: string };
  dynamic_metadata?: PbStruct;
}

const OVERWRITE_IF_EXISTS_OR_ADD = 2;

/** A header's value: ext_proc sends it in raw_value (bytes); older data planes in value. */
export function headerOf(h: HttpHeaders | undefined, name: string): string | undefined {
  for (const hv of h?.headers?.headers ?? []) {
    if (hv.key.toLowerCase() !== name) continue;
    if (hv.raw_value && hv.raw_value.length > 0) return hv.raw_value.toString('utf8');
    return hv.value ?? '';
  }
  return undefined;
}

/** Strings of a metadata value: a list of strings, or one comma-separated string. */
function stringsOf(v: PbValue | undefined): string[] | undefined {
  if (!v) return undefined;
  if (v.listValue !== undefined || v.kind === 'listValue') return (v.listValue?.values ?? []).flatMap((x) => (typeof x.stringValue === 'string' ? splitList(x.stringValue) : []));
  if (typeof v.stringValue === 'string') return splitList(v.stringValue);
  return [];
}

function splitList(s: string): string[] {
  return s.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
}

/** The proxy's candidate subset (`envoy.lb.subset_hint`), or undefined when it sent none (then: the whole pool). */
export function subsetHint(req: ProcessingRequest): string[] | undefined {
  return stringsOf(req.metadata_context?.filter_metadata?.[SUBSET_NAMESPACE]?.fields?.[SUBSET_KEY]);
}

/** The endpoint that served (`envoy.lb` / `x-gateway-destination-endpoint-served`), or undefined. */
export function servedEndpoint(req: ProcessingRequest): string | undefined {
  return stringsOf(req.metadata_context?.filter_metadata?.[LB_NAMESPACE]?.fields?.[SERVED_KEY])?.[0];
}

function setHeader(key: string, value: string): HeaderValueOption {
  return { header: { key, raw_value: Buffer.from(value) }, append_action: OVERWRITE_IF_EXISTS_OR_ADD };
}

function str(s: string): PbValue {
  return { stringValue: s };
}

/**
 * The answer to the request headers once the endpoints are picked: the destination header (route cache cleared so
 * the proxy routes on it) and the same value in `envoy.lb` dynamic metadata; scores (JSON) when given.
 */
export function pickedResponse(endpoints: readonly string[], extraHeaders: Record<string, string> = {}, scores?: Record<string, number>): ProcessingResponse {
  const value = endpoints.join(',');
  const lb: Record<string, PbValue> = { [DESTINATION_HEADER]: str(value) };
  if (scores) lb[SCORES_KEY] = str(JSON.stringify(scores));
  return {
    request_headers: {
      response: {
        clear_route_cache: true,
        header_mutation: { set_headers: [setHeader(DESTINATION_HEADER, value), ...Object.entries(extraHeaders).map(([k, v]) => setHeader(k, v))] },
      },
    },
    dynamic_metadata: { fields: { [LB_NAMESPACE]: { structValue: { fields: lb } } } },
  };
}

/** The buffered request body streamed back in chunks of at most BODY_CHUNK_BYTES, end_of_stream on the last. */
export function bodyChunks(body: Buffer, kind: 'request_body' | 'response_body' = 'request_body', endOfStream = true, max = BODY_CHUNK_BYTES): ProcessingResponse[] {
  const out: ProcessingResponse[] = [];
  if (body.length === 0) return [{ [kind]: { response: { body_mutation: { streamed_response: { body, end_of_stream: endOfStream } } } } }];
  for (let off = 0; off < body.length; off += max) {
    const chunk = body.subarray(off, Math.min(body.length, off + max));
    out.push({ [kind]: { response: { body_mutation: { streamed_response: { body: chunk, end_of_stream: endOfStream && off + max >= body.length } } } } });
  }
  return out;
}

/**
 * A local reply instead of the upstream (503 nothing eligible, 429 shed, 413 body too large, 400 bad body), in the
 * router's error shape (protocol errors.ts): vLLM's numeric `code` (the status), `param`, the KVG_* code as `kvg_code`.
 */
export function immediate(code: number, message: string, reason: string, extra: Record<string, string> = {}, param: string | null = null): ProcessingResponse {
  const body = Buffer.from(JSON.stringify({ error: { message, type: errorType(code), param, code, kvg_code: reason } }));
  return {
    immediate_response: {
      status: { code },
      headers: { set_headers: [setHeader('content-type', 'application/json'), setHeader('x-kvgate-reason', reason), ...Object.entries(extra).map(([k, v]) => setHeader(k, v))] },
      body,
      details: reason,
    },
  };
}

function errorType(code: number): string {
  if (code === 429) return 'rate_limit_exceeded';
  if (code === 413 || code === 400) return 'invalid_request_error';
  return 'service_unavailable';
}

/** An empty answer (CONTINUE) to response headers or trailers. */
export function continueHeaders(kind: 'response_headers' | 'request_headers'): ProcessingResponse {
  return { [kind]: { response: {} } };
}
