import httpProxy from '@fastify/http-proxy'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { CircuitBreaker, BREAKER_STATE_VALUE } from './breaker.js'
import { CircuitOpenError } from './errors.js'
import { downstreamHeaders, upstreamHeaders } from './headers.js'
import { RETRYABLE_CODES, UpstreamPools, classify, clientError, countsAgainstBreaker, errorCode } from './upstream.js'
import { promClient } from '@portcullis/metrics'
import type { GatewayConfig, RouteConfig } from './config.js'

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])
const kProbe = Symbol('portcullis.breakerProbe')

declare module 'fastify' {
  interface FastifyRequest { [kProbe]?: CircuitBreaker }
}

export interface RouteOptions {
  /** Clock for the circuit breakers (tests inject one). @defaultValue Date.now */
  now?: () => number
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
export async function registerRoutes (app: FastifyInstance, config: GatewayConfig, opts: RouteOptions = {}): Promise<void> {
  const pools = new UpstreamPools()
  app.addHook('onClose', async () => { await pools.close() })
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
    registers: [registry]
  })

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
      breakers.set(origin, b)
    }
    return b
  }

  for (const route of config.routes) {
    const origin = new URL(route.upstream).origin
    const breaker = breakerFor(origin)

    await app.register(async (scope) => {
      await scope.register(httpProxy, {
        upstream: route.upstream,
        prefix: route.prefix,
        rewritePrefix: route.rewritePrefix,
        httpMethods: route.methods,
        undici: pools.get(route.upstream, route.timeouts),
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
          return reply.from(dest, options)
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
            breaker.success()
            if (request[kProbe] !== undefined) request[kProbe] = undefined
            void reply.send(res.stream)
          },
          onError: (reply, { error }) => {
            const kind = classify(error)
            upstreamErrors.inc({ upstream: origin, kind })
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
}
