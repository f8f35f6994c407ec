import type { FastifyInstance, FastifyReply, FastifyRequest, onResponseHookHandler } from 'fastify'
import { hookList } from '@portcullis/core'
import { addFlusher, collectHotCounts, promClient, type Registry } from '@portcullis/metrics'

// The gateway's one use of a dependency's private members: prom-client's histogram keeps per-label
// records (`upperBounds`, `store.entry()`) that this module adds batched counts to. It stays in the
// gateway, never in a published package; test/metrics-hot.test.ts compares a scrape with direct
// observes and fails when prom-client changes how it keeps them. Measured gain: see docs/performance.md.

/** A histogram child whose observations are counted in plain numbers and added to the histogram when it is read. */
export interface HotHistogram { observe (value: number): void }

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

/** The `route` label of requests that matched no route (404, or 400 for a refused path): never the raw URL. fastify-metrics' `invalidRouteGroup` default, so the services' histograms would use the same value. */
export const UNMATCHED_ROUTE = '__unknown__'

/**
 * Latency buckets (seconds) of the gateway's request histogram: from 0.5 ms, where the gateway's own
 * overhead shows (fastify-metrics' default starts at 5 ms), to 10 s.
 */
export const GATEWAY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** Records one request that matched no route, under `route="__unknown__"` (UNMATCHED_ROUTE). */
export type UnmatchedRecorder = (request: FastifyRequest, reply: FastifyReply) => void

/** method -> status -> observer, created on first use (methods and statuses are few). */
function observers<L extends string> (histogram: promClient.Histogram<L>, route: string): (method: string, status: number) => HotHistogram {
  const byMethod = new Map<string, Map<number, HotHistogram>>()
  return (method, status) => {
    let byStatus = byMethod.get(method)
    if (byStatus === undefined) byMethod.set(method, byStatus = new Map())
    let observer = byStatus.get(status)
    if (observer === undefined) {
      byStatus.set(status, observer = hotHistogram(histogram, { method, route, status_code: status } as unknown as promClient.LabelValues<L>))
    }
    return observer
  }
}

/**
 * fastify-metrics' route histogram (with GATEWAY_BUCKETS), recorded by a route-level onResponse hook
 * that each route gets as it is declared: the hook knows its route pattern, so no request reads the
 * `request.routeOptions` getter. Observations go through one hot histogram child per method and
 * status. Requests that match no route are not recorded by these hooks: the returned recorder counts
 * them under `route="__unknown__"` when the app's own onResponse hook sees `request.is404`.
 */
export function leanHistogram (app: FastifyInstance, registry: Registry): UnmatchedRecorder {
  const histogram = new promClient.Histogram({
    name: 'http_request_duration_seconds',
    help: 'request duration in seconds',
    labelNames: ['method', 'route', 'status_code'],
    buckets: GATEWAY_BUCKETS,
    registers: [registry],
    collect: collectHotCounts
  })
  app.addHook('onRoute', (route) => {
    if ((route.config as { disableMetrics?: boolean } | undefined)?.disableMetrics === true) return // fastify-metrics' per-route opt-out
    const observer = observers(histogram, route.url)
    const record: onResponseHookHandler = function recordDuration (request, reply, done) {
      observer(request.method, reply.statusCode).observe(reply.elapsedTime / 1000)
      done()
    }
    route.onResponse = [...hookList(route.onResponse), record]
  })
  const unmatched = observers(histogram, UNMATCHED_ROUTE)
  return (request, reply) => { unmatched(request.method, reply.statusCode).observe(reply.elapsedTime / 1000) }
}
