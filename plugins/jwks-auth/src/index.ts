import { performance } from 'node:perf_hooks'
import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify'
import { AuthFailure, FAILURE_REASONS, REVOCATION_KINDS, httpErrorFor, isGuessLike, type FailureReason, type VerifiedUser } from '@portcullis/core'
import authorize, { DENIAL_REASONS } from '@portcullis/authorize'
import { hotCounter, promClient, type Registry } from '@portcullis/metrics'
import { authMetrics } from './metrics.js'
import { AuthOptionsError, MAX_TOKEN_LENGTH, resolveOptions, type JwksAuthOptions } from './options.js'
import { IssuerKeys, type IssuerStatus } from './refresher.js'
import { RevocationFeed, type RevocationFeedHooks } from './revocation-feed.js'
import { RedisRevocationFeed } from './revocation-redis.js'
export type { IssuerStatus, KeyFreshness } from './refresher.js'
import { TokenVerifier } from './verify.js'

export type { JwksAuthOptions, IssuerOptions } from './options.js'
export {
  AuthOptionsError, SUPPORTED_ALGORITHMS, DEFAULT_ALGORITHMS, DEFAULT_CLOCK_TOLERANCE, DEFAULT_KEY_CACHE_TTL,
  DEFAULT_KID_MISS_COOLDOWN, DEFAULT_REFRESH_INTERVAL, DEFAULT_MAX_STALE_AGE, DEFAULT_FETCH_TIMEOUT,
  DEFAULT_TOKEN_CACHE_MAX, DEFAULT_REVOCATION_STALE_AFTER, REVOCATION_POLICIES, MIN_RSA_BITS, MAX_TOKEN_LENGTH,
  type RsaAlgorithm, type RevocationPolicy
} from './options.js'
export { FAILURE_REASONS, type FailureReason, type VerifiedUser } from '@portcullis/core'

/** Plugin options: the verifier's options plus logging. */
export interface JwksAuthPluginOptions extends JwksAuthOptions {
  /**
   * Level of the per-request `auth_success` line (`auth_failure` is always info). A gateway that
   * writes its own access line with `sub` sets `'debug'`: one line per request instead of two.
   * @defaultValue 'info'
   */
  successLogLevel?: 'info' | 'debug' | 'trace'
}
export type { RouteAuthRules } from '@portcullis/authorize'

export interface JwksAuthDecorator {
  /** True once every issuer's JWKS was fetched successfully at least once (gateway readiness). */
  isReady (): boolean
  /** Refreshes every issuer's JWKS now (what the background timer does); resolves when done. */
  refresh (): Promise<void>
  /** Verifies a token outside a request; throws an Error with `reason` (a FailureReason) when invalid. */
  verify (token: string): Promise<VerifiedUser>
  /** Each issuer's key set as held now: last fetch, freshness, last error, kids (operator pages). */
  status (): IssuerStatus[]
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The verified caller; null until authenticated (and on `auth: false` routes). */
    user: VerifiedUser | null
    /**
     * Authenticates the request if the hook has not (routes with `auth: false`, apps registered with
     * `global: false`) and resolves with the verified user; rejects with the same 401 the hook sends.
     * One verification per token: a request already authenticated resolves at once.
     */
    jwtVerify (): Promise<VerifiedUser>
  }
  interface FastifyInstance {
    /** preHandler that authenticates the request (for apps registered with `global: false`). */
    authenticate: preHandlerAsyncHookHandler
    jwksAuth: JwksAuthDecorator
  }
}

// RFC 6750 b64token after a case-insensitive scheme (RFC 9110 11.1).
const BEARER = /^bearer +([A-Za-z0-9\-._~+/]+=*) *$/i
const AUTHENTICATED = Symbol('portcullis.authenticated')

/** True when `log` writes lines of `level` (loggers without isLevelEnabled are asked every time). */
function levelEnabled (log: FastifyRequest['log'], level: string): boolean {
  const l = log as { isLevelEnabled?: (level: string) => boolean }
  return typeof l.isLevelEnabled !== 'function' || l.isLevelEnabled(level)
}

/** Fields of the auth_success / auth_failure lines. */
function requestFields (request: FastifyRequest, elapsedMs: number): Record<string, unknown> {
  return { route: request.routeOptions.url, method: request.method, ip: request.ip, durationMs: Math.round(elapsedMs * 1000) / 1000 }
}

function authorizationHeaders (request: FastifyRequest): number {
  // Node keeps only the first of repeated Authorization headers in `headers`: count the raw ones.
  const raw = request.raw.rawHeaders
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 13 && raw[i]!.toLowerCase() === 'authorization') n++
  return n
}

/** The token of the request's one Authorization header (`count`: how many the client sent). */
function bearerToken (request: FastifyRequest, count: number): string {
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
 * background with ETags; unknown kids cause at most one fetch per cooldown. The package README lists every option, reason
 * code and metric.
 */
const jwksAuth: FastifyPluginAsync<JwksAuthPluginOptions> = async (app, rawOpts) => {
  if (app.hasDecorator('jwksAuth')) {
    // A second registration with other options would be silently half-applied: refuse it.
    throw new AuthOptionsError('issuers', 'jwks-auth is already registered in this context; list every issuer in one registration')
  }
  const options = resolveOptions(rawOpts)
  const successLevel = rawOpts.successLogLevel ?? 'info'
  if (!['info', 'debug', 'trace'].includes(successLevel)) throw new AuthOptionsError('successLogLevel', 'must be info, debug or trace')
  const registry: Registry = options.registry ?? (app.hasDecorator('metricsRegistry') ? app.metricsRegistry : new promClient.Registry())
  const metrics = authMetrics(registry)
  // Every known label value exported at 0 from the start, so `rate()` and `increase()` alerts see
  // the first event: each failure reason, and stale serving per configured issuer.
  metrics.requests.inc({ result: 'success', reason: 'ok' }, 0)
  for (const reason of [...FAILURE_REASONS, 'internal_error']) metrics.requests.inc({ result: 'failure', reason }, 0)
  for (const config of options.issuers) metrics.staleServed.inc({ issuer: config.issuer }, 0)
  for (const reason of DENIAL_REASONS) metrics.denials.inc({ reason }, 0)
  const issuers = new Map<string, IssuerKeys>()
  const tokens = new TokenVerifier(options, issuers, metrics)
  for (const config of options.issuers) {
    const keys = new IssuerKeys(config, {
      options,
      metrics,
      log: app.log,
      onRemoved: (issuer, kids) => tokens.flush(issuer, kids)
    })
    issuers.set(config.issuer, keys)
    if (config.revocations !== undefined) {
      const issuer = config.issuer
      const up = metrics.revocationFeedUp.labels({ issuer })
      up.set(0)
      for (const kind of REVOCATION_KINDS) metrics.revocationsReceived.inc({ issuer, kind }, 0)
      metrics.revocationFeedReconnects.inc({ issuer }, 0)
      metrics.revocationFeedLag.set({ issuer }, 0)
      metrics.revocationSetSize.set({ issuer }, 0)
      const hooks: RevocationFeedHooks = {
        onEvents: (events, at) => {
          for (const e of events) metrics.revocationsReceived.inc({ issuer, kind: e.kind })
          const last = events[events.length - 1]
          if (last !== undefined) metrics.revocationFeedLag.set({ issuer }, Math.max(0, (at - last.revokedAt) / 1000))
        },
        onState: (live) => {
          up.set(live ? 1 : 0)
          app.log[live ? 'info' : 'warn']({ event: live ? 'revocation_feed_up' : 'revocation_feed_down', issuer }, live ? 'revocation feed caught up' : 'revocation feed down')
        },
        onReconnect: () => { metrics.revocationFeedReconnects.inc({ issuer }) },
        onSize: (n) => { metrics.revocationSetSize.set({ issuer }, n) },
        // tokens of a revoked key are refused from now on; its cached verifications go, and the
        // JWKS is read again (the key leaves it)
        onKeyRevoked: (kid) => {
          tokens.flush(issuer, [kid])
          void keys.refresh().catch(() => {})
        }
      }
      const source = { now: options.now, log: app.log, hooks }
      keys.revocations = /^rediss?:/.test(config.revocations)
        ? new RedisRevocationFeed(config.revocations, issuer, source)
        : new RevocationFeed(config.revocations, source)
    }
  }


  await app.register(authorize, { onDenied: (_request, reason) => { metrics.denials.inc({ reason }) } })
  // Declared up front so every request object keeps one shape.
  if (!app.hasRequestDecorator('user')) app.decorateRequest('user', null)
  app.decorateRequest(AUTHENTICATED, false)

  // Synchronous for cache hits and known kids; a promise only when a kid-miss fetch is needed.
  function verify (token: string): VerifiedUser | Promise<VerifiedUser> {
    return tokens.cached(token) ?? tokens.verifyUncached(token)
  }

  // Label sets resolved once; the success counter is summed locally and folded in when read (hotCounter).
  const hitDuration = metrics.verifyDuration.labels({ cache: 'hit' })
  const missDuration = metrics.verifyDuration.labels({ cache: 'miss' })
  const succeeded = hotCounter(metrics.requests, { result: 'success', reason: 'ok' })

  function succeed (request: FastifyRequest, user: VerifiedUser, start: number, cache: 'hit' | 'miss'): void {
    const elapsed = performance.now() - start
    if (cache === 'hit') hitDuration.observe(elapsed / 1000)
    else missDuration.observe(elapsed / 1000)
    request.user = user
    ;(request as FastifyRequest & { [AUTHENTICATED]?: boolean })[AUTHENTICATED] = true
    succeeded.inc()
    // the line's object is built only when its level is on (the gateway runs with it at debug)
    if (levelEnabled(request.log, successLevel)) {
      request.log[successLevel]({ event: 'auth_success', sub: user.sub, cache, ...requestFields(request, elapsed) }, 'authenticated')
    }
  }

  function fail (request: FastifyRequest, err: unknown, start: number): Error {
    let reason: FailureReason | 'internal_error' = 'internal_error'
    if (err instanceof AuthFailure) reason = err.reason
    else request.log.error({ err }, 'token verification failed unexpectedly')
    metrics.requests.inc({ result: 'failure', reason })
    request.log.info({ event: 'auth_failure', reason, detail: err instanceof AuthFailure ? err.message : undefined, ...requestFields(request, performance.now() - start) }, 'authentication failed')
    // Every token problem is a 401 (never a 5xx), whatever went wrong inside.
    return httpErrorFor(reason === 'internal_error' ? 'malformed' : reason)
  }

  /**
   * Authenticates the request: returns undefined when done (cache hit or known key), a promise when
   * a kid-miss fetch is needed; throws (or rejects with) the 401 error.
   */
  function authenticate (request: FastifyRequest): Promise<void> | undefined {
    if ((request as FastifyRequest & { [AUTHENTICATED]?: boolean })[AUTHENTICATED] === true) return undefined
    const start = performance.now()
    let user: VerifiedUser | Promise<VerifiedUser> | undefined
    let cache: 'hit' | 'miss' = 'hit'
    try {
      // Cache hits in the usual form `Bearer <token>` skip the header's syntax check: the cache
      // holds whole token strings that passed it, and anything else takes the full path below.
      const header = request.headers.authorization
      const count = authorizationHeaders(request)
      let quick: string | undefined
      if (count === 1 && typeof header === 'string' && header.startsWith('Bearer ')) {
        quick = header.slice(7)
        user = tokens.cached(quick)
      }
      if (user === undefined) {
        const token = bearerToken(request, count)
        if (token !== quick) user = tokens.cached(token)
        if (user === undefined) {
          cache = 'miss'
          user = tokens.verifyUncached(token)
        }
      }
    } catch (err) {
      throw fail(request, err, start)
    }
    if (!(user instanceof Promise)) {
      succeed(request, user, start, cache)
      return undefined
    }
    return user.then((u) => { succeed(request, u, start, 'miss') }, (err: unknown) => { throw fail(request, err, start) })
  }

  app.decorate('authenticate', async function (request: FastifyRequest) { await authenticate(request) })
  app.decorateRequest('jwtVerify', async function jwtVerify (this: FastifyRequest): Promise<VerifiedUser> {
    await authenticate(this)
    return this.user as VerifiedUser
  })
  app.decorate('jwksAuth', {
    // keys fetched, and every revocation feed caught up once (a verifier that just started knows
    // what was revoked before it trusts any token)
    isReady: () => [...issuers.values()].every((i) => i.loaded && (i.revocations === undefined || i.revocations.loaded)),
    refresh: async () => { await Promise.all([...issuers.values()].map((i) => i.refresh())) },
    verify: async (token: string) => verify(token),
    status: () => [...issuers.values()].map((i) => i.status(options.now()))
  } satisfies JwksAuthDecorator)

  if (options.global) {
    // Callback style and synchronous on the common path: an async hook costs a promise per request.
    app.addHook('onRequest', function jwksAuthenticate (request, _reply, done) {
      if (request.routeOptions.config?.auth === false) { done(); return }
      let pending: Promise<void> | undefined
      try {
        pending = authenticate(request)
      } catch (err) {
        done(err as Error)
        return
      }
      if (pending === undefined) done()
      else pending.then(() => { done() }, done)
    })
  }

  app.addHook('onReady', async () => {
    for (const i of issuers.values()) {
      i.start()
      i.revocations?.start()
    }
  })
  app.addHook('onClose', async () => {
    for (const i of issuers.values()) {
      i.stop()
      i.revocations?.stop()
    }
  })
}

/**
 * The rate-limit plugin's `checkOverBudget` for apps that verify with this plugin: a request from an
 * IP over its failure budget is verified first. It goes on when its route needs no token
 * (`config.auth === false`), when its token is valid (the verification is kept: the request is not
 * verified again), or when it failed as a real holder's token fails (expired, not yet valid, missing,
 * keys unavailable), so that it gets its usual 401 and the client refreshes. A forged, altered or made-up
 * token rejects, and the rate limiter answers 429.
 */
export async function verifyFirst (request: FastifyRequest): Promise<void> {
  if (request.routeOptions.config?.auth === false) return
  try {
    await request.jwtVerify()
  } catch (err) {
    if (isGuessLike(err)) throw err
  }
}

export default fp(jwksAuth, { fastify: '5.x', name: 'portcullis-jwks-auth' })
