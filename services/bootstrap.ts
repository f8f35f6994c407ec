import { STATUS_CODES } from 'node:http'
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { requestIdOf } from '@portcullis/core'
import jwksAuth, { type JwksAuthOptions } from '@portcullis/jwks-auth'
import metrics, { admin } from '@portcullis/metrics'
import propagation, { clientCredentialsTokenSource } from '@portcullis/propagation'
import tracing from '@portcullis/tracing'
import { DRAINING_REASON, type DrainState } from '../lib/drain.js'
import { logDestination, loggerOptions } from '../lib/logger.js'
import type { ServiceConfig } from './config.js'
import { orderService } from './order/server.js'
import { productService } from './product/server.js'
import { userService } from './user/server.js'

export interface BuildOptions {
  /** Fastify logger setting. @defaultValue pino JSON with the house redaction paths */
  logger?: FastifyServerOptions['logger']
  /** Extra jwks-auth options (tests shorten timings). */
  jwksAuth?: Omit<JwksAuthOptions, 'issuers'>
  /** Process metrics (CPU, memory, event loop) in the app's registry. @defaultValue true */
  defaultMetrics?: boolean
}

/**
 * One example service: its own token verification (JWKS) and authorization (jwks-auth registers the
 * authorize plugin, so per-route `config.auth` rules apply), identity propagation to
 * the services it calls, a public `/health`, and one log line per request with the caller's `sub`.
 */
export async function buildService (config: ServiceConfig, opts: BuildOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? { ...loggerOptions(`${config.kind}-service`, config.logLevel), stream: logDestination() },
    // The caller's well-formed request id becomes this service's request id, by the same rule the
    // gateway and the propagation plugin apply: one id across every log and every outgoing call.
    requestIdHeader: false,
    genReqId: (req) => requestIdOf(req.headers),
    // One line per request (the onResponse hook below, with the caller's sub) instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true })
  })

  // W3C trace context first: every request log line carries the trace id, and calls to other
  // services name this service's span as their parent (spans exported when OTEL_* says so)
  await app.register(tracing, config.tracing)
  // HTTP metrics and, registered first, the registry jwks-auth puts its own metrics in: served on the
  // admin listener (buildServiceAdmin), never on the public one.
  await app.register(metrics, { defaultMetrics: opts.defaultMetrics ?? true })
  await app.register(propagation, {
    timeout: config.upstreamTimeout,
    ...(config.client !== undefined
      ? {
          serviceToken: clientCredentialsTokenSource({
            tokenUrl: config.tokenUrl,
            clientId: config.client.id,
            clientSecret: config.client.secret
          })
        }
      : {})
  })
  await app.register(jwksAuth, {
    ...config.jwks,
    ...opts.jwksAuth,
    issuers: [{ issuer: config.issuer, jwksUri: config.jwksUri, audience: config.audience, ...(config.revocations !== undefined ? { revocations: config.revocations } : {}) }]
  })

  app.get('/health', { config: { auth: false }, logLevel: 'warn' }, async () => ({ status: 'ok', service: config.kind }))

  app.addHook('onResponse', async (req, reply) => {
    if (req.routeOptions.url === '/health') return
    req.log.info({
      method: req.method,
      url: req.url,
      statusCode: reply.statusCode,
      sub: req.user?.sub,
      ms: Math.round(reply.elapsedTime)
    }, 'request completed')
  })

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 ? err.statusCode : 500
    const ours = err.code?.startsWith('PORTCULLIS_') === true || err.code?.startsWith('FST_ERR_') === true
    if (status >= 500) req.log.error({ err }, 'request failed')
    // Errors may carry their own headers (jwks-auth's 401 brings `WWW-Authenticate`): keep them.
    const headers = (err as FastifyError & { headers?: Record<string, string> }).headers
    if (headers !== undefined) reply.headers(headers)
    if (status === 403 && !reply.hasHeader('www-authenticate')) {
      reply.header('www-authenticate', 'Bearer error="insufficient_scope"')
    }
    // Library messages and stack traces stay in the log: a 5xx we did not name says only what it is.
    const message = status >= 500 && !ours ? 'Internal Server Error' : err.message
    return reply.code(status).send({ statusCode: status, code: ours ? err.code : undefined, error: STATUS_CODES[status] ?? 'Error', message })
  })

  if (config.kind === 'user') await app.register(userService)
  else if (config.kind === 'product') await app.register(productService)
  else await app.register(orderService, { config })
  return app
}

/**
 * The service's admin app (not listening yet): `/health/live`; `/health/ready`, 200 once the issuer's
 * JWKS has been fetched and 503 from the moment `drain` starts (SIGTERM); `/metrics`, the public
 * app's registry (HTTP, jwks-auth and process metrics).
 */
export async function buildServiceAdmin (app: FastifyInstance, drain: DrainState): Promise<FastifyInstance> {
  const adminApp = Fastify({ loggerInstance: app.log })
  await adminApp.register(admin, {
    registries: [app.metricsRegistry],
    ready: () => {
      if (drain.draining) return DRAINING_REASON
      return app.jwksAuth.isReady() ? true : 'the issuer\'s JWKS has not been fetched yet'
    }
  })
  return adminApp
}
