import { createServer, STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Pool } from 'undici'
import type { Duplex } from 'node:stream'
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import metrics, { admin, promClient, type Registry } from '@portcullis/metrics'
import rateLimit from '@portcullis/rate-limit'
import jwksAuth, { verifyFirst, type IssuerOptions, type JwksAuthPluginOptions } from '@portcullis/jwks-auth'
import tracing, { type TracingPluginOptions } from '@portcullis/tracing'
import { leanHistogram, type UnmatchedRecorder } from './hot-histogram.js'
import { defaultListenerLimits, type ListenerLimits } from './listener.js'
import pino, { type DestinationStream, type LogFn, type Logger } from 'pino'
import { loggerOptions, REDACT_PATHS } from '../lib/logger.js'
import { genRequestId } from './headers.js'
import { accessLogger, kClientIp, kPlainFormat } from './access-log.js'
import { BatchedDestination } from '../lib/log-destination.js'
import { BadPathError, BadRequestError, HeadersTooLargeError, RequestTimeoutError, RouteNotFoundError, ShuttingDownError, type ErrorBody } from './errors.js'
import { registerRoutes, releaseProbe } from './routes.js'
import type { UpstreamPools } from './upstream.js'
import type { GatewayConfig } from './config.js'
import { ConfigError } from '../lib/errors.js'

export const DEFAULT_HSTS_MAX_AGE = 31_536_000 // seconds (one year)

export interface GatewayOptions {
  config: GatewayConfig
  /** PEM certificate and key: the public listener speaks HTTPS and sends HSTS. @defaultValue plain HTTP */
  tls?: { cert: string | Buffer, key: string | Buffer }
  /** `Strict-Transport-Security` max-age in seconds (TLS only). @defaultValue 31536000 */
  hstsMaxAge?: number
  /** `redis://` URL: rate-limit counters shared by every replica. @defaultValue in-memory per process */
  redisUrl?: string
  /** Refuse requests (503) instead of letting them through when the Redis store fails. @defaultValue false */
  rateLimitFailClosed?: boolean
  /** Milliseconds one Redis rate-limit command may take. @defaultValue 50 */
  redisCommandTimeout?: number
  /** Fastify logger setting, or a ready pino logger. @defaultValue `gatewayLogger()` */
  logger?: FastifyServerOptions['logger'] | Logger
  /** Clock for circuit breakers (tests). @defaultValue Date.now */
  now?: () => number
  /** Extra jwks-auth options (cache sizes, timings, clock); `issuers` and `global` come from the route file. */
  auth?: Omit<JwksAuthPluginOptions, 'issuers' | 'global'>
  /** Public listener timeouts (seconds) and connection cap. @defaultValue defaultListenerLimits() */
  listener?: ListenerLimits
  /**
   * W3C trace context and OpenTelemetry spans (@portcullis/tracing): the trace context is always
   * accepted or started, passed to the upstream and logged; spans are exported when `exportUrl` or
   * `tracerProvider` is set. @defaultValue no export
   */
  tracing?: TracingPluginOptions
  /** Switch parts off (benchmarks measure each part's cost). @defaultValue all on */
  features?: { rateLimit?: boolean, metrics?: boolean, auth?: boolean, tracing?: boolean }
  /**
   * The app owns no listener: a server of the caller's hands it each request through `gw.handle`
   * (the reloading runtime, gateway/runtime.ts, which also sets the listener limits and TLS and
   * collects the process metrics). @defaultValue false: `gw.app.listen()` serves it
   */
  external?: boolean
  /** Upstream pools shared with the other configs of a reloading gateway. @defaultValue pools of its own */
  pools?: UpstreamPools
}

export interface Gateway {
  app: FastifyInstance
  /** The admin listener's app: /health/live, /health/ready, /metrics. */
  admin: FastifyInstance
  /** With `external`: the request handler a caller's server calls. */
  handle?: (req: IncomingMessage, res: ServerResponse) => void
  /** The upstream pools the routes use. */
  pools: Set<Pool>
  /** From now on every request gets 503 PORTCULLIS_SHUTTING_DOWN with `Connection: close` (as while closing). */
  beginShutdown(): void
  /** Closes both apps; in-flight proxied requests finish first. Idempotent. */
  close(): Promise<void>
}

const GENERIC_CODES: Record<number, string> = { 400: 'PORTCULLIS_BAD_REQUEST', 404: 'PORTCULLIS_NOT_FOUND', 413: 'PORTCULLIS_PAYLOAD_TOO_LARGE', 415: 'PORTCULLIS_UNSUPPORTED_MEDIA_TYPE', 431: 'PORTCULLIS_HEADERS_TOO_LARGE' }

/**
 * pino with the shared redaction, writing to stdout in batches of 32 KiB or every 200 ms, whichever
 * comes first (see BatchedDestination: ~0.2 µs per line against ~2.6 µs with an async
 * pino.destination). What is left is written on exit.
 */
export function gatewayLogger (level?: string, destination: DestinationStream = new BatchedDestination()): Logger {
  const logger = pino({
    ...loggerOptions('gateway', level),
    redact: { paths: GATEWAY_REDACT_PATHS, censor: '[redacted]' },
    hooks: { logMethod: dropProxyErrorLine }
  }, destination)
  // default formatting (level number, epoch time, msg): the access line may be written directly
  return Object.assign(logger, { [kPlainFormat]: true })
}

/**
 * @fastify/reply-from writes `warn` "response errored" with the whole error, stack included, for
 * every failed upstream request (about 1 KB each, one per request during an outage). The gateway's
 * error handler already logs each of those failures as the throttled "request refused" line with its
 * code and cause, so that line is dropped here (pino's documented `hooks.logMethod`).
 */
function dropProxyErrorLine (this: Logger, args: Parameters<LogFn>, method: LogFn, level: number): void {
  if (level === 40 && args[1] === 'response errored' && args[0] instanceof Error) return
  method.apply(this, args)
}

/**
 * The shared redaction list without its one-level wildcards (`*.password`, `*.token`, ...): with
 * @pinojs/redact those cost ~15 µs per log line (measured: ~3 µs without them, ~18 µs with), i.e. a
 * fifth of a core at 6,000 req/s with two lines per request. The gateway never logs request or
 * response bodies; headers, top-level secrets and tokens stay redacted.
 */
export const GATEWAY_REDACT_PATHS = REDACT_PATHS.filter((p) => !p.startsWith('*.'))

function isLogger (l: unknown): l is Logger {
  return typeof l === 'object' && l !== null && typeof (l as Logger).child === 'function' && typeof (l as Logger).info === 'function'
}

/** `{ statusCode, code, error, message }` for any error; library messages and stacks never leave. */
export function errorBody (err: FastifyError): ErrorBody {
  const status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode <= 599 ? err.statusCode : 500
  const ours = typeof err.code === 'string' && err.code.startsWith('PORTCULLIS_')
  const error = STATUS_CODES[status] ?? 'Error'
  return {
    statusCode: status,
    code: ours ? err.code : (GENERIC_CODES[status] ?? (status >= 500 ? 'PORTCULLIS_INTERNAL' : 'PORTCULLIS_REQUEST_REFUSED')),
    error,
    message: ours ? err.message : error
  }
}

/**
 * Fastify's `clientErrorHandler`: a request Node's parser refused before any route (oversized
 * headers, a malformed request line, a request that did not arrive in time) gets the one JSON error
 * shape with its code, and `Connection: close`, since the socket is closed right after: a
 * keep-alive client then knows not to send its next request on it.
 */
export function clientErrorResponse (err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const e = err.code === 'HPE_HEADER_OVERFLOW'
    ? new HeadersTooLargeError()
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? new RequestTimeoutError() : new BadRequestError()
  const body = JSON.stringify(errorBody(e as FastifyError))
  if (!socket.writable) {
    socket.destroy()
    return
  }
  socket.end(`HTTP/1.1 ${e.statusCode} ${STATUS_CODES[e.statusCode!]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`, () => { socket.destroy() })
}

/**
 * Logs expected refusals: one line without a stack, at warn for 5xx and info for 4xx, at most one
 * line per error code and second; the next line says how many it stands for (`suppressed`). An
 * upstream outage answered with thousands of 503s a second writes one line a second.
 */
function refusalLog (): (request: FastifyRequest, body: ErrorBody, err: FastifyError) => void {
  const last = new Map<string, { at: number, suppressed: number }>()
  return (request, body, err) => {
    const now = Date.now()
    let seen = last.get(body.code)
    if (seen === undefined) last.set(body.code, seen = { at: 0, suppressed: 0 })
    if (now - seen.at < 1000) { seen.suppressed++; return }
    const suppressed = seen.suppressed
    seen.at = now
    seen.suppressed = 0
    const cause = err.cause as { code?: unknown } | undefined
    const fields = {
      code: body.code,
      status: body.statusCode,
      ...(typeof cause?.code === 'string' ? { cause: cause.code } : {}),
      ...(suppressed > 0 ? { suppressed } : {})
    }
    if (body.statusCode >= 500) request.log.warn(fields, 'request refused')
    else request.log.info(fields, 'request refused')
  }
}

/** True when the path (before the query) holds dot segments, backslashes or escapes that do not decode. */
export function isAmbiguousPath (url: string): boolean {
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  // fast path for the common case: nothing escaped, no dots after a slash, no backslash
  if (!path.includes('%') && !path.includes('/.') && !path.includes('\\')) return false
  let decoded: string
  try {
    decoded = decodeURIComponent(path)
  } catch {
    return true
  }
  if (decoded.includes('\\') || decoded.includes('\0')) return true
  // `..;x` counts as `..`: some servers drop `;` path parameters before resolving dot segments
  return decoded.split('/').some((seg) => {
    const name = seg.split(';', 1)[0]
    return name === '.' || name === '..'
  })
}

/**
 * `revocations: redis` in the route file: the issuer's revocations come from the gateway's REDIS_URL
 * (published there by Portcullis' auth service), so the file never holds Redis' password.
 */
function issuersWithRedis (issuers: IssuerOptions[], redisUrl: string | undefined): IssuerOptions[] {
  return issuers.map((i) => {
    if (i.revocations !== 'redis') return i
    if (redisUrl === undefined) throw new ConfigError('REDIS_URL', `issuer ${i.issuer} takes its revocations from Redis (revocations: redis) but REDIS_URL is not set`)
    return { ...i, revocations: redisUrl }
  })
}

/**
 * Builds the gateway: the public app (proxy routes from the route file, header hygiene, rate limit,
 * metrics, error mapping, HSTS under TLS) and the admin app. Neither listens: the caller does.
 */
export async function buildGateway (opts: GatewayOptions): Promise<Gateway> {
  const { config } = opts
  const features = { rateLimit: true, metrics: true, auth: true, tracing: true, ...opts.features }
  const logger = opts.logger ?? gatewayLogger()
  const limits = opts.listener ?? defaultListenerLimits()
  // what Fastify's own options do not set (it sets keep-alive, request and idle timeouts below)
  const nodeLimits = {
    headersTimeout: limits.headersTimeout * 1000,
    // Node checks the headers and request timeouts on this interval (30 s by default): often enough to honour them
    connectionsCheckingInterval: Math.max(100, Math.min(1000, limits.headersTimeout * 500))
  }
  let handle: Gateway['handle']
  // records a request no route matched (hot-histogram.ts), once the metrics are set up
  let unmatched: UnmatchedRecorder | undefined
  const app = Fastify({
    // external: Fastify hands its request handler over and gets a server that never listens (its
    // clientError listener and close() then touch nothing real); the caller's server calls handle
    ...(opts.external === true
      ? { serverFactory: (handler: (req: IncomingMessage, res: ServerResponse) => void) => { handle = handler; return createServer() } }
      : {}),
    connectionTimeout: limits.idleTimeout * 1000,
    keepAliveTimeout: limits.keepAliveTimeout * 1000,
    requestTimeout: limits.requestTimeout * 1000,
    http: nodeLimits,
    ...(isLogger(logger) ? { loggerInstance: logger } : { logger }),
    // one line per request (below) instead of Fastify's two: logging is the largest per-request cost
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: genRequestId,
    trustProxy: config.trustProxy as boolean, // Fastify also accepts a hop count; its types omit it
    // while closing, the onRequest hook answers 503 in the gateway's own shape (Fastify's has no code)
    return503OnClosing: false,
    clientErrorHandler: clientErrorResponse,
    // malformed URLs are refused by the router before any hook: same JSON shape, no echoed URL,
    // counted with the requests no route matched (no hook sees them; their duration is not measured)
    frameworkErrors: (err, request, reply) => {
      void (reply as FastifyReply).code(400).send(errorBody(err as FastifyError))
      unmatched?.(request as FastifyRequest, reply as FastifyReply)
    },
    ...(opts.tls === undefined || opts.external === true ? {} : { https: { ...nodeLimits, cert: opts.tls.cert, key: opts.tls.key } })
  }) as unknown as FastifyInstance
  // Over the cap, Node closes a new connection at once: the descriptors the gateway needs for its
  // upstreams stay free
  app.server.maxConnections = limits.maxConnections
  // first: the request logger of every route and of the not-found handler carries the trace id
  if (features.tracing) await app.register(tracing, opts.tracing ?? {})

  const refusals = refusalLog()
  app.setErrorHandler((err: FastifyError & { headers?: Record<string, string> }, request, reply) => {
    const body = errorBody(err)
    const ours = typeof err.code === 'string' && err.code.startsWith('PORTCULLIS_')
    // our plugins attach response headers to their errors (WWW-Authenticate on 401/403)
    if (err.headers !== undefined && ours) reply.headers(err.headers)
    // An unexpected failure is an error with its stack; a refusal the gateway means to make (breaker
    // open, fail-closed, upstream down, 4xx) is one short line, at most one per code and second.
    if (body.statusCode >= 500 && !ours) request.log.error({ err }, 'request failed')
    else refusals(request, body, err)
    return reply.code(body.statusCode).type('application/json; charset=utf-8').send(body)
  })
  app.setNotFoundHandler((_request, reply) => {
    return reply.code(404).send(errorBody(new RouteNotFoundError()))
  })

  const hsts = opts.tls === undefined ? undefined : `max-age=${opts.hstsMaxAge ?? DEFAULT_HSTS_MAX_AGE}; includeSubDomains`
  // Declared up front so every request object keeps one shape.
  app.decorateRequest(kClientIp, undefined)
  // Callback-style hooks: an async hook costs a promise per request on the hot path.
  let shuttingDown = false
  app.addHook('preClose', (done) => { shuttingDown = true; done() })
  app.addHook('onRequest', (request, reply, done) => {
    if (shuttingDown) {
      // a request that arrived on a kept-alive connection while the gateway drains: sent elsewhere
      reply.header('connection', 'close')
      done(new ShuttingDownError())
      return
    }
    // taken now: the access line is written after the response, when a client that closed its
    // connection is no longer linked to the request
    request[kClientIp] = request.ip
    reply.header('x-request-id', request.id)
    if (hsts !== undefined) reply.header('strict-transport-security', hsts)
    // Dot segments and backslashes are refused outright: the route the router matched is then the
    // only thing that decides authentication, and no upstream can resolve the path elsewhere.
    done(isAmbiguousPath(request.url) ? new BadPathError() : undefined)
  })

  // One onResponse hook for the gateway's own work: the access line, and freeing a circuit-breaker
  // probe slot when the client went away before the upstream answered.
  const access = accessLogger(isLogger(logger) ? logger : undefined)
  app.addHook('onResponse', (request, reply, done) => {
    releaseProbe(request)
    access(request, reply)
    // a request no route matched (404, or 400 for a refused path): the route hooks never saw it
    if (unmatched !== undefined && request.is404) unmatched(request, reply)
    done()
  })

  if (features.metrics) {
    // process metrics from the plugin; the route histogram (quantiles via histogram_quantile) from
    // one route-level onResponse hook per route, counted between scrapes (hot-histogram.ts), and
    // unmatched requests under one fixed route label from the hook above
    await app.register(metrics, { routeMetrics: false, defaultMetrics: opts.external !== true })
    unmatched = leanHistogram(app, app.metricsRegistry)
  } else {
    app.decorate('metricsRegistry', new promClient.Registry())
  }
  const withAuth = features.auth && config.issuers.length > 0
  if (features.rateLimit) {
    const store = {
      redis: opts.redisUrl,
      failClosed: opts.rateLimitFailClosed,
      ...(opts.redisCommandTimeout !== undefined ? { redisCommandTimeout: opts.redisCommandTimeout } : {}),
      // an IP over its failure budget: verified first, so only its failed requests get 429
      ...(withAuth ? { checkOverBudget: verifyFirst } : {})
    }
    await app.register(rateLimit, config.rateLimit === false
      ? { ...store, global: false, failureBudget: false } // no global budget: only routes with their own `rateLimit` are limited
      : { ...store, max: config.rateLimit.max, timeWindow: config.rateLimit.timeWindow * 1000 })
  }

  // after the rate limiter: its onRequest guard sees a request from an IP over its failure budget first
  if (withAuth) {
    // the access line below carries `sub`: auth_success at debug keeps it to one line per request
    await app.register(jwksAuth, { successLogLevel: 'debug', ...opts.auth, issuers: issuersWithRedis(config.issuers, opts.redisUrl), global: true })
  }

  const pools = await registerRoutes(app, config, { now: opts.now, pools: opts.pools })

  const registries: Registry[] = [app.metricsRegistry]
  const adminApp = Fastify({ logger: false })
  await adminApp.register(admin, {
    registries,
    ready: () => !withAuth || app.jwksAuth.isReady() || 'JWKS of every issuer not fetched yet'
  })

  let closing: Promise<void> | undefined
  return {
    app,
    admin: adminApp,
    handle,
    pools,
    beginShutdown: () => { shuttingDown = true },
    close: () => {
      closing ??= (async () => {
        await app.close()
        await adminApp.close()
      })()
      return closing
    }
  }
}
