import { performance } from 'node:perf_hooks'
import fp from 'fastify-plugin'
import fastifyJwt from '@fastify/jwt'
import type { FastifyPluginAsync, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify'
import { promClient } from './metrics.js'
import { authMetrics } from './auth-metrics.js'
import { AuthFailure, httpErrorFor, type FailureReason } from './auth-errors.js'
import { AuthOptionsError, MAX_TOKEN_LENGTH, resolveOptions, type JwksAuthOptions } from './auth-options.js'
import authorize from './authorize.js'
import { IssuerKeys } from './jwks-refresher.js'
import { TokenVerifier, type VerifiedUser } from './jwks-verify.js'
import { jwtVerifyOptions } from './jwks-fastify-jwt.js'

export type { JwksAuthOptions, IssuerOptions } from './auth-options.js'

/** Plugin options: the verifier's options plus logging. */
export interface JwksAuthPluginOptions extends JwksAuthOptions {
  /**
   * Level of the per-request `auth_success` line (`auth_failure` is always info). A gateway that
   * writes its own access line with `sub` sets `'debug'`: one line per request instead of two.
   * @defaultValue 'info'
   */
  successLogLevel?: 'info' | 'debug' | 'trace'
}
export type { VerifiedUser } from './jwks-verify.js'
export type { RouteAuthRules } from './authorize.js'

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: Record<string, unknown>
    /** null until authenticated (and on `auth: false` routes). */
    user: VerifiedUser | null
  }
}

export interface JwksAuthDecorator {
  /** True once every issuer's JWKS was fetched successfully at least once (gateway readiness). */
  isReady (): boolean
  /** Refreshes every issuer's JWKS now (what the background timer does); resolves when done. */
  refresh (): Promise<void>
  /** Verifies a token outside a request; throws an Error with `reason` (a FailureReason) when invalid. */
  verify (token: string): Promise<VerifiedUser>
}

declare module 'fastify' {
  interface FastifyInstance {
    /** preHandler that authenticates the request (for apps registered with `global: false`). */
    authenticate: preHandlerAsyncHookHandler
    jwksAuth: JwksAuthDecorator
  }
}

// RFC 6750 b64token after a case-insensitive scheme (RFC 9110 11.1).
const BEARER = /^bearer +([A-Za-z0-9\-._~+/]+=*) *$/i
const AUTHENTICATED = Symbol('portcullis.authenticated')

function authorizationHeaders (request: FastifyRequest): number {
  // Node keeps only the first of repeated Authorization headers in `headers`: count the raw ones.
  const raw = request.raw.rawHeaders
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 13 && raw[i]!.toLowerCase() === 'authorization') n++
  return n
}

function bearerToken (request: FastifyRequest): string {
  const count = authorizationHeaders(request)
  if (count > 1) throw new AuthFailure('duplicate_header')
  const header = request.headers.authorization
  if (header === undefined || header === '') throw new AuthFailure('missing')
  if (header.length > MAX_TOKEN_LENGTH + 16) throw new AuthFailure('malformed', 'too long')
  const m = BEARER.exec(header)
  if (m === null) throw new AuthFailure('malformed', 'not a Bearer token')
  return m[1]!
}

/**
 * JWKS bearer-token authentication. Keys come only from the configured issuers' JWKS (never from a
 * URL or key named in a token), held as parsed KeyObjects in one map per issuer, refreshed in the
 * background with ETags; unknown kids cause at most one fetch per cooldown. See README
 * (`config:plugins`) for every option, reason code and metric.
 */
const jwksAuth: FastifyPluginAsync<JwksAuthPluginOptions> = async (app, rawOpts) => {
  if (app.hasDecorator('jwksAuth')) {
    // A second registration with other options would be silently half-applied: refuse it.
    throw new AuthOptionsError('issuers', 'jwks-auth is already registered in this context; list every issuer in one registration')
  }
  const options = resolveOptions(rawOpts)
  const successLevel = rawOpts.successLogLevel ?? 'info'
  if (!['info', 'debug', 'trace'].includes(successLevel)) throw new AuthOptionsError('successLogLevel', 'must be info, debug or trace')
  const registry = options.registry ?? (app.hasDecorator('metricsRegistry') ? app.metricsRegistry : new promClient.Registry())
  const metrics = authMetrics(registry)
  const issuers = new Map<string, IssuerKeys>()
  const tokens = new TokenVerifier(options, issuers, metrics)
  for (const config of options.issuers) {
    issuers.set(config.issuer, new IssuerKeys(config, {
      options,
      metrics,
      log: app.log,
      onRemoved: (issuer, kids) => tokens.flush(issuer, kids)
    }))
  }

  if (!app.hasRequestDecorator('jwtVerify')) {
    // @fastify/jwt supplies request.user / request.jwtVerify(); its verify path uses the same key maps and pins.
    await app.register(fastifyJwt, jwtVerifyOptions(options, issuers, tokens))
  }
  await app.register(authorize)
  // Declared up front so every request object keeps one shape.
  app.decorateRequest(AUTHENTICATED, false)

  // Synchronous for cache hits and known kids; a promise only when a kid-miss fetch is needed.
  function verify (token: string): VerifiedUser | Promise<VerifiedUser> {
    return tokens.cached(token) ?? tokens.verifyUncached(token)
  }

  async function authenticate (request: FastifyRequest): Promise<void> {
    const r = request as FastifyRequest & { [AUTHENTICATED]?: boolean }
    if (r[AUTHENTICATED] === true) return
    const start = performance.now()
    const base = () => ({ route: request.routeOptions.url, method: request.method, ip: request.ip, durationMs: Math.round((performance.now() - start) * 1000) / 1000 })
    try {
      const token = bearerToken(request)
      let cache: 'hit' | 'miss' = 'hit'
      let user = tokens.cached(token)
      if (user === undefined) {
        cache = 'miss'
        user = await tokens.verifyUncached(token)
      }
      metrics.verifyDuration.observe({ cache }, (performance.now() - start) / 1000)
      request.user = user
      r[AUTHENTICATED] = true
      metrics.requests.inc({ result: 'success', reason: 'ok' })
      request.log[successLevel]({ event: 'auth_success', sub: user.sub, cache, ...base() }, 'authenticated')
    } catch (err) {
      let reason: FailureReason | 'internal_error' = 'internal_error'
      if (err instanceof AuthFailure) reason = err.reason
      else request.log.error({ err }, 'token verification failed unexpectedly')
      metrics.requests.inc({ result: 'failure', reason })
      request.log.info({ event: 'auth_failure', reason, detail: err instanceof AuthFailure ? err.message : undefined, ...base() }, 'authentication failed')
      // Every token problem is a 401 (never a 5xx), whatever went wrong inside.
      throw httpErrorFor(reason === 'internal_error' ? 'malformed' : reason)
    }
  }

  app.decorate('authenticate', async function (request: FastifyRequest) { await authenticate(request) })
  app.decorate('jwksAuth', {
    isReady: () => [...issuers.values()].every((i) => i.loaded),
    refresh: async () => { await Promise.all([...issuers.values()].map((i) => i.refresh())) },
    verify: async (token: string) => verify(token)
  } satisfies JwksAuthDecorator)

  if (options.global) {
    app.addHook('onRequest', async (request) => {
      if (request.routeOptions.config?.auth === false) return
      await authenticate(request)
    })
  }

  app.addHook('onReady', async () => {
    for (const i of issuers.values()) i.start()
  })
  app.addHook('onClose', async () => {
    for (const i of issuers.values()) i.stop()
  })
}

export default fp(jwksAuth, { fastify: '5.x', name: 'portcullis-jwks-auth' })
