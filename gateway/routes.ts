import { performance } from 'node:perf_hooks'
import replyFrom from '@fastify/reply-from'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { CircuitBreaker, BREAKER_STATE_VALUE } from './breaker.js'
import { BadPathError, CircuitOpenError } from './errors.js'
import { downstreamHeaders, kUpstreamSpan, upstreamHeaders } from './headers.js'
import { RETRYABLE_CODES, UPSTREAM_ERROR_KINDS, UpstreamPools, classify, clientError, countsAgainstBreaker, errorCode } from './upstream.js'
import { collectHotCounts, promClient } from '@portcullis/metrics'
import { GATEWAY_BUCKETS, hotHistogram, type HotHistogram } from './hot-histogram.js'
import type { GatewayConfig, RouteConfig } from './config.js'
import type { Pool } from 'undici'
import type { IncomingHttpHeaders } from 'node:http'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import type { ChildSpan } from '@portcullis/tracing'

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])
/** A route without `methods` takes these. */
const DEFAULT_METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS']
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

/** A reference with a scheme (`http:`) or an authority (`//host`): never a path on the route's upstream. */
const ABSOLUTE = /^([a-zA-Z][a-zA-Z\d+.-]*:|\/\/)/
/** A character an HTTP header value may not hold (HTAB, SP to ~ and obs-text may); `_ALL`: every one. */
const NOT_HEADER_VALUE = /[^\t\x20-\x7E\x80-\xFF]/
const NOT_HEADER_VALUE_ALL = new RegExp(NOT_HEADER_VALUE.source, 'g')
/** An absolute Location (scheme and host): left as the upstream sent it. */
const ABSOLUTE_URL = /^https?:\/\//

/**
 * The path prefix of a route on its upstream: `rewritePrefix`, else the upstream URL's own path,
 * without a trailing slash (`/api` on `http://up/` forwards `/api/x` as `/x`, on `http://up/v2/` as `/v2/x`).
 */
export function upstreamBase (upstream: string, rewritePrefix: string | undefined): string {
  const base = rewritePrefix !== undefined && rewritePrefix !== '' ? rewritePrefix : new URL(upstream).pathname
  return base.endsWith('/') ? base.slice(0, -1) : base
}

/**
 * Where the router's match of `prefix` ends in the raw path: the router matched the percent-decoded
 * path, so a prefix spelled with escapes (`/%70ub` for `/pub`) is decoded one character at a time.
 * -1 when it does not line up.
 */
function rawPrefixLength (path: string, prefix: string): number {
  if (path.startsWith(prefix)) return prefix.length
  let i = 0
  let decoded = ''
  while (i < path.length) {
    let len: number
    let ch: string
    if (path[i] === '%') {
      // a percent-encoded UTF-8 character is up to four escapes
      len = 3
      for (;;) {
        try {
          ch = decodeURI(path.slice(i, i + len))
          break
        } catch {
          if (len === 12 || path[i + len] !== '%') return -1
          len += 3
        }
      }
    } else {
      len = path.codePointAt(i)! > 0xffff ? 2 : 1
      ch = path.slice(i, i + len)
    }
    decoded += ch
    i += len
    if (decoded === prefix) return i
    if (decoded.length >= prefix.length) return -1
  }
  return -1
}

/**
 * The path (without the query: reply-from appends the client's own) a request goes to on its
 * upstream: the upstream's base path, then what follows the prefix in the raw path, its escapes
 * kept. Undefined for a path the upstream must not get: an absolute or protocol-relative reference
 * (`/api//evil.example/x` under a root upstream), or one that would leave the base path
 * (`/api;x` onto `/v2`). Dot segments, backslashes and bad escapes were refused before any route ran.
 */
export function upstreamPath (url: string, prefix: string, base: string): string | undefined {
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  const n = rawPrefixLength(path, prefix)
  if (n === -1) return undefined
  const rest = path.slice(n)
  const dest = base + rest
  if (ABSOLUTE.test(dest)) return undefined
  // within the base path: the base itself, or below it
  if (rest !== '' && rest[0] !== '/' && rest[0] !== '#' && base !== '') return undefined
  // reply-from takes an empty destination for "the client's own path": the base is the root then
  return dest === '' ? '/' : dest
}

/** `v` without the characters a header value may not hold (unchanged, and not copied, in the common case). */
function cleanHeaderValue (v: string): string {
  return NOT_HEADER_VALUE.test(v) ? v.replace(NOT_HEADER_VALUE_ALL, '') : v
}

/** Invalid characters of an upstream's header values dropped, so a bad value cannot fail the response. */
function sanitizeHeaders (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  for (const name in headers) {
    const v = headers[name]
    if (typeof v === 'string') headers[name] = cleanHeaderValue(v)
    else if (Array.isArray(v)) headers[name] = v.map(cleanHeaderValue)
  }
  return headers
}

/** A request body goes to the upstream as the stream it is, whatever its type: the gateway never parses it. */
function passBody (_request: FastifyRequest, payload: unknown, done: (err: Error | null, body?: unknown) => void): void {
  done(null, payload)
}

/**
 * One encapsulated context per route, on the route's prefix: `@fastify/reply-from` on a keep-alive
 * undici pool with the route's timeouts, the prefix and everything below it (the route's methods),
 * the upstream's circuit breaker, header hygiene and one consistent error shape.
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
      // the origin only: every destination below is a path from the root (a base URL with a path
      // ending in `/` made reply-from refuse its own bare path, `/base` under `http://up/base/`, with a 500)
      await scope.register(replyFrom, { base: origin, undici: pool, disableRequestLogging: true })
      scope.addContentTypeParser('application/json', passBody)
      scope.addContentTypeParser('*', passBody)
      // the root prefix matches every path: the upstream then gets its base path and the whole path
      const prefix = route.prefix === '/' ? '' : route.prefix
      const base = upstreamBase(route.upstream, route.rewritePrefix)
      const replyOptions: FastifyReplyFromHooks = {
        rewriteRequestHeaders: (request, headers) => upstreamHeaders(request as FastifyRequest, headers, request.user),
        rewriteHeaders: (headers) => {
          // a redirect within the upstream's base path points under the route's prefix
          const location = headers.location
          if (typeof location === 'string' && location !== '' && !ABSOLUTE_URL.test(location)) headers.location = location.replace(base, prefix)
          return sanitizeHeaders(downstreamHeaders(headers))
        },
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
      // The breaker decides last, after authentication, authorization and rate limiting, so a
      // refused request never takes the half-open probe slot.
      const handler = (request: FastifyRequest, reply: FastifyReply): FastifyReply => {
        const dest = upstreamPath(request.url, prefix, base)
        if (dest === undefined) throw new BadPathError()
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
        return reply.from(dest, replyOptions)
      }
      const config = routeConfig(route)
      // the prefix itself and everything below it (`/api/` too: the wildcard matches an empty rest);
      // Fastify would register the prefix with a trailing slash as a third route (~10 KB a route)
      scope.route({ url: '/', method: route.methods ?? DEFAULT_METHODS, config, handler, prefixTrailingSlash: 'no-slash' })
      scope.route({ url: '/*', method: route.methods ?? DEFAULT_METHODS, config, handler })
    }, { prefix: route.prefix })
  }
  return used
}
