import fp from 'fastify-plugin'
import createError from '@fastify/error'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest, onRequestHookHandler, preHandlerHookHandler } from 'fastify'
import { hookList, isGuessLike } from '@portcullis/core'
import { promClient, type Registry } from '@portcullis/metrics'
import { BypassingStore, MemoryStore, RedisStore, windowMs, type RateLimitStore, type RedisClient } from './stores.js'
import { createRedisClient, DEFAULT_REDIS_COMMAND_TIMEOUT } from './redis.js'
import { clientKey } from './ip.js'

export { BypassingStore, MemoryStore, RedisStore, RedisCommandTimeoutError, windowMs, DEFAULT_STORE_FAILURE_THRESHOLD, DEFAULT_STORE_RETRY_AFTER, type RateLimitStore, type Hit, type RedisClient } from './stores.js'
export { clientKey } from './ip.js'
export { createRedisClient, redisClientOptions, DEFAULT_REDIS_COMMAND_TIMEOUT, type RedisClientSettings, type RedisClientOptions } from './redis.js'

export const DEFAULT_MAX = 100
export const DEFAULT_TIME_WINDOW = 60_000 // ms
export const DEFAULT_LOCAL_CACHE = 100_000 // callers (budget and identity) kept by the in-memory store (LRU): ~110 bytes each
const STORE_WARN_INTERVAL = 10_000 // ms between two "store failed" warnings
const BLOCKED_MAX = 100_000 // IPs remembered as over their failure budget
/** Key prefix of the failure budget in the store (route budgets are named by their routes, which start with `/` or a groupId). */
const FAILURE_LABEL = '!auth-failures'

export const RateLimitedError = createError('PORTCULLIS_RATE_LIMITED', 'Rate limit exceeded, retry in %s seconds', 429, Error, false)
export const RateLimitStoreError = createError('PORTCULLIS_RATE_LIMIT_STORE', 'Rate limiting is unavailable', 503)

export interface RateLimitPluginOptions {
  /** Requests per window for routes without their own `config.rateLimit`. @defaultValue 100 */
  max?: number
  /** Window in milliseconds. @defaultValue 60000 */
  timeWindow?: number
  /** Apply the default budget to every route (a route opts out with `config: { rateLimit: false }`). @defaultValue true */
  global?: boolean
  /**
   * Shared store: an ioredis client (the caller closes it) or a `redis://` URL (the plugin connects
   * and closes). Unset: an in-memory store per process. @defaultValue undefined
   */
  redis?: RedisClient | string
  /** When the store fails: `false` lets requests through (fail open), `true` answers 503. @defaultValue false */
  failClosed?: boolean
  /**
   * In-memory store only: the callers (a budget and an identity) it keeps; beyond, the least recently
   * seen one is forgotten (it starts a new window when it comes back). @defaultValue 100000
   */
  memoryKeys?: number
  /** Key namespace in Redis. @defaultValue 'portcullis-rl:' */
  nameSpace?: string
  /** Metrics registry. @defaultValue app.metricsRegistry when the metrics plugin is registered */
  registry?: Registry
  /** Milliseconds one hit may wait for Redis, whether the client is the plugin's or yours. @defaultValue 50 */
  redisCommandTimeout?: number
  /** Consecutive store failures after which the store is bypassed (the failClosed policy applies at once). @defaultValue 5 */
  storeFailureThreshold?: number
  /** Milliseconds the store is bypassed before one request tries it again. @defaultValue 5000 */
  storeRetryAfter?: number
  /**
   * Failed authentications (401s that look like guessing: `isGuessLike` of `@portcullis/core`, so not
   * an expired token or a missing one) spend this per-IP budget, separate from the request budgets.
   * An IP over it is answered 429 on its next requests until the window ends, except those that
   * `checkOverBudget` lets through. `false`: 401s are not counted.
   * @defaultValue `{ max: <max>, timeWindow: <timeWindow> }`
   */
  failureBudget?: { max?: number, timeWindow?: number } | false
  /**
   * Runs, before any other hook, for each request from an IP over its failure budget: resolve to let
   * the request go on, reject to answer it 429. Give it the verification (see the README): a valid
   * token, or a route that needs none, goes on, so the users who share an IP with a token guesser keep
   * working while the guesser gets 429. Unset: every request from that IP gets 429 until the window ends.
   * @defaultValue undefined
   */
  checkOverBudget?: (request: FastifyRequest) => Promise<void>
}

/** One budget: its keys are `<label>|<identity>`, so every limiter shares one store. */
interface Limiter { label: string, max: number, timeWindow: number, metricLabel: string }

/** The budget name a route config carries once onRoute gave it a limiter. */
const kBudget = Symbol('portcullis.rateLimit.budget')
/** A route's own budget: `config: { rateLimit: RouteRateLimit | false }`. */
export interface RouteRateLimit {
  /** Requests per window. @defaultValue the plugin's `max` */
  max?: number
  /** Window in milliseconds. @defaultValue the plugin's `timeWindow` */
  timeWindow?: number
  /** Routes giving one groupId share one budget (and must give the same max and timeWindow). @defaultValue the route's URL */
  groupId?: string
  /** The `route` label of `portcullis_rate_limit_rejections_total` for this budget. @defaultValue the groupId */
  label?: string
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * This route's budget, or `false` for none. Absent: the plugin's default budget (`global`).
     * Do not register @fastify/rate-limit in the same app: it reads the same setting.
     */
    rateLimit?: RouteRateLimit | false
  }
}

function counter (registry: Registry | undefined, name: string, help: string, labelNames: string[]): promClient.Counter<string> | undefined {
  if (registry === undefined) return undefined
  const existing = registry.getSingleMetric(name)
  if (existing !== undefined) return existing as promClient.Counter<string>
  return new promClient.Counter({ name, help, labelNames, registers: [registry] })
}

/**
 * Rate limiting with fixed windows in memory or Redis (stores.ts). Key = the verified token's `sub` when
 * `request.user` is set, else the client IP (IPv6 grouped by /64); the check is a route-level
 * preHandler, so it runs after whichever instance hook authenticates. Failed authentications spend a
 * separate per-IP failure budget; an IP over it gets 429, except requests `checkOverBudget` lets
 * through (verify first: valid users behind the guesser's IP go on). Headers:
 * `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, and `Retry-After` on 429.
 * Per route: `config: { rateLimit: { max, timeWindow (ms), groupId?, label? } | false }`.
 */
const rateLimit: FastifyPluginAsync<RateLimitPluginOptions> = async (app, opts) => {
  validateOptions(opts)
  const failClosed = opts.failClosed ?? false
  const registry = opts.registry ?? (app.hasDecorator('metricsRegistry') ? app.metricsRegistry : undefined)
  const rejections = counter(registry, 'portcullis_rate_limit_rejections_total', 'Requests refused with 429 by the rate limiter', ['route'])
  const storeErrors = counter(registry, 'portcullis_rate_limit_store_errors_total', 'Rate-limit store failures (requests then pass when failing open, or get 503 when failing closed)', [])

  let redis: RedisClient | undefined
  if (typeof opts.redis === 'string') {
    const own = await createRedisClient(opts.redis)
    redis = own
    app.addHook('onClose', async () => { own.disconnect() })
    await own.connect().catch((err: Error) => {
      app.log.warn({ err: err.message }, 'rate-limit store: Redis not reachable at start; retrying in the background')
    })
  } else {
    redis = opts.redis
  }
  const store: RateLimitStore = redis === undefined
    ? new MemoryStore(opts.memoryKeys ?? DEFAULT_LOCAL_CACHE)
    : new BypassingStore(new RedisStore(redis, opts.nameSpace ?? 'portcullis-rl:', { commandTimeout: opts.redisCommandTimeout ?? DEFAULT_REDIS_COMMAND_TIMEOUT }), opts.storeFailureThreshold, opts.storeRetryAfter)

  let lastWarn = 0
  const storeFailed = (err: Error): void => {
    storeErrors?.inc()
    const now = Date.now()
    if (now - lastWarn >= STORE_WARN_INTERVAL) {
      lastWarn = now
      app.log.warn({ err: err.message, failClosed }, 'rate-limit store failed: requests are %s', failClosed ? 'refused (503)' : 'let through')
    }
  }
  /** One hit on `limiter` for `identity`; `cb` gets the count or the store error. */
  const hit = (limiter: Limiter, identity: string, cb: (err: Error | null, current: number, ttl: number) => void): void => {
    try {
      store.incr(`${limiter.label}|${identity}`, limiter.timeWindow, (err, res) => {
        if (err !== null || res === undefined) {
          storeFailed(err ?? new Error('no result'))
          cb(err ?? new Error('no result'), 0, 0)
        } else {
          cb(null, res.current, res.ttl)
        }
      })
    } catch (err) {
      storeFailed(err as Error)
      cb(err as Error, 0, 0)
    }
  }

  const limiters = new Map<string, Limiter>()
  /** The budget named `label`; one label with two different budgets is refused (it would silently keep the first). */
  const limiterFor = (label: string, max: number, timeWindow: number, route?: string, metricLabel = label): Limiter => {
    let l = limiters.get(label)
    if (l === undefined) {
      l = { label, max, timeWindow, metricLabel }
      limiters.set(label, l)
    } else if (l.max !== max || l.timeWindow !== timeWindow) {
      throw new Error(`route ${route ?? label}: config.rateLimit.groupId "${label}" is already a budget of max ${l.max} per ${l.timeWindow} ms; ` +
        'routes sharing a groupId share one budget and must give the same max and timeWindow')
    }
    return l
  }
  const globalLimiter = limiterFor('*', opts.max ?? DEFAULT_MAX, windowMs(opts.timeWindow ?? DEFAULT_TIME_WINDOW))
  const failureLimiter = opts.failureBudget === false
    ? undefined
    : limiterFor(FAILURE_LABEL, opts.failureBudget?.max ?? globalLimiter.max, windowMs(opts.failureBudget?.timeWindow ?? globalLimiter.timeWindow))

  // IPs over their failure budget, until when (epoch ms). Local to this process: each replica learns
  // it from the shared counter on the first failure it sees past the limit.
  const blocked = new Map<string, number>()
  const checkOverBudget = opts.checkOverBudget

  const refuse = (request: FastifyRequest, reply: FastifyReply, left: number): Error => {
    // labelled like the budget's own 429s: the route's budget name (`none` on a route without one)
    rejections?.inc({ route: (request.routeOptions.config as { [kBudget]?: string } | undefined)?.[kBudget] ?? 'none' })
    const secs = Math.ceil(left / 1000)
    reply.header('retry-after', secs)
    return new RateLimitedError(String(secs))
  }
  const guard: onRequestHookHandler = function rateLimitGuard (request, reply, done) {
    if (blocked.size === 0) { done(); return }
    const ip = clientKey(request.ip)
    const until = blocked.get(ip)
    const left = until === undefined ? 0 : until - Date.now()
    if (left <= 0) {
      if (until !== undefined) blocked.delete(ip)
      done()
      return
    }
    if (checkOverBudget === undefined) { done(refuse(request, reply, left)); return }
    let checked: Promise<void>
    try {
      checked = checkOverBudget(request)
    } catch (err) {
      checked = Promise.reject(err)
    }
    checked.then(() => { done() }, () => { done(refuse(request, reply, left)) })
  }
  if (failureLimiter !== undefined) app.addHook('onRequest', guard)

  const limitHook = (limiter: Limiter): preHandlerHookHandler => function rateLimitCheck (request, reply, done) {
    hit(limiter, identityKey(request), (err, current, ttl) => {
      if (err !== null) {
        done(failClosed ? new RateLimitStoreError({ cause: err }) : undefined)
        return
      }
      const reset = Math.ceil(ttl / 1000)
      reply.header('ratelimit-limit', limiter.max)
      reply.header('ratelimit-remaining', Math.max(0, limiter.max - current))
      reply.header('ratelimit-reset', reset)
      if (current <= limiter.max) {
        done()
        return
      }
      rejections?.inc({ route: limiter.metricLabel })
      reply.header('retry-after', reset)
      done(new RateLimitedError(String(reset)))
    })
  }

  // An onError hook: it runs only for requests that end in an error, so the success path pays nothing.
  // Every guess-like 401 of any route spends the IP's failure budget (request.user is unset on a 401).
  if (failureLimiter !== undefined) {
    app.addHook('onError', function rateLimitCountFailure (request, _reply, error, done) {
      if (!isGuessLike(error)) { done(); return }
      const ip = clientKey(request.ip)
      // the 401 is not held back for the store
      hit(failureLimiter, `ip:${ip}`, (err, current, ttl) => {
        if (err === null && current > failureLimiter.max) {
          if (blocked.size >= BLOCKED_MAX) blocked.delete(blocked.keys().next().value!)
          blocked.set(ip, Date.now() + ttl)
        }
      })
      done()
    })
  }

  app.addHook('onRoute', (route) => {
    const cfg = route.config?.rateLimit
    if (cfg === false) return
    if (cfg === undefined && opts.global === false) return
    let limiter = globalLimiter
    if (cfg !== undefined) {
      const max = cfg.max ?? globalLimiter.max
      const timeWindow = cfg.timeWindow ?? globalLimiter.timeWindow
      if (typeof max !== 'number' || !Number.isInteger(max) || max < 0 || typeof timeWindow !== 'number' || !(timeWindow > 0) || !Number.isFinite(timeWindow)) {
        throw new Error(`route ${route.url}: config.rateLimit needs an integer max >= 0 and a timeWindow in ms > 0`)
      }
      const group = cfg.groupId ?? route.url
      limiter = limiterFor(group, max, windowMs(timeWindow), route.url, cfg.label ?? group)
    }
    // Route-level hooks run after every instance-level hook of the same kind, so the check sees
    // `request.user` whichever hook the auth plugin verifies in; it runs before the route's own
    // preHandlers (authorization appended by other plugins).
    route.preHandler = [limitHook(limiter), ...hookList(route.preHandler)]
    route.config = { ...route.config, [kBudget]: limiter.metricLabel } as typeof route.config
  })
}

/** One clear message per bad option, at registration (never on the first request). */
function validateOptions (opts: RateLimitPluginOptions): void {
  if (opts.max !== undefined && (!Number.isInteger(opts.max) || opts.max < 0)) {
    throw new Error(`rate-limit plugin: option "max" must be a non-negative integer, got ${String(opts.max)}`)
  }
  if (opts.timeWindow !== undefined && !(Number.isFinite(opts.timeWindow) && opts.timeWindow > 0)) {
    throw new Error(`rate-limit plugin: option "timeWindow" must be a positive number of ms, got ${String(opts.timeWindow)}`)
  }
  for (const name of ['redisCommandTimeout', 'storeFailureThreshold', 'storeRetryAfter', 'memoryKeys'] as const) {
    const v = opts[name]
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) {
      throw new Error(`rate-limit plugin: option "${name}" must be an integer >= 1, got ${String(v)}`)
    }
  }
  const fb = opts.failureBudget
  if (fb !== undefined && fb !== false) {
    if (typeof fb !== 'object' || fb === null) throw new Error('rate-limit plugin: option "failureBudget" must be { max?, timeWindow? } or false')
    if (fb.max !== undefined && !(Number.isInteger(fb.max) && fb.max >= 0)) {
      throw new Error(`rate-limit plugin: option "failureBudget.max" must be a non-negative integer, got ${String(fb.max)}`)
    }
    if (fb.timeWindow !== undefined && !(Number.isFinite(fb.timeWindow) && fb.timeWindow > 0)) {
      throw new Error(`rate-limit plugin: option "failureBudget.timeWindow" must be a positive number of ms, got ${String(fb.timeWindow)}`)
    }
  }
  if (opts.checkOverBudget !== undefined && typeof opts.checkOverBudget !== 'function') {
    throw new Error('rate-limit plugin: option "checkOverBudget" must be a function returning a promise')
  }
  if (typeof opts.redis === 'string' && !/^rediss?:\/\//.test(opts.redis)) {
    throw new Error('rate-limit plugin: option "redis" must be a redis:// or rediss:// URL or an ioredis client')
  }
}

/** `s:<sub>` for a verified caller, else `ip:<client ip>` (IPv6 grouped by /64). */
function identityKey (request: FastifyRequest): string {
  const user = (request as { user?: { sub?: unknown } | null }).user
  return user !== null && user !== undefined && typeof user.sub === 'string' ? `s:${user.sub}` : `ip:${clientKey(request.ip)}`
}

export default fp(rateLimit, { fastify: '5.x', name: 'portcullis-rate-limit' })
