import fp from 'fastify-plugin'
import createError from '@fastify/error'
import type { FastifyPluginAsync, FastifyRequest, onRequestHookHandler, preHandlerHookHandler, onErrorHookHandler } from 'fastify'
import { hookList } from '@portcullis/core'
import { promClient, type Registry } from '@portcullis/metrics'
import { BypassingStore, MemoryStore, RedisStore, windowMs, type RateLimitStore, type RedisClient } from './stores.js'
import { createRedisClient, DEFAULT_REDIS_COMMAND_TIMEOUT } from './redis.js'
import { clientKey } from './ip.js'

export { BypassingStore, MemoryStore, RedisStore, windowMs, DEFAULT_STORE_FAILURE_THRESHOLD, DEFAULT_STORE_RETRY_AFTER, type RateLimitStore, type Hit, type RedisClient } from './stores.js'
export { clientKey } from './ip.js'
export { createRedisClient, redisClientOptions, DEFAULT_REDIS_COMMAND_TIMEOUT, type RedisClientSettings, type RedisClientOptions } from './redis.js'

export const DEFAULT_MAX = 100
export const DEFAULT_TIME_WINDOW = 60_000 // ms
export const DEFAULT_LOCAL_CACHE = 10_000 // keys kept by the in-memory store (LRU)
const STORE_WARN_INTERVAL = 10_000 // ms between two "store failed" warnings
const BLOCKED_MAX = 100_000 // IPs remembered as over budget through 401s

export const RateLimitedError = createError('PORTCULLIS_RATE_LIMITED', 'Rate limit exceeded, retry in %s seconds', 429)
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
  /** Key namespace in Redis. @defaultValue 'portcullis-rl:' */
  nameSpace?: string
  /** Metrics registry. @defaultValue app.metricsRegistry when the metrics plugin is registered */
  registry?: Registry
  /** Milliseconds one Redis command may take (a `redis` URL only; a client you pass keeps its own). @defaultValue 50 */
  redisCommandTimeout?: number
  /** Consecutive store failures after which the store is bypassed (the failClosed policy applies at once). @defaultValue 5 */
  storeFailureThreshold?: number
  /** Milliseconds the store is bypassed before one request tries it again. @defaultValue 5000 */
  storeRetryAfter?: number
}

/** One budget: its keys are `<label>|<identity>`, so every limiter shares one store. */
interface Limiter { label: string, max: number, timeWindow: number, metricLabel: string }

const kCounted = Symbol('portcullis.rateLimit.counted')
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
  interface FastifyRequest { [kCounted]?: boolean }
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
 * preHandler, so it runs after whichever instance hook authenticates. A request refused with 401
 * before the check is counted against its IP afterwards, and an IP over budget is refused (429)
 * before its next token is even verified: token guessing is rate limited. Headers:
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
    const own = await createRedisClient(opts.redis, { commandTimeout: opts.redisCommandTimeout ?? DEFAULT_REDIS_COMMAND_TIMEOUT })
    redis = own
    app.addHook('onClose', async () => { own.disconnect() })
    await own.connect().catch((err: Error) => {
      app.log.warn({ err: err.message }, 'rate-limit store: Redis not reachable at start; retrying in the background')
    })
  } else {
    redis = opts.redis
  }
  const store: RateLimitStore = redis === undefined
    ? new MemoryStore(DEFAULT_LOCAL_CACHE)
    : new BypassingStore(new RedisStore(redis, opts.nameSpace ?? 'portcullis-rl:'), opts.storeFailureThreshold, opts.storeRetryAfter)

  let lastWarn = 0
  const storeFailed = (err: Error): void => {
    storeErrors?.inc()
    const now = Date.now()
    if (now - lastWarn >= STORE_WARN_INTERVAL) {
      lastWarn = now
      app.log.warn({ err: err.message, failClosed }, 'rate-limit store failed: requests are %s', failClosed ? 'refused (503)' : 'let through')
    }
  }
  /** One hit on `limiter` for `request`'s identity; `cb` gets the count or the store error. */
  const hit = (limiter: Limiter, request: FastifyRequest, cb: (err: Error | null, current: number, ttl: number) => void): void => {
    try {
      store.incr(`${limiter.label}|${identityKey(request)}`, limiter.timeWindow, (err, res) => {
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

  // Declared up front so every request keeps one shape (a property added per request costs a hidden-class transition).
  if (!app.hasRequestDecorator(kCounted)) app.decorateRequest(kCounted, false)

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

  // IPs whose budget was used up by 401s, until when (epoch ms). Local to this process: each
  // replica learns it from the shared counter on the first 401 it sees past the limit.
  const blocked = new Map<string, number>()

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
    // labelled like the budget's own 429s: the route's budget name (`none` on a route without one)
    rejections?.inc({ route: (request.routeOptions.config as { [kBudget]?: string } | undefined)?.[kBudget] ?? 'none' })
    const secs = Math.ceil(left / 1000)
    reply.header('retry-after', secs)
    done(new RateLimitedError(String(secs)))
  }
  app.addHook('onRequest', guard)

  const limitHook = (limiter: Limiter): preHandlerHookHandler => function rateLimitCheck (request, reply, done) {
    request[kCounted] = true
    hit(limiter, request, (err, current, ttl) => {
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
  const count401 = (limiter: Limiter): onErrorHookHandler => function rateLimitCount401 (request, _reply, error, done) {
    if ((error as { statusCode?: number }).statusCode !== 401 || request[kCounted] === true) { done(); return }
    request[kCounted] = true
    // request.user is unset here: the hit is keyed by the IP. The 401 is not held back for the store.
    hit(limiter, request, (err, current, ttl) => {
      if (err === null && current > limiter.max) {
        if (blocked.size >= BLOCKED_MAX) blocked.delete(blocked.keys().next().value!)
        blocked.set(clientKey(request.ip), Date.now() + ttl)
      }
    })
    done()
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
    route.onError = [...hookList(route.onError), count401(limiter)]
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
  for (const name of ['redisCommandTimeout', 'storeFailureThreshold', 'storeRetryAfter'] as const) {
    const v = opts[name]
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) {
      throw new Error(`rate-limit plugin: option "${name}" must be an integer >= 1, got ${String(v)}`)
    }
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
