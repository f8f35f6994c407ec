import fp from 'fastify-plugin'
import fastifyMetricsModule from 'fastify-metrics'
import * as promClient from '@platformatic/prom-client'
import type { FastifyPluginAsync } from 'fastify'

// fastify-metrics is CommonJS with `exports.default`: under NodeNext the default import is the module object.
const fastifyMetrics = fastifyMetricsModule.default

export type Registry = promClient.Registry
export { promClient }
export { hotCounter, collectHotCounts, addFlusher, type HotCounter } from './hot.js'
export { default as admin, type AdminPluginOptions } from './admin.js'

/**
 * prom-client's default gauges whose names end in `_total`, which Prometheus reserves for counters
 * (`promtool check metrics` refuses them). Each one is the sum of a gauge prom-client exports beside
 * it with a `type` label (`nodejs_active_handles`, `nodejs_active_requests`, `nodejs_active_resources`),
 * so nothing is lost: `sum(nodejs_active_handles)` gives the same number.
 */
export const GAUGES_NAMED_TOTAL = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'] as const

/**
 * prom-client's default process metrics (CPU, memory, event-loop lag, GC, handles) in `registry`,
 * without the gauges named `_total` (GAUGES_NAMED_TOTAL), removed with the registry's documented
 * `removeSingleMetric`: every metric left passes `promtool check metrics`. For processes that
 * collect them without the plugin (a registry of their own).
 */
export function collectProcessMetrics (registry: Registry): void {
  promClient.collectDefaultMetrics({ register: registry })
  dropGaugesNamedTotal(registry)
}

function dropGaugesNamedTotal (registry: Registry): void {
  for (const name of GAUGES_NAMED_TOTAL) registry.removeSingleMetric(name)
}

export interface MetricsPluginOptions {
  /**
   * Registry that receives the HTTP histograms and every `portcullis_*` metric of this app.
   * One per app, so several apps in one process never collide. @defaultValue a new Registry
   */
  registry?: Registry
  /** Collect process metrics (CPU, memory, event loop lag). @defaultValue true */
  defaultMetrics?: boolean
  /**
   * Also record the per-route summary (quantiles computed in-process), fastify-metrics'
   * `http_request_summary_seconds`. The histogram alone gives quantiles through `histogram_quantile`;
   * the summary costs a few % of a proxied request, and `promtool check metrics` flags its name (it
   * names its type). @defaultValue false
   */
  routeSummary?: boolean
  /**
   * Record the per-route HTTP histogram (and summary) with fastify-metrics. `false` leaves only the
   * process metrics, for an app that records request durations itself. @defaultValue true
   */
  routeMetrics?: boolean
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
 * public listener: `/metrics` lives on the admin listener (the `admin` plugin of this package).
 */
const metrics: FastifyPluginAsync<MetricsPluginOptions> = async (app, opts) => {
  if (app.hasDecorator('metricsRegistry')) return
  const registry = opts.registry ?? new promClient.Registry()
  const routes = opts.routeMetrics ?? true
  const summary = opts.routeSummary ?? false
  await app.register(fastifyMetrics, {
    endpoint: null,
    promClient: promClient as never,
    defaultMetrics: { enabled: opts.defaultMetrics ?? true, register: registry as never },
    routeMetrics: {
      enabled: !routes ? false : { histogram: true, summary },
      registeredRoutesOnly: true,
      overrides: {
        histogram: { registers: [registry as never] },
        // fastify-metrics creates the summary even when it records nothing: off, it goes in no
        // registry (prom-client's `registers` option), so /metrics has no empty family of that name
        summary: { registers: summary ? [registry as never] : [] }
      }
    }
  })
  // fastify-metrics collected prom-client's defaults (at registration): the gauges named `_total` go
  if (opts.defaultMetrics ?? true) dropGaugesNamedTotal(registry)
  app.decorate('metricsRegistry', registry)
}

export default fp(metrics, { fastify: '5.x', name: 'portcullis-metrics' })
