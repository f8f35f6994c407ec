import type { FastifyInstance, onResponseHookHandler } from 'fastify'
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

/**
 * fastify-metrics' route histogram, recorded by a route-level onResponse hook that each route gets as
 * it is declared: the hook knows its route pattern, so no request reads
 * the `request.routeOptions` getter, and 404s (no route) are not recorded, as with fastify-metrics'
 * `registeredRoutesOnly`. Observations go through one hot histogram child per method and status.
 */
export function leanHistogram (app: FastifyInstance, registry: Registry): void {
  const histogram = new promClient.Histogram({
    name: 'http_request_duration_seconds',
    help: 'request duration in seconds',
    labelNames: ['method', 'route', 'status_code'],
    registers: [registry],
    collect: collectHotCounts
  })
  app.addHook('onRoute', (route) => {
    if ((route.config as { disableMetrics?: boolean } | undefined)?.disableMetrics === true) return // fastify-metrics' per-route opt-out
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

