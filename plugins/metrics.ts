import fp from 'fastify-plugin'
import fastifyMetricsModule from 'fastify-metrics'
import * as promClient from '@platformatic/prom-client'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'

// fastify-metrics is CommonJS with `exports.default`: under NodeNext the default import is the module object.
const fastifyMetrics = fastifyMetricsModule.default

export type Registry = promClient.Registry
export { promClient }

export interface MetricsPluginOptions {
  /**
   * Registry that receives the HTTP histograms and every `portcullis_*` metric of this app.
   * One per app, so several apps in one process never collide. @defaultValue a new Registry
   */
  registry?: Registry
  /** Collect process metrics (CPU, memory, event loop lag). @defaultValue true */
  defaultMetrics?: boolean
  /**
   * Also record the per-route summary (quantiles computed in-process). The histogram alone gives
   * quantiles through `histogram_quantile`; the summary costs a few % of a proxied request. @defaultValue true
   */
  routeSummary?: boolean
  /**
   * Record the HTTP histogram with one onResponse hook timed by Fastify's own `reply.elapsedTime`
   * instead of fastify-metrics' two per-request hooks (a WeakMap entry, an hrtime timer closure and
   * four `request.routeOptions` objects per request: ~5 µs of a proxied request, measured on the
   * gateway bench). Same metric name, help, labels (`method`, `route` = the route pattern,
   * `status_code`) and buckets; fastify-metrics still provides the process metrics. Implies no
   * summary. @defaultValue false
   */
  leanRouteHistogram?: boolean
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The Prometheus registry of this app; serve it with the admin plugin. */
    metricsRegistry: Registry
  }
}

/**
 * fastify-metrics HTTP histograms and summaries, labelled by the matched route pattern (never the raw
 * URL, so cardinality stays bounded), recorded into a per-app registry. It serves no endpoint on the
 * public listener: `/metrics` lives on the admin listener (plugins/admin.ts).
 */
const metrics: FastifyPluginAsync<MetricsPluginOptions> = async (app, opts) => {
  if (app.hasDecorator('metricsRegistry')) return
  const registry = opts.registry ?? new promClient.Registry()
  const lean = opts.leanRouteHistogram ?? false
  await app.register(fastifyMetrics, {
    endpoint: null,
    promClient: promClient as never,
    defaultMetrics: { enabled: opts.defaultMetrics ?? true, register: registry as never },
    routeMetrics: {
      enabled: lean ? false : { histogram: true, summary: opts.routeSummary ?? true },
      registeredRoutesOnly: true,
      overrides: {
        histogram: { registers: [registry as never] },
        summary: { registers: [registry as never] }
      }
    }
  })
  if (lean) leanHistogram(app, registry)
  app.decorate('metricsRegistry', registry)
}

/** A counter child whose increments are summed in a plain number and added to the counter when it is read. */
export interface HotCounter { inc (): void }

const hotFlushers = new WeakMap<object, Array<() => void>>()

/**
 * The `collect` option of a counter that `hotCounter` may serve: prom-client runs it before every
 * read (`registry.metrics()`, `counter.get()`), and it adds the locally summed increments.
 */
export function collectHotCounts (this: object): void {
  for (const flush of hotFlushers.get(this) ?? []) flush()
}

/**
 * For a counter bumped on every request with the same labels: `inc()` adds to a local number (no
 * label hashing or validation per call), folded into `counter` on every read when the counter was
 * created with `collect: collectHotCounts`, so scrapes see exact counts. Other counters are
 * incremented directly.
 */
export function hotCounter<L extends string> (counter: promClient.Counter<L>, labels: promClient.LabelValues<L>): HotCounter {
  const frozen = Object.freeze({ ...labels }) as promClient.LabelValues<L>
  if ((counter as { collect?: unknown }).collect !== collectHotCounts) return { inc: () => { counter.inc(frozen) } }
  let pending = 0
  let flushers = hotFlushers.get(counter)
  if (flushers === undefined) hotFlushers.set(counter, flushers = [])
  flushers.push(() => {
    if (pending === 0) return
    const n = pending
    pending = 0
    counter.inc(frozen, n)
  })
  return { inc: () => { pending++ } }
}

type Labels = Record<'method' | 'route' | 'status_code', string | number>

/** fastify-metrics' route histogram, recorded from one onResponse hook (see `leanRouteHistogram`). */
function leanHistogram (app: FastifyInstance, registry: Registry): void {
  const histogram = new promClient.Histogram({
    name: 'http_request_duration_seconds',
    help: 'request duration in seconds',
    labelNames: ['method', 'route', 'status_code'],
    registers: [registry]
  })
  // One frozen label object per route, method and status: no allocation per request.
  const labelSets = new Map<string, Map<string, Map<number, Labels>>>()
  const labelsFor = (route: string, method: string, status: number): Labels => {
    let byMethod = labelSets.get(route)
    if (byMethod === undefined) labelSets.set(route, byMethod = new Map())
    let byStatus = byMethod.get(method)
    if (byStatus === undefined) byMethod.set(method, byStatus = new Map())
    let labels = byStatus.get(status)
    if (labels === undefined) byStatus.set(status, labels = Object.freeze({ method, route, status_code: status }))
    return labels
  }
  app.addHook('onResponse', (request, reply, done) => {
    // registered routes only: a 404 from the not-found handler has no route pattern to label with
    if (!request.is404) {
      const ro = request.routeOptions // a getter building a new object: read once
      const route = ro.url
      if (route !== undefined && ro.config.disableMetrics !== true) {
        histogram.observe(labelsFor(route, request.method, reply.statusCode), reply.elapsedTime / 1000)
      }
    }
    done()
  })
}

export default fp(metrics, { fastify: '5.x', name: 'portcullis-metrics' })
