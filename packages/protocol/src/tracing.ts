/**
 * OpenTelemetry: spans across router → shim → engine, W3C `traceparent` on every hop.
 * The SDK starts only when configured: OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP exporter) or
 * KVGATE_OTEL=console (spans printed to stderr). Unconfigured, the API is a no-op and costs nothing.
 */
import { trace, context, propagation, SpanStatusCode, type Span, type Tracer } from '@opentelemetry/api';

export { SpanStatusCode, type Span };

let started = false;

export async function initTracing(serviceName: string): Promise<void> {
  if (started) return;
  const mode = process.env.KVGATE_OTEL;
  if (!mode && !process.env.OTEL_EXPORTER_OTLP_ENDPOINT) return;
  started = true;
  const { NodeSDK, tracing } = await import('@opentelemetry/sdk-node');
  const spanProcessors = mode === 'console' ? [new tracing.SimpleSpanProcessor(new tracing.ConsoleSpanExporter())] : undefined;
  const sdk = new NodeSDK({ serviceName, ...(spanProcessors ? { spanProcessors } : {}) });
  sdk.start();
  process.once('beforeExit', () => void sdk.shutdown());
}

let cachedTracer: { provider: unknown; tracer: Tracer } | undefined;

/** kvgate's tracer, resolved once per global tracer provider (getTracer builds a new ProxyTracer on every call) */
export function tracer(): Tracer {
  const provider = trace.getTracerProvider();
  if (cachedTracer?.provider !== provider) cachedTracer = { provider, tracer: provider.getTracer('kvgate') };
  return cachedTracer.tracer;
}

/** Copy the active context into outgoing HTTP headers (traceparent). */
export function injectTraceHeaders(headers: Record<string, string>, span?: Span): Record<string, string> {
  const ctx = span ? trace.setSpan(context.active(), span) : context.active();
  propagation.inject(ctx, headers);
  return headers;
}

/** A span parented by `parent` (a step inside a request's span: a transfer, a phase). */
export function startChildSpan(name: string, parent: Span, attributes: Record<string, string | number | boolean> = {}): Span {
  return tracer().startSpan(name, { attributes }, trace.setSpan(context.active(), parent));
}

/** Context carried by incoming HTTP headers, to parent the server span. */
export function extractTraceContext(headers: Record<string, string | string[] | undefined>) {
  return propagation.extract(context.active(), headers);
}
