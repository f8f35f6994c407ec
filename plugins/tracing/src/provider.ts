import type { FastifyBaseLogger } from 'fastify'
import type { Tracer, TracerProvider as ApiTracerProvider } from '@opentelemetry/api'
import { ExportResultCode, type ExportResult } from '@opentelemetry/core'
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { resourceFromAttributes } from '@opentelemetry/resources'
import {
  AlwaysOffSampler, AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler,
  TracerProvider, type ReadableSpan, type Sampler, type SpanExporter
} from '@opentelemetry/sdk-trace'

/** The sampler names of `OTEL_TRACES_SAMPLER` this plugin knows. */
export const SAMPLER_NAMES = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const
export type SamplerName = typeof SAMPLER_NAMES[number]

export function samplerFor (name: SamplerName = 'parentbased_always_on', ratio = 1): Sampler {
  const root = name.endsWith('always_on') ? new AlwaysOnSampler() : name.endsWith('always_off') ? new AlwaysOffSampler() : new TraceIdRatioBasedSampler(ratio)
  return name.startsWith('parentbased_') ? new ParentBasedSampler({ root }) : root
}

export interface OtlpProviderOptions {
  /** OTLP/HTTP traces URL (`…/v1/traces`). */
  url: string
  /** Headers sent with each export. */
  headers?: Record<string, string> | undefined
  /** @defaultValue `unknown_service:node` */
  serviceName?: string | undefined
  /** @defaultValue `parentbased_always_on` */
  sampler?: SamplerName | undefined
  /** @defaultValue 1 */
  samplerRatio?: number | undefined
  /** @defaultValue 5000 */
  scheduledDelayMillis?: number | undefined
  /** Where failed exports are reported (one line a minute at most). */
  log: Pick<FastifyBaseLogger, 'warn'>
}

/** An OpenTelemetry tracer provider that exports over OTLP/HTTP; `shutdown` sends what is left. */
export interface OtlpProvider {
  provider: ApiTracerProvider
  tracer: Tracer
  flush(): Promise<void>
  /** Idempotent. */
  shutdown(): Promise<void>
}

/**
 * Logs a failed export once a minute at most (the SDK itself reports it only to OpenTelemetry's
 * diagnostic logger, off by default): a collector that is down is visible in the process log.
 */
class LoggingExporter implements SpanExporter {
  #lastLog = 0
  #dropped = 0
  constructor (readonly inner: SpanExporter, readonly log: Pick<FastifyBaseLogger, 'warn'>, readonly url: string) {}

  export (spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS) {
        this.#dropped += spans.length
        const now = Date.now()
        if (now - this.#lastLog >= 60_000) {
          this.#lastLog = now
          this.log.warn({ url: this.url, spans: this.#dropped, cause: result.error?.message }, 'trace export failed: spans dropped')
          this.#dropped = 0
        }
      }
      done(result)
    })
  }

  async shutdown (): Promise<void> { await this.inner.shutdown() }
  async forceFlush (): Promise<void> { await this.inner.forceFlush?.() }
}

/**
 * A tracer provider exporting over OTLP/HTTP (JSON): the sampler, a batch processor and the
 * exporter. What the plugin makes from `exportUrl`; an application that builds several Fastify apps
 * in turn (a reloading gateway) makes one and hands it to each as `tracerProvider`.
 */
export function createOtlpProvider (opts: OtlpProviderOptions): OtlpProvider {
  const exporter = new LoggingExporter(new OTLPTraceExporter({ url: opts.url, ...(opts.headers !== undefined ? { headers: opts.headers } : {}) }), opts.log, opts.url)
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': opts.serviceName ?? 'unknown_service:node' }),
    sampler: samplerFor(opts.sampler, opts.samplerRatio),
    spanProcessors: [new BatchSpanProcessor({
      exporter,
      ...(opts.scheduledDelayMillis !== undefined ? { scheduledDelayMillis: opts.scheduledDelayMillis } : {})
    })]
  })
  let stopped: Promise<void> | undefined
  return {
    provider,
    tracer: provider.getTracer('@portcullis/tracing'),
    flush: async () => { await provider.forceFlush() },
    shutdown: () => (stopped ??= provider.shutdown())
  }
}
