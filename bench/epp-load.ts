/**
 * The Envoy side of bench/epp.bench.ts, in a process of its own: ext_proc `Process` streams played message by
 * message as Envoy sends them with FULL_DUPLEX_STREAMED bodies (request headers, the body in 8 KiB chunks, then —
 * once the picker answered and streamed the body back — response headers and a one-chunk response body), so the
 * client's gRPC work stays out of the picker's process. Times are CLOCK_MONOTONIC (shared by every process).
 *
 * Driven over the IPC channel of child_process.fork: { id, op, ... } in, { id, value } or { id, error } out.
 */
import * as grpc from '@grpc/grpc-js';
import { protos } from '@kvgate/router/epp/protos';
import type { ProcessingResponse } from '@kvgate/router/epp/messages';

export type EppLoadRequest =
  | { op: 'connect'; target: string; bodies: string[] }
  | { op: 'measure'; count: number; rate: number }
  | { op: 'rps'; seconds: number; inFlight: number };

/** one measured request: last body chunk written, headers answer in (client side, ms on the monotonic clock) */
export interface EppTimed {
  lastChunk: number;
  headersIn: number;
}

type ExtProc = grpc.Client & { Process(): grpc.ClientDuplexStream<unknown, ProcessingResponse> };
const now = () => Number(process.hrtime.bigint()) / 1e6;
const CHUNK = 8192;
let client: ExtProc | undefined;
let bodies: Buffer[] = [];
const HEADERS = { headers: { headers: [[':method', 'POST'], [':path', '/v1/completions'], ['content-type', 'application/json']].map(([key, v]) => ({ key, raw_value: Buffer.from(v!) })) }, end_of_stream: false };

/** One request's whole conversation; resolves with its timing once the stream ended cleanly. */
function conversation(body: Buffer): Promise<EppTimed> {
  return new Promise((resolve, reject) => {
    const call = client!.Process();
    let got = 0;
    let lastChunk = 0;
    let headersIn = 0;
    let bodyBack = 0;
    call.on('data', (r: ProcessingResponse) => {
      got++;
      if (got === 1) {
        headersIn = now();
        if (!r.request_headers) return reject(new Error(`not a headers answer: ${JSON.stringify(r).slice(0, 300)}`));
        return;
      }
      if (r.request_body) {
        const s = r.request_body.response.body_mutation!.streamed_response;
        bodyBack += s.body.length;
        if (s.end_of_stream) {
          if (bodyBack !== body.length) return reject(new Error(`body back ${bodyBack} of ${body.length} bytes`));
          call.write({ response_headers: { headers: { headers: [{ key: ':status', raw_value: Buffer.from('200') }] }, end_of_stream: false } });
          call.write({ response_body: { body: Buffer.from('{}'), end_of_stream: true } });
        }
        return;
      }
      if (r.response_body) {
        call.end();
        resolve({ lastChunk, headersIn });
      }
    });
    call.on('error', reject);
    call.write({ request_headers: HEADERS });
    for (let off = 0; off < body.length; off += CHUNK) {
      const last = off + CHUNK >= body.length;
      if (last) lastChunk = now();
      call.write({ request_body: { body: body.subarray(off, off + CHUNK), end_of_stream: last } });
    }
  });
}

async function measure(count: number, rate: number): Promise<EppTimed[]> {
  const t0 = now();
  const pending: Promise<EppTimed>[] = [];
  for (let i = 0; i < count; i++) {
    const wait = t0 + (i * 1000) / rate - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    pending.push(conversation(bodies[i % bodies.length]!));
  }
  return Promise.all(pending);
}

async function rps(seconds: number, inFlight: number): Promise<number> {
  let done = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: inFlight }, async (_, k) => {
      for (let i = k; performance.now() < end; i += inFlight) {
        await conversation(bodies[i % bodies.length]!);
        done++;
      }
    }),
  );
  return done / seconds;
}

async function handle(req: EppLoadRequest): Promise<unknown> {
  switch (req.op) {
    case 'connect': {
      const { extProc } = protos();
      client = new extProc(req.target, grpc.credentials.createInsecure()) as unknown as ExtProc;
      bodies = req.bodies.map((b) => Buffer.from(b));
      await new Promise<void>((res, rej) => client!.waitForReady(Date.now() + 10_000, (e) => (e ? rej(e) : res())));
      return bodies.length;
    }
    case 'measure':
      return measure(req.count, req.rate);
    case 'rps':
      return rps(req.seconds, req.inFlight);
  }
}

process.on('message', (m: { id: number; req: EppLoadRequest }) => {
  handle(m.req).then(
    (value) => process.send!({ id: m.id, value }),
    (err: Error) => process.send!({ id: m.id, error: String(err?.stack ?? err) }),
  );
});
process.on('disconnect', () => {
  client?.close();
  process.exit(0);
});
