import type { IncomingMessage } from 'node:http'
import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, createTraceState, trace, type Attributes, type Span, type Tracer, type TracerProvider as ApiTracerProvider } from '@opentelemetry/api'
import {
  TRACEPARENT_HEADER, TRACESTATE_HEADER, kTraceContext, newSpanId, newTraceId, parseTraceparent,
  traceContextOf, validTracestate, formatTraceparent, type TraceContext
} from '@portcullis/core'
import { SAMPLER_NAMES, createOtlpProvider, type OtlpProvider, type SamplerName } from './provider.js'

export { SAMPLER_NAMES, createOtlpProvider, type SamplerName, type OtlpProvider, type OtlpProviderOptions } from './provider.js'
export { tracingOptionsFromEnv, TracingConfigError, TRACING_ENV_VARIABLES } from './env.js'
export { TRACEPARENT_HEADER, TRACESTATE_HEADER, formatTraceparent, parseTraceparent, traceContextOf, type TraceContext }

export interface TracingPluginOptions {
  /** `service.name` of the exported spans. @defaultValue `unknown_service:node` */
  serviceName?: string
  /**
   * OTLP/HTTP traces endpoint, the full URL (`http://collector:4318/v1/traces`). Unset: no span is
   * recorded or exported; the trace context is still accepted or started, passed on and logged.
   */
  exportUrl?: string
  /** Headers sent with each export (a collector's API key). Never logged. */
  exportHeaders?: Record<string, string>
  /** OpenTelemetry sampler (the `OTEL_TRACES_SAMPLER` names). @defaultValue `parentbased_always_on` */
  sampler?: SamplerName
  /** Ratio of the `traceidratio` samplers, 0 to 1. @defaultValue 1 */
  samplerRatio?: number
  /** Longest wait before a batch of ended spans is sent, ms. @defaultValue 5000 */
  scheduledDelayMillis?: number
  /**
   * An OpenTelemetry tracer provider of the application's own (its exporters, sampler and resource):
   * spans are started with it instead of one the plugin makes. Takes precedence over `exportUrl`.
   */
  tracerProvider?: ApiTracerProvider
  /** Log field of the trace id. @defaultValue `trace_id` */
  traceIdLogField?: string
  /** Log field of the request's span id. @defaultValue `span_id` */
  spanIdLogField?: string
}

export interface TracingDecorator {
  /** True when spans are recorded (an export URL or a tracer provider was given). */
  readonly recording: boolean
  /** Sends the ended spans now (tests, and before a planned stop). */
  flush(): Promise<void>
  /**
   * Starts a child span of the request's span (a call the request makes, e.g. to an upstream) and
   * returns the context its call carries: `traceparent` names the child. Without recording, the
   * request's own context and a no-op end.
   */
  startChild(request: FastifyRequest, name: string, kind: 'client' | 'internal', attributes?: Attributes): ChildSpan
}

export interface ChildSpan {
  /** The `traceparent` the call carries. */
  readonly traceparent: string
  /** Ends the span; a status of 500 or more, or an error, marks it failed. Idempotent. */
  end(status?: number, error?: unknown): void
}

declare module 'fastify' {
  interface FastifyInstance {
    tracing: TracingDecorator
  }
  interface FastifyRequest {
    /** The request's W3C trace context (accepted from `traceparent` or started here). */
    readonly traceContext: TraceContext
  }
}

/** What the plugin keeps of a raw request: its TraceContext (also under kTraceContext, frozen), and its server span when recording. */
interface RequestTrace {
  readonly ctx: TraceContext
  span: Span | undefined
  spanEnded: boolean
  /** The request log already carries the trace fields (the child logger factory ran). */
  logged: boolean
}

const kState = Symbol('portcullis.tracing.state')
type RawWithTrace = IncomingMessage & { [kTraceContext]?: TraceContext, [kState]?: RequestTrace }

function record (ctx: TraceContext, span: Span | undefined): RequestTrace {
  return { ctx: Object.freeze(ctx), span, spanEnded: false, logged: false }
}

const NO_CHILD_END = (): void => {}

function pathOf (url: string | undefined): string {
  if (url === undefined) return '/'
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

function checkOptions (opts: TracingPluginOptions): void {
  if (opts.exportUrl !== undefined) {
    const u = URL.canParse(opts.exportUrl) ? new URL(opts.exportUrl) : undefined
    if (u === undefined || (u.protocol !== 'http:' && u.protocol !== 'https:')) {
      throw new Error(`tracing plugin: option "exportUrl" must be an http or https URL, got "${opts.exportUrl}"`)
    }
  }
  if (opts.sampler !== undefined && !(SAMPLER_NAMES as readonly string[]).includes(opts.sampler)) {
    throw new Error(`tracing plugin: option "sampler" must be one of ${SAMPLER_NAMES.join(', ')}`)
  }
  if (opts.samplerRatio !== undefined && !(opts.samplerRatio >= 0 && opts.samplerRatio <= 1)) {
    throw new Error('tracing plugin: option "samplerRatio" must be a number from 0 to 1')
  }
  if (opts.scheduledDelayMillis !== undefined && !(Number.isInteger(opts.scheduledDelayMillis) && opts.scheduledDelayMillis > 0)) {
    throw new Error('tracing plugin: option "scheduledDelayMillis" must be a positive whole number of milliseconds')
  }
}

/**
 * W3C Trace Context for every request, the trace id in its log lines, and (when an export URL or a
 * tracer provider is given) an OpenTelemetry server span per request. Register it first: the
 * request logger of routes added afterwards carries the trace fields from the first line.
 */
const tracing: FastifyPluginAsync<TracingPluginOptions> = async (app, opts) => {
  if (app.hasDecorator('tracing')) return
  checkOptions(opts)
  const traceField = opts.traceIdLogField ?? 'trace_id'
  const spanField = opts.spanIdLogField ?? 'span_id'
  let own: OtlpProvider | undefined
  let tracer: Tracer | undefined
  if (opts.tracerProvider !== undefined) {
    tracer = opts.tracerProvider.getTracer('@portcullis/tracing')
  } else if (opts.exportUrl !== undefined) {
    own = createOtlpProvider({
      url: opts.exportUrl,
      headers: opts.exportHeaders,
      serviceName: opts.serviceName,
      sampler: opts.sampler,
      samplerRatio: opts.samplerRatio,
      scheduledDelayMillis: opts.scheduledDelayMillis,
      log: app.log
    })
    tracer = own.tracer
  }

  function traceOf (raw: RawWithTrace): RequestTrace {
    const known = raw[kState]
    if (known !== undefined) return known
    const parent = parseTraceparent(raw.headers[TRACEPARENT_HEADER])
    // tracestate belongs to a traceparent: without a valid one it is dropped (W3C 3.3.1)
    const tracestate = parent === undefined ? undefined : validTracestate(raw.headers[TRACESTATE_HEADER])
    let t: RequestTrace
    if (tracer === undefined) {
      t = parent === undefined
        ? record({ traceId: newTraceId(), spanId: newSpanId(), flags: 0, tracestate: undefined }, undefined)
        : record({ traceId: parent.traceId, spanId: newSpanId(), flags: parent.flags, tracestate }, undefined)
    } else {
      const ctx = parent === undefined
        ? ROOT_CONTEXT
        : trace.setSpanContext(ROOT_CONTEXT, {
          traceId: parent.traceId,
          spanId: parent.parentId,
          traceFlags: parent.flags,
          isRemote: true,
          ...(tracestate !== undefined ? { traceState: createTraceState(tracestate) } : {})
        })
      const method = raw.method ?? 'GET'
      const span = tracer.startSpan(method, {
        kind: SpanKind.SERVER,
        attributes: { 'http.request.method': method, 'url.path': pathOf(raw.url) }
      }, ctx)
      const sc = span.spanContext()
      t = record({ traceId: sc.traceId, spanId: sc.spanId, flags: sc.traceFlags, tracestate }, span.isRecording() ? span : undefined)
    }
    raw[kState] = t
    raw[kTraceContext] = t.ctx
    return t
  }

  // The request logger is made with the trace fields: every line of the request carries them at the
  // cost of two more bindings on the child logger Fastify creates anyway. Routes registered before
  // this plugin keep their factory; the onRequest hook below covers them.
  const previous = app.childLoggerFactory
  app.setChildLoggerFactory(function (logger, bindings, childOpts, rawReq) {
    const t = traceOf(rawReq as RawWithTrace)
    t.logged = true
    // Fastify's bindings object is made for this request: added to in place (a spread with computed
    // keys cost ~2 µs more per request)
    const b = bindings as Record<string, unknown>
    b[traceField] = t.ctx.traceId
    b[spanField] = t.ctx.spanId
    return previous.call(this, logger, bindings, childOpts, rawReq)
  })

  app.decorateRequest('traceContext', {
    getter (this: FastifyRequest): TraceContext {
      return traceOf(this.raw as RawWithTrace).ctx
    }
  })

  app.addHook('onRequest', (request, reply, done) => {
    const t = traceOf(request.raw as RawWithTrace)
    if (!t.logged) {
      t.logged = true
      // a route registered before the plugin: its logger was made without the trace fields
      const log = request.log.child({ [traceField]: t.ctx.traceId, [spanField]: t.ctx.spanId }) as FastifyBaseLogger
      request.log = log
      reply.log = log
    }
    done()
  })

  if (tracer !== undefined) {
    const endServerSpan = (request: FastifyRequest, reply: FastifyReply | undefined, aborted: boolean): void => {
      const t = (request.raw as RawWithTrace)[kState]
      const span = t?.span
      if (t === undefined || span === undefined || t.spanEnded) return
      t.spanEnded = true
      const route = request.routeOptions.url
      if (route !== undefined) {
        span.updateName(`${request.method} ${route}`)
        span.setAttribute('http.route', route)
      }
      if (aborted) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: 'client closed the request' })
      } else if (reply !== undefined) {
        span.setAttribute('http.response.status_code', reply.statusCode)
        if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
      }
      span.end()
    }
    app.addHook('onResponse', (request, reply, done) => { endServerSpan(request, reply, false); done() })
    app.addHook('onRequestAbort', (request, done) => { endServerSpan(request, undefined, true); done() })
  }

  app.decorate('tracing', {
    recording: tracer !== undefined,
    flush: async () => {
      if (own !== undefined) await own.flush()
      else await (opts.tracerProvider as { forceFlush?: () => Promise<void> } | undefined)?.forceFlush?.()
    },
    startChild (request: FastifyRequest, name: string, kind: 'client' | 'internal', attributes?: Attributes): ChildSpan {
      const t = traceOf(request.raw as RawWithTrace)
      if (tracer === undefined || t.span === undefined) {
        return { traceparent: formatTraceparent(t.ctx), end: NO_CHILD_END }
      }
      const child = tracer.startSpan(name, {
        kind: kind === 'client' ? SpanKind.CLIENT : SpanKind.INTERNAL,
        ...(attributes !== undefined ? { attributes } : {})
      }, trace.setSpan(ROOT_CONTEXT, t.span))
      let ended = false
      return {
        traceparent: formatTraceparent({ traceId: t.ctx.traceId, spanId: child.spanContext().spanId, flags: child.spanContext().traceFlags }),
        end (status?: number, error?: unknown) {
          if (ended) return
          ended = true
          if (status !== undefined) child.setAttribute('http.response.status_code', status)
          if (error !== undefined) {
            child.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) })
          } else if (status !== undefined && status >= 500) {
            child.setStatus({ code: SpanStatusCode.ERROR })
          }
          child.end()
        }
      }
    }
  } satisfies TracingDecorator)

  // the last spans go out before the app is gone
  app.addHook('onClose', async () => { await own?.shutdown() })
}

export default fp(tracing, { fastify: '5.x', name: 'portcullis-tracing' })
