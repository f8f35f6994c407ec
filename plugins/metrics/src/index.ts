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
  await app.register(fastifyMetrics, {
    endpoint: null,
    promClient: promClient as never,
    defaultMetrics: { enabled: opts.defaultMetrics ?? true, register: registry as never },
    routeMetrics: {
      enabled: !routes ? false : { histogram: true, summary: opts.routeSummary ?? true },
      registeredRoutesOnly: true,
      overrides: {
        histogram: { registers: [registry as never] },
        summary: { registers: [registry as never] }
      }
    }
  })
  app.decorate('metricsRegistry', registry)
}

export default fp(metrics, { fastify: '5.x', name: 'portcullis-metrics' })
