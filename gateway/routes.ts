import { performance } from 'node:perf_hooks'
import httpProxy from '@fastify/http-proxy'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { CircuitBreaker, BREAKER_STATE_VALUE } from './breaker.js'
import { CircuitOpenError } from './errors.js'
import { downstreamHeaders, kUpstreamSpan, upstreamHeaders } from './headers.js'
import { RETRYABLE_CODES, UPSTREAM_ERROR_KINDS, UpstreamPools, classify, clientError, countsAgainstBreaker, errorCode } from './upstream.js'
import { collectHotCounts, promClient } from '@portcullis/metrics'
import { GATEWAY_BUCKETS, hotHistogram, type HotHistogram } from './hot-histogram.js'
import type { GatewayConfig, RouteConfig } from './config.js'
import type { Pool } from 'undici'
import type { ChildSpan } from '@portcullis/tracing'

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])
const kProbe = Symbol('portcullis.breakerProbe')
const kUpstreamStart = Symbol('portcullis.upstreamStart')

declare module 'fastify' {
  interface FastifyRequest { [kProbe]?: CircuitBreaker, [kUpstreamStart]: number, [kUpstreamSpan]: ChildSpan | undefined }
}

export interface RouteOptions {
  /** Clock for the circuit breakers (tests inject one). @defaultValue Date.now */
  now?: () => number
  /**
   * Upstream pools shared with other apps (the configs a reloading gateway swaps between): the app
   * takes its pools from here and leaves them open when it closes. @defaultValue pools of its own, closed with it
   */
  pools?: UpstreamPools
}

/**
 * Frees the breaker's half-open probe slot a request still holds: its client went away before the
 * upstream gave a verdict. The gateway's onResponse hook calls it for every request.
 */
export function releaseProbe (request: FastifyRequest): void {
  const b = request[kProbe]
  if (b !== undefined) {
    request[kProbe] = undefined
    b.releaseProbe()
  }
}

/** The per-route config every proxy route carries: read by the auth, authorize and rate-limit plugins. */
export function routeConfig (route: RouteConfig): Record<string, unknown> {
  return {
    auth: route.auth
      ? { roles: route.roles, permissions: route.permissions, scopes: route.scopes }
      : false,
    rateLimit: route.rateLimit === undefined
      ? undefined
      : route.rateLimit === false
        ? false
        // the budget is the route's own (its prefix is unique); the name only labels its 429s in
        // the metrics, and two routes sharing a name keep their own limits
        : { max: route.rateLimit.max, timeWindow: route.rateLimit.timeWindow * 1000, groupId: route.prefix, label: route.name }
  }
}

/**
 * One `@fastify/http-proxy` registration per route, each with a keep-alive undici pool, the route's
 * timeouts, the upstream's circuit breaker, header hygiene and one consistent error shape.
 * Only the configured prefixes exist: any other path is a 404 from the router and is never proxied.
 */
export async function registerRoutes (app: FastifyInstance, config: GatewayConfig, opts: RouteOptions = {}): Promise<Set<Pool>> {
  const pools = opts.pools ?? new UpstreamPools()
  if (opts.pools === undefined) app.addHook('onClose', async () => { await pools.close() })
  const used = new Set<Pool>()
  const registry = app.metricsRegistry
  const upstreamErrors = new promClient.Counter({
    name: 'portcullis_upstream_errors_total',
    help: 'Failed upstream requests by upstream origin and kind (refused, reset, dns, *_timeout, circuit_open, local_resources, other)',
    labelNames: ['upstream', 'kind'],
    registers: [registry]
  })
  const breakerState = new promClient.Gauge({
    name: 'portcullis_circuit_breaker_state',
    help: 'Circuit breaker state per upstream origin: 0 closed, 1 open, 2 half-open',
    labelNames: ['upstream'],
    aggregator: 'max', // one value over the gateway's workers (a sum would mean nothing)
      registers: [registry]
  })

  // Upstream time apart from the gateway's: from the request handed to the upstream (retry
  // included) to its response headers; the route histogram holds the whole time
  const upstreamDuration = new promClient.Histogram({
    name: 'portcullis_upstream_duration_seconds',
    help: 'Time from handing a request to its upstream to the upstream\'s response headers, by route name, upstream origin and status',
    labelNames: ['route', 'upstream', 'status_code'],
    buckets: GATEWAY_BUCKETS,
    registers: [registry],
    collect: collectHotCounts
  })
  if (!app.hasRequestDecorator(kUpstreamStart)) app.decorateRequest(kUpstreamStart, 0)
  if (!app.hasRequestDecorator(kUpstreamSpan)) app.decorateRequest(kUpstreamSpan, undefined)
  // one CLIENT span per upstream call when spans are recorded: upstream time apart from the gateway's
  const spans = app.hasDecorator('tracing') && app.tracing.recording ? app.tracing : undefined

  const breakers = new Map<string, CircuitBreaker>()
  const breakerFor = (origin: string): CircuitBreaker => {
    let b = breakers.get(origin)
    if (b === undefined) {
      b = new CircuitBreaker({
        ...config.breaker,
        now: opts.now,
        onStateChange: (state) => {
          breakerState.set({ upstream: origin }, BREAKER_STATE_VALUE[state])
          app.log.warn({ upstream: origin, state }, 'circuit breaker %s', state)
        }
      })
      breakerState.set({ upstream: origin }, 0)
      // every kind at 0 from the start: a rate() alert sees the first error
      for (const kind of UPSTREAM_ERROR_KINDS) upstreamErrors.inc({ upstream: origin, kind }, 0)
      breakers.set(origin, b)
    }
    return b
  }

  for (const route of config.routes) {
    const origin = new URL(route.upstream).origin
    const breaker = breakerFor(origin)
    const pool = pools.get(route.upstream, route.timeouts)
    used.add(pool)
    // status -> observer, for this route and upstream
    const timers = new Map<number, HotHistogram>()
    const upstreamTime = (status: number): HotHistogram => {
      let h = timers.get(status)
      if (h === undefined) timers.set(status, h = hotHistogram(upstreamDuration, { route: route.name, upstream: origin, status_code: status }))
      return h
    }

    await app.register(async (scope) => {
      await scope.register(httpProxy, {
        upstream: route.upstream,
        prefix: route.prefix,
        rewritePrefix: route.rewritePrefix,
        httpMethods: route.methods,
        undici: pool,
        disableRequestLogging: true,
        config: routeConfig(route),
        // The breaker decides last, after authentication, authorization and rate limiting, so a
        // refused request never takes the half-open probe slot.
        handler: (request, reply, dest, options) => {
          const a = breaker.tryAcquire()
          if (!a.allowed) {
            upstreamErrors.inc({ upstream: origin, kind: 'circuit_open' })
            reply.header('retry-after', a.retryAfter)
            throw new CircuitOpenError()
          }
          if (a.probe) request[kProbe] = breaker
          request[kUpstreamStart] = performance.now()
          if (spans !== undefined) {
            request[kUpstreamSpan] = spans.startChild(request, `${request.method} ${route.name}`, 'client', {
              'http.request.method': request.method, 'server.address': origin, 'portcullis.route': route.name
            })
          }
          // http-proxy hands over an empty destination for the bare prefix with a query string
          // (`/api?x=1`: it appends the query before its `|| '/'` fallback, then strips it again);
          // reply-from would then forward the client's own path, prefix and all (`/api?x=1`)
          return reply.from(dest === '' ? '/' : dest, options)
        },
        replyOptions: {
          rewriteRequestHeaders: (request, headers) => upstreamHeaders(request as FastifyRequest, headers, request.user),
          rewriteHeaders: (headers) => downstreamHeaders(headers),
          retryDelay: ({ err, req, attempt }) => {
            const code = errorCode(err)
            const hasBody = req.body !== undefined && req.body !== null && req.body !== ''
            return attempt === 0 && code !== undefined && RETRYABLE_CODES.has(code) && IDEMPOTENT.has(req.method) && !hasBody ? 1 : null
          },
          onResponse: (request, reply, res) => {
            upstreamTime(reply.statusCode).observe((performance.now() - request[kUpstreamStart]) / 1000)
            request[kUpstreamSpan]?.end(reply.statusCode)
            breaker.success()
            if (request[kProbe] !== undefined) request[kProbe] = undefined
            void reply.send(res.stream)
          },
          onError: (reply, { error }) => {
            const kind = classify(error)
            upstreamErrors.inc({ upstream: origin, kind })
            reply.request[kUpstreamSpan]?.end(undefined, error)
            // The gateway out of file descriptors is no fault of the upstream: it must not open a
            // healthy upstream's breaker (the probe slot, if taken, is released below).
            if (countsAgainstBreaker(kind)) breaker.failure()
            if (reply.request[kProbe] !== undefined) reply.request[kProbe] = undefined
            void (reply as FastifyReply).send(clientError(kind, error))
          }
        }
      })
    })
  }
  return used
}
