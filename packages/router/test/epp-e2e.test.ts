/**
 * The endpoint picker over real gRPC: a client plays Envoy message by message (request headers, body chunks,
 * response headers, response body) against `startRouter(bus, { epp })`; workers registered in the workers bucket
 * with their engine addresses, a fake index saying who holds which prefix, load reports on the bus.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as grpc from '@grpc/grpc-js';
import { createBus, initHashing, prefixHashes, type Bus } from '@kvgate/protocol';
import { startRouter, type RouterHandle } from '../src/router.js';
import { protos, SERVING, NOT_SERVING, SERVICE_UNKNOWN } from '../src/epp/protos.js';
import type { RouterOptions } from '../src/router.js';
import type { EppOptions } from '../src/epp/epp-edge.js';
import { BODY_CHUNK_BYTES, type ProcessingResponse } from '../src/epp/messages.js';
import { fakeIndex, publishLoad, register, registration, tokens, until } from './helpers.js';

await initHashing();
let nsCounter = 0;

interface Ctx {
  bus: Bus;
  ns: string;
  router: RouterHandle;
  client: grpc.Client & { Process(): grpc.ClientDuplexStream<unknown, ProcessingResponse> };
  health: grpc.Client & { Check(req: { service: string }, cb: (e: Error | null, r?: { status?: number }) => void): void };
}

const ENGINES = ['10.0.0.1:8000', '10.0.0.2:8000', '10.0.0.3:8000'];

async function setup(holds = new Map<string, Set<bigint>>(), { epp, ...extra }: Pick<RouterOptions, 'objectives' | 'flow'> & { epp?: EppOptions } = {}): Promise<Ctx> {
  const bus = await createBus();
  const ns = `epp${process.pid}_${++nsCounter}`;
  for (const [i, e] of ENGINES.entries()) await register(bus, registration(`w${i}`, `http://${e}`), ns);
  fakeIndex(bus, holds, ns);
  const router = await startRouter(bus, { port: 0, namespace: ns, id: `r${nsCounter}`, indexTimeoutMs: 200, registryTtlMs: 0, recordDecisions: false, ...extra, epp: { port: 0, healthPort: 0, ...epp } });
  await router.waitForWorkers(ENGINES.length);
  const { extProc, health } = protos();
  const client = new extProc(`127.0.0.1:${router.epp!.port}`, grpc.credentials.createInsecure()) as unknown as Ctx['client'];
  const h = new health(`127.0.0.1:${router.epp!.healthPort}`, grpc.credentials.createInsecure()) as unknown as Ctx['health'];
  return { bus, ns, router, client, health: h };
}

async function teardown(c: Ctx): Promise<void> {
  c.client.close();
  c.health.close();
  await c.router.close();
  await c.bus.close();
}

/** One Envoy-side conversation: send messages, collect what comes back. */
let arrivals = 0;
class Envoy {
  readonly call: grpc.ClientDuplexStream<unknown, ProcessingResponse>;
  readonly got: ProcessingResponse[] = [];
  /** the order in which this conversation's first answer arrived among all conversations (arrival, not polling, order) */
  firstArrival = 0;
  constructor(c: Ctx) {
    this.call = c.client.Process();
    this.call.on('data', (r: ProcessingResponse) => {
      if (this.got.push(r) === 1) this.firstArrival = ++arrivals;
    });
    this.call.on('error', () => undefined);
  }
  send(m: unknown): void {
    this.call.write(m);
  }
  async next(n: number): Promise<ProcessingResponse[]> {
    await until(() => this.got.length >= n, 5000, `${n} responses`);
    return this.got.slice(0, n);
  }
  end(): void {
    this.call.end();
  }
}

const hdr = (o: Record<string, string>) => ({ headers: { headers: Object.entries(o).map(([key, v]) => ({ key, raw_value: Buffer.from(v) })) } });
const subsetMeta = (list: string[] | string) => ({
  filter_metadata: { 'envoy.lb.subset_hint': { fields: { 'x-gateway-destination-endpoint-subset': Array.isArray(list) ? { listValue: { values: list.map((s) => ({ stringValue: s })) } } : { stringValue: list } } } },
});
const servedMeta = (ep: string) => ({ filter_metadata: { 'envoy.lb': { fields: { 'x-gateway-destination-endpoint-served': { stringValue: ep } } } } });

function body(prompt: number[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ model: 'stub-model', prompt, max_tokens: 8, ...extra }));
}

function destination(r: ProcessingResponse): string | undefined {
  const set = r.request_headers?.response.header_mutation?.set_headers ?? [];
  const h = set.find((x) => x.header.key === 'x-gateway-destination-endpoint');
  return h ? Buffer.from(h.header.raw_value).toString() : undefined;
}

async function pick(c: Ctx, b: Buffer, opts: { headers?: Record<string, string>; subset?: string[] | string } = {}): Promise<{ envoy: Envoy; first: ProcessingResponse }> {
  const envoy = new Envoy(c);
  envoy.send({ request_headers: { ...hdr({ ':method': 'POST', ':path': '/v1/completions', ...opts.headers }), end_of_stream: false }, ...(opts.subset !== undefined ? { metadata_context: subsetMeta(opts.subset) } : {}) });
  envoy.send({ request_body: { body: b, end_of_stream: true } });
  const [first] = await envoy.next(1);
  return { envoy, first: first! };
}

const test = suite('epp over gRPC');

test('a repeated prefix goes to the endpoint holding it; header and envoy.lb metadata agree; route cache cleared', async () => {
  const prompt = tokens(64, 7000);
  const hashes = prefixHashes('stub-model', null, 4, prompt);
  const c = await setup(new Map([['w1', new Set(hashes)]]));
  try {
    const { envoy, first } = await pick(c, body(prompt));
    const dest = destination(first)!;
    assert.is(dest.split(',')[0], ENGINES[1]);
    assert.is(first.request_headers?.response.clear_route_cache, true);
    const lb = (first.dynamic_metadata as any).fields['envoy.lb'].structValue.fields['x-gateway-destination-endpoint'].stringValue;
    assert.is(lb, dest);
    envoy.end();
  } finally {
    await teardown(c);
  }
});

test('the subset hint is honoured (list and comma-separated); a subset with no eligible endpoint → 503', async () => {
  const prompt = tokens(64, 9000);
  const c = await setup(new Map([['w1', new Set(prefixHashes('stub-model', null, 4, prompt))]]));
  try {
    const a = await pick(c, body(prompt), { subset: [ENGINES[2]!] });
    assert.is(destination(a.first), ENGINES[2]);
    const b = await pick(c, body(prompt), { subset: `${ENGINES[0]}, ${ENGINES[2]}` });
    assert.ok(!destination(b.first)!.includes(ENGINES[1]!));
    const d = await pick(c, body(prompt), { subset: ['10.9.9.9:8000'] });
    assert.is(d.first.immediate_response?.status.code, 503);
    const e = await pick(c, body(prompt), { subset: [] });
    assert.is(e.first.immediate_response?.status.code, 503);
    for (const x of [a, b, d, e]) x.envoy.end();
  } finally {
    await teardown(c);
  }
});

test('the fallback list is ordered (first choice first) and leaves busy workers out', async () => {
  const prompt = tokens(64, 11000);
  const c = await setup(new Map([['w0', new Set(prefixHashes('stub-model', null, 4, prompt))]]));
  try {
    publishLoad(c.bus, { worker: 'w2', waiting: 1000 }, c.ns);
    await until(() => (c.router.workers.lastLoad('w2')?.waiting ?? 0) === 1000);
    const { envoy, first } = await pick(c, body(prompt));
    assert.equal(destination(first)!.split(','), [ENGINES[0], ENGINES[1]]);
    envoy.end();
  } finally {
    await teardown(c);
  }
  // maxEndpoints 1 (a proxy reading one address: Envoy's ORIGINAL_DST cluster): the first choice alone, in both places
  const one = await setup(new Map([['w0', new Set(prefixHashes('stub-model', null, 4, prompt))]]), { epp: { maxEndpoints: 1 } });
  try {
    const { envoy, first } = await pick(one, body(prompt));
    assert.is(destination(first), ENGINES[0]);
    assert.is((first.dynamic_metadata as any).fields['envoy.lb'].structValue.fields['x-gateway-destination-endpoint'].stringValue, ENGINES[0]);
    envoy.end();
  } finally {
    await teardown(one);
  }
});

test('a 200 KB body comes back byte-exact in ≤ 62,000-byte chunks, end_of_stream on the last', async () => {
  const c = await setup();
  try {
    const big = body(tokens(64, 1), { padding: 'x'.repeat(200_000) });
    const envoy = new Envoy(c);
    envoy.send({ request_headers: { ...hdr({ ':method': 'POST' }), end_of_stream: false } });
    // as Envoy streams it: in pieces
    for (let off = 0; off < big.length; off += 16_384) envoy.send({ request_body: { body: big.subarray(off, off + 16_384), end_of_stream: off + 16_384 >= big.length } });
    const want = 1 + Math.ceil(big.length / BODY_CHUNK_BYTES);
    const got = await envoy.next(want);
    assert.ok(destination(got[0]!));
    const chunks = got.slice(1).map((r) => r.request_body!.response.body_mutation!.streamed_response);
    for (const ch of chunks) assert.ok(ch.body.length <= BODY_CHUNK_BYTES);
    assert.equal(chunks.map((ch) => ch.end_of_stream === true), chunks.map((_, i) => i === chunks.length - 1));
    assert.ok(Buffer.concat(chunks.map((ch) => Buffer.from(ch.body))).equals(big));
    envoy.end();
  } finally {
    await teardown(c);
  }
});

test('the served-endpoint metadata moves the in-flight load; the response body is echoed; the end releases it', async () => {
  const prompt = tokens(64, 13000);
  const c = await setup(new Map([['w0', new Set(prefixHashes('stub-model', null, 4, prompt))]]));
  try {
    const { envoy, first } = await pick(c, body(prompt));
    assert.is(destination(first)!.split(',')[0], ENGINES[0]);
    await envoy.next(2); // headers answer + the body back
    assert.ok(c.router.inflight.local('w0').decodeBlocks > 0);
    envoy.send({ response_headers: { ...hdr({ ':status': '200' }), end_of_stream: false }, metadata_context: servedMeta(ENGINES[2]!) });
    await envoy.next(3);
    assert.is(c.router.inflight.local('w0').decodeBlocks, 0);
    assert.ok(c.router.inflight.local('w2').decodeBlocks > 0);
    envoy.send({ response_body: { body: Buffer.from('{"ok":true}'), end_of_stream: true } });
    const got = await envoy.next(4);
    assert.is(Buffer.from(got[3]!.response_body!.response.body_mutation!.streamed_response.body).toString(), '{"ok":true}');
    await until(() => c.router.inflight.local('w2').decodeBlocks === 0);
    envoy.end();
  } finally {
    await teardown(c);
  }
});

test("predicted vs actual cached tokens through the picker: the 200 answer's usage, read off the echoed body, under the worker that served", async () => {
  const prompt = tokens(64, 17000);
  const c = await setup(new Map([['w0', new Set(prefixHashes('stub-model', null, 4, prompt))]]));
  const metric = async (name: string, label: string) => {
    let n = 0;
    for (const line of (await c.router.metrics.registry.metrics()).split('\n')) if (line.startsWith(name + '{') && line.includes(label)) n += Number(line.slice(line.lastIndexOf(' ') + 1));
    return n;
  };
  try {
    // a whole JSON answer from w0 (which holds the 64-token prompt: 15 full blocks predicted, the last token never)
    const a = await pick(c, body(prompt));
    await a.envoy.next(2);
    a.envoy.send({ response_headers: { ...hdr({ ':status': '200', 'content-type': 'application/json' }), end_of_stream: false }, metadata_context: servedMeta(ENGINES[0]!) });
    const usage = { prompt_tokens: 64, completion_tokens: 8, total_tokens: 72, prompt_tokens_details: { cached_tokens: 48 } };
    const json = Buffer.from(JSON.stringify({ id: 'c1', object: 'text_completion', choices: [{ index: 0, text: 'hi' }], usage }));
    a.envoy.send({ response_body: { body: json.subarray(0, 40), end_of_stream: false } });
    a.envoy.send({ response_body: { body: json.subarray(40), end_of_stream: true } });
    await a.envoy.next(5);
    // (answers are sent after the chunk is accounted: nothing to wait for)
    assert.is(await metric('kvgate_router_prompt_tokens_total', 'worker="w0"'), 64);
    assert.is(await metric('kvgate_router_predicted_cached_tokens_total', 'worker="w0"'), 60);
    assert.is(await metric('kvgate_router_actual_cached_tokens_total', 'worker="w0"'), 48);
    a.envoy.end();

    // a stream whose client asked for usage, served by w2 after a retry: counted under w2, against w2's own overlap (0)
    const b = await pick(c, body(prompt, { stream: true, stream_options: { include_usage: true } }));
    await b.envoy.next(2);
    b.envoy.send({ response_headers: { ...hdr({ ':status': '200', 'content-type': 'text/event-stream' }), end_of_stream: false }, metadata_context: servedMeta(ENGINES[2]!) });
    const sse = ['data: {"choices":[{"index":0,"text":"a"}]}', `data: ${JSON.stringify({ choices: [], usage: { ...usage, prompt_tokens_details: { cached_tokens: 0 } } })}`, 'data: [DONE]'].map((l) => l + '\n\n');
    for (const [i, e] of sse.entries()) b.envoy.send({ response_body: { body: Buffer.from(e), end_of_stream: i === sse.length - 1 } });
    await b.envoy.next(3 + sse.length);
    assert.is(await metric('kvgate_router_prompt_tokens_total', 'worker="w2"'), 64);
    assert.is(await metric('kvgate_router_predicted_cached_tokens_total', 'worker="w2"'), 0);
    assert.is(await metric('kvgate_router_actual_cached_tokens_total', 'worker="w2"'), 0);
    b.envoy.end();

    // a 200 whose body never comes through the picker (a proxy with response_body_mode NONE): uncompared
    const d = await pick(c, body(tokens(8, 99)));
    await d.envoy.next(2);
    d.envoy.send({ response_headers: { ...hdr({ ':status': '200' }), end_of_stream: false }, metadata_context: servedMeta(ENGINES[1]!) });
    await d.envoy.next(3);
    d.envoy.end();
    for (let i = 0; i < 500 && (await metric('kvgate_router_cache_uncompared_total', 'reason="epp_no_response_body"')) === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.is(await metric('kvgate_router_cache_uncompared_total', 'reason="epp_no_response_body"'), 1);
    assert.is(await metric('kvgate_router_prompt_tokens_total', 'worker="w1"'), 0);
  } finally {
    await teardown(c);
  }
});

test('saturated pool: a sheddable request gets 429 at once with a reason; a high-priority one waits and is served first', async () => {
  const c = await setup(new Map(), { objectives: { batch: -1, chat: 10, normal: 0 }, flow: { maxWaitMs: 20_000 } });
  try {
    for (const w of ['w0', 'w1', 'w2']) publishLoad(c.bus, { worker: w, waiting: 1000 }, c.ns);
    await until(() => ['w0', 'w1', 'w2'].every((w) => (c.router.workers.lastLoad(w)?.waiting ?? 0) === 1000));
    const shed = await pick(c, body(tokens(8)), { headers: { 'x-llm-d-inference-objective': 'batch' } });
    assert.is(shed.first.immediate_response?.status.code, 429);
    const set = shed.first.immediate_response?.headers?.set_headers ?? [];
    const value = (k: string) => { const h = set.find((x) => x.header.key === k); return h ? Buffer.from(h.header.raw_value).toString() : undefined; };
    assert.is(value('x-kvgate-reason'), 'KVG_OVERLOADED');
    assert.is(value('x-kvgate-shed'), 'sheddable');
    assert.is(value('retry-after'), '1');
    const before = arrivals;
    const low = pick(c, body(tokens(8)), { headers: { 'x-llm-d-inference-objective': 'normal' } });
    const high = pick(c, body(tokens(8)), { headers: { 'x-gateway-inference-objective': 'chat' } });
    // both queued (the gauge counts them) before any room appears
    const depth = async () => ((await c.router.metrics.registry.getSingleMetric('kvgate_router_queue_depth')?.get())?.values ?? []).reduce((n, v) => n + v.value, 0);
    for (let i = 0; i < 1000 && (await depth()) < 2; i++) await new Promise((r) => setTimeout(r, 5));
    assert.is(await depth(), 2);
    await new Promise((r) => setTimeout(r, 50));
    assert.is(arrivals, before, 'nothing answered while the pool is saturated');
    publishLoad(c.bus, { worker: 'w0', waiting: 0 }, c.ns);
    const [h, l] = await Promise.all([high, low]);
    assert.ok(h.envoy.firstArrival < l.envoy.firstArrival, 'the high-priority request (queued second) is answered first');
    assert.ok(destination(h.first));
    assert.ok(destination(l.first));
    for (const x of [shed, h, l]) x.envoy.end();
  } finally {
    await teardown(c);
  }
});

test('health: liveness SERVING; readiness and the ext_proc service SERVING once registry and index answer; unknown names', async () => {
  const c = await setup();
  try {
    const check = (service: string) => new Promise<number>((res, rej) => c.health.Check({ service }, (e, r) => (e ? rej(e) : res(r?.status ?? 0))));
    assert.is(await check('liveness'), SERVING);
    await until(() => c.router.epp!.status('readiness') === SERVING);
    assert.is(await check('readiness'), SERVING);
    assert.is(await check('envoy.service.ext_proc.v3.ExternalProcessor'), SERVING);
    assert.is(await check('nope'), SERVICE_UNKNOWN);
  } finally {
    await teardown(c);
  }
  // no index answering: not ready
  const bus = await createBus();
  const r = await startRouter(bus, { port: 0, namespace: `epp${process.pid}_noidx`, registryTtlMs: 0, recordDecisions: false, indexTimeoutMs: 20, epp: { port: 0, healthPort: 0 } });
  try {
    await new Promise((res) => setTimeout(res, 100));
    assert.is(r.epp!.status('readiness'), NOT_SERVING);
    assert.is(r.epp!.status('liveness'), SERVING);
  } finally {
    await r.close();
    await bus.close();
  }
});

test.run();
