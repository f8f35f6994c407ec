import fp from 'fastify-plugin'
import fastifyMetricsModule from 'fastify-metrics'
import * as promClient from '@platformatic/prom-client'
import type { FastifyInstance, FastifyPluginAsync, onResponseHookHandler } from 'fastify'
import { hookList } from './hook-list.js'

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
   * Record the HTTP histogram with one route-level onResponse hook per route, timed by Fastify's own
   * `reply.elapsedTime` and counted locally between scrapes (hotHistogram), instead of
   * fastify-metrics' two per-request hooks (a WeakMap entry, an hrtime timer closure and four
   * `request.routeOptions` objects per request). Same metric name, help, labels (`method`, `route` =
   * the route pattern, `status_code`) and buckets; fastify-metrics still provides the process
   * metrics. Covers the routes declared after the plugin is registered. Implies no summary.
   * @defaultValue false
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
/** A histogram child whose observations are counted in plain numbers and added to the histogram when it is read. */
export interface HotHistogram { observe (value: number): void }

const hotFlushers = new WeakMap<object, Array<() => void>>()

/**
 * The `collect` option of a counter or histogram that `hotCounter` / `hotHistogram` may serve:
 * prom-client runs it before every read (`registry.metrics()`, `metric.get()`), and it adds the
 * locally summed values.
 */
export function collectHotCounts (this: object): void {
  for (const flush of hotFlushers.get(this) ?? []) flush()
}

function addFlusher (metric: object, flush: () => void): void {
  let flushers = hotFlushers.get(metric)
  if (flushers === undefined) hotFlushers.set(metric, flushers = [])
  flushers.push(flush)
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
  addFlusher(counter, () => {
    if (pending === 0) return
    const n = pending
    pending = 0
    counter.inc(frozen, n)
  })
  return { inc: () => { pending++ } }
}

/** What hotHistogram needs of prom-client's histogram: its bounds and its per-label-set record. */
interface HistogramInternals {
  upperBounds?: readonly number[]
  store?: { entry?: (labels: object) => { bucketValues: Record<number, number>, sum: number, count: number } | undefined }
}

/**
 * For a histogram observed on every request with the same labels: `observe(v)` finds the bucket and
 * adds to local numbers (~20 ns; prom-client's observe hashes and validates the labels, ~0.4 µs
 * alone and several µs in a busy process), folded into `histogram`'s record for those labels on
 * every read when the histogram was created with `collect: collectHotCounts`. Scrapes see exactly
 * what direct observes would have produced (test/metrics-hot.test.ts compares the two). A histogram
 * without that `collect`, or a prom-client whose histogram keeps its records differently, is
 * observed directly.
 */
export function hotHistogram<L extends string> (histogram: promClient.Histogram<L>, labels: promClient.LabelValues<L>): HotHistogram {
  const frozen = Object.freeze({ ...labels }) as promClient.LabelValues<L>
  const internals = histogram as unknown as HistogramInternals
  const bounds = internals.upperBounds
  if ((histogram as { collect?: unknown }).collect !== collectHotCounts || bounds === undefined || internals.store?.entry === undefined) {
    return { observe: (v) => { histogram.observe(frozen, v) } }
  }
  const counts = new Float64Array(bounds.length) // per bucket (not cumulative); values above the last bound only count
  let sum = 0
  let count = 0
  const entryOf = internals.store.entry.bind(internals.store)
  addFlusher(histogram, () => {
    if (count === 0) return
    let entry = entryOf(frozen)
    if (entry === undefined) {
      histogram.zero(frozen)
      entry = entryOf(frozen)!
    }
    for (let i = 0; i < bounds.length; i++) {
      if (counts[i] !== 0) entry.bucketValues[bounds[i]!] = entry.bucketValues[bounds[i]!]! + counts[i]!
    }
    entry.sum += sum
    entry.count += count
    counts.fill(0)
    sum = 0
    count = 0
  })
  return {
    observe: (v) => {
      if (!Number.isFinite(v)) return
      let i = 0
      while (i < bounds.length && bounds[i]! < v) i++
      if (i < bounds.length) counts[i]!++
      sum += v
      count++
    }
  }
}

/**
 * fastify-metrics' route histogram, recorded by a route-level onResponse hook that each route gets as
 * it is declared (see `leanRouteHistogram`): the hook knows its route pattern, so no request reads
 * the `request.routeOptions` getter, and 404s (no route) are not recorded, as with fastify-metrics'
 * `registeredRoutesOnly`. Observations go through one hot histogram child per method and status.
 */
function leanHistogram (app: FastifyInstance, registry: Registry): void {
  const histogram = new promClient.Histogram({
    name: 'http_request_duration_seconds',
    help: 'request duration in seconds',
    labelNames: ['method', 'route', 'status_code'],
    registers: [registry],
    collect: collectHotCounts
  })
  app.addHook('onRoute', (route) => {
    if (route.config?.disableMetrics === true) return
    const pattern = route.url
    // method -> status -> observer; a route has few of either
    const byMethod = new Map<string, Map<number, HotHistogram>>()
    const record: onResponseHookHandler = function recordDuration (request, reply, done) {
      const method = request.method
      let byStatus = byMethod.get(method)
      if (byStatus === undefined) byMethod.set(method, byStatus = new Map())
      const status = reply.statusCode
      let observer = byStatus.get(status)
      if (observer === undefined) byStatus.set(status, observer = hotHistogram(histogram, { method, route: pattern, status_code: status }))
      observer.observe(reply.elapsedTime / 1000)
      done()
    }
    route.onResponse = [...hookList(route.onResponse), record]
  })
}

export default fp(metrics, { fastify: '5.x', name: 'portcullis-metrics' })
